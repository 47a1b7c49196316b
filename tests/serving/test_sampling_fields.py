"""OpenAI's penalties and logit bias, and vLLM's extras, through the official openai client.

Each greedy answer is checked against a decoder written here from the documented formulas:
a forward pass over the whole sequence per token, the logit bias added, ends masked until
`min_tokens`, then repetition penalty (prompt + output), then frequency and presence penalties
(output only), then the argmax.
"""

from __future__ import annotations

import pytest
import torch
from openai import BadRequestError, OpenAI

from tests.serving.conftest import long_running_prompt

MODEL = "tiny"


@pytest.fixture
def client(engine_server) -> OpenAI:
    return OpenAI(base_url=engine_server.base_url, api_key="unused", max_retries=0, timeout=60)


def reference_greedy(
    reference,
    prompt: list[int],
    max_tokens: int,
    *,
    presence: float = 0.0,
    frequency: float = 0.0,
    repetition: float = 1.0,
    bias: dict[int, float] | None = None,
    min_tokens: int = 0,
    ends: set[int] = frozenset(),
    stops: set[int] = frozenset(),
) -> list[int]:
    out: list[int] = []
    for _ in range(max_tokens):
        with torch.no_grad():
            logits = reference.model(torch.tensor([prompt + out])).logits[0, -1].float().clone()
        for token, value in (bias or {}).items():
            logits[token] += value
        if len(out) < min_tokens:
            for token in ends | stops:
                logits[token] = float("-inf")
        for token in set(prompt + out):
            value = logits[token]
            logits[token] = value * repetition if value < 0 else value / repetition
        for token in set(out):
            logits[token] -= frequency * out.count(token) + presence
        token = int(logits.argmax())
        out.append(token)
        if token in ends or token in stops:
            break
    return out


def eos_ids(reference) -> set[int]:
    eos = reference.model.generation_config.eos_token_id
    return set(eos if isinstance(eos, list) else [eos])


def ask(client, ids, **kwargs):
    return client.completions.create(model=MODEL, prompt=ids, temperature=0, **kwargs).choices[0]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"presence_penalty": 1.5}, {"presence": 1.5}),
        ({"frequency_penalty": 2.0}, {"frequency": 2.0}),
        (
            {"presence_penalty": -1.0, "frequency_penalty": 0.7},
            {"presence": -1.0, "frequency": 0.7},
        ),
        (
            {"frequency_penalty": 1.0, "extra_body": {"repetition_penalty": 1.4}},
            {"frequency": 1.0, "repetition": 1.4},
        ),
    ],
)
def test_penalties_follow_openais_formula(client, reference, fields, expected):
    ids = reference.chat_ids(long_running_prompt(reference, 24))
    plain = reference_greedy(reference, ids, 24, ends=eos_ids(reference))
    want = reference_greedy(reference, ids, 24, ends=eos_ids(reference), **expected)
    assert want != plain  # the penalty changes this answer, so the check means something
    choice = ask(client, ids, max_tokens=24, **fields)
    assert choice.text == reference.tokenizer.decode(want, skip_special_tokens=True)


def test_logit_bias_forces_and_bans_tokens(client, reference):
    ids = reference.chat_ids("你好")
    greedy = reference_greedy(reference, ids, 6, ends=eos_ids(reference))
    forced = 123
    choice = ask(client, ids, max_tokens=3, logit_bias={str(forced): 100})
    assert choice.text == reference.tokenizer.decode([forced] * 3, skip_special_tokens=True)
    banned = {greedy[0]: -100.0}
    want = reference_greedy(reference, ids, 6, bias=banned, ends=eos_ids(reference))
    assert want[0] != greedy[0]
    choice = ask(client, ids, max_tokens=6, logit_bias={str(greedy[0]): -100})
    assert choice.text == reference.tokenizer.decode(want, skip_special_tokens=True)


