"""One list of requests sent to a real vLLM and to xiaophi on the same checkpoint — its own
engine, and its `remote` engine in front of that vLLM: the same texts, token counts, finish
reasons and logprobs (within 1e-3, float32 on both sides).

Where an answer ends inside a multi-byte character (a random model emits byte fragments), vLLM
drops the held bytes at the end and xiaophi sends them as U+FFFD: there the texts are compared
up to that point.

Not compared: `response_format`. vLLM's grammar lets JSON hold any whitespace between tokens
(`any_whitespace`, its default), and a random model then pads with newlines until max_tokens;
xiaophi's allows json.dumps' separators only, so the same model finishes a valid object (as vLLM
does with `disable_any_whitespace`). tests/serving/test_structured_output.py covers it.
Nor a forced `tool_choice`: vLLM 0.32 opens the block as `<tool_call>{` (no newline) and, on
this model, left the arguments unconstrained (a string that ran to max_tokens), where xiaophi's
grammar always yields arguments that follow the function's schema (test_tool_calls.py). Tools
with `tool_choice` "auto" are compared: the template renders them and both read the answer's
Hermes blocks the same way.
"""

from __future__ import annotations

import json

import pytest
from openai import OpenAI

pytestmark = pytest.mark.slow

CHAT = [{"role": "user", "content": "守株待兔比喻死守狭隘经验，不知变通。"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"enum": ["北京", "上海"]}, "celsius": {"type": "boolean"}},
            "required": ["city", "celsius"],
            "additionalProperties": False,
        },
    },
}

#: (route, request fields): greedy unless seeded, each new field at least once
REQUESTS = [
    ("chat", dict(messages=CHAT, tools=[WEATHER], temperature=0, max_tokens=24)),
    ("chat", dict(messages=CHAT, temperature=0, max_tokens=12)),
    ("chat", dict(messages=CHAT, temperature=0, max_tokens=12, logprobs=True, top_logprobs=3)),
    (
        "chat",
        dict(
            messages=CHAT, temperature=0, max_tokens=12, stream=True, logprobs=True, top_logprobs=2
        ),
    ),
    (
        "chat",
        dict(
            messages=CHAT, temperature=0, max_tokens=16, presence_penalty=1.2, frequency_penalty=0.8
        ),
    ),
    ("chat", dict(messages=CHAT, temperature=0, max_tokens=10, logit_bias={"40": 8, "41": -100})),
    (
        "chat",
        dict(
            messages=CHAT,
            temperature=0,
            max_tokens=10,
            extra_body={"repetition_penalty": 1.3, "min_p": 0.2},
        ),
    ),
    (
        "chat",
        dict(
            messages=CHAT,
            temperature=0,
            max_tokens=12,
            extra_body={"min_tokens": 6, "stop_token_ids": [40]},
        ),
    ),
    ("chat", dict(messages=CHAT, temperature=0, max_tokens=12, extra_body={"ignore_eos": True})),
    (
        "completions",
        dict(prompt="学而时习之，不亦说乎。", temperature=0, max_tokens=10, logprobs=2),
    ),
    (
        "completions",
        dict(prompt="学而时习之，不亦说乎。", temperature=0, max_tokens=0, echo=True, logprobs=2),
    ),
    (
        "completions",
        dict(prompt="学而时习之，不亦说乎。", temperature=0, max_tokens=6, echo=True, logprobs=1),
    ),
    (
        "completions",
        dict(prompt=[10, 20, 30, 40], temperature=0, max_tokens=8, stream=True, logprobs=0),
    ),
    (
        "completions",
        dict(
            prompt="春眠不觉晓",
            temperature=0,
            max_tokens=12,
            stop=["a"],
            extra_body={"include_stop_str_in_output": True},
        ),
    ),
]


def answer(client: OpenAI, model: str, route: str, fields: dict) -> dict:
    """Text, finish reason, token count and logprobs of one request, stream or not."""
    create = client.chat.completions.create if route == "chat" else client.completions.create
    fields = dict(fields)
    if fields.get("stream"):
        fields["stream_options"] = {"include_usage": True}
        text, finish, usage, logprobs = "", None, None, []
        for chunk in create(model=model, **fields):
            usage = chunk.usage or usage
            for choice in chunk.choices:
                text += (choice.delta.content or "") if route == "chat" else choice.text
                finish = choice.finish_reason or finish
                if choice.logprobs is not None:
                    logprobs += entries(route, choice.logprobs)
        return dict(text=text, finish=finish, tokens=usage.completion_tokens, logprobs=logprobs)
    result = create(model=model, **fields)
    choice = result.choices[0]
    text = choice.message.content if route == "chat" else choice.text
    calls = []
    if route == "chat" and choice.message.tool_calls:
        calls = [
            (c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls
        ]
    logprobs = entries(route, choice.logprobs) if choice.logprobs is not None else []
    return dict(
        calls=calls,
        text=text or "",
        finish=choice.finish_reason,
        tokens=result.usage.completion_tokens,
        logprobs=logprobs,
    )


def entries(route: str, logprobs) -> list[tuple]:
    if route == "chat":
        return [
            (e.token, e.logprob, [(t.token, t.logprob) for t in e.top_logprobs])
            for e in logprobs.content or []
        ]
    return [
        (token, value, sorted((top or {}).items()))
        for token, value, top in zip(
            logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs, strict=True
        )
    ]


def assert_same(ours: dict, theirs: dict, what: str) -> None:
    assert ours.get("calls") == theirs.get("calls"), what
    assert ours["finish"] == theirs["finish"], what
    assert ours["tokens"] == theirs["tokens"], what
    if "\ufffd" in ours["text"][len(theirs["text"]) :]:
        assert ours["text"].startswith(theirs["text"]), what
    else:
        assert ours["text"] == theirs["text"], what
    assert len(ours["logprobs"]) == len(theirs["logprobs"]), what
    for mine, other in zip(ours["logprobs"], theirs["logprobs"], strict=True):
        assert mine[0] == other[0], what
        assert (mine[1] is None) == (other[1] is None), what
        if mine[1] is not None:
            assert mine[1] == pytest.approx(other[1], abs=1e-3), what
        assert [t for t, _ in mine[2]] == [t for t, _ in other[2]], what
        assert [v for _, v in mine[2]] == pytest.approx([v for _, v in other[2]], abs=1e-3), what


@pytest.mark.parametrize("engine", ["slots", "remote"])
def test_every_request_answers_as_vllm_does(vllm_server, xiaophi_beside_vllm, engine):
    vllm = OpenAI(base_url=vllm_server.base_url, api_key="unused", max_retries=0, timeout=120)
    ours = OpenAI(
        base_url=xiaophi_beside_vllm[engine].base_url, api_key="unused", max_retries=0, timeout=120
    )
    for route, fields in REQUESTS:
        what = f"{engine}: {route} {json.dumps(fields, ensure_ascii=False, default=str)}"
        theirs = answer(vllm, vllm_server.model, route, fields)
        mine = answer(ours, "tiny", route, fields)
        assert_same(mine, theirs, what)
