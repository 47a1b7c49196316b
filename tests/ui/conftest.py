"""UI fixtures: a real xiaophi server (tiny model, hashing-embedder KBs, the page at /ui)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from rag.config import KBSettings
from tests.conftest import TINY_TEXTS
from tests.serving.conftest import RunningServer, free_port, run_server, tiny_settings

# A short document the way Chinese users often have them: GBK-encoded text.
GBK_TEXT = (
    "画蛇添足：楚国有人举行祭祀，赏给门客一壶酒。门客们约定在地上画蛇，先画好的人喝酒。"
    "有一个人先画好了，却又给蛇添上了脚，结果酒被别人喝了。比喻做了多余的事，反而不恰当。\n\n"
    "守株待兔：宋国有个农夫，看见一只兔子撞在树桩上死了，从此放下锄头守在树旁，"
    "希望再得到兔子。比喻死守狭隘经验，不知变通。\n"
)


def kb_settings(kb_dir) -> KBSettings:
    return KBSettings(kb_dir=kb_dir, embedding_model="hashing", chunk_size=80, chunk_overlap=10)


@pytest.fixture(scope="session")
def rag_checkpoint(tmp_path_factory) -> Path:
    """Like `tiny_checkpoint`, with room for retrieved passages (1024 tokens), and no EOS."""
    import torch

    from training.config import ModelConfig
    from training.model_factory import build_model
    from training.tokenizer import train_tokenizer

    texts = TINY_TEXTS + GBK_TEXT.split("。") * 3
    tokenizer = train_tokenizer(texts, vocab_size=600, min_frequency=1, model_max_length=1024)
    cfg = ModelConfig(
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        intermediate_size=64,
        max_position_embeddings=1024,
    )
    model = build_model(cfg, tokenizer, seed=0)
    # Never end early: every answer streams for max_tokens, so the page has a stream to show.
    with torch.no_grad():
        model.lm_head.bias[model.generation_config.eos_token_id] = -1e4
    path = tmp_path_factory.mktemp("ui_ckpt") / "tiny"
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def ui_server(rag_checkpoint, tmp_path_factory) -> Iterator[RunningServer]:
    """xiaophi-serve as users start it (UI mounted), with KBs in a temporary folder."""
    kb_dir = tmp_path_factory.mktemp("ui_kb") / "kb"
    settings = tiny_settings(rag_checkpoint, kb_dir=kb_dir)
    with run_server(settings, kb_settings=kb_settings(kb_dir)) as running:
        yield running


@pytest.fixture(scope="session")
def tools_ui_server(tool_model, tmp_path_factory) -> Iterator[RunningServer]:
    """xiaophi-serve with the page, a model trained to call `lookup_idiom` and a tools file
    that runs it (tests/tool_model.py)."""
    from tests.tool_model import write_tools_file

    folder = tmp_path_factory.mktemp("ui_tools")
    settings = tiny_settings(
        tool_model, kb_dir=folder / "kb", tools_file=write_tools_file(folder / "tools.json")
    )
    with run_server(settings, kb_settings=kb_settings(folder / "kb")) as running:
        yield running


@pytest.fixture(scope="session")
def keyed_server(tiny_checkpoint, tmp_path_factory) -> Iterator[RunningServer]:
    """A server that wants an API key (`secret`), without the page mounted."""
    kb_dir = tmp_path_factory.mktemp("ui_kb_keyed") / "kb"
    settings = tiny_settings(tiny_checkpoint, kb_dir=kb_dir, api_keys=["secret"], ui=False)
    with run_server(settings, kb_settings=kb_settings(kb_dir)) as running:
        yield running


class KeyRecorder:
    """ASGI wrapper: the `Authorization` header of every API call (/v1/...) that arrives."""

    def __init__(self, app) -> None:
        self.app = app
        self.calls: list[tuple[str, str]] = []

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            auth = dict(scope["headers"]).get(b"authorization", b"").decode()
            self.calls.append((scope["path"], auth))
        await self.app(scope, receive, send)


@dataclass
class KeyedPage:
    server: RunningServer
    keys: list[str]
    default_kb: str
    recorder: KeyRecorder


@pytest.fixture(scope="session")
def keyed_ui_server(rag_checkpoint, tmp_path_factory) -> Iterator[KeyedPage]:
    """The page mounted on a server with two API keys, opening on knowledge base `demo`
    (which exists); every API call's key is recorded."""
    kb_dir = tmp_path_factory.mktemp("ui_kb_keys") / "kb"
    keys = ["alpha-key", "beta-key"]
    settings = tiny_settings(
        rag_checkpoint, kb_dir=kb_dir, api_keys=keys, ui_default_kb="demo", ui=True
    )
    with run_server(settings, kb_settings=kb_settings(kb_dir)) as running:
        created = httpx.post(
            f"{running.base_url}/knowledge_bases",
            json={"name": "demo"},
            headers={"Authorization": f"Bearer {keys[0]}"},
            timeout=30,
        )
        assert created.status_code == 201, created.text
        # the app's middleware was built when it started: record in front of it from now on
        recorder = KeyRecorder(running.app.middleware_stack)
        running.app.middleware_stack = recorder
        yield KeyedPage(running, keys, "demo", recorder)


def call_page(client: httpx.Client, name: str, data: list) -> list:
    """Run the page's event `name` through gradio's API (as the browser does); its outputs."""
    event = client.post(f"/ui/gradio_api/call/{name}", json={"data": data})
    assert event.status_code == 200, event.text
    stream = client.get(f"/ui/gradio_api/call/{name}/{event.json()['event_id']}").text
    assert "event: complete" in stream, stream
    return json.loads(stream.split("event: complete", 1)[1].split("data:", 1)[1].strip())


@pytest.fixture
def dead_url() -> str:
    """An address where nothing listens."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture
def gbk_file(tmp_path):
    path = tmp_path / "成语故事.txt"
    path.write_bytes(GBK_TEXT.encode("gbk"))
    return path
