"""Hybrid retrieval as a LangChain retriever: BM25 and FAISS rankings fused by reciprocal rank."""

from __future__ import annotations

from typing import Literal

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict

from rag.kb_index import KBIndex

Mode = Literal["hybrid", "bm25", "dense"]


def reciprocal_rank_fusion(
    rankings: list[tuple[list[str], float]], rrf_k: int = 60
) -> list[tuple[str, float]]:
    """Fuse (ids best-first, weight) rankings: score(id) = Σ weight / (rrf_k + rank), rank from 1."""
    scores: dict[str, float] = {}
    for ids, weight in rankings:
        for rank, chunk_id in enumerate(ids, start=1):
            scores[chunk_id] = scores.get(chunk_id, 0.0) + weight / (rrf_k + rank)
    return sorted(scores.items(), key=lambda item: item[1], reverse=True)


class HybridRetriever(BaseRetriever):
    """Returns the `k` best chunks of one knowledge base for a query.

    Each Document's metadata gains `score` (higher is better: the fused RRF score in hybrid
    mode, the BM25 score or the cosine similarity in single modes), `bm25_rank` and `dense_rank`
    (1-based, None when that retriever did not return the chunk in its `fetch_k`).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    index: KBIndex
    embeddings: Embeddings
    k: int = 5
    fetch_k: int = 50
    rrf_k: int = 60
    bm25_weight: float = 1.0
    dense_weight: float = 1.0
    mode: Mode = "hybrid"

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun | None = None
    ) -> list[Document]:
        fetch = max(self.fetch_k, self.k)
        bm25 = []
        if self.mode == "bm25" or (self.mode == "hybrid" and self.bm25_weight > 0):
            bm25 = self.index.bm25_search(query, fetch)
        dense = []
        if self.mode == "dense" or (self.mode == "hybrid" and self.dense_weight > 0):
            dense = self.index.dense_search(self.embeddings.embed_query(query), fetch)
        if self.mode == "bm25":
            ranked = bm25
        elif self.mode == "dense":
            ranked = dense
        else:
            ranked = reciprocal_rank_fusion(
                [
                    ([i for i, _ in bm25], self.bm25_weight),
                    ([i for i, _ in dense], self.dense_weight),
                ],
                self.rrf_k,
            )
        bm25_rank = {chunk_id: r for r, (chunk_id, _) in enumerate(bm25, start=1)}
        dense_rank = {chunk_id: r for r, (chunk_id, _) in enumerate(dense, start=1)}
        out = []
        for chunk_id, score in ranked[: self.k]:
            chunk = self.index.chunk(chunk_id)
            if chunk is None:
                continue
            meta = {
                **chunk.metadata,
                "score": score,
                "bm25_rank": bm25_rank.get(chunk_id),
                "dense_rank": dense_rank.get(chunk_id),
            }
            out.append(Document(page_content=chunk.page_content, metadata=meta, id=chunk_id))
        return out
