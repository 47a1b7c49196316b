"""The official openai client against a real server: answers, streams, usage, stop, concurrency."""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import pytest
from openai import AsyncOpenAI, OpenAI

from tests.serving.conftest import long_running_prompt

MODEL = "tiny"


@pytest.fixture
def client(server) -> OpenAI:
    return OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=60)


def chat(client: OpenAI, content: str, **kwargs):
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": content}], **kwargs
    )


def stream_text(client: OpenAI, content: str, **kwargs) -> tuple[str, list, list]:
    chunks = list(chat(client, content, stream=True, **kwargs))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasons = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    return text, reasons, chunks


def test_models_list(client, server):
    """The chat model first, then the embedder `/v1/embeddings` answers to: a client finds
    every id it can use here."""
    models = client.models.list()
    embedder = server.app.state.knowledge_bases.embedder_name
    assert [m.id for m in models.data] == [MODEL, embedder]
    assert client.models.retrieve(MODEL).id == MODEL
    assert client.models.retrieve(embedder).id == embedder


def test_the_listed_embedder_id_is_the_one_embeddings_answers_to(kb_server):
    client = OpenAI(base_url=kb_server.base_url, api_key="unused", max_retries=0, timeout=60)
    ids = [m.id for m in client.models.list().data]
    assert ids == [MODEL, "hashing"]
    vectors = client.embeddings.create(model=ids[1], input="你好")
    assert vectors.model == "hashing" and len(vectors.data[0].embedding) > 0


def test_greedy_matches_generate_and_usage(client, reference):
    prompt = "你好！很高兴认识你。"
    ids = reference.chat_ids(prompt)
    expected_ids = reference.greedy_ids(ids, 24)
    answer = chat(client, prompt, temperature=0, max_tokens=24)
    assert answer.choices[0].message.content == reference.tokenizer.decode(
        expected_ids, skip_special_tokens=True
    )
    assert answer.usage.prompt_tokens == len(ids)
    assert answer.usage.completion_tokens == len(expected_ids)
    assert answer.usage.total_tokens == len(ids) + len(expected_ids)
    eos_hit = expected_ids[-1] in reference.model.generation_config.eos_token_id
    assert answer.choices[0].finish_reason == ("stop" if eos_hit else "length")


def test_stream_equals_non_stream_with_usage(client):
    prompt = "北京是中华人民共和国的首都。"
    whole = chat(client, prompt, temperature=0, max_tokens=30)
    text, reasons, chunks = stream_text(
        client, prompt, temperature=0, max_tokens=30, stream_options={"include_usage": True}
    )
    assert len(chunks) > 3
    assert text == whole.choices[0].message.content
    assert reasons == [whole.choices[0].finish_reason]
    assert chunks[0].choices[0].delta.role == "assistant"
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0].choices == []
    assert usage_chunks[0].usage.model_dump() == whole.usage.model_dump()
    # without include_usage no usage chunk is sent
    _, _, plain = stream_text(client, prompt, temperature=0, max_tokens=5)
    assert all(c.usage is None for c in plain)


def test_stream_ends_with_done_and_never_splits_characters(server):
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "龘"}],
        "max_tokens": 40,
        "temperature": 0,
        "stream": True,
    }
    with httpx.stream(
        "POST", f"{server.base_url}/chat/completions", json=body, timeout=60
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]"
    for line in events[:-1]:
        content = httpx.Response(200, content=line[6:]).json()["choices"]
        for choice in content:
            piece = choice["delta"].get("content") or ""
            # a split multi-byte character would show up as U+FFFD at the end of a piece
            assert not piece.endswith("\ufffd") or len(piece.encode()) % 3 == 0


def test_stop_strings(client, reference):
    prompt = "三国演义是中国古典四大名著之一。"
    full = chat(client, prompt, temperature=0, max_tokens=40).choices[0].message.content
    candidates = [
        full[i : i + 2] for i in range(4, len(full) - 2) if "\ufffd" not in full[i : i + 2]
    ]
    assert candidates, f"no clean two-character stop string in {full!r}"
    stop = candidates[0]
    expected = full[: full.find(stop)]
    answer = chat(client, prompt, temperature=0, max_tokens=40, stop=[stop, "never-there"])
    assert answer.choices[0].message.content == expected
    assert answer.choices[0].finish_reason == "stop"
    text, reasons, _ = stream_text(client, prompt, temperature=0, max_tokens=40, stop=stop)
    assert text == expected and reasons == ["stop"]


