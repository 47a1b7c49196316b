"""The default server runs the model in an engine process of its own: what that changes.

Its death and restart: test_engine_supervision.py."""

from __future__ import annotations

import os

import httpx

from bench.procfs import alive
from serving.engine.engine_process import ProcessSlotEngine
from serving.engine.loading import engine_process_threads

MODEL = "tiny"


def test_the_model_lives_in_the_engine_process(server, reference):
    engine = server.app.state.service.engine
    assert isinstance(engine, ProcessSlotEngine)
    assert engine.pid != os.getpid() and alive(engine.pid)
    assert engine.context_length == reference.model.config.max_position_embeddings
    assert engine.torch_threads == engine_process_threads()  # a core left to the web server
    ids = reference.chat_ids("你好")
    body = {"model": MODEL, "messages": [{"role": "user", "content": "你好"}], "max_tokens": 12}
    answer = httpx.post(f"{server.base_url}/chat/completions", json={**body, "temperature": 0})
    assert answer.json()["choices"][0]["message"]["content"] == reference.greedy_text(ids, 12)


def test_engine_process_leaves_one_core_to_the_web_server():
    assert [engine_process_threads(n) for n in (1, 2, 16)] == [1, 1, 15]
