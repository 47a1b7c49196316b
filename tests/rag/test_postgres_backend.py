"""What only the postgres backend has: its rows, its SQL BM25, its migrations, a database that
goes away and comes back. Every test talks to a real PostgreSQL with pgvector."""

from __future__ import annotations

import math
import threading
import time

import psycopg
import pytest

from rag.backends import postgres_search
from rag.backends.postgres_schema import SCHEMA_VERSION
from rag.bm25 import BM25Index
from rag.config import KBSettings
from rag.errors import KBError, StoreUnavailable
from rag.models import Upload
from rag.service import KnowledgeBaseService
from tests.rag.conftest import IDIOMS
from tools.scratch_postgres import ScratchPostgres

TABLES = ["xiaophi_documents", "xiaophi_chunks", "xiaophi_postings", "xiaophi_terms"]


def pg_settings(url: str, **kw) -> KBSettings:
    base = {"embedding_model": "hashing", "chunk_size": 60, "chunk_overlap": 10}
    return KBSettings(**{**base, **kw}, backend="postgres", database_url=url)


def rows_of(url: str, kb: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        (kb_id,) = conn.execute("SELECT id FROM xiaophi_kbs WHERE name = %s", (kb,)).fetchone()
        return {
            t: conn.execute(f"SELECT count(*) FROM {t} WHERE kb_id = %s", (kb_id,)).fetchone()[0]
            for t in TABLES
        }


def uploads() -> list[Upload]:
    return [Upload(filename=f"{w}.txt", data=t.encode()) for w, t in IDIOMS.items()]


def test_deleting_a_kb_removes_every_row_and_its_vector_index(database_url):
    service = KnowledgeBaseService(pg_settings(database_url))
    for name in ("gone", "kept"):
        service.create_kb(name)
        service.add_documents(name, uploads())
    kept = rows_of(database_url, "kept")
    assert all(kept.values())
    with psycopg.connect(database_url) as conn:
        gone_id = conn.execute("SELECT id FROM xiaophi_kbs WHERE name = 'gone'").fetchone()[0]
    service.delete_kb("gone")
    with psycopg.connect(database_url) as conn:
        for table in TABLES:
            n = conn.execute(f"SELECT count(*) FROM {table} WHERE kb_id = %s", (gone_id,))
            assert n.fetchone()[0] == 0, table
        indexes = [r[0] for r in conn.execute("SELECT indexname FROM pg_indexes")]
    assert not [i for i in indexes if i.startswith(f"xiaophi_hnsw_{gone_id}_")]
    assert rows_of(database_url, "kept") == kept
    assert service.search("kept", "守株待兔", top_k=1)[0].filename == "守株待兔.txt"
    service.close()


def test_deleting_a_document_leaves_no_postings_or_term_counts_behind(database_url):
    service = KnowledgeBaseService(pg_settings(database_url))
    service.create_kb("demo")
    first = service.add_documents("demo", uploads()[:2])
    before = rows_of(database_url, "demo")
    service.add_documents("demo", uploads()[2:])
    for r in service.add_documents("demo", uploads()).results:
        assert r.status == "duplicate"
    for doc in service.list_documents("demo")[2:]:
        service.delete_document("demo", doc.id)
    assert rows_of(database_url, "demo") == before
    assert [d.id for d in service.list_documents("demo")] == [r.document.id for r in first.results]
    service.close()


def sentences(n: int) -> list[str]:
    """Chunks of very different sizes over a vocabulary where a few characters are everywhere."""
    common = "的是了在和有我们这个"
    rare = "".join(chr(0x4E00 + 37 * i) for i in range(400))
    out = []
    for i in range(n):
        body = "".join(rare[(i * 7 + j * 13) % len(rare)] for j in range(3 + i % 40))
        out.append(common[: 1 + i % len(common)] + body + common[i % 3 :: 3])
    return out


def same_ranking(got: list[tuple[str, float]], want: list[tuple[str, float]]) -> bool:
    """Equal scores in order (float32 locally, float64 in SQL), and the same chunks at every
    score above the last one (which of several chunks tied at the cut-off make the top k is
    arbitrary, locally as well)."""
    if len(got) != len(want) or not all(
        math.isclose(g, w, rel_tol=1e-5) for (_, g), (_, w) in zip(got, want, strict=True)
    ):
        return False
    cut = want[-1][1] * (1 + 1e-5) if want else 0
    return {c for c, s in got if s > cut} == {c for c, s in want if s > cut}


@pytest.mark.parametrize(("essential", "candidates"), [(1, 10), (40, 10), (40, 100), (10**9, 10)])
def test_sql_bm25_is_the_local_bm25_whenever_it_says_it_is_exact(
    database_url, monkeypatch, essential, candidates
):
    """Two-phase BM25 (few rare postings, few candidates: prune; a huge budget: the full
    evaluation) returns what the local BM25 index returns over the same chunks whenever it
    claims its top k exact — and the full evaluation always is."""
    monkeypatch.setattr(postgres_search, "ESSENTIAL_POSTINGS", essential)
    monkeypatch.setattr(postgres_search, "CANDIDATES", candidates)
    texts = sentences(300)
    service = KnowledgeBaseService(pg_settings(database_url, chunk_size=200, chunk_overlap=0))
    service.create_kb("bm25")
    service.add_documents(
        "bm25", [Upload(filename=f"{i}.txt", data=t.encode()) for i, t in enumerate(texts)]
    )
    index = service._index("bm25")
    local = BM25Index(service.settings.bm25_tokenizer)  # the KB's own tokens (the default)
    docs = {d.filename: d.id for d in service.list_documents("bm25")}
    local.add([f"{docs[f'{i}.txt']}:0" for i in range(len(texts))], texts)
    queries = [t[:6] for t in texts[::17]] + ["的是了", "我们这个在", texts[5][2:9] + "的的的"]
    claimed = 0
    for query in queries:
        want = local.search(query, 10)
        got = index.bm25_search(query, 10)
        if index.last_exact:
            claimed += 1
            assert same_ranking(got, want), (query, got, want)
        else:  # an approximation: real scores of real matches, best first
            exact = dict(
                zip([c for c, _ in got], local.scores(query, [c for c, _ in got]), strict=True)
            )
            assert all(math.isclose(s, exact[c], rel_tol=1e-5) and s > 0 for c, s in got)
            assert [s for _, s in got] == sorted((s for _, s in got), reverse=True)
        ids = [c for c, _ in want[:5]] + [f"{docs['0.txt']}:0"]
        for g, w in zip(index.bm25_scores(query, ids), local.scores(query, ids), strict=True):
            assert math.isclose(g, w, rel_tol=1e-5, abs_tol=1e-6)
    if essential == 10**9:
        assert claimed == len(queries)
    if (essential, candidates) == (40, 100):  # pruning that proves some queries exact
        assert claimed > 0
    if (essential, candidates) == (1, 10):  # a setting so tight it approximates some
        assert claimed < len(queries)
    service.close()


def test_servers_starting_together_migrate_once(database_url):
    services = [KnowledgeBaseService(pg_settings(database_url)) for _ in range(4)]
    errors = []

    def first_call(service):
        try:
            service.list_kbs()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=first_call, args=(s,)) for s in services]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with psycopg.connect(database_url) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM xiaophi_schema")]
    assert versions == list(range(1, SCHEMA_VERSION + 1))
    for s in services:
        s.close()


