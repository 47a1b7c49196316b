"""A real vLLM (CPU build) as the reference server: `vllm_server`, started once for tests/serving.

It serves a tiny checkpoint of its own, one attention head of 32: vLLM's CPU attention takes
head dimensions 32, 64, 80, 96, 112, 128, 160, 192, 224, 256 and 512, not the default tiny
model's 8. Its generation_config.json is greedy with a repetition penalty, as the pipeline
writes it. A test may start xiaophi's server on the same folder and compare answers.
The venv comes from tools/vllm_env.py (made once per machine, a few minutes the first time).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

from tests.conftest import build_tiny_checkpoint
from tools.vllm_env import ensure_venv, server_command, server_env

STARTUP_TIMEOUT_S = 300
SERVED_NAME = "tiny-vllm"
REPETITION_PENALTY = 1.2  # one of the tiny recipe's decoding candidates
ERROR_LINE = re.compile(r"\w(Error|Exception): ")


@dataclass
class VllmServer:
    base_url: str  # http://127.0.0.1:PORT/v1
    model: str  # the served model name
    checkpoint: Path  # the folder it serves; xiaophi's server may load it too
    process: subprocess.Popen
    log: Path


def _log_excerpt(log: Path, lines: int = 40) -> str:
    """The log's error lines (the root cause sits far above the end in vLLM's tracebacks from
    its worker processes), then its last lines."""
    try:
        text = log.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    errors = list(dict.fromkeys(line for line in text if ERROR_LINE.search(line)))[:10]
    excerpt = ["error lines:", *errors, "last lines:"] if errors else []
    return "\n".join([*excerpt, *text[-lines:]])


def _fail(server: VllmServer, why: str) -> NoReturn:
    pytest.fail(f"{why}; vLLM's log ({server.log}):\n{_log_excerpt(server.log)}")


def _wait_until_ready(server: VllmServer) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        if server.process.poll() is not None:
            _fail(server, f"vLLM exited with code {server.process.returncode} before it answered")
        try:
            with urllib.request.urlopen(f"{server.base_url}/models", timeout=5) as response:
                if response.status == 200:
                    break
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            _fail(server, f"vLLM did not answer /v1/models within {STARTUP_TIMEOUT_S} s")
        time.sleep(0.5)
    # One token through the engine: a model vLLM cannot run (an attention shape its CPU kernels
    # lack) still lists itself as ready, then the engine dies on the first request.
    body = json.dumps({"model": server.model, "prompt": "你好", "max_tokens": 1}).encode()
    request = urllib.request.Request(
        f"{server.base_url}/completions", body, {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            json.load(response)
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        _fail(server, f"vLLM answered /v1/models but not a first completion ({exc})")


def _stop(process: subprocess.Popen) -> None:
    """The server and its children (vLLM's engine core is a process of its own): the whole
    process group, politely first."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=30)
    # whatever of the group is left (a child that outlived the server, or a server that hung)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def _choose_decoding_defaults(checkpoint: Path) -> None:
    """Greedy with a repetition penalty in generation_config.json, written the way the pipeline's
    decoding search writes its choice: both servers apply it to requests that leave it out."""
    from transformers import GenerationConfig

    from training.decoding import apply_settings

    config = GenerationConfig.from_pretrained(checkpoint)
    apply_settings(config, {"repetition_penalty": REPETITION_PENALTY})
    config.save_pretrained(checkpoint)


# package scope: vLLM stops once tests/serving is done (its engine core polls while idle, and
# the training tests after it pick their thread counts from the load they see)
@pytest.fixture(scope="package")
def vllm_server(tmp_path_factory) -> Iterator[VllmServer]:
    from tests.serving.conftest import free_port  # here: that conftest imports this module

    venv = ensure_venv()
    folder = tmp_path_factory.mktemp("vllm_reference")
    # the default tiny width in one head: the smallest head dimension vLLM's CPU attention takes
    # a 1024-token context: room for a chat template's tool list
    checkpoint = build_tiny_checkpoint(folder / "model", hidden_size=32, num_heads=1, context=1024)
    _choose_decoding_defaults(checkpoint)
    port = free_port()
    log = folder / "vllm.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            # tool calls read as xiaophi reads them: the Hermes blocks its template teaches
            server_command(
                checkpoint,
                SERVED_NAME,
                port,
                extra=["--enable-auto-tool-choice", "--tool-call-parser", "hermes"],
                venv=venv,
            ),
            env=server_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, to stop the engine core with it
        )
    server = VllmServer(
        base_url=f"http://127.0.0.1:{port}/v1",
        model=SERVED_NAME,
        checkpoint=checkpoint,
        process=process,
        log=log,
    )
    try:
        _wait_until_ready(server)
        yield server
    finally:
        _stop(process)


@pytest.fixture(scope="package")
def xiaophi_beside_vllm(vllm_server):
    """xiaophi's own engine on vLLM's checkpoint, and its remote engine in front of vLLM."""
    from tests.serving.conftest import run_server, tiny_settings

    own = tiny_settings(vllm_server.checkpoint, ui=False)
    remote = tiny_settings(
        vllm_server.checkpoint,
        ui=False,
        engine="remote",
        remote_base_url=vllm_server.base_url,
        remote_model=vllm_server.model,
    )
    with run_server(own) as local, run_server(remote) as proxied:
        yield {"slots": local, "remote": proxied}
