"""Search of one KB in PostgreSQL: BM25 computed in SQL, dense search through pgvector's HNSW.

BM25 here is the local backend's (rag/bm25.py) to the formula: the same tokens, k1 and b, idf
= ln((N − df + 0.5) / (df + 0.5) + 1), document length = a chunk's token count, query terms
weighted by how often the query holds them. No replica loads a KB: a query reads the postings
of its own terms.

Reading every posting of a very common term (是, 的) for each query would cost as much as the
KB is large, so `bm25_search` works in two phases, one statement:
1. the rarest query terms (together at most ESSENTIAL_POSTINGS postings; always at least the
   rarest one) score every chunk that holds them; the best CANDIDATES chunks go on;
2. the common terms' postings of just those candidates are looked up (index probes) and added.
A chunk left out in phase 1 scores at most s_M + U (s_M: the last candidate's phase-1 score,
U: the common terms' largest possible contributions together). When the k-th score is ≥ that,
the top k is exact; otherwise it may miss a chunk that only common terms lift, which
`make bench-rag BACKEND=postgres` measures against the local backend. A query whose terms all
fit the budget is evaluated in full, exactly.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import psycopg
from langchain_core.documents import Document
from psycopg import sql

from rag.bm25 import TOKENIZERS, unit_weight

#: postings the rare terms of one query may read before the rest count as "common"
ESSENTIAL_POSTINGS = 10_000
#: chunks phase 1 passes on to phase 2
CANDIDATES = 100
#: HNSW candidates per dense search (pgvector's default is 40). On the bench KB (12.5k chunks,
#: the trained static embedder) its top 50 held 81% / 90% / 96% of the exact top 50 at 100 / 200
#: / 400, over dev queries (odd chapter titles, idiom example snippets; no relevance labels used)
HNSW_EF_SEARCH = 400


@dataclass
class KBRow:
    """One row of xiaophi_kbs."""

    id: int
    name: str
    created_at: float
    updated_at: float
    embedding_model: str | None
    layout: dict
    bm25_k1: float
    bm25_b: float
    bm25_unigram_weight: float
    dim: int | None
    n_chunks: int
    total_len: int


_CONTRIBUTION = "q.w * p.tf / (p.tf + %(k1)s * (1 - %(b)s + %(b)s * p.dl / %(avgdl)s))"
_QUERY_TERMS = "q AS (SELECT * FROM unnest(%(terms)s::text[], %(w)s::float8[]) AS q(term, w))"


def _best_by_rare_terms(limit: str) -> str:
    """The chunks scoring best over the `rare` terms' postings, at most %(<limit>)s of them."""
    return f"""
        SELECT p.row_id, sum({_CONTRIBUTION}) AS s
        FROM xiaophi_postings p JOIN q ON q.term = p.term
        WHERE p.kb_id = %(kb)s AND p.term = ANY(%(rare)s::text[])
        GROUP BY p.row_id ORDER BY s DESC, p.row_id LIMIT %({limit})s"""


#: every posting of the given terms (`rare`): the exact top k
_BM25_FULL = sql.SQL(f"""
    WITH {_QUERY_TERMS},
    e AS ({_best_by_rare_terms("k")})
    SELECT c.chunk_id, e.s FROM e JOIN xiaophi_chunks c ON c.row_id = e.row_id
    ORDER BY e.s DESC, e.row_id""")

