"""Where knowledge bases are kept: the seam between KnowledgeBaseService and its storage.

Two backends keep the same KBs with the same results:
- `local` (rag/backends/local.py): a folder per KB beside one server, FAISS and BM25 in memory,
  a file lock per KB for its one writer at a time. The embedded default.
- `postgres` (rag/backends/postgres.py): every KB in one PostgreSQL database with pgvector that
  any number of servers share; BM25 is computed in SQL, so no process loads a whole KB.

The service does everything that needs no storage (checking, parsing, splitting, embedding) and
hands the backend finished documents; a backend makes each write atomic and serialises the
writers of one KB.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from langchain_core.documents import Document

from rag.models import KnowledgeBaseInfo, Layout, StoredDocument


@dataclass
class NewDocument:
    """A parsed, split and embedded document, ready to be stored."""

    info: StoredDocument
    data: bytes  # the original file
    chunks: list[Document]  # metadata: chunk_id, doc_id, filename, chunk_index, start, end, page
    vectors: list[list[float]]


@dataclass
class KBHeader:
    """What a writer checks before it writes: who built the KB and whether it holds anything."""

    embedding_model: str | None
    documents: dict[str, str]  # id → filename


@runtime_checkable
class SearchIndex(Protocol):
    """What hybrid search (rag/hybrid_retriever.py) searches: one KB's lexical and dense
    indexes over the same chunks."""

    embedding_model: str | None
    has_documents: bool

    def bm25_search(self, query: str, k: int) -> list[tuple[str, float]]: ...
    def bm25_scores(self, query: str, chunk_ids: list[str]) -> list[float]: ...
    def dense_search(self, query_vector: list[float], k: int) -> list[tuple[str, float]]: ...
    def dense_scores(self, query_vector: list[float], chunk_ids: list[str]) -> list[float]: ...
    def chunks(self, chunk_ids: Sequence[str]) -> dict[str, Document]: ...


#: A reindex: (document record, original bytes) of every document → the rebuilt documents.
Rebuild = Callable[[list[tuple[StoredDocument, bytes]]], list[NewDocument]]


class KBBackend(Protocol):
    def create(self, name: str, layout: Layout) -> KnowledgeBaseInfo: ...
    def list(self) -> list[KnowledgeBaseInfo]: ...
    def info(self, name: str) -> KnowledgeBaseInfo: ...
    def delete(self, name: str) -> None: ...
    def documents(self, name: str) -> list[StoredDocument]: ...
    def header(self, name: str) -> KBHeader: ...
    def add(
        self,
        name: str,
        docs: Sequence[NewDocument],
        embedding_model: str,
        check: Callable[[str | None, bool], None],
    ) -> list[str]:
        """Store the documents not already in the KB, all in one commit; returns their ids.

        `check(embedding_model, has_documents)` runs first, under the KB's write lock."""
        ...

    def remove(self, name: str, doc_id: str) -> StoredDocument: ...
    def rebuild(self, name: str, layout: Layout, embedding_model: str, build: Rebuild) -> None: ...
    def search_index(self, name: str) -> SearchIndex: ...
    def counts(self, name: str) -> dict[str, int]:
        """documents, chunks, vectors and lexical rows as stored (they agree in a sound KB)."""
        ...

    def health(self) -> str | None:
        """None when the store answers, else what is wrong."""
        ...

    def close(self) -> None: ...
