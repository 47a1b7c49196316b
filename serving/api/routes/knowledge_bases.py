"""Knowledge-base routes: thin HTTP over `rag.service.KnowledgeBaseService`.

The service's blocking work (parsing, embedding, FAISS, file locks) runs in the thread pool;
its typed errors become OpenAI error bodies in errors.py (404, 400, 413, 409, 503).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Path, UploadFile
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from rag.models import AddResult, FileResult, KnowledgeBaseInfo, Upload
from rag.names import KB_NAME_PATTERN, MAX_KB_NAME
from serving.api.deps import KBServiceDep, SettingsDep
from serving.api.openapi import error_responses
from serving.errors import InvalidRequestError, error_body
from serving.kb_schemas import (
    CreateKnowledgeBase,
    DeletedDocument,
    DeletedKnowledgeBase,
    DocumentList,
    KnowledgeBaseList,
    MultiSearchRequest,
    SearchHitList,
    SearchRequest,
    UploadRejected,
)

router = APIRouter(prefix="/v1/knowledge_bases", tags=["knowledge bases"])

#: A KB name in a path: the rule rag/names.py applies, documented (the service checks it and
#: says what to change, so the route does not validate it a second time).
KBName = Annotated[
    str,
    Path(
        description="Knowledge-base name.",
        json_schema_extra={"pattern": KB_NAME_PATTERN, "minLength": 1, "maxLength": MAX_KB_NAME},
    ),
]


@router.get("")
async def list_knowledge_bases(kbs: KBServiceDep) -> KnowledgeBaseList:
    return KnowledgeBaseList(data=await run_in_threadpool(kbs.list_kbs))


@router.post("", status_code=201, responses=error_responses(400, 409))
async def create_knowledge_base(body: CreateKnowledgeBase, kbs: KBServiceDep) -> KnowledgeBaseInfo:
    return await run_in_threadpool(kbs.create_kb, body.name)


@router.post("/search", responses=error_responses(400, 404, 503))
async def search_several(body: MultiSearchRequest, kbs: KBServiceDep) -> SearchHitList:
    """Several knowledge bases searched as one (XIAOPHI_KB_MULTI_KB_FUSION); each hit names its
    knowledge base."""
    hits = await run_in_threadpool(
        kbs.search_many, body.knowledge_bases, body.query, body.top_k, body.mode
    )
    return SearchHitList(data=hits)


@router.get("/{kb}", responses=error_responses(400, 404))
async def get_knowledge_base(kb: KBName, kbs: KBServiceDep) -> KnowledgeBaseInfo:
    return await run_in_threadpool(kbs.get_kb, kb)


@router.delete("/{kb}", responses=error_responses(400, 404, 409))
async def delete_knowledge_base(kb: KBName, kbs: KBServiceDep) -> DeletedKnowledgeBase:
    await run_in_threadpool(kbs.delete_kb, kb)
    return DeletedKnowledgeBase(name=kb)


@router.get("/{kb}/documents", responses=error_responses(400, 404))
async def list_documents(kb: KBName, kbs: KBServiceDep) -> DocumentList:
    return DocumentList(data=await run_in_threadpool(kbs.list_documents, kb))


@router.post(
    "/{kb}/documents",
    response_model=AddResult,
    responses={
        **error_responses(404, 409, 503),
        400: {
            "model": UploadRejected,
            "description": "Every file was rejected (`results` says why, file by file), or "
            "the request itself is invalid (then without `results`).",
        },
        413: {
            "model": UploadRejected,
            "description": "Every file was too large (`results` names them), or the whole "
            "body is (then without `results`).",
        },
    },
)
async def upload_documents(
    kb: KBName,
    files: Annotated[
        list[UploadFile],
        File(description="One or more files (field `files`).", json_schema_extra={"minItems": 1}),
    ],
    kbs: KBServiceDep,
    settings: SettingsDep,
):
    if len(files) > settings.max_upload_files:
        raise InvalidRequestError(
            f"{len(files)} files in one request; upload at most {settings.max_upload_files} "
            "(XIAOPHI_MAX_UPLOAD_FILES).",
            param="files",
            code="too_many_files",
        )
    # One byte past the limit is enough for the service to tell the file is too large.
    read_at_most = kbs.settings.max_upload_bytes + 1
    uploads = [
        Upload(filename=file.filename or "", data=await file.read(read_at_most)) for file in files
    ]
    result = await run_in_threadpool(kbs.add_documents, kb, uploads)
    if any(r.status != "rejected" for r in result.results):
        return result
    return _all_rejected(result.results)


def _all_rejected(results: list[FileResult]) -> JSONResponse:
    """A 4xx naming every file and why, with the per-file results beside the error."""
    too_large = all(r.error == "too_large" for r in results)
    status = 413 if too_large else 400
    reasons = [
        r.reason if _names_file(r.reason or "", r.filename) else f"{r.filename}: {r.reason}"
        for r in results
    ]
    message = "No file was added. " + " ".join(reasons)
    body = error_body(
        status, message, param="files", code="files_too_large" if too_large else "files_rejected"
    )
    body["results"] = [r.model_dump() for r in results]
    return JSONResponse(body, status_code=status)


def _names_file(reason: str, filename: str) -> bool:
    return bool(filename) and (reason.startswith(filename) or repr(filename) in reason)


@router.delete("/{kb}/documents/{doc_id}", responses=error_responses(400, 404, 409))
async def delete_document(kb: KBName, doc_id: str, kbs: KBServiceDep) -> DeletedDocument:
    info = await run_in_threadpool(kbs.delete_document, kb, doc_id)
    return DeletedDocument(**info.model_dump())


@router.post("/{kb}/search", responses=error_responses(400, 404, 503))
async def search(kb: KBName, body: SearchRequest, kbs: KBServiceDep) -> SearchHitList:
    hits = await run_in_threadpool(kbs.search, kb, body.query, body.top_k, body.mode)
    return SearchHitList(data=hits)
