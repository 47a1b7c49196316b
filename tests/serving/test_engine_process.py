"""The default server runs the model in an engine process of its own: what that changes.

Its death and restart: test_engine_supervision.py."""

from __future__ import annotations

import functools
import os

import httpx

from bench.procfs import alive
from serving.engine.engine_process import ProcessSlotEngine
from serving.engine.factory import build_engine
from serving.engine.loading import engine_process_threads
from serving.engine.spawn import spawn_engine_process
from tests.serving.conftest import run_server, tiny_settings

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


def test_an_engine_process_started_early_is_the_one_that_serves(tiny_checkpoint, reference):
    """xiaophi-serve starts the engine process before it imports the server and builds the page
    (its model loads meanwhile); the engine adopts that process instead of starting another."""
    settings = tiny_settings(tiny_checkpoint)
    spawned = spawn_engine_process(settings)
    load = functools.partial(build_engine, spawned=spawned)
    with run_server(settings, load=load) as running:
        engine = running.app.state.service.engine
        assert engine.pid == spawned.process.pid and alive(engine.pid)
        ids = reference.chat_ids("你好")
        body = {"model": MODEL, "messages": [{"role": "user", "content": "你好"}], "max_tokens": 8}
        answer = httpx.post(f"{running.base_url}/chat/completions", json={**body, "temperature": 0})
        assert answer.json()["choices"][0]["message"]["content"] == reference.greedy_text(ids, 8)
    assert not alive(spawned.process.pid)  # stopped with the server
