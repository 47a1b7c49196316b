"""The routes on a fake engine, in-process (httpx.ASGITransport): statuses, OpenAI error
bodies, response schemas and SSE framing, in milliseconds. What needs the real model, the
official client or a real socket stays in the uvicorn tests beside this file."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from serving.app import create_app
from serving.config import Settings
from tests.serving.conftest import kb_test_settings
from tests.serving.fake_engine import ANSWER, FakeEngine, fake_loader
from tests.serving.test_errors import CHAT, INT64, MODEL, PROMPT, assert_error

pytestmark = pytest.mark.anyio

HELLO = [{"role": "user", "content": "你好"}]


@contextlib.asynccontextmanager
async def fake_app(tmp_path, engine: FakeEngine | None = None, **overrides) -> AsyncIterator:
    """An in-process client of the app on `engine` (the lifespan runs as under uvicorn)."""
    values = dict(model=tmp_path / "tiny", served_model_name=MODEL, api_keys=[])
    values.update(overrides)
    app = create_app(
        Settings(_env_file=None, **values),
        load=fake_loader(engine or FakeEngine()),
        kb_settings=kb_test_settings(tmp_path / "kb"),
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def client(tmp_path_factory) -> AsyncIterator[httpx.AsyncClient]:
    """One app for the tests that leave no state behind that another test could see."""
    async with fake_app(tmp_path_factory.mktemp("routes")) as client:
        yield client


async def post_chat(client, headers=None, **body) -> httpx.Response:
    body.setdefault("model", MODEL)
    body.setdefault("messages", HELLO)
    return await client.post("/v1/chat/completions", json=body, headers=headers)


async def post_json(client, route: str, raw: str) -> httpx.Response:
    return await client.post(
        f"/v1/{route}", content=raw.encode(), headers={"content-type": "application/json"}
    )


def sse_events(response: httpx.Response) -> list[str]:
    """The stream's events: every one a single `data: ` line, each followed by a blank line."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.text.endswith("\n\n")
    frames = response.text[:-2].split("\n\n")
    assert all("\n" not in frame and frame.startswith("data: ") for frame in frames), frames
    return frames


def chunks_of(events: list[str]) -> list[dict]:
    assert events[-1] == "data: [DONE]"
    return [json.loads(event.removeprefix("data: ")) for event in events[:-1]]


# ---------------------------------------------------------------------- schemas


async def test_models_and_health(client):
    models = (await client.get("/v1/models")).json()
    assert models["object"] == "list"
    # the chat model, then the KB embedder (no context length: it does not generate)
    assert [(m["id"], m["object"], m["max_model_len"]) for m in models["data"]] == [
        (MODEL, "model", 128),
        ("hashing", "model", None),
    ]
    card = (await client.get(f"/v1/models/{MODEL}")).json()
    assert card["id"] == MODEL and card["object"] == "model"
    health = await client.get("/health")
    assert health.status_code == 200
    assert health.json() == {
        "status": "ok",
        "model": MODEL,
        "running": 0,
        "waiting": 0,
        "restarts": 0,
        "knowledge_bases": {"backend": "local", "status": "ok"},
    }


async def test_chat_completion_schema(client):
    response = await post_chat(client, max_tokens=20)
    assert response.status_code == 200
    body = response.json()
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion"
    assert body["model"] == MODEL and isinstance(body["created"], int)
    [choice] = body["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"] == ANSWER
    prompt_tokens = len("<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n")
    assert body["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": len(ANSWER),
        "total_tokens": prompt_tokens + len(ANSWER),
    }
    cut = (await post_chat(client, max_tokens=2)).json()
    assert cut["choices"][0]["message"]["content"] == ANSWER[:2]
    assert cut["choices"][0]["finish_reason"] == "length"


async def test_n_choices_count_the_prompt_once(client):
    body = (await post_chat(client, n=3)).json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    single = (await post_chat(client)).json()
    assert body["usage"]["prompt_tokens"] == single["usage"]["prompt_tokens"]
    assert body["usage"]["completion_tokens"] == 3 * single["usage"]["completion_tokens"]


