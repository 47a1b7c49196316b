"""`POST /v1/chat/completions` (stream or not)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from serving.api.deps import ServiceDep
from serving.api.disconnect import unless_disconnected
from serving.api.openapi import STREAMED_OK, error_responses
from serving.api.sse import EventStreamResponse
from serving.schemas import ChatCompletion, ChatRequest

router = APIRouter(prefix="/v1", tags=["chat"], responses=error_responses(400, 404, 413, 429, 503))


@router.post("/chat/completions", response_model=ChatCompletion, responses=STREAMED_OK)
async def chat_completions(body: ChatRequest, service: ServiceDep, request: Request):
    if body.stream:
        # every choice is queued before the 200 goes out, so a refusal is still a real status
        return EventStreamResponse(await service.chat(body))
    result = await unless_disconnected(request, service.chat(body))
    return result if isinstance(result, Response) else JSONResponse(result.model_dump())
