"""A checkpoint exported to GGUF, served by llama.cpp's OpenAI server (`python -m llama_cpp.server`,
llama-cpp-python's `[server]` extra), started for real: it continues a prompt as the checkpoint
does, and xiaophi's `remote` engine in front of it serves the tool loop (llama-cpp-python's
server takes no token-id prompts, answering them with a 500: the engine finds out and sends
text; it calls the repetition penalty `repeat_penalty` and has its own sampling defaults: the
engine states every value in its names)."""

from __future__ import annotations

import json

import httpx
import pytest
import torch
from openai import OpenAI
from transformers import AutoModelForCausalLM, AutoTokenizer

from bench.gguf_bench import start_llama_cpp_server, stop
from tests.serving.conftest import free_port, run_server, tiny_settings
from tests.tool_model import GREETINGS, IDIOMS, LOOKUP, QUESTION, lookup_idiom
from training.export_gguf import export_gguf

pytestmark = pytest.mark.slow

MAX_TOKENS = 48


@pytest.fixture(scope="module")
def llama_server(tool_model, tmp_path_factory):
    """llama_cpp.server on the f32 GGUF of the model xiaophi trained to call `lookup_idiom`."""
    folder = tmp_path_factory.mktemp("llama_cpp")
    gguf_file = export_gguf(tool_model, folder / "tool-model-f32.gguf", "f32").path
    port = free_port()
    process = start_llama_cpp_server(gguf_file, port, 512, 2, folder / "server.log")
    url = f"http://127.0.0.1:{port}/v1"
    try:
        yield url
    finally:
        stop(process)


def test_llama_cpp_server_completes_as_the_checkpoint(llama_server, tool_model, tool_terms):
    """The prompt as the chat template renders it (tools included), sent as text: llama.cpp's
    greedy continuation is the checkpoint's, up to its end token."""
    tokenizer = AutoTokenizer.from_pretrained(tool_model)
    model = AutoModelForCausalLM.from_pretrained(tool_model).eval()
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    conversations = [
        [{"role": "user", "content": QUESTION.format(w=tool_terms[0])}],
        [{"role": "user", "content": "你好"}],
    ]
    for messages in conversations:
        text = tokenizer.apply_chat_template(
            messages, tools=[LOOKUP], add_generation_prompt=True, tokenize=False
        )
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        out = model.generate(
            torch.tensor([ids]),
            max_new_tokens=MAX_TOKENS,
            do_sample=False,
            repetition_penalty=1.0,
            eos_token_id=end,
        )[0, len(ids) :].tolist()
        expected = tokenizer.decode(out[: out.index(end)] if end in out else out)
        body = {
            "prompt": text,
            "max_tokens": MAX_TOKENS,
            "temperature": 0.0,
            # llama.cpp's names, stated: its defaults are 1.1, 40 and 0.05
            "repeat_penalty": 1.0,
            "top_k": 0,
            "min_p": 0.0,
        }
        answer = httpx.post(f"{llama_server}/completions", json=body, timeout=60).json()
        assert answer["choices"][0]["text"] == expected, messages


def test_xiaophi_remote_engine_in_front_of_llama_cpp_runs_the_tool_loop(
    llama_server, tool_model, tool_terms
):
    """xiaophi renders the template and parses the tool calls; llama.cpp generates (text
    prompts: it takes no token ids, which the engine finds out by itself). Which idiom the call
    names is not compared with transformers here: llama-cpp-python reuses the KV cache of the
    previous request's common prefix, so a prompt's tokens are evaluated in other batches than
    in a fresh run, and for this tiny model picking the idiom out of the question is a near-tie
    that such float differences can flip (the test above compares a fresh prompt exactly)."""
    settings = tiny_settings(tool_model, ui=False, engine="remote", remote_base_url=llama_server)
    with run_server(settings) as server:
        client = OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=60)
        messages = [{"role": "user", "content": QUESTION.format(w=tool_terms[0])}]
        first = client.chat.completions.create(
            model="tiny", messages=messages, tools=[LOOKUP], temperature=0, max_tokens=MAX_TOKENS
        ).choices[0]
        assert first.finish_reason == "tool_calls" and not first.message.content
        (made,) = first.message.tool_calls
        arguments = json.loads(made.function.arguments)
        assert made.function.name == "lookup_idiom" and arguments["term"] in IDIOMS
        messages += [
            first.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": made.id, "content": lookup_idiom(**arguments)},
        ]
        final = client.chat.completions.create(
            model="tiny", messages=messages, tools=[LOOKUP], temperature=0, max_tokens=MAX_TOKENS
        ).choices[0]
        assert final.finish_reason == "stop" and not final.message.tool_calls
        assert final.message.content in IDIOMS.values()  # an answer taken from a dictionary entry
        greeting = client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "你好"}],
            tools=[LOOKUP],
            temperature=0,
            max_tokens=MAX_TOKENS,
            stream=True,
        )
        assert (
            "".join(c.choices[0].delta.content or "" for c in greeting if c.choices)
            == (GREETINGS["你好"])
        )
        assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