async def test_completion_schema(client):
    response = await client.post(
        "/v1/completions", json={"model": MODEL, "prompt": ["春", "夏天"], "max_tokens": 4}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion"
    assert [(c["index"], c["text"], c["finish_reason"]) for c in body["choices"]] == [
        (0, ANSWER[:4], "length"),
        (1, ANSWER[:4], "length"),
    ]
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 8, "total_tokens": 11}


# ---------------------------------------------------------------------- SSE framing


async def test_chat_stream_framing_with_and_without_usage(client):
    whole = (await post_chat(client)).json()
    events = sse_events(
        await post_chat(client, stream=True, stream_options={"include_usage": True})
    )
    chunks = chunks_of(events)
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    reasons = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert [r for r in reasons if r] == [whole["choices"][0]["finish_reason"]]
    usage_chunks = [c for c in chunks if c.get("usage") is not None]
    assert usage_chunks == [chunks[-1]] and chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == whole["usage"]
    # without include_usage no usage chunk is sent
    plain = chunks_of(sse_events(await post_chat(client, stream=True)))
    assert all(c.get("usage") is None for c in plain)


async def test_completion_stream_framing(client):
    body = {"model": MODEL, "prompt": "春", "max_tokens": 3, "stream": True}
    chunks = chunks_of(sse_events(await client.post("/v1/completions", json=body)))
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == ANSWER[:3]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    body["stream_options"] = {"include_usage": True}
    last = chunks_of(sse_events(await client.post("/v1/completions", json=body)))[-1]
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 3


async def test_a_rag_stream_sends_sources_after_the_content_and_before_usage(tmp_path):
    async with fake_app(tmp_path, FakeEngine(context_length=1024)) as client:
        created = await client.post("/v1/knowledge_bases", json={"name": "idioms"})
        assert created.status_code == 201
        files = [("files", ("守株待兔.txt", "守株待兔：农夫守着树桩等兔子。".encode()))]
        upload = await client.post("/v1/knowledge_bases/idioms/documents", files=files)
        assert upload.status_code == 200, upload.text
        ask = {"messages": [{"role": "user", "content": "兔子"}], "knowledge_base": "idioms"}
        whole = (await post_chat(client, **ask)).json()
        assert [s["filename"] for s in whole["sources"]] == ["守株待兔.txt"]
        streamed = await post_chat(
            client, **ask, stream=True, stream_options={"include_usage": True}
        )
        chunks = chunks_of(sse_events(streamed))
    at = [i for i, c in enumerate(chunks) if "sources" in c]
    assert at == [len(chunks) - 2]  # after every content chunk, before the usage chunk
    assert chunks[-2]["choices"] == [] and chunks[-2]["sources"] == whole["sources"]
    assert chunks[-3]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"] == whole["usage"]


async def test_failure_after_stream_started_ends_with_error_event(tmp_path):
    engine = FakeEngine(fail_after=1)
    async with fake_app(tmp_path, engine) as client:
        events = sse_events(await post_chat(client, stream=True))
        assert '"error"' in events[-2] and "device lost" in events[-2]
        assert events[-1] == "data: [DONE]"
        error = json.loads(events[-2].removeprefix("data: "))["error"]
        assert error["type"] == "internal_error" and error["code"] == "generation_failed"
        # non-stream: a 500 in the error schema, not an error inside a 200
        assert_error(await post_chat(client), 500, "internal_error", "generation_failed")
        assert engine.stats().running == 0


async def test_a_refusal_comes_before_the_stream_as_a_real_status(client):
    response = await post_chat(client, model="gpt-4", stream=True)
    assert_error(response, 404, "not_found_error", "model_not_found", "model")


# ---------------------------------------------------------------------- statuses


async def test_unknown_model_is_404(client):
    assert_error(
        await post_chat(client, model="gpt-4"), 404, "not_found_error", "model_not_found", "model"
    )
    assert_error(await client.get("/v1/models/nope"), 404, "not_found_error")