#: phase 1 over the `rare` terms' postings, phase 2 probes the `common` terms per candidate;
#: the last row is (NULL, s_M): the last candidate's phase-1 score, for the exactness check
_BM25_TWO_PHASE = sql.SQL(f"""
    WITH {_QUERY_TERMS},
    cand AS ({_best_by_rare_terms("m")}),
    common AS (
        SELECT cand.row_id, sum({_CONTRIBUTION}) AS s
        FROM cand CROSS JOIN q
        JOIN LATERAL (
            SELECT tf, dl FROM xiaophi_postings
            WHERE kb_id = %(kb)s AND term = q.term AND row_id = cand.row_id
        ) p ON true
        WHERE q.term = ANY(%(common)s::text[])
        GROUP BY cand.row_id
    ),
    top AS (
        SELECT cand.row_id, cand.s + coalesce(common.s, 0) AS s
        FROM cand LEFT JOIN common ON common.row_id = cand.row_id
        ORDER BY s DESC, cand.row_id LIMIT %(k)s
    )
    (SELECT c.chunk_id, top.s FROM top JOIN xiaophi_chunks c ON c.row_id = top.row_id
     ORDER BY top.s DESC, top.row_id)
    UNION ALL
    (SELECT NULL, s FROM cand ORDER BY s LIMIT 1)""")


def vector_text(vector: Sequence[float]) -> str:
    """pgvector's text form of a vector."""
    return "[" + ",".join(repr(float(x)) for x in vector) + "]"


