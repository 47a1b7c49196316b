"""The tool loop end to end, against a model xiaophi trained to use a tool: its own tokenizer,
pretrain and SFT stages on tool conversations in the demo's format, served by xiaophi-serve.
The official `openai` client and a LangChain agent (`create_agent`) each ask a question, get a
`tool_calls` answer, run the dictionary tool and send its result back, and get the final answer
the model was taught to take from that result."""

from __future__ import annotations

import json

import pytest
from openai import OpenAI

from tests.serving.conftest import run_server, tiny_settings
from tests.tool_model import GREETINGS, IDIOMS, LOOKUP, QUESTION, lookup_idiom

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tool_server(tool_model):
    with run_server(tiny_settings(tool_model)) as running:
        yield running


def test_the_openai_client_runs_the_loop_the_trained_model_asks_for(tool_server, tool_terms):
    client = OpenAI(base_url=tool_server.base_url, api_key="unused", max_retries=0, timeout=120)
    for term in tool_terms[:2]:
        messages = [{"role": "user", "content": QUESTION.format(w=term)}]
        first = client.chat.completions.create(
            model="tiny", messages=messages, tools=[LOOKUP], temperature=0, max_tokens=64
        ).choices[0]
        assert first.finish_reason == "tool_calls" and not first.message.content
        (made,) = first.message.tool_calls
        assert made.function.name == "lookup_idiom"
        assert json.loads(made.function.arguments) == {"term": term}
        messages += [
            first.message.model_dump(exclude_none=True),
            {
                "role": "tool",
                "tool_call_id": made.id,
                "content": lookup_idiom(**json.loads(made.function.arguments)),
            },
        ]
        final = client.chat.completions.create(
            model="tiny", messages=messages, tools=[LOOKUP], temperature=0, max_tokens=64
        ).choices[0]
        assert final.finish_reason == "stop" and not final.message.tool_calls
        assert final.message.content == IDIOMS[term]
    # a question that needs no tool is answered without one, the tool still offered
    plain = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "你好"}],
        tools=[LOOKUP],
        temperature=0,
        max_tokens=32,
    ).choices[0]
    assert plain.finish_reason == "stop" and not plain.message.tool_calls
    assert plain.message.content == GREETINGS["你好"]


def test_a_langchain_agent_calls_the_dictionary_and_answers_from_it(tool_server, tool_terms):
    from langchain.agents import create_agent
    from langchain_core.messages import AIMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    asked = []

    # the schema the model was trained with (LangChain's own from the signature would lack
    # the argument's description: a prompt this tiny model has never seen)
    @tool(
        "lookup_idiom",
        description=LOOKUP["function"]["description"],
        args_schema=LOOKUP["function"]["parameters"],
    )
    def lookup(term: str) -> str:
        asked.append(term)
        return lookup_idiom(term)

    model = ChatOpenAI(
        model="tiny",
        base_url=tool_server.base_url,
        api_key="unused",
        temperature=0,
        max_tokens=64,
        max_retries=0,
    )
    agent = create_agent(model, tools=[lookup])
    term = tool_terms[-1]
    state = agent.invoke({"messages": [{"role": "user", "content": QUESTION.format(w=term)}]})
    messages = state["messages"]
    assert asked == [term]
    calls = [m for m in messages if isinstance(m, AIMessage) and m.tool_calls]
    assert [c.tool_calls[0]["args"] for c in calls] == [{"term": term}]
    assert [m.content for m in messages if isinstance(m, ToolMessage)] == [lookup_idiom(term)]
    assert isinstance(messages[-1], AIMessage) and messages[-1].content == IDIOMS[term]
