"""`POST /v1/completions`: plain text continuation (stream or not)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from serving.api.deps import ServiceDep
from serving.api.generation import generation_response
from serving.api.openapi import STREAMED_OK, error_responses
from serving.schemas import Completion, CompletionRequest

router = APIRouter(
    prefix="/v1", tags=["completions"], responses=error_responses(400, 404, 413, 429, 503)
)


@router.post("/completions", response_model=Completion, responses=STREAMED_OK)
async def completions(body: CompletionRequest, service: ServiceDep, request: Request) -> Response:
    return await generation_response(request, body, service.complete, service.stream_complete)
