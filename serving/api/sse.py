"""Server-sent events for streamed completions: `data: {json}` lines ending in `data: [DONE]`.

Frames are written here, not by sse-starlette: OpenAI's framing is bare `data:` lines only.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator

import anyio
from pydantic import BaseModel
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from serving.errors import body_for


async def sse_events(chunks) -> AsyncIterator[str]:
    """Chunks as SSE lines; a failure mid-stream becomes an error event, then the stream ends."""
    try:
        async for chunk in chunks:
            payload = chunk.model_dump_json() if isinstance(chunk, BaseModel) else json.dumps(chunk)
            yield f"data: {payload}\n\n"
    except Exception as exc:
        _, body = body_for(exc)
        yield f"data: {json.dumps(body, ensure_ascii=False)}\n\n"
    yield "data: [DONE]\n\n"


class EventStreamResponse(StreamingResponse):
    """Streams `chunks` and closes them the moment the client goes away.

    Starlette only notices a disconnect when a write fails; this also watches the connection
    while we wait for the next token, and always closes the chunk stream (cancelling its
    generation) when the response ends, however it ends.
    """

    media_type = "text/event-stream"

    def __init__(self, chunks) -> None:
        super().__init__(
            sse_events(chunks), headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        self._chunks = chunks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def stream() -> None:
                    with contextlib.suppress(OSError):  # the client is gone
                        await self.stream_response(send)
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                await self.listen_for_disconnect(receive)
                group.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()
                await self._chunks.aclose()
