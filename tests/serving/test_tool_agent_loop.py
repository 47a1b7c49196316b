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
from tests.training.conftest import (  # noqa: F401  (tiny_data: a fixture)
    IDIOMS,
    tiny_data,
    tiny_overrides,
    write_jsonl,
)
from training.config import load_recipe
from training.data.demo_tools import TOOLS, call, lookup_result, tool_chat
from training.pipeline import run_single_stage

pytestmark = pytest.mark.slow

QUESTION = "“{w}”是什么意思？"
LOOKUP = TOOLS["lookup_idiom"]
GREETINGS = {"你好": "你好！有什么可以帮你？", "谢谢": "不客气。"}


def lookup_idiom(term: str) -> str:
    """The tool the client runs: the test's dictionary."""
    return lookup_result(term, IDIOMS[term]) if term in IDIOMS else f"没有找到“{term}”。"


def training_rows() -> list[dict]:
    """Each idiom asked, looked up and answered from the result; greetings answered without a
    call while the tool is offered."""
    rows = [
        tool_chat(
            [LOOKUP], QUESTION.format(w=w), [call("lookup_idiom", term=w)], [lookup_idiom(w)], text
        )
        for w, text in IDIOMS.items()
    ]
    rows += [
        {
            "tools": [LOOKUP],
            "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
        }
        for q, a in GREETINGS.items()
    ]
    return rows


@pytest.fixture(scope="module")
def tool_model(tiny_data, tmp_path_factory):  # noqa: F811  (the imported fixture)
    folder = tmp_path_factory.mktemp("tool_model")
    tools_file = write_jsonl(folder / "sft_tools.jsonl", training_rows())
    recipe = load_recipe(
        "tiny",
        tiny_overrides(
            tiny_data,
            **{
                "data.sft": [tools_file],
                "data.sft_repeat": [16],
                "tokenizer.chat_files": [tools_file],
                "tokenizer.vocab_size": 1000,
                "model.hidden_size": 64,
                "model.num_heads": 4,
                "model.max_position_embeddings": 512,
                "sft.seq_len": 512,
                "sft.max_steps": 150,
                "sft.micro_batch": 8,
                "sft.lr": 1e-2,
                "sft.warmup_steps": 10,
                "decoding.tune": False,
            },
        ),
    )
    run = folder / "run"
    for stage in ("tokenizer", "pretrain", "sft"):
        run_single_stage(recipe, run, stage)
    return run / "sft"


@pytest.fixture(scope="module")
def tool_server(tool_model):
    with run_server(tiny_settings(tool_model)) as running:
        yield running


def test_the_openai_client_runs_the_loop_the_trained_model_asks_for(tool_server):
    client = OpenAI(base_url=tool_server.base_url, api_key="unused", max_retries=0, timeout=120)
    for term in ("守株待兔", "井底之蛙"):
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


def test_a_langchain_agent_calls_the_dictionary_and_answers_from_it(tool_server):
    from langchain.agents import create_agent
    from langchain_core.messages import AIMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    asked = []

    @tool("lookup_idiom", description=LOOKUP["function"]["description"])
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
    state = agent.invoke({"messages": [{"role": "user", "content": QUESTION.format(w="亡羊补牢")}]})
    messages = state["messages"]
    assert asked == ["亡羊补牢"]
    calls = [m for m in messages if isinstance(m, AIMessage) and m.tool_calls]
    assert [c.tool_calls[0]["args"] for c in calls] == [{"term": "亡羊补牢"}]
    assert [m.content for m in messages if isinstance(m, ToolMessage)] == [lookup_idiom("亡羊补牢")]
    assert isinstance(messages[-1], AIMessage) and messages[-1].content == IDIOMS["亡羊补牢"]
