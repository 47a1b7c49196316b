"""The engine process is supervised: killed (as the OOM killer does), it is restarted and the
server answers again; one that cannot come back ends the server with a non-zero code, for its
own supervisor; a normal stop (Ctrl-C) is quiet and clean. Real servers, real processes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bench.procfs import alive, engine_pid
from tests.serving.conftest import free_port, long_running_prompt, run_server, tiny_settings
from tests.serving.test_errors import assert_error
from tests.serving.test_openai_api import metric

MODEL = "tiny"
RESTARTS = "xiaophi_engine_restarts_total"


def chat_body(content: str, max_tokens: int, **extra) -> dict:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        **extra,
    }


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if result := check():
                return result
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what}")


def assert_retryable(event: dict) -> None:
    """An in-stream error a client should retry: the engine is coming back."""
    assert event["error"]["type"] == "service_unavailable_error", event
    assert event["error"]["code"] == "engine_restarting", event


# ---------------------------------------------------------------------- restart, in-process server
def test_a_killed_engine_process_is_restarted_and_answers_as_before(tiny_checkpoint, reference):
    prompt = long_running_prompt(reference, 100)
    with run_server(tiny_settings(tiny_checkpoint, ui=False)) as server:
        engine = server.app.state.service.engine
        url = f"{server.base_url}/chat/completions"
        before = httpx.post(url, json=chat_body("你好", 16), timeout=30).json()
        answer = before["choices"][0]["message"]["content"]
        assert answer == reference.greedy_text(reference.chat_ids("你好"), 16)
        assert metric(server, RESTARTS) == 0
        first = engine.pid

        events = []
        with httpx.stream("POST", url, json=chat_body(prompt, 100, stream=True), timeout=30) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line:
                    events.append(line)
                    if len(events) == 3:  # the answer has started: kill the model's process
                        os.kill(first, signal.SIGKILL)
        # the stream that was running ends with a retryable error, then [DONE]
        assert events[-1] == "data: [DONE]"
        assert_retryable(json.loads(events[-2].removeprefix("data: ")))
        assert engine.stats().running == 0

        # while the engine comes back (the first restart waits RestartPolicy.first_delay_s):
        # /health says so, and a new request is a 503 that says when to retry
        health = httpx.get(f"{server.url}/health", timeout=10)
        assert_error(health, 503, "service_unavailable_error", "engine_restarting")
        assert health.json()["status"] == "restarting"
        assert health.json()["restarts"] == 1
        refused = httpx.post(url, json=chat_body("你好", 16), timeout=30)
        assert_error(refused, 503, "service_unavailable_error", "engine_restarting")
        assert int(refused.headers["Retry-After"]) >= 1

        wait_for(lambda: httpx.get(f"{server.url}/health").status_code == 200, 60, "healthy")
        assert engine.pid not in (None, first) and not alive(first)
        after = httpx.post(url, json=chat_body("你好", 16), timeout=30).json()
        assert after["choices"][0]["message"]["content"] == answer
        assert httpx.get(f"{server.url}/health").json()["restarts"] == 1
        assert metric(server, RESTARTS) == 1


# ---------------------------------------------------------------------- real xiaophi-serve processes
@dataclass
class ServerProcess:
    process: subprocess.Popen
    url: str
    stderr: Path

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")

    def healthy(self) -> bool:
        return httpx.get(f"{self.url}/health", timeout=2).status_code == 200

    def engine_pid(self) -> int:
        return wait_for(lambda: engine_pid(self.process.pid), 30, "an engine process")


@contextlib.contextmanager
def xiaophi_serve(checkpoint: Path, folder: Path, **env: str) -> Iterator[ServerProcess]:
    """`python -m serving` (the `xiaophi-serve` entry point) in a session of its own, so that a
    signal can go to its whole process group as Ctrl-C sends it."""
    port = free_port()
    stderr = folder / "stderr.txt"
    command = [sys.executable, "-m", "serving", "--model", str(checkpoint)]
    command += ["--served-model-name", MODEL, "--port", str(port), "--kb-dir", str(folder / "kb")]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "XIAOPHI_UI": "false", **env}
    with open(stderr, "wb") as err:
        process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=environment,
            start_new_session=True,
        )
    server = ServerProcess(process, f"http://127.0.0.1:{port}", stderr)
    try:
        wait_for(lambda: process.poll() is not None or server.healthy(), 120, "a healthy server")
        assert process.poll() is None, server.log()
        yield server
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "code"),
    [(signal.SIGINT, 0), (signal.SIGTERM, -signal.SIGTERM)],
    ids=["SIGINT", "SIGTERM"],
)
def test_a_normal_stop_is_quiet_and_leaks_nothing(tiny_checkpoint, reference, tmp_path, sig, code):
    """Ctrl-C (SIGINT to the whole group) and a group SIGTERM (systemd's stop) mid-stream: the
    exit code uvicorn gives each signal, no engine failure logged, nothing leaked, no traceback."""
    prompt = long_running_prompt(reference, 100)
    with xiaophi_serve(tiny_checkpoint, tmp_path) as server:
        child = server.engine_pid()
        url = f"{server.url}/v1/chat/completions"
        with httpx.stream("POST", url, json=chat_body(prompt, 100, stream=True), timeout=30) as r:
            lines = r.iter_lines()
            next(lines)  # a request is running
            os.killpg(server.process.pid, sig)
            rest = [line for line in lines if line]
        assert server.process.wait(timeout=60) == code, server.log()
    log = server.log()
    for noise in ("engine process failed", "leaked semaphore", "Traceback", "restart"):
        assert noise not in log, log
    # the running answer ended properly: the engine generated on through the shutdown
    assert rest[-1] == "data: [DONE]" and not [line for line in rest if '"error"' in line]
    assert not alive(child)


@pytest.mark.slow
def test_an_engine_that_cannot_come_back_ends_the_server(tiny_checkpoint, tmp_path):
    """The weights are gone when the engine process must restart: the server exits non-zero so
    that its supervisor (docker, systemd) restarts it, rather than answer 503 forever."""
    checkpoint = tmp_path / "model"
    shutil.copytree(tiny_checkpoint, checkpoint)
    with xiaophi_serve(checkpoint, tmp_path) as server:
        child = server.engine_pid()
        (checkpoint / "model.safetensors").write_bytes(b"not weights")
        os.kill(child, signal.SIGKILL)
        code = server.process.wait(timeout=120)
    log = server.log()
    assert code == 4, log
    assert "cannot restart the engine process" in log, log
    assert "Traceback" not in log, log


@pytest.mark.slow
def test_crashes_in_a_row_end_the_server(tiny_checkpoint, tmp_path):
    """With XIAOPHI_ENGINE_MAX_RESTARTS=1 the first crash is healed, the next one in a row is not."""
    with xiaophi_serve(tiny_checkpoint, tmp_path, XIAOPHI_ENGINE_MAX_RESTARTS="1") as server:
        first = server.engine_pid()
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: not alive(first), 10, "the engine process is gone")
        wait_for(server.healthy, 60, "healthy again")
        second = server.engine_pid()
        assert second != first
        os.kill(second, signal.SIGKILL)
        code = server.process.wait(timeout=60)
    assert code == 4, server.log()
    assert "crashed 2 times in a row" in server.log()
