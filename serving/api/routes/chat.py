"""`POST /v1/chat/completions` (stream or not)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from serving.api.deps import ServiceDep
from serving.api.sse import EventStreamResponse
from serving.schemas import ChatCompletion, ChatRequest

router = APIRouter(prefix="/v1", tags=["chat"])


@router.post("/chat/completions", response_model=ChatCompletion)
async def chat_completions(body: ChatRequest, service: ServiceDep):
    result = await service.chat(body)
    if body.stream:
        return EventStreamResponse(result)
    return JSONResponse(result.model_dump())
