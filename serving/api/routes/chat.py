"""`POST /v1/chat/completions` (stream or not)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from serving.api.deps import ServiceDep
from serving.api.generation import generation_response
from serving.api.openapi import STREAMED_OK, error_responses
from serving.schemas import ChatCompletion, ChatRequest

router = APIRouter(prefix="/v1", tags=["chat"], responses=error_responses(400, 404, 413, 429, 503))


@router.post("/chat/completions", response_model=ChatCompletion, responses=STREAMED_OK)
async def chat_completions(body: ChatRequest, service: ServiceDep, request: Request) -> Response:
    return await generation_response(request, body, service.chat, service.stream_chat)
