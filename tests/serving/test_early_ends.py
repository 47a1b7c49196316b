"""Requests that end early — a client hanging up, a stop string, one of `n` choices — while
others are still running, through a real server and its default engine (its own process).

A row that leaves the batch early is refilled by moving the last row into its place; these
tests make sure that happens with other rows running, in many orders, and that the moved
requests come out exactly as they would alone.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from tests.serving.conftest import run_server, tiny_settings
from tests.serving.test_openai_api import metric

MODEL = "tiny"


def test_n_choices_with_stop_strings_leave_the_engine_running(server):
    """The reported request: 8 sampled choices, each cut at its own first stop string."""
    stops = ["的", "，", "。", "是"]
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "介绍一下三国演义。"}],
        "n": 8,
        "max_tokens": 60,
        "temperature": 1.0,
        "seed": 11,
        "stop": stops,
    }
    answer = httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    choices = answer.json()["choices"]
    assert len(choices) == 8
    assert not [c for c in choices if any(s in c["message"]["content"] for s in stops)]
    lengths = {len(c["message"]["content"]) for c in choices if c["finish_reason"] == "stop"}
    assert len(lengths) >= 2, "the choices should stop at different steps: change the seed"
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
    again = httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=60)
    assert again.json()["choices"] == choices  # seeded: the same choices again


async def _stream(client: httpx.AsyncClient, url: str, body: dict, hang_up_after: int | None):
    """One streamed request; returns (text, saw [DONE]); hangs up after a few chunks if asked."""
    text, done, chunks = "", False, 0
    async with client.stream("POST", url, json=body) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            event = json.loads(line[len("data: ") :])
            assert "error" not in event, event
            chunks += 1
            text += "".join(c["delta"].get("content") or "" for c in event["choices"])
            if hang_up_after is not None and chunks >= hang_up_after:
                break
    return text, done


def _request(i: int) -> dict:
    """Even requests greedy, odd ones sampled with their own seed; all run to the token limit
    or EOS, no stop strings."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"春眠不觉晓，处处闻啼鸟。{i}"}],
        "max_tokens": 30,
        "stream": True,
        "temperature": 0 if i % 2 == 0 else 0.8,
    }
    if i % 2:
        body["seed"] = 1000 + i
    return body


@pytest.mark.slow
def test_sixty_four_streams_with_a_quarter_hanging_up(tiny_checkpoint):
    """Three rounds of 64 concurrent streams, every fourth hanging up after 3 chunks: every
    other stream ends with [DONE] and the text it gets alone, the running gauge returns to 0
    and the engine stays healthy."""
    settings = tiny_settings(tiny_checkpoint, max_running=32, max_waiting=64)
    with run_server(settings) as server:
        url = f"{server.base_url}/chat/completions"

        async def round_() -> list[tuple[str, bool]]:
            limits = httpx.Limits(max_connections=64)
            async with httpx.AsyncClient(timeout=120, limits=limits) as client:
                return await asyncio.gather(
                    *(
                        _stream(client, url, _request(i), hang_up_after=3 if i % 4 == 3 else None)
                        for i in range(64)
                    )
                )

        async def alone() -> list[str]:
            async with httpx.AsyncClient(timeout=120) as client:
                return [
                    (await _stream(client, url, _request(i), None))[0]
                    for i in range(64)
                    if i % 4 != 3
                ]

        rounds = []
        for _ in range(3):
            rounds.append(asyncio.run(round_()))
            deadline = time.monotonic() + 10
            while metric(server, "xiaophi_requests_running"):
                assert time.monotonic() < deadline, "requests still counted as running"
                time.sleep(0.05)
            assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
        assert server.app.state.service.engine.stats().running == 0
        solo = asyncio.run(alone())
    for results in rounds:
        kept = [results[i] for i in range(64) if i % 4 != 3]
        assert all(done and text for text, done in kept)
        assert [text for text, _ in kept] == solo
