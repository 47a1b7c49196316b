"""The default server runs the model in an engine process of its own: what that changes."""

from __future__ import annotations

import os
import signal

import httpx

from serving.engine.engine_process import ProcessSlotEngine
from serving.engine.loading import engine_process_threads
from tests.serving.conftest import long_running_prompt, run_server, tiny_settings
from tests.serving.test_errors import assert_error

MODEL = "tiny"


def test_the_model_lives_in_the_engine_process(server, reference):
    engine = server.app.state.service.engine
    assert isinstance(engine, ProcessSlotEngine)
    assert engine._process.pid != os.getpid() and engine._process.is_alive()
    assert engine.context_length == reference.model.config.max_position_embeddings
    assert engine.torch_threads == engine_process_threads()  # a core left to the web server
    ids = reference.chat_ids("你好")
    body = {"model": MODEL, "messages": [{"role": "user", "content": "你好"}], "max_tokens": 12}
    answer = httpx.post(f"{server.base_url}/chat/completions", json={**body, "temperature": 0})
    assert answer.json()["choices"][0]["message"]["content"] == reference.greedy_text(ids, 12)


def test_a_dead_engine_process_ends_streams_with_an_error_and_health_turns_503(
    tiny_checkpoint, reference
):
    prompt = long_running_prompt(reference, 100)
    with run_server(tiny_settings(tiny_checkpoint)) as server:
        engine = server.app.state.service.engine
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 100,
            "temperature": 0,
            "stream": True,
        }
        url = f"{server.base_url}/chat/completions"
        with httpx.stream("POST", url, json=body, timeout=30) as response:
            assert response.status_code == 200
            events = []
            for line in response.iter_lines():
                if not line:
                    continue
                events.append(line)
                if len(events) == 3:  # the answer has started: kill the model's process
                    os.kill(engine._process.pid, signal.SIGKILL)
        assert '"error"' in events[-2] and "engine" in events[-2]
        assert events[-1] == "data: [DONE]"
        assert engine.stats().running == 0
        assert_error(
            httpx.get(f"{server.url}/health"), 503, "service_unavailable_error", "model_not_loaded"
        )
        refused = httpx.post(url, json={**body, "stream": False})
        assert_error(refused, 503, "service_unavailable_error")


def test_engine_process_leaves_one_core_to_the_web_server():
    assert [engine_process_threads(n) for n in (1, 2, 16)] == [1, 1, 15]