def test_min_tokens_ignore_eos_and_stop_token_ids(client, reference):
    ends = eos_ids(reference)
    eos = min(ends)
    ids = reference.chat_ids(long_running_prompt(reference, 24))
    # a bias that makes EOS the likeliest token: the answer ends at once...
    bias = {eos: 50.0}
    assert reference_greedy(reference, ids, 10, bias=bias, ends=ends) == [eos]
    choice = ask(client, ids, max_tokens=10, logit_bias={str(eos): 50})
    assert (choice.text, choice.finish_reason) == ("", "stop")
    # ...unless min_tokens holds it back
    want = reference_greedy(reference, ids, 10, bias=bias, min_tokens=4, ends=ends)
    assert len(want) == 5 and want[-1] == eos
    answer = client.completions.create(
        model=MODEL,
        prompt=ids,
        temperature=0,
        max_tokens=10,
        logit_bias={str(eos): 50},
        extra_body={"min_tokens": 4},
    )
    assert answer.choices[0].text == reference.tokenizer.decode(want, skip_special_tokens=True)
    assert answer.usage.completion_tokens == 5 and answer.choices[0].finish_reason == "stop"
    # ignore_eos: EOS comes and ends nothing; the answer runs to max_tokens
    answer = client.completions.create(
        model=MODEL,
        prompt=ids,
        temperature=0,
        max_tokens=7,
        logit_bias={str(eos): 50},
        extra_body={"ignore_eos": True},
    )
    assert answer.usage.completion_tokens == 7 and answer.choices[0].finish_reason == "length"
    # a stop token id ends the answer with "stop"; its text is left out unless asked for
    long = reference_greedy(reference, ids, 24)
    stop = long[2]
    cut = long[: long.index(stop) + 1]
    choice = ask(client, ids, max_tokens=24, extra_body={"stop_token_ids": [stop]})
    assert choice.finish_reason == "stop"
    assert choice.text == reference.tokenizer.decode(cut[:-1], skip_special_tokens=True)
    choice = ask(
        client,
        ids,
        max_tokens=24,
        extra_body={"stop_token_ids": [stop], "include_stop_str_in_output": True},
    )
    assert choice.text == reference.tokenizer.decode(cut, skip_special_tokens=True)


def test_include_stop_str_in_output_keeps_the_stop_string(client, reference):
    ids = reference.chat_ids(long_running_prompt(reference, 24))
    text = reference.tokenizer.decode(
        reference_greedy(reference, ids, 24), skip_special_tokens=True
    )
    stop = text[5:7]
    head = text[: text.index(stop)]
    assert ask(client, ids, max_tokens=24, stop=[stop]).text == head
    kept = ask(
        client, ids, max_tokens=24, stop=[stop], extra_body={"include_stop_str_in_output": True}
    )
    assert kept.text == head + stop and kept.finish_reason == "stop"


def test_min_p_one_keeps_only_the_likeliest_token(client, reference):
    ids = reference.chat_ids(long_running_prompt(reference, 16))
    greedy = ask(client, ids, max_tokens=16).text
    for seed in range(3):
        sampled = client.completions.create(
            model=MODEL,
            prompt=ids,
            max_tokens=16,
            temperature=1.5,
            seed=seed,
            extra_body={"min_p": 1.0},
        )
        assert sampled.choices[0].text == greedy
    # and a loose min_p leaves sampling free: some seed departs from the greedy answer
    free = {
        client.completions.create(
            model=MODEL,
            prompt=ids,
            max_tokens=16,
            temperature=1.5,
            seed=seed,
            extra_body={"min_p": 0.01},
        )
        .choices[0]
        .text
        for seed in range(3)
    }
    assert free != {greedy}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"logit_bias": {"999999": 5}}, "logit_bias"),
        ({"logit_bias": {"abc": 5}}, "logit_bias"),
        ({"logit_bias": {"5": 101}}, "logit_bias"),
        ({"extra_body": {"stop_token_ids": [10**9]}}, "stop_token_ids"),
        ({"extra_body": {"min_p": 1.5}}, "min_p"),
        ({"extra_body": {"min_tokens": -1}}, "min_tokens"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -3}, "frequency_penalty"),
    ],
)
def test_bad_sampling_fields_get_a_400_naming_the_field(client, fields, param):
    with pytest.raises(BadRequestError) as caught:
        client.completions.create(model=MODEL, prompt="你好", max_tokens=2, **fields)
    assert (caught.value.body["param"] or "").split(".")[0] == param, caught.value.body
