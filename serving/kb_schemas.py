"""Request and response bodies of the knowledge-base routes (`/v1/knowledge_bases`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from rag.models import (
    MAX_KBS_PER_SEARCH,
    MAX_QUERY_CHARS,
    DocumentInfo,
    FileResult,
    KnowledgeBaseInfo,
    SearchHit,
)
from rag.names import KB_NAME_PATTERN, MAX_KB_NAME
from serving.schemas import ErrorResponse


class UploadRejected(ErrorResponse):
    """No file of an upload was added: the error, and each file's result when files were read."""

    results: list[FileResult] | None = None


class CreateKnowledgeBase(BaseModel):
    # documented, checked (with a message saying what to change) by rag/names.py
    name: str = Field(
        description="Letters (any script), digits, `_`, `-` and single dots; at most 64.",
        json_schema_extra={"pattern": KB_NAME_PATTERN, "minLength": 1, "maxLength": MAX_KB_NAME},
    )


class SearchRequest(BaseModel):
    # limits documented here, checked (with messages saying what to change) by the KB service
    query: str = Field(json_schema_extra={"minLength": 1, "maxLength": MAX_QUERY_CHARS})
    top_k: int | None = Field(
        None,
        description="Passages to return (default from settings).",
        json_schema_extra={"minimum": 1, "maximum": 100},
    )
    mode: Literal["hybrid", "bm25", "dense"] = "hybrid"


class MultiSearchRequest(SearchRequest):
    """A search of several knowledge bases at once, ranked together (what a chat with several
    `knowledge_base` names retrieves)."""

    knowledge_bases: list[str] = Field(
        description="Knowledge-base names, each once (1 to 8).",
        json_schema_extra={"minItems": 1, "maxItems": MAX_KBS_PER_SEARCH},
    )


class KnowledgeBaseList(BaseModel):
    object: Literal["list"] = "list"
    data: list[KnowledgeBaseInfo]


class DocumentList(BaseModel):
    object: Literal["list"] = "list"
    data: list[DocumentInfo]


class SearchHitList(BaseModel):
    object: Literal["list"] = "list"
    data: list[SearchHit]


class DeletedKnowledgeBase(BaseModel):
    name: str
    deleted: bool = True


class DeletedDocument(DocumentInfo):
    deleted: bool = True
