"""Every refusal in OpenAI's error schema with the right status — never an error inside a 200.

Here through a real server and model; the checks that need neither are in test_routes.py
(a fake engine, in-process)."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai import OpenAI

from serving.engine.base import GenerationDelta
from tests.serving.conftest import long_running_prompt, run_server, tiny_settings

MODEL = "tiny"


def post_chat(server, headers=None, **body) -> httpx.Response:
    body.setdefault("model", MODEL)
    body.setdefault("messages", [{"role": "user", "content": "你好"}])
    return httpx.post(f"{server.base_url}/chat/completions", json=body, headers=headers, timeout=60)


def assert_error(
    response: httpx.Response, status: int, error_type: str, code: str | None = None, param=None
):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == error_type and error["message"]
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param


def test_unknown_model_is_404(server):
    assert_error(
        post_chat(server, model="gpt-4"), 404, "not_found_error", "model_not_found", "model"
    )
    client = OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert_error(httpx.get(f"{server.base_url}/models/nope"), 404, "not_found_error")


def test_prompt_longer_than_context_is_400(server):
    response = post_chat(server, messages=[{"role": "user", "content": "天气很好" * 100}])
    assert_error(response, 400, "invalid_request_error", "context_length_exceeded", "messages")
    response = httpx.post(
        f"{server.base_url}/completions", json={"model": MODEL, "prompt": "好" * 400}
    )
    assert_error(response, 400, "invalid_request_error", "context_length_exceeded", "prompt")


def test_max_tokens_is_capped_by_the_remaining_context(server):
    response = post_chat(server, max_tokens=10_000, temperature=0)
    assert response.status_code == 200
    usage = response.json()["usage"]
    assert usage["total_tokens"] <= 128


INT64 = 2**63


def post_json(server, route: str, raw: str) -> httpx.Response:
    """A body as raw JSON text (Python's json module would not write NaN or huge ints as asked)."""
    return httpx.post(
        f"{server.base_url}/{route}",
        content=raw.encode(),
        headers={"content-type": "application/json"},
        timeout=60,
    )


CHAT = '"model": "tiny", "messages": [{"role": "user", "content": "你好"}], "max_tokens": 4'
PROMPT = '"model": "tiny", "max_tokens": 4'


@pytest.mark.parametrize("seed", [INT64 - 1, -INT64, 0, -1])
def test_seeds_at_the_ends_of_the_range_work_with_n(server, seed):
    body = f'{CHAT}, "temperature": 0.7, "seed": {seed}, "n": 3'
    first = post_json(server, "chat/completions", "{" + body + "}")
    assert first.status_code == 200, first.text
    again = post_json(server, "chat/completions", "{" + body + "}")
    assert first.json()["choices"] == again.json()["choices"]


@pytest.mark.parametrize(
    "fields",
    ['"max_tokens": 1000000000', f'"top_k": {2**70}', '"repetition_penalty": 1e300', '"n": 8'],
)
def test_extreme_but_valid_values_are_answered(server, fields):
    """A huge max_tokens is capped by the context, a top_k past the vocabulary keeps every token,
    a huge repetition penalty is applied as it is."""
    body = "{" + CHAT + ", " + fields + ', "temperature": 0.9}'
    response = post_json(server, "chat/completions", body)
    assert response.status_code == 200, response.text


def test_body_too_large_is_413(tiny_checkpoint):
    with run_server(tiny_settings(tiny_checkpoint, max_body_bytes=2048)) as small:
        assert_error(
            post_chat(small, messages=[{"role": "user", "content": "x" * 5000}]),
            413,
            "invalid_request_error",
        )

        def chunked():  # no Content-Length: the limit still holds
            yield b'{"model": "tiny", "messages": [{"role": "user", "content": "'
            for _ in range(10):
                yield b"y" * 500
            yield b'"}]}'

        response = httpx.post(f"{small.base_url}/chat/completions", content=chunked(), timeout=30)
        assert_error(response, 413, "invalid_request_error", "request_too_large")
        assert post_chat(small, max_tokens=2).status_code == 200


def test_api_keys(tiny_checkpoint):
    with run_server(tiny_settings(tiny_checkpoint, api_keys=["k1", "k2"])) as locked:
        assert httpx.get(f"{locked.url}/health").status_code == 200
        assert_error(
            httpx.get(f"{locked.base_url}/models"), 401, "authentication_error", "missing_api_key"
        )
        assert_error(httpx.get(f"{locked.url}/metrics"), 401, "authentication_error")
        wrong = {"Authorization": "Bearer nope"}
        assert_error(
            post_chat(locked, headers=wrong), 401, "authentication_error", "invalid_api_key"
        )
        with pytest.raises(openai.AuthenticationError):
            OpenAI(base_url=locked.base_url, api_key="nope", max_retries=0).models.list()
        client = OpenAI(base_url=locked.base_url, api_key="k2", max_retries=0)
        assert client.models.list().data[0].id == MODEL
        assert (
            httpx.get(f"{locked.url}/metrics", headers={"Authorization": "Bearer k1"}).status_code
            == 200
        )


def test_queue_full_is_429(tiny_checkpoint, reference):
    prompt = long_running_prompt(reference, 100)
    with run_server(tiny_settings(tiny_checkpoint, max_running=1, max_waiting=0)) as busy:
        client = OpenAI(base_url=busy.base_url, api_key="x", max_retries=0)
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=100,
            temperature=0,
            stream=True,
        )
        next(iter(stream))  # the only running place is now taken
        assert_error(post_chat(busy, max_tokens=2), 429, "rate_limit_error", "queue_full")
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
        stream.close()


def test_no_model_is_503(tiny_checkpoint):
    with run_server(tiny_settings(None)) as empty:
        assert_error(
            httpx.get(f"{empty.url}/health"), 503, "service_unavailable_error", "model_not_loaded"
        )
        assert_error(post_chat(empty), 503, "service_unavailable_error", "model_not_loaded")
        assert_error(httpx.get(f"{empty.base_url}/models"), 503, "service_unavailable_error")


class _FailAfterFirstDelta:
    """Wraps an engine stream: one real delta, then the engine reports a failure."""

    def __init__(self, stream) -> None:
        self._stream = stream
        self._count = 0

    def __aiter__(self):
        return self

    async def __anext__(self):
        self._count += 1
        if self._count == 1:
            return await self._stream.__anext__()
        if self._count == 2:
            return GenerationDelta(finish_reason="error", error="device lost")
        raise StopAsyncIteration

    async def aclose(self) -> None:
        await self._stream.aclose()


def test_failure_after_stream_started_ends_with_error_event(server, monkeypatch):
    engine = server.app.state.service.engine
    real_submit = engine.submit
    monkeypatch.setattr(
        engine, "submit", lambda request: _FailAfterFirstDelta(real_submit(request))
    )
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "你好"}],
        "max_tokens": 30,
        "stream": True,
    }
    with httpx.stream(
        "POST", f"{server.base_url}/chat/completions", json=body, timeout=30
    ) as response:
        assert response.status_code == 200
        events = [line for line in response.iter_lines() if line]
    assert '"error"' in events[-2] and "device lost" in events[-2]
    assert events[-1] == "data: [DONE]"
    client = OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
    with pytest.raises(openai.APIError):
        for _ in client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
        ):
            pass
    # non-stream: a 500 in the error schema, not an error inside a 200
    response = post_chat(server, max_tokens=30)
    assert_error(response, 500, "internal_error", "generation_failed")
    monkeypatch.undo()
    assert engine.stats().running == 0
