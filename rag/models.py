"""What the knowledge-base service returns: plain pydantic models, ready to serialise as JSON."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


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