def test_completions_endpoint(client, reference):
    ids = reference.tokenizer("学而时习之")["input_ids"]
    answer = client.completions.create(
        model=MODEL, prompt="学而时习之", max_tokens=12, temperature=0
    )
    assert answer.choices[0].text == reference.greedy_text(ids, 12)
    assert answer.usage.prompt_tokens == len(ids)
    streamed = client.completions.create(
        model=MODEL, prompt="学而时习之", max_tokens=12, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == answer.choices[0].text


def test_sampling_seed_n_and_extra_body(client):
    kwargs = dict(
        temperature=1.0,
        top_p=0.9,
        seed=7,
        max_tokens=16,
        extra_body={"top_k": 50, "repetition_penalty": 1.2},
    )
    first = chat(client, "你好", n=2, **kwargs)
    again = chat(client, "你好", n=2, **kwargs)
    assert [c.index for c in first.choices] == [0, 1]
    assert [c.message.content for c in first.choices] == [c.message.content for c in again.choices]
    other = chat(client, "你好", **{**kwargs, "seed": 8})
    assert other.choices[0].message.content != first.choices[0].message.content


@pytest.mark.parametrize("temperature", [1e-30, 1e-300, 5e-324])
def test_a_vanishing_temperature_decodes_greedily(client, reference, temperature):
    """logits / 1e-30 overflows to inf (softmax NaN): such temperatures mean greedy."""
    prompt = "学而时习之"
    expected = reference.greedy_text(reference.chat_ids(prompt), 16)
    for _ in range(2):
        answer = chat(client, prompt, temperature=temperature, max_tokens=16)
        assert answer.choices[0].message.content == expected


def test_n_choices_usage(client, reference):
    ids = reference.chat_ids("你好")
    expected = reference.greedy_ids(ids, 10)
    answer = chat(client, "你好", n=3, temperature=0, max_tokens=10)
    assert len(answer.choices) == 3
    assert {c.message.content for c in answer.choices} == {
        reference.tokenizer.decode(expected, skip_special_tokens=True)
    }
    assert answer.usage.prompt_tokens == len(ids)
    assert answer.usage.completion_tokens == 3 * len(expected)


def test_sixteen_concurrent_streams(server, reference):
    prompts = [f"请问你叫什么名字？{i}" for i in range(16)]
    expected = [reference.greedy_text(reference.chat_ids(p), 20) for p in prompts]

    async def one(client: AsyncOpenAI, prompt: str) -> str:
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": prompt}],
            temperature=0,
            max_tokens=20,
            stream=True,
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    async def main() -> list[str]:
        async with AsyncOpenAI(
            base_url=server.base_url, api_key="unused", max_retries=0, timeout=60
        ) as client:
            return await asyncio.gather(*(one(client, p) for p in prompts))

    assert asyncio.run(main()) == expected


def metric(server, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    total = 0.0
    for match in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M):
        total += float(match.group(1))
    return total


def test_client_closing_stream_cancels_generation(client, server, reference):
    prompt = long_running_prompt(reference, 100)
    cancelled_before = metric(server, 'xiaophi_request_finished_total{finish_reason="cancelled"}')
    generated_before = metric(server, "xiaophi_generation_tokens_total")
    stream = chat(client, prompt, temperature=0, max_tokens=100, stream=True)
    for i, _ in enumerate(stream):
        if i == 2:
            break
    stream.close()
    deadline = time.monotonic() + 10
    while (
        metric(server, "xiaophi_requests_running")
        or metric(server, 'xiaophi_request_finished_total{finish_reason="cancelled"}')
        <= cancelled_before
    ):
        assert time.monotonic() < deadline, "the closed stream was not cancelled"
        time.sleep(0.05)
    assert server.app.state.service.engine.stats().running == 0
    assert metric(server, "xiaophi_generation_tokens_total") - generated_before < 100


def test_metrics_exposed(server, client):
    chat(client, "你好", max_tokens=4, temperature=0)
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    for name in (
        "xiaophi_time_to_first_token_seconds_bucket",
        "xiaophi_inter_token_latency_seconds_bucket",
        "xiaophi_e2e_request_latency_seconds_bucket",
        "xiaophi_requests_running",
        "xiaophi_requests_waiting",
        "xiaophi_prompt_tokens_total",
        "xiaophi_generation_tokens_total",
    ):
        assert name in text
    assert metric(server, "xiaophi_generation_tokens_total") >= 4


class _Slow:
    """Wraps an engine stream so each delta arrives a second late: time to hang up mid-answer."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def __aiter__(self):
        return self

    async def __anext__(self):
        await asyncio.sleep(1.0)
        return await self._stream.__anext__()

    async def aclose(self) -> None:
        await self._stream.aclose()


def test_client_hanging_up_on_a_non_stream_request_cancels_it(server, reference, monkeypatch):
    prompt = long_running_prompt(reference, 100)
    engine = server.app.state.service.engine
    real_submit = engine.submit
    monkeypatch.setattr(engine, "submit", lambda request: _Slow(real_submit(request)))
    cancelled_before = metric(server, 'xiaophi_request_finished_total{finish_reason="cancelled"}')
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 100,
        "temperature": 0,
    }
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=0.5)
    deadline = time.monotonic() + 10
    while (
        metric(server, 'xiaophi_request_finished_total{finish_reason="cancelled"}')
        <= cancelled_before
    ):
        assert time.monotonic() < deadline, "the abandoned request kept generating"
        time.sleep(0.05)
    assert engine.stats().running == 0
