"""`POST /v1/completions`: plain text continuation (stream or not)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from serving.api.deps import ServiceDep
from serving.api.sse import EventStreamResponse
from serving.schemas import Completion, CompletionRequest

router = APIRouter(prefix="/v1", tags=["completions"])


@router.post("/completions", response_model=Completion)
async def completions(body: CompletionRequest, service: ServiceDep):
    result = await service.complete(body)
    if body.stream:
        return EventStreamResponse(result)
    return JSONResponse(result.model_dump())
