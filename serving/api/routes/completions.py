"""`POST /v1/completions`: plain text continuation (stream or not)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from serving.api.deps import ServiceDep
from serving.api.disconnect import unless_disconnected
from serving.api.openapi import STREAMED_OK, error_responses
from serving.api.sse import EventStreamResponse
from serving.schemas import Completion, CompletionRequest

router = APIRouter(
    prefix="/v1", tags=["completions"], responses=error_responses(400, 404, 413, 429, 503)
)


@router.post("/completions", response_model=Completion, responses=STREAMED_OK)
async def completions(body: CompletionRequest, service: ServiceDep, request: Request):
    if body.stream:
        # every choice is queued before the 200 goes out, so a refusal is still a real status
        return EventStreamResponse(await service.complete(body))
    result = await unless_disconnected(request, service.complete(body))
    return result if isinstance(result, Response) else JSONResponse(result.model_dump())