def test_a_database_newer_than_the_code_is_refused(database_url):
    KnowledgeBaseService(pg_settings(database_url)).list_kbs()
    with psycopg.connect(database_url) as conn:
        conn.execute("INSERT INTO xiaophi_schema (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
    with pytest.raises(KBError, match="newer than this"):
        KnowledgeBaseService(pg_settings(database_url)).list_kbs()


def test_the_database_going_away_is_503_material_and_coming_back_just_works(tmp_path):
    server = ScratchPostgres(tmp_path / "pg").start()
    try:
        service = KnowledgeBaseService(pg_settings(server.url, database_timeout_s=1))
        service.create_kb("demo")
        service.add_documents("demo", uploads())
        assert service.backend.health() is None
        server.kill()
        start = time.monotonic()
        with pytest.raises(StoreUnavailable, match=r"database at 127\.0\.0\.1:\d+/xiaophi"):
            service.search("demo", "守株待兔")
        assert time.monotonic() - start < 5
        assert "unavailable" in service.backend.health()
        server.start()
        server.wait_ready()
        deadline = time.monotonic() + 20
        while True:  # the pool replaces its dead connections
            try:
                hits = service.search("demo", "守株待兔", top_k=1)
                break
            except StoreUnavailable:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert hits[0].filename == "守株待兔.txt"
        assert service.backend.health() is None
        service.close()
    finally:
        server.remove()


def test_a_server_without_the_database_still_starts_and_says_so(tmp_path):
    port_of_nothing = ScratchPostgres(tmp_path / "never").port
    url = f"postgresql://postgres@127.0.0.1:{port_of_nothing}/xiaophi"
    service = KnowledgeBaseService(pg_settings(url, database_timeout_s=1))
    with pytest.raises(StoreUnavailable, match="work again once it answers"):
        service.list_kbs()
    assert "password" not in service.backend.health()
    service.close()


def test_settings_name_what_is_missing():
    with pytest.raises(ValueError, match="XIAOPHI_KB_DATABASE_URL"):
        KBSettings(backend="postgres")
    with pytest.raises(ValueError, match="PostgreSQL URL"):
        KBSettings(backend="postgres", database_url="mysql://db/x")
    assert KBSettings(backend="local", database_url="").database_url is None


def test_term_arrays_reach_the_database_as_written(database_url):
    from rag.backends.postgres import array_text

    terms = ["守株", 'a"b', "c\\d", "{e,f}", "g h", "NULL", ""]
    with psycopg.connect(database_url) as conn:
        (back,) = conn.execute("SELECT %s::text[]", (array_text(terms),)).fetchone()
    assert back == terms


def test_weighted_chargrams_score_the_same_on_both_backends(tmp_path, database_url):
    """`chargram-weighted` (single characters weigh 2 in a query) in SQL = rag/bm25.py."""
    texts = {f"{w}.txt": t for w, t in IDIOMS.items()} | {"长.txt": "比喻" * 30 + "守株"}
    results = {}
    for backend in ("local", "postgres"):
        url = {"database_url": database_url} if backend == "postgres" else {}
        service = KnowledgeBaseService(
            KBSettings(
                kb_dir=tmp_path / "kb",
                embedding_model="hashing",
                bm25_tokenizer="chargram-weighted",
                backend=backend,
                **url,
            )
        )
        service.create_kb("w")
        service.add_documents("w", [Upload(filename=n, data=t.encode()) for n, t in texts.items()])
        results[backend] = [
            [(h.chunk_id, round(h.score, 4)) for h in service.search("w", q, 10, "bm25")]
            for q in ("守株待兔", "比喻", "补救损失", "兔")
        ]
        service.close()
    assert results["postgres"] == results["local"]
    plain = BM25Index("chargram")
    weighted = BM25Index("chargram-weighted")
    for index in (plain, weighted):
        index.add(list(texts), list(texts.values()))
    assert weighted.scores("兔", ["守株待兔.txt"])[0] == 2 * plain.scores("兔", ["守株待兔.txt"])[0]
