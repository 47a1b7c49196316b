"""The postgres backend's tables, created and migrated by the application itself.

Each migration runs once, in order, in one transaction with the version it brings recorded in
`xiaophi_schema`; servers starting together take an advisory lock, so one migrates and the
others find the work done. A database newer than this code is refused rather than guessed at.

Tables (`kb_id` first in every key: a KB's rows are one index range):
- xiaophi_kbs        one row per KB: its layout, embedder, vector size, BM25 totals
- xiaophi_documents  metadata and the original file of each document
- xiaophi_chunks     text, metadata, vector and distinct lexical terms of each chunk
- xiaophi_postings   (term, chunk) → term count and chunk length: BM25 read in SQL
- xiaophi_terms      (term) → how many chunks hold it (document frequency)
Terms compare bytewise (COLLATE "C"): faster, and the same on every server's locale.
Vectors have the size of the KB's embedder; each KB gets its own HNSW index (cosine) over
`embedding::vector(dim)`, partial on its kb_id and that size (see `hnsw_index_sql`).
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from rag.errors import KBError

#: pg_advisory_xact_lock key for migrations: "xiaophi" in ASCII
_MIGRATION_LOCK = 0x7869616F706869

MIGRATIONS: list[str] = [
    # 1: the first schema
    """
    CREATE EXTENSION IF NOT EXISTS vector;
    CREATE TABLE xiaophi_kbs (
        id serial PRIMARY KEY,
        name text NOT NULL UNIQUE,
        created_at double precision NOT NULL,
        updated_at double precision NOT NULL,
        embedding_model text,
        layout jsonb NOT NULL,
        bm25_k1 double precision NOT NULL,
        bm25_b double precision NOT NULL,
        bm25_unigram_weight double precision NOT NULL,
        dim integer,
        n_chunks bigint NOT NULL DEFAULT 0,
        total_len bigint NOT NULL DEFAULT 0
    );
    CREATE TABLE xiaophi_documents (
        kb_id integer NOT NULL REFERENCES xiaophi_kbs (id) ON DELETE CASCADE,
        doc_id text NOT NULL,
        seq bigserial NOT NULL,
        info jsonb NOT NULL,
        original bytea NOT NULL,
        PRIMARY KEY (kb_id, doc_id)
    );
    CREATE TABLE xiaophi_chunks (
        row_id bigint PRIMARY KEY,
        kb_id integer NOT NULL,
        doc_id text NOT NULL,
        chunk_id text NOT NULL,
        text text NOT NULL,
        metadata jsonb NOT NULL,
        embedding vector,
        terms text[] COLLATE "C" NOT NULL,
        length integer NOT NULL,
        UNIQUE (kb_id, chunk_id),
        FOREIGN KEY (kb_id, doc_id) REFERENCES xiaophi_documents (kb_id, doc_id) ON DELETE CASCADE
    );
    CREATE SEQUENCE xiaophi_chunk_rows;
    CREATE INDEX xiaophi_chunks_by_document ON xiaophi_chunks (kb_id, doc_id);
    CREATE TABLE xiaophi_postings (
        kb_id integer NOT NULL REFERENCES xiaophi_kbs (id) ON DELETE CASCADE,
        term text COLLATE "C" NOT NULL,
        row_id bigint NOT NULL,
        tf integer NOT NULL,
        dl integer NOT NULL,
        PRIMARY KEY (kb_id, term, row_id) INCLUDE (tf, dl)
    );
    CREATE TABLE xiaophi_terms (
        kb_id integer NOT NULL REFERENCES xiaophi_kbs (id) ON DELETE CASCADE,
        term text COLLATE "C" NOT NULL,
        df integer NOT NULL,
        PRIMARY KEY (kb_id, term)
    );
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: psycopg.Connection) -> int:
    """Bring the database to SCHEMA_VERSION; returns the version found before."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS xiaophi_schema "
            "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        found = conn.execute("SELECT coalesce(max(version), 0) FROM xiaophi_schema").fetchone()[0]
        if found > SCHEMA_VERSION:
            raise KBError(
                f"the knowledge-base database has schema version {found}, newer than this "
                f"xiaophi's {SCHEMA_VERSION}; upgrade xiaophi on this server."
            )
        for version in range(found + 1, SCHEMA_VERSION + 1):
            conn.execute(MIGRATIONS[version - 1])
            conn.execute("INSERT INTO xiaophi_schema (version) VALUES (%s)", (version,))
    return found


def hnsw_index_name(kb_id: int, dim: int) -> str:
    return f"xiaophi_hnsw_{kb_id}_{dim}"


def hnsw_index_sql(kb_id: int, dim: int) -> sql.Composed:
    """The HNSW index of one KB's vectors of size `dim` (searches repeat its predicate)."""
    return sql.SQL(
        "CREATE INDEX IF NOT EXISTS {name} ON xiaophi_chunks USING hnsw "
        "((embedding::vector({dim})) vector_cosine_ops) "
        "WHERE kb_id = {kb} AND vector_dims(embedding) = {dim}"
    ).format(
        name=sql.Identifier(hnsw_index_name(kb_id, dim)),
        dim=sql.Literal(dim),
        kb=sql.Literal(kb_id),
    )
