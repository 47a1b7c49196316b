"""The path every generation route shares: the request to the service, the answer as JSON or SSE."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from fastapi import Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from serving.api.disconnect import unless_disconnected
from serving.api.sse import EventStreamResponse
from serving.choice_streams import ChunkStream
from serving.schemas import SamplingFields

Body = TypeVar("Body", bound=SamplingFields)


async def generation_response(
    request: Request,
    body: Body,
    answer: Callable[[Body], Awaitable[BaseModel]],
    stream: Callable[[Body], Awaitable[ChunkStream]],
) -> Response:
    """`stream(body)` as server-sent events if the body asks to stream, else `answer(body)`
    as JSON, cancelled if the client hangs up first."""
    if body.stream:
        # every choice is queued before the 200 goes out, so a refusal is still a real status
        return EventStreamResponse(await stream(body))
    result = await unless_disconnected(request, answer(body))
    return result if isinstance(result, Response) else JSONResponse(result.model_dump())
