"""Stop work for a client that hung up before its (non-streamed) answer was ready."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request, Response

T = TypeVar("T")

CLIENT_CLOSED_REQUEST = 499  # nginx's status for "the client went away"; never seen by the client


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T | Response:
    """Await `work`; if the client disconnects first, cancel it (freeing its place in the engine)."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                task.cancel()
                return

    watcher = asyncio.create_task(watch())
    try:
        return await task
    except asyncio.CancelledError:
        if not watcher.done():
            raise  # cancelled from outside (shutdown): not ours to swallow
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
