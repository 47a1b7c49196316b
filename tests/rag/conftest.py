"""Knowledge-base fixtures: a service over tmp_path with the instant hashing embedder."""

from __future__ import annotations

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


@pytest.fixture
def service(tmp_path) -> KnowledgeBaseService:
    return KnowledgeBaseService(settings(tmp_path))