async def test_prompt_longer_than_context_is_400(client):
    response = await post_chat(client, messages=[{"role": "user", "content": "天气很好" * 100}])
    assert_error(response, 400, "invalid_request_error", "context_length_exceeded", "messages")
    response = await client.post("/v1/completions", json={"model": MODEL, "prompt": "好" * 400})
    assert_error(response, 400, "invalid_request_error", "context_length_exceeded", "prompt")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"temperature": 5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"n": 100}, "n"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, None),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"logit_bias": {"-1": 1}}, "logit_bias"),
        ({"extra": "fine", "top_k": -1}, "top_k"),
    ],
)
async def test_invalid_parameters_are_400(client, body, param):
    assert_error(await post_chat(client, **body), 400, "invalid_request_error", param=param)


@pytest.mark.parametrize(
    ("route", "fields", "param"),
    [
        ("chat/completions", f'{CHAT}, "temperature": 0.7, "seed": {2**64}', "seed"),
        ("chat/completions", f'{CHAT}, "temperature": 0.7, "seed": {-INT64 - 1}', "seed"),
        ("chat/completions", f'{CHAT}, "temperature": 0.7, "seed": {INT64}', "seed"),
        ("chat/completions", f'{CHAT}, "seed": 1e30', "seed"),
        ("chat/completions", f'{CHAT}, "max_tokens": -1', "max_tokens"),
        ("chat/completions", f'{CHAT}, "max_completion_tokens": 0', "max_completion_tokens"),
        ("chat/completions", f'{CHAT}, "temperature": -1', "temperature"),
        ("chat/completions", f'{CHAT}, "temperature": 1e9', "temperature"),
        ("chat/completions", f'{CHAT}, "temperature": NaN', "temperature"),
        ("chat/completions", f'{CHAT}, "top_p": 1.5', "top_p"),
        ("chat/completions", f'{CHAT}, "top_p": NaN', "top_p"),
        ("chat/completions", f'{CHAT}, "repetition_penalty": Infinity', "repetition_penalty"),
        ("chat/completions", f'{CHAT}, "n": 0', "n"),
        ("chat/completions", f'{CHAT}, "n": {2**70}', "n"),
        ("chat/completions", f'{CHAT}, "stop": [""]', "stop"),
        ("chat/completions", f'{CHAT}, "stop": ""', "stop"),
        ("chat/completions", f'{CHAT}, "stop": [1]', "stop"),
        ("chat/completions", f'{CHAT}, "stop": []', "stop"),
        ("chat/completions", f'{CHAT}, "retrieval_top_k": 0', "retrieval_top_k"),
        ("chat/completions", f'{CHAT}, "knowledge_base": ""', "knowledge_base"),
        ("chat/completions", '"model": "", "messages": [{"role": "user", "content": "hi"}]', None),
        ("completions", f'{PROMPT}, "prompt": [false]', None),
        ("completions", f'{PROMPT}, "prompt": [true, 5]', None),
        ("completions", f'{PROMPT}, "prompt": [1.5]', None),
        ("completions", f'{PROMPT}, "prompt": [[]]', "prompt"),
        ("completions", f'{PROMPT}, "prompt": []', "prompt"),
        ("completions", f'{PROMPT}, "prompt": ""', "prompt"),
        ("completions", f'{PROMPT}, "prompt": [""]', "prompt"),
        ("completions", f'{PROMPT}, "prompt": [-1]', "prompt"),
        ("completions", f'{PROMPT}, "prompt": [{2**64}]', None),
        ("completions", f'{PROMPT}, "prompt": "hi", "logprobs": 21', "logprobs"),
        ("completions", f'{PROMPT}, "prompt": "hi", "max_tokens": -1', "max_tokens"),
        ("completions", f'{PROMPT}, "prompt": "hi", "suffix": "x"', "suffix"),
        ("completions", f'{PROMPT}, "prompt": "hi", "best_of": 3', "best_of"),
    ],
)
async def test_parameter_edges_are_4xx_never_500(client, route, fields, param):
    response = await post_json(client, route, "{" + fields + "}")
    assert response.status_code in (400, 404), response.text
    error = response.json()["error"]
    if param is not None:
        assert (error["param"] or "").split(".")[0] == param, error
    if error["param"] == "seed":
        assert str(-INT64) in error["message"] and str(INT64 - 1) in error["message"]


