"""Serving fixtures: a real uvicorn server (in a thread) on a free port, stopped afterwards."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import uvicorn
from fastapi import FastAPI

from serving.app import create_app
from serving.config import Settings
from tests.serving.vllm_reference import (  # noqa: F401  (fixtures: a real vLLM reference server)
    vllm_server,
    xiaophi_beside_vllm,
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningServer:
    app: FastAPI
    url: str

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"


@contextlib.contextmanager
def serve(app) -> Iterator[str]:
    """Any ASGI app on a free port under a real uvicorn, in a thread; yields its URL."""
    port = free_port()
    with serve_on(app, port):
        yield f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def serve_on(app, port: int) -> Iterator[None]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextlib.contextmanager
def run_server(settings: Settings, **app_kwargs) -> Iterator[RunningServer]:
    """The xiaophi app for `settings` (the page, if on, calls back to the port it is served on)."""
    port = free_port()
    app = create_app(settings.model_copy(update={"port": port}), **app_kwargs)
    with serve_on(app, port):
        yield RunningServer(app=app, url=f"http://127.0.0.1:{port}")


def tiny_settings(checkpoint, **overrides) -> Settings:
    values = dict(
        model=checkpoint, served_model_name="tiny", max_running=16, max_waiting=16, api_keys=[]
    )
    values.update(overrides)
    return Settings(_env_file=None, **values)


@pytest.fixture(scope="session")
def server(tiny_checkpoint) -> Iterator[RunningServer]:
    """The shared server: tiny model, no API keys."""
    with run_server(tiny_settings(tiny_checkpoint)) as running:
        yield running


@pytest.fixture(scope="session")
def reference(tiny_checkpoint):
    """Tokenizer and model loaded the plain way, for greedy `generate` references."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_checkpoint))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_checkpoint)).eval()

    class Reference:
        def __init__(self) -> None:
            self.tokenizer = tokenizer
            self.model = model

        def chat_ids(self, content: str) -> list[int]:
            return tokenizer.apply_chat_template(
                [{"role": "user", "content": content}],
                add_generation_prompt=True,
                return_dict=False,
            )

        def greedy_ids(self, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
            with torch.no_grad():
                out = model.generate(
                    torch.tensor([prompt_ids]), max_new_tokens=max_new_tokens, do_sample=False
                )
            return out[0, len(prompt_ids) :].tolist()

        def greedy_text(self, prompt_ids: list[int], max_new_tokens: int) -> str:
            return tokenizer.decode(
                self.greedy_ids(prompt_ids, max_new_tokens), skip_special_tokens=True
            )

    return Reference()


def long_running_prompt(reference, max_tokens: int) -> str:
    """A prompt whose greedy answer does not stop before `max_tokens` (the model is random)."""
    for i in range(20):
        prompt = f"春眠不觉晓，处处闻啼鸟。{i}"
        if len(reference.greedy_ids(reference.chat_ids(prompt), max_tokens)) == max_tokens:
            return prompt
    pytest.fail(
        "no prompt of the 20 tried runs to max_tokens on this random model: change the prompts"
    )


def kb_test_settings(kb_dir, **overrides):
    """Knowledge-base settings for tests: instant hashing embedder, small chunks and limits."""
    from rag.config import KBSettings

    values = dict(
        kb_dir=kb_dir,
        embedding_model="hashing",
        chunk_size=60,
        chunk_overlap=10,
        max_upload_bytes=2 << 20,
        max_unzipped_bytes=1 << 20,
    )
    values.update(overrides)
    return KBSettings(**values)


@pytest.fixture(scope="session", params=["local", "postgres"])
def kb_server(request, tiny_checkpoint, tmp_path_factory) -> Iterator[RunningServer]:
    """Tiny model plus knowledge bases on each backend (a temporary folder, or a database of
    its own on the test PostgreSQL); at most 2 files per upload."""
    kb_dir = tmp_path_factory.mktemp("kb_server") / "kb"
    backend = {}
    if request.param == "postgres":
        from tests.conftest import fresh_database

        url = fresh_database(request.getfixturevalue("postgres_server"))
        backend = {"backend": "postgres", "database_url": url}
    settings = tiny_settings(tiny_checkpoint, kb_dir=kb_dir, max_upload_files=2)
    with run_server(settings, kb_settings=kb_test_settings(kb_dir, **backend)) as running:
        yield running


@pytest.fixture
def engine_requests(kb_server):
    """Every `EngineRequest` the knowledge-base server's engine receives (the engine seam)."""
    engine, seen = kb_server.app.state.service.engine, []
    submit = engine.submit

    def recording(request):
        seen.append(request)
        return submit(request)

    engine.submit = recording
    yield seen
    del engine.submit


#: every engine that generates: `remote` runs in front of the shared server (another xiaophi)
ENGINES = ["slots", "hf-continuous", "remote"]


@contextlib.contextmanager
def servers_per_engine(checkpoint, started: dict[str, RunningServer] | None = None):
    """A getter of one server per engine on `checkpoint`, each started when first asked for
    (`remote` in front of the slots one); `started`: servers already running (by engine)."""
    with contextlib.ExitStack() as stack:
        started = dict(started or {})

        def get(engine: str) -> RunningServer:
            if engine not in started:
                extra = {"remote_base_url": get("slots").base_url} if engine == "remote" else {}
                settings = tiny_settings(checkpoint, ui=False, engine=engine, **extra)
                started[engine] = stack.enter_context(run_server(settings))
            return started[engine]

        yield get


# package scope (here and below): the extra servers stop once tests/serving is done
@pytest.fixture(scope="package")
def engine_servers(tiny_checkpoint, server):
    """One server per engine on the tiny checkpoint (slots: the shared one)."""
    with servers_per_engine(tiny_checkpoint, {"slots": server}) as get:
        yield get


@pytest.fixture(params=ENGINES)
def engine_server(request, engine_servers) -> RunningServer:
    """The same test on each engine's server."""
    return engine_servers(request.param)


@pytest.fixture(scope="package")
def long_checkpoint(tmp_path_factory):
    """The tiny model with a 1024-token context: room for a chat template's tool list."""
    from tests.conftest import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("long_ckpt") / "model", context=1024)


@pytest.fixture(scope="package")
def long_engine_servers(long_checkpoint):
    """Like `engine_servers`, on `long_checkpoint`."""
    with servers_per_engine(long_checkpoint) as get:
        yield get


@pytest.fixture(params=ENGINES)
def long_engine_server(request, long_engine_servers) -> RunningServer:
    return long_engine_servers(request.param)
