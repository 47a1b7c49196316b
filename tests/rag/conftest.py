"""Knowledge-base fixtures: a service over tmp_path with the instant hashing embedder."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rag.config import KBSettings
from rag.service import KnowledgeBaseService

IDIOMS = {
    "画蛇添足": "画蛇添足比喻做了多余的事，反而不恰当。",
    "守株待兔": "守株待兔比喻死守狭隘经验，不知变通。",
    "亡羊补牢": "亡羊补牢比喻出了问题以后想办法补救，可以防止继续受损失。",
    "掩耳盗铃": "掩耳盗铃比喻自己欺骗自己，明明掩盖不住的事偏要设法掩盖。",
}


def settings(tmp_path, **kw) -> KBSettings:
    base = {
        "kb_dir": tmp_path / "kb",
        "embedding_model": "hashing",
        "chunk_size": 60,
        "chunk_overlap": 10,
    }
    return KBSettings(**{**base, **kw})


@pytest.fixture(params=["local", "postgres"])
def backend(request) -> dict:
    """The KB settings that pick a backend: each test using it runs on both."""
    if request.param == "local":
        return {"backend": "local"}
    return {"backend": "postgres", "database_url": request.getfixturevalue("database_url")}


@pytest.fixture
def make_settings(tmp_path, backend) -> Callable[..., KBSettings]:
    """settings(tmp_path, **kw) on the test's backend."""
    return lambda **kw: settings(tmp_path, **{**backend, **kw})


@pytest.fixture
def service(make_settings) -> Iterator[KnowledgeBaseService]:
    service = KnowledgeBaseService(make_settings())
    yield service
    service.close()


def save_static_embedder(folder: Path, seed: int = 0, dim: int = 16) -> None:
    """A tiny random sentence-transformers StaticEmbedding over the test idioms' characters."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import StaticEmbedding
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, **{ch: i + 1 for i, ch in enumerate(sorted(set("".join(IDIOMS))))}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    torch.manual_seed(seed)
    static = StaticEmbedding(tokenizer, embedding_dim=dim)
    SentenceTransformer(modules=[static], device="cpu").save(str(folder))