class PgSearchIndex:
    """A SearchIndex (rag/backends/base.py) over one KB's rows; each call is one or two queries."""

    def __init__(
        self,
        kb: KBRow,
        has_documents: bool,
        connection: Callable[[], AbstractContextManager[psycopg.Connection]],
    ):
        self.kb = kb
        self.embedding_model = kb.embedding_model
        self.has_documents = has_documents
        self.manifest = {"name": kb.name, **kb.layout, "embedding_model": kb.embedding_model}
        self._connection = connection
        self._tokenize = TOKENIZERS[kb.layout["bm25_tokenizer"]]
        self._df: dict[str, dict[str, int]] = {}  # query → df of its known terms
        self.last_exact = True  # whether the last bm25_search's top k is proven exact

    # -- BM25 ----------------------------------------------------------------------------
    def _query_terms(self, conn: psycopg.Connection, query: str) -> tuple[Counter, dict]:
        counts = Counter(self._tokenize(query))
        if query not in self._df:
            rows = conn.execute(
                "SELECT term, df FROM xiaophi_terms WHERE kb_id = %s AND term = ANY(%s)",
                (self.kb.id, list(counts)),
            ).fetchall()
            self._df[query] = dict(rows)
        df = self._df[query]
        return Counter({t: n for t, n in counts.items() if t in df}), df

    def _weights(self, counts: Counter, df: dict) -> dict[str, float]:
        """Per query term: count in the query × unit weight × idf × (k1 + 1), its largest
        contribution (rag/bm25.py's formula)."""
        n, kb = self.kb.n_chunks, self.kb
        return {
            t: c
            * unit_weight(t, kb.bm25_unigram_weight)
            * math.log((n - df[t] + 0.5) / (df[t] + 0.5) + 1.0)
            * (kb.bm25_k1 + 1)
            for t, c in counts.items()
        }

    def _params(self, weights: dict[str, float]) -> dict:
        return {
            "terms": list(weights),
            "w": list(weights.values()),
            "k1": self.kb.bm25_k1,
            "b": self.kb.bm25_b,
            "avgdl": max(self.kb.total_len / max(self.kb.n_chunks, 1), 1e-9),
            "kb": self.kb.id,
        }

    def bm25_search(self, query: str, k: int) -> list[tuple[str, float]]:
        if self.kb.n_chunks == 0:
            return []
        with self._connection() as conn:
            counts, df = self._query_terms(conn, query)
            if not counts:
                return []
            weights = self._weights(counts, df)
            params = {**self._params(weights), "k": k}
            order = sorted(counts, key=lambda t: (df[t], t))
            rare, read = [], 0
            for term in order:
                if rare and read + df[term] > ESSENTIAL_POSTINGS:
                    break
                rare.append(term)
                read += df[term]
            common = order[len(rare) :]
            if not common:
                rows = conn.execute(_BM25_FULL, {**params, "rare": rare}).fetchall()
                return [(c, float(s)) for c, s in rows]
            m = max(CANDIDATES, k)
            rows = conn.execute(
                _BM25_TWO_PHASE, {**params, "rare": rare, "common": common, "m": m}
            ).fetchall()
        hits = [(c, float(s)) for c, s in rows if c is not None]
        last_candidate = next((s for c, s in rows if c is None), 0.0)
        bound = last_candidate + sum(weights[t] for t in common)
        self.last_exact = len(hits) == k and hits[-1][1] >= bound
        return hits

    def bm25_scores(self, query: str, chunk_ids: list[str]) -> list[float]:
        if not chunk_ids or self.kb.n_chunks == 0:
            return [0.0] * len(chunk_ids)
        with self._connection() as conn:
            counts, df = self._query_terms(conn, query)
            if not counts:
                return [0.0] * len(chunk_ids)
            weights = self._weights(counts, df)
            rows = conn.execute(
                "SELECT c.chunk_id, p.term, p.tf, p.dl FROM xiaophi_chunks c "
                "JOIN xiaophi_postings p ON p.kb_id = c.kb_id AND p.row_id = c.row_id "
                "WHERE c.kb_id = %s AND c.chunk_id = ANY(%s) AND p.term = ANY(%s)",
                (self.kb.id, chunk_ids, list(weights)),
            ).fetchall()
        p = self._params(weights)
        scores = dict.fromkeys(chunk_ids, 0.0)
        for chunk_id, term, tf, dl in rows:
            norm = p["k1"] * (1 - p["b"] + p["b"] * dl / p["avgdl"])
            scores[chunk_id] += weights[term] * tf / (tf + norm)
        return [scores[c] for c in chunk_ids]

    # -- dense ---------------------------------------------------------------------------
    def dense_search(self, query_vector: list[float], k: int) -> list[tuple[str, float]]:
        if not self.kb.dim or self.kb.n_chunks == 0:
            return []
        dim = sql.Literal(self.kb.dim)
        distance = sql.SQL("embedding::vector({dim}) <=> %(q)s::vector({dim})").format(dim=dim)
        query = sql.SQL(
            "SELECT chunk_id, 1 - ({d}) FROM xiaophi_chunks WHERE kb_id = {kb} AND "
            "vector_dims(embedding) = {dim} ORDER BY {d} LIMIT %(k)s"
        ).format(d=distance, kb=sql.Literal(self.kb.id), dim=dim)
        with self._connection() as conn, conn.transaction():
            # HNSW returns at most ef_search rows: room for k of them
            conn.execute(
                sql.SQL("SET LOCAL hnsw.ef_search = {}").format(
                    sql.Literal(min(1000, max(HNSW_EF_SEARCH, 2 * k)))
                )
            )
            rows = conn.execute(query, {"q": vector_text(query_vector), "k": k}).fetchall()
        return [(c, float(s)) for c, s in rows]

    def dense_scores(self, query_vector: list[float], chunk_ids: list[str]) -> list[float]:
        if not chunk_ids or not self.kb.dim:
            return [0.0] * len(chunk_ids)
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT chunk_id, 1 - (embedding <=> %s::vector) FROM xiaophi_chunks "
                "WHERE kb_id = %s AND chunk_id = ANY(%s)",
                (vector_text(query_vector), self.kb.id, chunk_ids),
            ).fetchall()
        found = {c: float(s) for c, s in rows}
        return [found.get(c, 0.0) for c in chunk_ids]

    # -- chunks --------------------------------------------------------------------------
    def chunks(self, chunk_ids: Sequence[str]) -> dict[str, Document]:
        if not chunk_ids:
            return {}
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT chunk_id, text, metadata FROM xiaophi_chunks "
                "WHERE kb_id = %s AND chunk_id = ANY(%s)",
                (self.kb.id, list(chunk_ids)),
            ).fetchall()
        return {c: Document(page_content=t, metadata=m, id=c) for c, t, m in rows}

    def chunk(self, chunk_id: str) -> Document | None:
        return self.chunks([chunk_id]).get(chunk_id)
