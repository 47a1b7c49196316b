"""`make demo` refills its knowledge base with whatever embedder the run now has."""

from __future__ import annotations

from demo import cli as demo
from rag.config import KBSettings
from rag.service import KnowledgeBaseService
from tests.rag.conftest import IDIOMS, save_static_embedder


def test_a_retrained_embedder_reindexes_the_demo_kb(tmp_path, monkeypatch):
    docs = tmp_path / "docs"
    docs.mkdir()
    for word, text in IDIOMS.items():
        (docs / f"{word}.txt").write_text(text, encoding="utf-8")
    kb_dir, embedder = tmp_path / "kb", tmp_path / "run" / "embedder"
    monkeypatch.delenv("XIAOPHI_KB_EMBEDDING_MODEL", raising=False)
    save_static_embedder(embedder, seed=0)
    demo.fill_demo_kb(kb_dir, embedder, docs)
    save_static_embedder(embedder, seed=1)  # the pipeline trained a new embedder
    demo.fill_demo_kb(kb_dir, embedder, docs)
    service = KnowledgeBaseService(KBSettings(kb_dir=kb_dir, embedding_model=str(embedder)))
    info = service.get_kb("demo")
    assert info.documents == len(IDIOMS)
    assert info.embedding_model == service.embedder.model_id
    assert service.search("demo", "守株待兔", top_k=1, mode="dense")
