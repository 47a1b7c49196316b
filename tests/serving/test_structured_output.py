"""`response_format` through the official openai client on every engine: a random model's
answers parse and follow the schema, because a grammar masks every step."""

from __future__ import annotations

import json
from typing import Literal

import jsonschema
import pytest
from openai import BadRequestError, OpenAI
from pydantic import BaseModel, Field

MODEL = "tiny"


@pytest.fixture
def client(engine_server) -> OpenAI:
    return OpenAI(base_url=engine_server.base_url, api_key="unused", max_retries=0, timeout=120)


class Verdict(BaseModel):
    answer: Literal["是", "否"]
    score: int = Field(ge=0, le=9)
    sure: bool


def ask(client, **kwargs):
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "画蛇添足对吗？"}], **kwargs
    )


def test_parse_returns_the_pydantic_object_greedy_and_sampled(client):
    for extra in (
        dict(temperature=0),
        dict(temperature=1.0, seed=1),
        dict(temperature=1.0, seed=2),
    ):
        answer = client.chat.completions.parse(
            model=MODEL,
            messages=[{"role": "user", "content": "画蛇添足对吗？"}],
            response_format=Verdict,
            max_tokens=60,
            **extra,
        )
        choice = answer.choices[0]
        assert choice.finish_reason == "stop", choice
        assert isinstance(choice.message.parsed, Verdict), choice.message.content
        # the whole answer is the JSON: EOS ended it right after the closing brace
        assert Verdict.model_validate_json(choice.message.content) == choice.message.parsed


def test_json_schema_on_completions_and_json_object(client):
    schema = {
        "type": "object",
        "properties": {
            "成语": {"enum": ["守株待兔", "画蛇添足"]},
            "次数": {"type": "integer", "minimum": 1, "maximum": 3},
        },
        "required": ["成语", "次数"],
        "additionalProperties": False,
    }
    answer = client.completions.create(
        model=MODEL,
        prompt="成语：",
        max_tokens=60,
        temperature=0,
        extra_body={
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": schema},
            }
        },
    )
    jsonschema.validate(json.loads(answer.choices[0].text), schema)
    obj = ask(
        client, max_tokens=80, temperature=0.8, seed=5, response_format={"type": "json_object"}
    )
    text = obj.choices[0].message.content
    if obj.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    else:  # a random model may wander inside a string until max_tokens: still an object's start
        assert text.startswith("{")


def test_logprobs_under_a_grammar_put_no_mass_outside_it(client):
    answer = ask(
        client,
        max_tokens=40,
        temperature=0,
        logprobs=True,
        top_logprobs=5,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "v", "schema": Verdict.model_json_schema()},
        },
    )
    first = answer.choices[0].logprobs.content[0]
    assert first.token == "{"  # the only token the grammar allows first...
    assert first.logprob == pytest.approx(0.0, abs=1e-5)  # ...so it has all the mass
    assert [t.logprob for t in first.top_logprobs[1:]] == [-9999.0] * (len(first.top_logprobs) - 1)


def test_the_engines_agree_on_a_greedy_structured_answer(engine_servers):
    answers = set()
    for engine in ("slots", "hf-continuous", "remote"):
        client = OpenAI(base_url=engine_servers(engine).base_url, api_key="unused", max_retries=0)
        answer = client.chat.completions.parse(
            model=MODEL,
            messages=[{"role": "user", "content": "守株待兔对吗？"}],
            response_format=Verdict,
            max_tokens=60,
            temperature=0,
        )
        answers.add((answer.choices[0].message.content, answer.usage.completion_tokens))
    assert len(answers) == 1, answers


@pytest.mark.parametrize(
    ("response_format", "words"),
    [
        ({"type": "xml"}, "xml"),
        ({"type": "json_schema"}, "schema"),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}},
            "objekt",
        ),
        (
            {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"not": {"type": "string"}}},
            },
            "not",
        ),
    ],
)
def test_a_bad_response_format_is_a_400_that_says_what_to_fix(client, response_format, words):
    with pytest.raises(BadRequestError) as caught:
        ask(client, max_tokens=5, response_format=response_format)
    body = caught.value.body
    assert body["param"] == "response_format" and words in body["message"], body
