"""Hybrid retrieval: BM25 and dense rankings fused into one (`hybrid_search`), and the same
as a LangChain retriever (`HybridRetriever`).

Two fusions, both weighted by `bm25_weight` / `dense_weight`:
- `convex` (default): the candidates are both retrievers' `fetch_k` hits together, and each
  retriever scores every one of them (`score_union`: a chunk one retriever did not return gets
  its real score there, not a guess); each retriever's scores are min-max normalised to [0, 1]
  over the candidates and the weighted sum ranks. It uses how confident each retriever is, so a
  clear BM25 winner is not pulled down by a weak dense vote, while near ties are broken by the
  other retriever.
- `rrf`: reciprocal-rank fusion, score = Σ weight / (rrf_k + rank); only ranks count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.retrievers import BaseRetriever
from pydantic import BaseModel, ConfigDict

from rag.backends.base import SearchIndex
from rag.rerank import Reranker, rerank

Mode = Literal["hybrid", "bm25", "dense"]
Fusion = Literal["convex", "rrf"]


def reciprocal_rank_fusion(
    rankings: list[tuple[list[str], float]], rrf_k: int = 60
) -> list[tuple[str, float]]:
    """Fuse (ids best-first, weight) rankings: score(id) = Σ weight / (rrf_k + rank), rank from 1."""
    scores: dict[str, float] = {}
    for ids, weight in rankings:
        for rank, chunk_id in enumerate(ids, start=1):
            scores[chunk_id] = scores.get(chunk_id, 0.0) + weight / (rrf_k + rank)
    return sorted(scores.items(), key=lambda item: item[1], reverse=True)


def convex_fusion(runs: list[tuple[list[tuple[str, float]], float]]) -> list[tuple[str, float]]:
    """Fuse (hits best-first as (id, score), weight) runs: score(id) = Σ weight · norm(score).

    A run's scores are min-max normalised over its own hits (best → 1, worst → 0; all equal →
    1); a chunk missing from a run gets 0 from it. Ties keep the order of first appearance.
    """
    scores: dict[str, float] = {}
    for hits, weight in runs:
        if not hits or weight <= 0:
            continue
        values = [s for _, s in hits]
        top, bottom = max(values), min(values)
        span = top - bottom
        for chunk_id, value in hits:
            norm = (value - bottom) / span if span > 0 else 1.0
            scores[chunk_id] = scores.get(chunk_id, 0.0) + weight * norm
    return sorted(scores.items(), key=lambda item: item[1], reverse=True)


def score_union(
    index: SearchIndex,
    query: str,
    query_vector: list[float],
    bm25: list[tuple[str, float]],
    dense: list[tuple[str, float]],
) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """(bm25, dense) hits extended so both cover every chunk either returned: a chunk only
    the other retriever found is appended with its exact score (BM25 0.0 when no term matches).
    """
    in_bm25, in_dense = {i for i, _ in bm25}, {i for i, _ in dense}
    only_dense = [i for i, _ in dense if i not in in_bm25]
    only_bm25 = [i for i, _ in bm25 if i not in in_dense]
    bm25_all = bm25 + list(zip(only_dense, index.bm25_scores(query, only_dense), strict=True))
    dense_all = dense + list(
        zip(only_bm25, index.dense_scores(query_vector, only_bm25), strict=True)
    )
    return bm25_all, dense_all


def fuse(
    bm25: list[tuple[str, float]],
    dense: list[tuple[str, float]],
    fusion: Fusion = "convex",
    bm25_weight: float = 1.0,
    dense_weight: float = 1.0,
    rrf_k: int = 60,
) -> list[tuple[str, float]]:
    """One hybrid ranking from the BM25 and dense hits (each best-first (id, score))."""
    if fusion == "rrf":
        return reciprocal_rank_fusion(
            [([i for i, _ in bm25], bm25_weight), ([i for i, _ in dense], dense_weight)], rrf_k
        )
    if fusion == "convex":
        return convex_fusion([(bm25, bm25_weight), (dense, dense_weight)])
    raise ValueError(f"unknown fusion {fusion!r}; use convex or rrf.")


class SearchOptions(BaseModel):
    """How many chunks a search returns and how it ranks them."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    k: int = 5
    fetch_k: int = 50
    fusion: Fusion = "convex"
    rrf_k: int = 60
    bm25_weight: float = 1.0
    dense_weight: float = 1.0
    mode: Mode = "hybrid"
    reranker: Reranker | None = None
    rerank_top_n: int = 30
    rerank_weight: float = 1.0


@dataclass
class Ranked:
    """One chunk a search returned, as stored, with how it ranked."""

    chunk_id: str
    chunk: Document
    score: float
    bm25_rank: int | None
    dense_rank: int | None


