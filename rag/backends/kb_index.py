"""One knowledge base in memory: its manifest, the LangChain FAISS store and the BM25 index."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from langchain_community.vectorstores import FAISS
from langchain_community.vectorstores.utils import DistanceStrategy
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings

from rag.bm25 import BM25Index
from rag.models import Manifest, StoredDocument


@dataclass
class KBIndex:
    """Manifest plus the two searchable indexes over the same chunk ids."""

    manifest: Manifest
    vectors: FAISS | None
    bm25: BM25Index
    version: str = ""
    _faiss_rows: dict[str, int] | None = field(default=None, repr=False)

    @classmethod
    def empty(cls, manifest: Manifest) -> KBIndex:
        """No chunks yet: FAISS is made by the first chunks added (it needs their dimension)."""
        return cls(manifest=manifest, vectors=None, bm25=BM25Index(manifest.bm25_tokenizer))

    @property
    def documents(self) -> list[StoredDocument]:
        return self.manifest.documents

    @property
    def embedding_model(self) -> str | None:
        return self.manifest.embedding_model

    @property
    def has_documents(self) -> bool:
        return bool(self.manifest.documents)

    @property
    def vector_count(self) -> int:
        return len(self.vectors.index_to_docstore_id) if self.vectors is not None else 0

    def chunks(self, chunk_ids: Sequence[str]) -> dict[str, Document]:
        if self.vectors is None:
            return {}
        return {doc.id: doc for doc in self.vectors.get_by_ids(list(chunk_ids))}

    def chunk(self, chunk_id: str) -> Document | None:
        return self.chunks([chunk_id]).get(chunk_id)

    def add_chunks(
        self, chunks: list[Document], vectors: list[list[float]], embeddings: Embeddings
    ) -> None:
        ids = [c.metadata["chunk_id"] for c in chunks]
        pairs = list(zip([c.page_content for c in chunks], vectors, strict=True))
        metadatas = [c.metadata for c in chunks]
        if self.vectors is None:
            # inner product: our vectors are normalised, so it is the cosine
            self.vectors = FAISS.from_embeddings(
                pairs,
                embeddings,
                metadatas=metadatas,
                ids=ids,
                distance_strategy=DistanceStrategy.MAX_INNER_PRODUCT,
            )
        else:
            self.vectors.add_embeddings(pairs, metadatas=metadatas, ids=ids)
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
        """The vectors stored for `chunk_ids`, one row each.

        LangChain's FAISS wrapper has no way to hand back a stored vector, so this one method
        reads the faiss index it wraps, through the id → row map the wrapper keeps beside it."""
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
        if self.vector_count == 0:
            return []
        hits = self.vectors.similarity_search_with_score_by_vector(
            query_vector, k=min(k, self.vector_count)
        )
        return [(doc.id, float(score)) for doc, score in hits]
