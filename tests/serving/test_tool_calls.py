"""Tools through the official openai client and LangChain, on every engine: the template shows
the model its tools and the results, a forced `tool_choice` always yields calls whose arguments
parse and follow the function's schema (a grammar masks each step, even on a random model),
and streamed calls arrive as OpenAI streams them."""

from __future__ import annotations

import json
from typing import Literal

import jsonschema
import pytest
from openai import BadRequestError, OpenAI

from serving.tool_calls import ToolCallStream, parse_tool_calls

MODEL = "tiny"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "查询城市天气",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"enum": ["北京", "上海"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 3},
            },
            "required": ["city", "days"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
}
ASK = [{"role": "user", "content": "北京明天天气怎么样？"}]


@pytest.fixture
def client(long_engine_server) -> OpenAI:
    return OpenAI(
        base_url=long_engine_server.base_url, api_key="unused", max_retries=0, timeout=120
    )


def check_call(call, tools=(WEATHER,)):
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    assert call.type == "function" and call.id.startswith("chatcmpl-tool-")
    assert call.function.name in schemas
    jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])


def test_a_named_tool_choice_always_calls_that_function(client):
    for extra in (dict(temperature=0), dict(temperature=1.0, seed=3)):
        answer = client.chat.completions.create(
            model=MODEL,
            messages=ASK,
            tools=[WEATHER, TIME],
            max_tokens=200,
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            **extra,
        )
        choice = answer.choices[0]
        assert [c.function.name for c in choice.message.tool_calls] == ["get_weather"]
        check_call(choice.message.tool_calls[0])
        # as vLLM (and OpenAI) answer a named choice: empty content, the answer's own reason
        assert choice.message.content == "" and choice.finish_reason == "stop"


def test_required_calls_stream_as_openai_streams_them(client):
    kwargs = dict(
        model=MODEL,
        messages=ASK,
        tools=[WEATHER, TIME],
        tool_choice="required",
        max_tokens=300,
        temperature=0,
    )
    whole = client.chat.completions.create(**kwargs).choices[0]
    assert whole.finish_reason == "tool_calls" and whole.message.tool_calls
    for call in whole.message.tool_calls:
        check_call(call, (WEATHER, TIME))
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    calls: dict[int, dict] = {}
    for chunk in chunks:
        for part in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
            entry = calls.setdefault(part.index, {"id": None, "name": None, "arguments": ""})
            if part.id:  # the first delta of a call: id, type and name
                assert entry["id"] is None and part.type == "function"
                entry["id"], entry["name"] = part.id, part.function.name
            entry["arguments"] += part.function.arguments or ""
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == [
        (c.function.name, json.loads(c.function.arguments)) for c in whole.message.tool_calls
    ]
    assert [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ] == ["tool_calls"]


def test_a_conversation_with_tool_results_renders_and_answers(client, long_checkpoint):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(long_checkpoint))
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "北京", "days": 1}'},
    }
    messages = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "晴，25度"},
    ]
    answer = client.chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER], max_tokens=8, temperature=0
    )
    prompt = tokenizer.apply_chat_template(
        messages, tools=[WEATHER], add_generation_prompt=True, return_dict=False
    )
    assert answer.usage.prompt_tokens == len(prompt)
    text = tokenizer.decode(prompt)
    assert '"name": "get_weather"' in text and "<tool_response>\n晴，25度\n</tool_response>" in text
    assert (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "北京", "days": 1}}\n</tool_call>'
        in text
    )


def test_langchain_bind_tools_and_structured_output(long_engine_server):
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel, Field

    @tool
    def get_weather(city: Literal["北京", "上海"], celsius: bool) -> str:
        """查询城市天气。"""
        return "晴"

    class Verdict(BaseModel):
        answer: bool
        score: int = Field(ge=0, le=9)

    llm = ChatOpenAI(
        model=MODEL,
        base_url=long_engine_server.base_url,
        api_key="unused",
        temperature=0,
        max_tokens=200,
    )
    message = llm.bind_tools([get_weather], tool_choice="get_weather").invoke("北京天气？")
    assert [c["name"] for c in message.tool_calls] == ["get_weather"]
    assert set(message.tool_calls[0]["args"]) == {"city", "celsius"}
    verdict = llm.with_structured_output(Verdict, method="json_schema").invoke("对吗？")
    assert isinstance(verdict, Verdict)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tool_choice": "required"}, "tool_choice"),  # no tools
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
        ),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools"),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {"name": "f", "parameters": {"type": "objekt"}},
                    }
                ],
                "tool_choice": "required",
            },
            "tools",
        ),
        (
            {
                "tools": [WEATHER],
                "tool_choice": "required",
                "response_format": {"type": "json_object"},
            },
            "response_format",
        ),
    ],
)
def test_bad_tool_requests_are_a_400_naming_the_field(client, fields, param):
    with pytest.raises(BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=4, **fields)
    assert (caught.value.body["param"] or "").split(".")[0] == param, caught.value.body


def test_the_parser_reads_hermes_blocks_as_vllm_does():
    text = '先查一下。<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>\n<tool_call>\n{"name": "g", "arguments": {}}\n</tool_call>'
    parsed = parse_tool_calls(text)
    assert parsed.content == "先查一下。"
    assert [(c.name, json.loads(c.arguments)) for c in parsed.calls] == [("f", {"a": 1}), ("g", {})]
    assert (
        parse_tool_calls("no calls").calls == []
        and parse_tool_calls("no calls").content == "no calls"
    )
    broken = '<tool_call>\n{"name": "f", "argu'
    assert parse_tool_calls(broken).content == broken and parse_tool_calls(broken).calls == []
    # streamed in small pieces: the same content and calls, a partial tag never sent as content
    stream, content, calls = ToolCallStream(), "", []
    for i in range(0, len(text), 3):
        more, done = stream.push(text[i : i + 3])
        assert "<" not in more
        content, calls = content + more, calls + done
    tail, done = stream.finish()
    content, calls = content + tail, calls + done
    assert content == "先查一下。" and [c.name for c in calls] == ["f", "g"]
