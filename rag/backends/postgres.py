"""The `postgres` backend: every KB in one PostgreSQL database (pgvector), shared by any number
of servers. Schema: rag/backends/postgres_schema.py; search: rag/backends/postgres_search.py.

Every write is one transaction that first locks the KB's row (`SELECT … FOR UPDATE`): writers of
one KB take turns, on every server, and a document lands whole or not at all — a server killed
mid-write leaves nothing behind, because PostgreSQL rolls back what the dead connection began.
Readers never wait for writers. The slow parts of an upload (parsing, embedding) happen before
the transaction, in the service.

Connections come from a pool (`database_pool_size`); the pool is opened, and the schema
migrated, on first use, so a server whose database is down still starts and serves chat, and
its KB requests answer StoreUnavailable (503) until the database is back.

LangChain's own PGVector stores are not used: they commit vectors in their own sessions, which
could not share the transaction that makes a document, its chunks and its BM25 rows one write.
Retrieval is the same hybrid search as the local backend's (rag/hybrid_retriever.py over
PgSearchIndex).

Kept as one module: one class whose methods are the transactions of every write, each taking the
same KB row lock; reading them side by side is how their ordering is checked.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from urllib.parse import urlsplit

import psycopg
import psycopg_pool
from langchain_core.documents import Document
from psycopg import sql

from rag.backends.base import KBHeader, NewDocument, Rebuild
from rag.backends.postgres_schema import hnsw_index_name, hnsw_index_sql, migrate
from rag.backends.postgres_search import KBRow, PgSearchIndex, vector_text
from rag.bm25 import BM25Index
from rag.config import KBSettings
from rag.errors import Conflict, KBError, NotFound, StoreUnavailable
from rag.models import KnowledgeBaseInfo, Layout, StoredDocument

logger = logging.getLogger(__name__)

_KB_COLUMNS = (
    "id, name, created_at, updated_at, embedding_model, layout, bm25_k1, bm25_b, "
    "bm25_unigram_weight, dim, n_chunks, total_len"
)


def _not_found(name: str) -> NotFound:
    return NotFound(f"knowledge base {name!r} does not exist; create it first.")


class PostgresBackend:
    def __init__(self, settings: KBSettings):
        assert settings.database_url is not None  # KBSettings refuses postgres without one
        self.settings = settings
        self._url = settings.database_url.get_secret_value()
        parts = urlsplit(self._url)
        # what error messages may show of the URL: never the password
        self.where = f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path}"
        self._pool: psycopg_pool.ConnectionPool | None = None
        self._pool_lock = threading.Lock()
        self._migrated = False

    # -- connections ---------------------------------------------------------------------
    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return StoreUnavailable(
            f"the knowledge-base database at {self.where} is unavailable ({reason}); "
            "knowledge-base requests work again once it answers (chat without a knowledge "
            "base is not affected)."
        )

    def _open_pool(self) -> psycopg_pool.ConnectionPool:
        with self._pool_lock:
            if self._pool is None:
                pool = psycopg_pool.ConnectionPool(
                    self._url,
                    min_size=1,
                    max_size=self.settings.database_pool_size,
                    timeout=self.settings.database_timeout_s,
                    # a connection the database dropped (restart) is replaced, not handed out
                    check=psycopg_pool.ConnectionPool.check_connection,
                    kwargs={
                        "connect_timeout": max(1, round(self.settings.database_timeout_s)),
                        "application_name": "xiaophi",
                    },
                    open=False,
                    name="xiaophi-kb",
                )
                pool.open(wait=False)
                self._pool = pool
            return self._pool

    @contextlib.contextmanager
    def _connection(self, timeout_s: float | None = None) -> Iterator[psycopg.Connection]:
        """A pooled connection with the schema in place; database trouble → StoreUnavailable."""
        pool = self._open_pool()
        try:
            with pool.connection(timeout=timeout_s) as conn:
                if not self._migrated:
                    found = migrate(conn)
                    self._migrated = True
                    if found == 0:
                        logger.info("knowledge-base schema created in %s", self.where)
                yield conn
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            raise self._unavailable(exc) from None
        except psycopg.errors.UndefinedFile as exc:  # no pgvector on that server
            raise KBError(
                f"the database at {self.where} has no pgvector extension ({exc}); use a server "
                "with pgvector installed (e.g. the pgvector/pgvector image)."
            ) from None

    @contextlib.contextmanager
    def _write(self, name: str) -> Iterator[tuple[psycopg.Connection, KBRow]]:
        """One transaction holding the write lock of KB `name` (its row)."""
        with self._connection() as conn, conn.transaction():
            row = conn.execute(
                f"SELECT {_KB_COLUMNS} FROM xiaophi_kbs WHERE name = %s FOR UPDATE", (name,)
            ).fetchone()
            if row is None:
                raise _not_found(name)
            yield conn, KBRow(*row)

    def _kb(self, conn: psycopg.Connection, name: str) -> KBRow:
        row = conn.execute(
            f"SELECT {_KB_COLUMNS} FROM xiaophi_kbs WHERE name = %s", (name,)
        ).fetchone()
        if row is None:
            raise _not_found(name)
        return KBRow(*row)

    @staticmethod
    def _info(kb: KBRow, documents: int) -> KnowledgeBaseInfo:
        return KnowledgeBaseInfo(
            name=kb.name,
            documents=documents,
            chunks=kb.n_chunks,
            embedding_model=kb.embedding_model,
            created_at=kb.created_at,
            updated_at=kb.updated_at,
        )

    # -- knowledge bases -----------------------------------------------------------------
    def create(self, name: str, layout: Layout) -> KnowledgeBaseInfo:
        bm25 = BM25Index(layout.bm25_tokenizer)  # the parameters the local backend saves
        now = time.time()
        with self._connection() as conn:
            row = conn.execute(
                "INSERT INTO xiaophi_kbs "
                "(name, created_at, updated_at, layout, bm25_k1, bm25_b, bm25_unigram_weight) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (name) DO NOTHING "
                f"RETURNING {_KB_COLUMNS}",
                (name, now, now, layout.model_dump_json(), bm25.k1, bm25.b, bm25.unigram_weight),
            ).fetchone()
            conn.commit()
        if row is None:
            raise Conflict(
                f"knowledge base {name!r} already exists; pick another name or delete it first."
            )
        return self._info(KBRow(*row), 0)

    def list(self) -> list[KnowledgeBaseInfo]:
        with self._connection() as conn:
            rows = conn.execute(
                f"SELECT {_KB_COLUMNS}, (SELECT count(*) FROM xiaophi_documents d "
                'WHERE d.kb_id = k.id) FROM xiaophi_kbs k ORDER BY name COLLATE "C"'
            ).fetchall()
        return [self._info(KBRow(*r[:-1]), r[-1]) for r in rows]

    def info(self, name: str) -> KnowledgeBaseInfo:
        with self._connection() as conn:
            kb = self._kb(conn, name)
            (documents,) = conn.execute(
                "SELECT count(*) FROM xiaophi_documents WHERE kb_id = %s", (kb.id,)
            ).fetchone()
        return self._info(kb, documents)

    def set_times(self, name: str, created_at: float, updated_at: float) -> None:
        """Keep a migrated KB's own creation and last-write times."""
        with self._write(name) as (conn, kb):
            conn.execute(
                "UPDATE xiaophi_kbs SET created_at = %s, updated_at = %s WHERE id = %s",
                (created_at, updated_at, kb.id),
            )

    def delete(self, name: str) -> None:
        with self._write(name) as (conn, kb):
            # cascades to documents, chunks, postings and terms, in this one transaction
            conn.execute("DELETE FROM xiaophi_kbs WHERE id = %s", (kb.id,))
        if kb.dim:
            self._drop_index(kb.id, kb.dim)

    def _drop_index(self, kb_id: int, dim: int) -> None:
        """Drop a KB's vector index after the KB (or those vectors) went. DROP INDEX would
        queue every query of the chunks table behind a long writer, so it waits at most a
        second; an index left behind indexes no rows and is dropped on a later try."""
        try:
            with self._connection() as conn, conn.transaction():
                conn.execute("SET LOCAL lock_timeout = '1s'")
                conn.execute(
                    sql.SQL("DROP INDEX IF EXISTS {}").format(
                        sql.Identifier(hnsw_index_name(kb_id, dim))
                    )
                )
        except (psycopg.errors.LockNotAvailable, StoreUnavailable) as exc:
            logger.warning("vector index of KB %s left for later: %s", kb_id, exc)

    # -- documents -----------------------------------------------------------------------
    def documents(self, name: str) -> list[StoredDocument]:
        with self._connection() as conn:
            kb = self._kb(conn, name)
            rows = conn.execute(
                "SELECT info FROM xiaophi_documents WHERE kb_id = %s ORDER BY seq", (kb.id,)
            ).fetchall()
        return [StoredDocument.model_validate(r[0]) for r in rows]

    def header(self, name: str) -> KBHeader:
        with self._connection() as conn:
            kb = self._kb(conn, name)
            rows = conn.execute(
                "SELECT doc_id, info->>'filename' FROM xiaophi_documents WHERE kb_id = %s",
                (kb.id,),
            ).fetchall()
        return KBHeader(embedding_model=kb.embedding_model, documents=dict(rows))

    def _ensure_vector_index(self, name: str, dim: int) -> None:
        """Record the KB's vector size and create its HNSW index, in a transaction of its own:
        CREATE INDEX inside two concurrent uploads' transactions could deadlock them."""
        with self._write(name) as (conn, kb):
            if kb.dim == dim:
                return
            if kb.dim is not None and kb.n_chunks:
                raise Conflict(
                    f"knowledge base {name!r} holds {kb.dim}-dimensional vectors; this embedder "
                    f"makes {dim}. Run `xiaophi-kb reindex {name}`."
                )
            conn.execute(hnsw_index_sql(kb.id, dim))
            conn.execute("UPDATE xiaophi_kbs SET dim = %s WHERE id = %s", (dim, kb.id))

    def add(
        self,
        name: str,
        docs: Sequence[NewDocument],
        embedding_model: str,
        check: Callable[[str | None, bool], None],
    ) -> list[str]:
        dim = next((len(d.vectors[0]) for d in docs if d.vectors), None)
        if dim is not None:
            self._ensure_vector_index(name, dim)
        with self._write(name) as (conn, kb):
            check(kb.embedding_model, kb.n_chunks > 0 or self._has_documents(conn, kb.id))
            ids = [d.info.id for d in docs]
            present = {
                r[0]
                for r in conn.execute(
                    "SELECT doc_id FROM xiaophi_documents WHERE kb_id = %s AND doc_id = ANY(%s)",
                    (kb.id, ids),
                )
            }
            new = []
            for d in docs:  # also drops repeats within `docs`
                if d.info.id not in present:
                    present.add(d.info.id)
                    new.append(d)
            if new:
                self._add_new(conn, kb, new, embedding_model)
        return [d.info.id for d in new]

    def _add_new(
        self,
        conn: psycopg.Connection,
        kb: KBRow,
        docs: Sequence[NewDocument],
        embedding_model: str,
    ) -> None:
        """Everything an upload writes, inside the caller's transaction (committed after)."""
        self._insert(conn, kb, docs)
        conn.execute(
            "UPDATE xiaophi_kbs SET embedding_model = %s, updated_at = %s WHERE id = %s",
            (embedding_model, time.time(), kb.id),
        )

    @staticmethod
    def _has_documents(conn: psycopg.Connection, kb_id: int) -> bool:
        return (
            conn.execute(
                "SELECT 1 FROM xiaophi_documents WHERE kb_id = %s LIMIT 1", (kb_id,)
            ).fetchone()
            is not None
        )

    def _insert(self, conn: psycopg.Connection, kb: KBRow, docs: Sequence[NewDocument]) -> None:
        """Documents, chunks, postings and term counts of `docs`, inside the caller's transaction."""
        with conn.cursor().copy(
            "COPY xiaophi_documents (kb_id, doc_id, info, original) FROM STDIN"
        ) as copy:
            for d in docs:
                info = json.dumps(d.info.model_dump(mode="json"), ensure_ascii=False)
                copy.write_row((kb.id, d.info.id, info, d.data))
        chunks = [(d, c, v) for d in docs for c, v in _zip_vectors(d)]
        if chunks:
            rows, counts = self._insert_chunks(conn, kb, chunks)
            self._insert_postings(conn, kb, rows, counts)

    @staticmethod
    def _insert_chunks(
        conn: psycopg.Connection,
        kb: KBRow,
        chunks: list[tuple[NewDocument, Document, list[float] | None]],
    ) -> tuple[list[int], list[Counter[str]]]:
        """The chunk rows; returns their row ids and term counts, for the postings."""
        tokenize = BM25Index(kb.layout["bm25_tokenizer"]).tokenize
        rows = [
            r[0]
            for r in conn.execute(
                "SELECT nextval('xiaophi_chunk_rows') FROM generate_series(1, %s)", (len(chunks),)
            )
        ]
        counts = [Counter(tokenize(c.page_content)) for _, c, _ in chunks]
        with conn.cursor().copy(
            "COPY xiaophi_chunks (row_id, kb_id, doc_id, chunk_id, text, metadata, embedding, "
            "terms, length) FROM STDIN"
        ) as copy:
            for row_id, (d, c, v), tf in zip(rows, chunks, counts, strict=True):
                copy.write_row(
                    (
                        row_id,
                        kb.id,
                        d.info.id,
                        c.metadata["chunk_id"],
                        c.page_content,
                        json.dumps(c.metadata, ensure_ascii=False),
                        vector_text(v) if v is not None else None,
                        array_text(tf),
                        sum(tf.values()),
                    )
                )
        return rows, counts

    @staticmethod
    def _insert_postings(
        conn: psycopg.Connection, kb: KBRow, rows: list[int], counts: list[Counter[str]]
    ) -> None:
        """The BM25 postings and term counts of the chunk rows just inserted; the KB's totals."""
        df: Counter[str] = Counter()
        postings = []
        for row_id, tf in zip(rows, counts, strict=True):
            length = sum(tf.values())
            postings.extend((term, row_id, n, length) for term, n in tf.items())
            df.update(tf.keys())
        # in index order: each term's new rows go to one place of the index, ~2x faster
        postings.sort(key=lambda p: (p[0].encode(), p[1]))
        with conn.cursor().copy(
            "COPY xiaophi_postings (kb_id, term, row_id, tf, dl) FROM STDIN"
        ) as copy:
            # COPY's text format written whole: a quarter of a million rows per 1k chunks
            for start in range(0, len(postings), 50_000):
                copy.write(
                    "".join(
                        f"{kb.id}\t{_copy_escape(t)}\t{r}\t{n}\t{dl}\n"
                        for t, r, n, dl in postings[start : start + 50_000]
                    )
                )
        terms = sorted(df)
        conn.execute(
            "INSERT INTO xiaophi_terms (kb_id, term, df) "
            "SELECT %s, t, n FROM unnest(%s::text[], %s::integer[]) AS u(t, n) "
            "ON CONFLICT (kb_id, term) DO UPDATE SET df = xiaophi_terms.df + excluded.df",
            (kb.id, terms, [df[t] for t in terms]),
        )
        conn.execute(
            "UPDATE xiaophi_kbs SET n_chunks = n_chunks + %s, total_len = total_len + %s "
            "WHERE id = %s",
            (len(rows), sum(sum(tf.values()) for tf in counts), kb.id),
        )

    def remove(self, name: str, doc_id: str) -> StoredDocument:
        with self._write(name) as (conn, kb):
            row = conn.execute(
                "SELECT info FROM xiaophi_documents WHERE kb_id = %s AND doc_id = %s",
                (kb.id, doc_id),
            ).fetchone()
            if row is None:
                raise NotFound(
                    f"document {doc_id!r} is not in knowledge base {name!r}; list its documents to see the ids."
                )
            self._remove_chunks(conn, kb.id, "doc_id = %s", (doc_id,))
            conn.execute(
                "DELETE FROM xiaophi_documents WHERE kb_id = %s AND doc_id = %s", (kb.id, doc_id)
            )
            conn.execute(
                "UPDATE xiaophi_kbs SET updated_at = %s WHERE id = %s", (time.time(), kb.id)
            )
        return StoredDocument.model_validate(row[0])

    @staticmethod
    def _remove_chunks(conn: psycopg.Connection, kb_id: int, where: str, params: tuple) -> None:
        """Postings, term counts and totals of the KB's chunks matching `where`, then the chunks."""
        gone = f"SELECT row_id, terms, length FROM xiaophi_chunks WHERE kb_id = %s AND {where}"
        conn.execute(
            f"DELETE FROM xiaophi_postings p USING (SELECT row_id, unnest(terms) AS term FROM "
            f"({gone}) g) x WHERE p.kb_id = %s AND p.term = x.term AND p.row_id = x.row_id",
            (kb_id, *params, kb_id),
        )
        updated = conn.execute(
            f"WITH c AS (SELECT term, count(*) AS n FROM (SELECT unnest(terms) AS term FROM "
            f"({gone}) g) x GROUP BY term) "
            "UPDATE xiaophi_terms t SET df = t.df - c.n FROM c "
            "WHERE t.kb_id = %s AND t.term = c.term RETURNING t.term, t.df",
            (kb_id, *params, kb_id),
        ).fetchall()
        # a second statement: one statement cannot delete the rows its own CTE updated
        conn.execute(
            "DELETE FROM xiaophi_terms WHERE kb_id = %s AND term = ANY(%s)",
            (kb_id, [term for term, df in updated if df <= 0]),
        )
        conn.execute(
            f"UPDATE xiaophi_kbs SET n_chunks = n_chunks - g.n, total_len = total_len - g.len "
            f"FROM (SELECT count(*) AS n, coalesce(sum(length), 0) AS len FROM ({gone}) x) g "
            "WHERE id = %s",
            (kb_id, *params, kb_id),
        )
        conn.execute(f"DELETE FROM xiaophi_chunks WHERE kb_id = %s AND {where}", (kb_id, *params))

    def rebuild(self, name: str, layout: Layout, embedding_model: str, build: Rebuild) -> None:
        with self._write(name) as (conn, kb):
            rows = conn.execute(
                "SELECT info, original FROM xiaophi_documents WHERE kb_id = %s ORDER BY seq",
                (kb.id,),
            ).fetchall()
        # the slow part (splitting, embedding) outside the lock; the KB is rebuilt below only
        # if no writer changed its documents meanwhile
        originals = [(StoredDocument.model_validate(info), bytes(data)) for info, data in rows]
        docs = build(originals)
        dim = next((len(d.vectors[0]) for d in docs if d.vectors), None)
        old_dim = kb.dim
        if dim is not None and dim != kb.dim:
            with self._write(name) as (conn, now):
                conn.execute(hnsw_index_sql(now.id, dim))
        with self._write(name) as (conn, kb):
            current = [
                r[0]
                for r in conn.execute(
                    "SELECT doc_id FROM xiaophi_documents WHERE kb_id = %s ORDER BY seq", (kb.id,)
                )
            ]
            if current != [doc.id for doc, _ in originals]:
                raise Conflict(
                    f"knowledge base {name!r} changed while it was reindexed; run the reindex again."
                )
            conn.execute("DELETE FROM xiaophi_postings WHERE kb_id = %s", (kb.id,))
            conn.execute("DELETE FROM xiaophi_terms WHERE kb_id = %s", (kb.id,))
            conn.execute("DELETE FROM xiaophi_documents WHERE kb_id = %s", (kb.id,))  # + chunks
            bm25 = BM25Index(layout.bm25_tokenizer)
            conn.execute(
                "UPDATE xiaophi_kbs SET n_chunks = 0, total_len = 0, layout = %s, dim = %s, "
                "embedding_model = %s, updated_at = %s, bm25_k1 = %s, bm25_b = %s, "
                "bm25_unigram_weight = %s WHERE id = %s",
                (
                    layout.model_dump_json(),
                    dim,
                    embedding_model,
                    time.time(),
                    bm25.k1,
                    bm25.b,
                    bm25.unigram_weight,
                    kb.id,
                ),
            )
            kb = KBRow(
                *conn.execute(
                    f"SELECT {_KB_COLUMNS} FROM xiaophi_kbs WHERE id = %s", (kb.id,)
                ).fetchone()
            )
            self._insert(conn, kb, docs)
        if old_dim is not None and old_dim != dim:
            self._drop_index(kb.id, old_dim)

    # -- search and upkeep ---------------------------------------------------------------
    def search_index(self, name: str) -> PgSearchIndex:
        with self._connection() as conn:
            kb = self._kb(conn, name)
            has_documents = kb.n_chunks > 0 or self._has_documents(conn, kb.id)
        return PgSearchIndex(kb, has_documents, self._connection)

    def counts(self, name: str) -> dict[str, int]:
        with self._connection() as conn:
            kb = self._kb(conn, name)
            documents, chunks, vectors = conn.execute(
                "SELECT (SELECT count(*) FROM xiaophi_documents WHERE kb_id = %(kb)s), "
                "count(*), count(embedding) FROM xiaophi_chunks WHERE kb_id = %(kb)s",
                {"kb": kb.id},
            ).fetchone()
            (lexical,) = conn.execute(
                "SELECT count(DISTINCT row_id) FROM xiaophi_postings WHERE kb_id = %s", (kb.id,)
            ).fetchone()
        return {
            "documents": documents,
            "chunks": chunks,
            "vectors": vectors,
            "lexical_rows": lexical,
        }

    def health(self) -> str | None:
        try:
            with self._connection(timeout_s=min(1.0, self.settings.database_timeout_s)) as conn:
                conn.execute("SELECT 1")
        except KBError as exc:
            return exc.message
        return None

    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_escape(text: str) -> str:
    """A value for COPY's text format."""
    return text.translate(_COPY_ESCAPES)


def array_text(items) -> str:
    """A PostgreSQL array literal of strings (psycopg's generic list dumper is ~10x slower)."""
    quoted = (t.replace("\\", "\\\\").replace('"', '\\"') for t in items)
    return "{" + ",".join(f'"{t}"' for t in quoted) + "}"


def _zip_vectors(doc: NewDocument):
    vectors = doc.vectors or [None] * len(doc.chunks)
    return zip(doc.chunks, vectors, strict=True)