async def test_malformed_json_is_400(client):
    response = await client.post(
        "/v1/chat/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert_error(response, 400, "invalid_request_error")


async def test_unknown_route_is_404_in_openai_schema(client):
    assert_error(await client.get("/v1/nothing-here"), 404, "not_found_error")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("POST", "/v1/knowledge_bases/demo", "DELETE, GET"),
        ("PUT", "/v1/knowledge_bases", "GET, POST"),
        ("GET", "/v1/chat/completions", "POST"),
        ("DELETE", "/v1/knowledge_bases/demo/documents", "GET, POST"),
    ],
)
async def test_method_not_allowed_names_every_method_of_the_path(client, method, path, allowed):
    response = await client.request(method, path)
    assert_error(response, 405, "invalid_request_error")
    assert response.headers["allow"] == allowed


async def test_existing_knowledge_base_is_409(client):
    assert (await client.post("/v1/knowledge_bases", json={"name": "notes"})).status_code == 201
    response = await client.post("/v1/knowledge_bases", json={"name": "notes"})
    assert_error(response, 409, "conflict_error", "conflict")


async def test_body_too_large_is_413(tmp_path):
    async with fake_app(tmp_path, max_body_bytes=2048) as client:
        big = await post_chat(client, messages=[{"role": "user", "content": "x" * 5000}])
        assert_error(big, 413, "invalid_request_error", "request_too_large")

        async def chunked():  # no Content-Length: the limit still holds
            yield b'{"model": "tiny", "messages": [{"role": "user", "content": "'
            for _ in range(10):
                yield b"y" * 500
            yield b'"}]}'

        response = await client.post("/v1/chat/completions", content=chunked())
        assert_error(response, 413, "invalid_request_error", "request_too_large")
        assert (await post_chat(client, max_tokens=2)).status_code == 200


async def test_api_keys_are_401_but_health_is_open(tmp_path):
    async with fake_app(tmp_path, api_keys=["k1", "k2"]) as client:
        assert (await client.get("/health")).status_code == 200
        missing = await client.get("/v1/models")
        assert_error(missing, 401, "authentication_error", "missing_api_key")
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = {"Authorization": "Bearer nope"}
        assert_error(
            await post_chat(client, headers=wrong), 401, "authentication_error", "invalid_api_key"
        )
        right = await client.get("/v1/models", headers={"Authorization": "Bearer k2"})
        assert [m["id"] for m in right.json()["data"]][0] == MODEL


async def test_queue_full_is_429(tmp_path):
    async with fake_app(tmp_path, FakeEngine(max_running=1)) as client:
        assert_error(await post_chat(client, n=2), 429, "rate_limit_error", "queue_full")
        response = await post_chat(client, n=2)
        assert response.headers["retry-after"] == "1"


async def test_no_model_is_503(tmp_path):
    async with fake_app(tmp_path, model=None) as client:
        assert_error(
            await client.get("/health"), 503, "service_unavailable_error", "model_not_loaded"
        )
        assert_error(await post_chat(client), 503, "service_unavailable_error", "model_not_loaded")
        assert_error(await client.get("/v1/models"), 503, "service_unavailable_error")


async def test_a_stopped_engine_is_503_with_its_reason(tmp_path):
    engine = FakeEngine()
    async with fake_app(tmp_path, engine) as client:
        engine.ready = False
        response = await post_chat(client)
        assert_error(response, 503, "service_unavailable_error", "model_not_loaded")
        assert engine.unavailable_reason in response.json()["error"]["message"]
        assert response.headers["retry-after"] == "1"
        assert_error(await client.get("/health"), 503, "service_unavailable_error")