def hybrid_search(
    index: SearchIndex, embeddings: Embeddings, query: str, options: SearchOptions
) -> list[Ranked]:
    """The `options.k` best chunks of `index` for `query`, best first.

    `score` is higher for better: the fused score in hybrid mode, the BM25 score or the cosine
    similarity in single modes. `bm25_rank` and `dense_rank` are 1-based, None when that
    retriever did not return the chunk in its `fetch_k`. With a `reranker` (hybrid mode only)
    the fused ranking's first `rerank_top_n` chunks are rescored (rag/rerank.py) and `score`
    is the reranked score.
    """
    return [ranked for _, ranked in pooled_search({"": index}, embeddings, query, options)]


def pooled_search(
    indexes: dict[str, SearchIndex], embeddings: Embeddings, query: str, options: SearchOptions
) -> list[tuple[str, Ranked]]:
    """(name, chunk) of the `options.k` best chunks of several indexes ranked as one, best
    first: each index's BM25 and dense candidates, with their raw scores (BM25 scores from each
    index's own term statistics; cosine similarities of one embedder, which compare across
    indexes), pooled into one BM25 run and one dense run, then fused as `hybrid_search` fuses
    one index's. One index: exactly `hybrid_search`. Ranks are within each index."""
    o = options
    fetch = max(o.fetch_k, o.k)
    use_bm25 = o.mode == "bm25" or (o.mode == "hybrid" and o.bm25_weight > 0)
    use_dense = o.mode == "dense" or (o.mode == "hybrid" and o.dense_weight > 0)
    query_vector = embeddings.embed_query(query) if use_dense else None
    bm25_all: list = []
    dense_all: list = []
    bm25_rank: dict[tuple[str, str], int] = {}
    dense_rank: dict[tuple[str, str], int] = {}
    for name, index in indexes.items():
        bm25 = index.bm25_search(query, fetch) if use_bm25 else []
        dense = index.dense_search(query_vector, fetch) if use_dense else []
        bm25_rank.update({(name, c): r for r, (c, _) in enumerate(bm25, start=1)})
        dense_rank.update({(name, c): r for r, (c, _) in enumerate(dense, start=1)})
        if o.mode == "hybrid" and o.fusion == "convex" and bm25 and dense:
            bm25, dense = score_union(index, query, query_vector, bm25, dense)
        bm25_all += [((name, c), score) for c, score in bm25]
        dense_all += [((name, c), score) for c, score in dense]
    if len(indexes) > 1:  # one index's runs are in order already (a stable sort keeps ties)
        bm25_all.sort(key=lambda hit: hit[1], reverse=True)
        dense_all.sort(key=lambda hit: hit[1], reverse=True)
    if o.mode == "bm25":
        ranked = bm25_all
    elif o.mode == "dense":
        ranked = dense_all
    else:
        ranked = fuse(bm25_all, dense_all, o.fusion, o.bm25_weight, o.dense_weight, o.rrf_k)
        if o.reranker is not None:
            ranked = rerank(
                query,
                ranked,
                lambda keys: {k: d.page_content for k, d in _chunks(indexes, keys).items()},
                o.reranker,
                max(o.rerank_top_n, o.k),
                o.rerank_weight,
            )
    top = ranked[: o.k]
    found = _chunks(indexes, [key for key, _ in top])
    return [
        (key[0], Ranked(key[1], found[key], score, bm25_rank.get(key), dense_rank.get(key)))
        for key, score in top
        if key in found  # else removed by a writer since it was ranked
    ]


def _chunks(indexes: dict[str, SearchIndex], keys) -> dict[tuple[str, str], Document]:
    """The stored chunks of (index name, chunk id) keys, from each index."""
    out = {}
    for name, index in indexes.items():
        ids = [chunk_id for owner, chunk_id in keys if owner == name]
        if ids:
            out.update({(name, i): doc for i, doc in index.chunks(ids).items()})
    return out


class HybridRetriever(BaseRetriever, SearchOptions):
    """`hybrid_search` over one knowledge base as a LangChain retriever.

    Each Document is the stored chunk, its id the chunk id; its metadata gains `score`,
    `bm25_rank` and `dense_rank` (see `hybrid_search`).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    index: SearchIndex
    embeddings: Embeddings

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun | None = None
    ) -> list[Document]:
        return [
            Document(
                page_content=r.chunk.page_content,
                metadata={
                    **r.chunk.metadata,
                    "score": r.score,
                    "bm25_rank": r.bm25_rank,
                    "dense_rank": r.dense_rank,
                },
                id=r.chunk_id,
            )
            for r in hybrid_search(self.index, self.embeddings, query, self)
        ]
