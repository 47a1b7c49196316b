"""What the knowledge-base service returns and keeps: plain pydantic models, ready for JSON.

The API's models (KnowledgeBaseInfo, DocumentInfo, …) and, built on them, what a KB records of
itself (Layout, StoredDocument, and the local backend's Manifest).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

MAX_QUERY_CHARS = 2000  # a search query; a chat's retrieval query keeps its last this many
MAX_KBS_PER_SEARCH = 8  # knowledge bases one search (or one chat) may fuse


class Upload(BaseModel):
    """One file to add: its name as the user gave it and its bytes."""

    filename: str
    data: bytes


class KnowledgeBaseInfo(BaseModel):
    name: str
    documents: int
    chunks: int
    embedding_model: str | None
    created_at: float
    updated_at: float


class DocumentInfo(BaseModel):
    id: str
    filename: str
    sha256: str
    bytes: int
    chunks: int
    format: str
    encoding: str
    pages: int | None = None
    added_at: float


def chunk_id(doc_id: str, index: int) -> str:
    """The id of a document's `index`-th chunk."""
    return f"{doc_id}:{index}"


class StoredDocument(DocumentInfo):
    """A document as its KB records it: what the API shows, plus its original's extension."""

    extension: str

    @property
    def chunk_ids(self) -> list[str]:
        return [chunk_id(self.id, i) for i in range(self.chunks)]

    def public(self) -> DocumentInfo:
        return DocumentInfo.model_validate(self.model_dump(exclude={"extension"}))


class Layout(BaseModel):
    """How a KB's documents were split and tokenised; recorded when it is created or rebuilt."""

    bm25_tokenizer: str
    chunk_size: int
    chunk_overlap: int
    chunk_unit: str


class Manifest(Layout):
    """A local KB version's `manifest.json`: the KB, its layout and its documents."""

    name: str
    created_at: float
    updated_at: float
    embedding_model: str | None = None
    documents: list[StoredDocument] = Field(default_factory=list)
    faiss_pkl_sha256: str | None = None  # of faiss/index.pkl, checked before it is unpickled

    def info(self) -> KnowledgeBaseInfo:
        return KnowledgeBaseInfo(
            name=self.name,
            documents=len(self.documents),
            chunks=sum(d.chunks for d in self.documents),
            embedding_model=self.embedding_model,
            created_at=self.created_at,
            updated_at=self.updated_at,
        )


class FileResult(BaseModel):
    """The outcome for one uploaded file: added (with its chunks), duplicate, or rejected."""

    filename: str
    status: Literal["added", "duplicate", "rejected"]
    document: DocumentInfo | None = None
    duplicate_of: str | None = None
    error: str | None = None  # the KBError kind, e.g. invalid_input or too_large
    reason: str | None = None


class AddResult(BaseModel):
    knowledge_base: str
    results: list[FileResult]

    @property
    def added(self) -> list[FileResult]:
        return [r for r in self.results if r.status == "added"]


class SearchHit(BaseModel):
    knowledge_base: str
    chunk_id: str
    document_id: str
    filename: str
    chunk_index: int
    page: int | None = None
    start: int
    end: int
    text: str
    score: float
    bm25_rank: int | None = None
    dense_rank: int | None = None


class ReindexResult(BaseModel):
    knowledge_base: str
    documents: int
    chunks: int
    embedding_model: str
    seconds: float
