"""One knowledge base in memory: its manifest, the LangChain FAISS store and the BM25 index."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from langchain_community.docstore.in_memory import InMemoryDocstore
from langchain_community.vectorstores import FAISS
from langchain_community.vectorstores.utils import DistanceStrategy
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings

from rag.bm25 import BM25Index


def empty_faiss(embeddings: Embeddings, dim: int) -> FAISS:
    """A FAISS store scoring by inner product (our vectors are normalised, so: cosine)."""
    import faiss

    return FAISS(
        embedding_function=embeddings,
        index=faiss.IndexFlatIP(dim),
        docstore=InMemoryDocstore(),
        index_to_docstore_id={},
        distance_strategy=DistanceStrategy.MAX_INNER_PRODUCT,
    )


@dataclass
class KBIndex:
    """Manifest (plain JSON data) plus the two searchable indexes over the same chunk ids."""

    manifest: dict
    vectors: FAISS | None
    bm25: BM25Index
    version: str = ""
    _chunks_by_doc: dict[str, list[str]] = field(default_factory=dict, repr=False)
    _faiss_rows: dict[str, int] | None = field(default=None, repr=False)

    @property
    def documents(self) -> list[dict]:
        return self.manifest["documents"]

    @property
    def embedding_model(self) -> str | None:
        return self.manifest.get("embedding_model")

    @property
    def has_documents(self) -> bool:
        return bool(self.manifest["documents"])

    def chunks(self, chunk_ids: Sequence[str]) -> dict[str, Document]:
        found = {chunk_id: self.chunk(chunk_id) for chunk_id in chunk_ids}
        return {chunk_id: doc for chunk_id, doc in found.items() if doc is not None}

    def chunk(self, chunk_id: str) -> Document | None:
        if self.vectors is None:
            return None
        found = self.vectors.docstore.search(chunk_id)
        return found if isinstance(found, Document) else None

    def add_chunks(
        self, chunks: list[Document], vectors: list[list[float]], embeddings: Embeddings
    ) -> None:
        ids = [c.metadata["chunk_id"] for c in chunks]
        if self.vectors is None:
            self.vectors = empty_faiss(embeddings, len(vectors[0]))
        self.vectors.add_embeddings(
            list(zip([c.page_content for c in chunks], vectors, strict=True)),
            metadatas=[c.metadata for c in chunks],
            ids=ids,
        )
        self.bm25.add(ids, [c.page_content for c in chunks])
        self._faiss_rows = None

    def remove_chunks(self, chunk_ids: list[str]) -> None:
        if chunk_ids and self.vectors is not None:
            self.vectors.delete(chunk_ids)
        self.bm25.remove(set(chunk_ids))
        self._faiss_rows = None

    def bm25_search(self, query: str, k: int) -> list[tuple[str, float]]:
        return self.bm25.search(query, k)

    def bm25_scores(self, query: str, chunk_ids: list[str]) -> list[float]:
        return self.bm25.scores(query, chunk_ids)

    def stored_vectors(self, chunk_ids: Sequence[str]) -> np.ndarray:
        """The vectors stored for `chunk_ids`, one row each."""
        if self._faiss_rows is None:
            mapping = self.vectors.index_to_docstore_id
            self._faiss_rows = {chunk_id: row for row, chunk_id in mapping.items()}
        rows = np.asarray([self._faiss_rows[c] for c in chunk_ids], dtype=np.int64)
        return self.vectors.index.reconstruct_batch(rows)

    def dense_scores(self, query_vector: list[float], chunk_ids: list[str]) -> list[float]:
        """Inner product of the query with each chunk's stored vector (cosine: both normalised)."""
        if not chunk_ids:
            return []
        vectors = self.stored_vectors(chunk_ids)
        return [float(v) for v in vectors @ np.asarray(query_vector, dtype=np.float32)]

    def dense_search(self, query_vector: list[float], k: int) -> list[tuple[str, float]]:
        if self.vectors is None or self.vectors.index.ntotal == 0:
            return []
        k = min(k, self.vectors.index.ntotal)
        scores, rows = self.vectors.index.search(np.asarray([query_vector], dtype=np.float32), k)
        mapping = self.vectors.index_to_docstore_id
        return [
            (mapping[int(r)], float(s)) for s, r in zip(scores[0], rows[0], strict=True) if r >= 0
        ]
