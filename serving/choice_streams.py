"""The choices of one request: their engine streams merged into one, and closed together."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from serving.engine.base import DeltaStream, GenerationDelta

T = TypeVar("T")


@dataclass
class Choice:
    """One choice of a request as the engine runs it."""

    index: int
    prompt_ids: list[int]
    stream: DeltaStream


class ChunkStream(Generic[T]):
    """Response chunks; `aclose()` cancels every choice, even if iteration never started."""

    def __init__(self, chunks: AsyncIterator[T], choices: list[Choice]) -> None:
        self._chunks = chunks
        self._choices = choices

    def __aiter__(self) -> ChunkStream[T]:
        return self

    async def __anext__(self) -> T:
        return await self._chunks.__anext__()

    async def aclose(self) -> None:
        await self._chunks.aclose()
        for choice in self._choices:
            await choice.stream.aclose()


async def merge_choices(choices: list[Choice]) -> AsyncIterator[tuple[int, GenerationDelta]]:
    """Deltas of all choices as they come; closing this closes (cancels) every choice."""
    if len(choices) == 1:
        try:
            async for delta in choices[0].stream:
                yield 0, delta
        finally:
            await choices[0].stream.aclose()
        return
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(choice: Choice) -> None:
        try:
            async for delta in choice.stream:
                await queue.put((choice.index, delta))
        finally:
            await queue.put((choice.index, done))

    tasks = [asyncio.create_task(pump(c)) for c in choices]
    try:
        remaining = len(tasks)
        while remaining:
            index, item = await queue.get()
            if item is done:
                remaining -= 1
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)
        for choice in choices:
            await choice.stream.aclose()


def close_soon(stream: DeltaStream) -> None:
    """Cancel `stream` from synchronous code (a task on the running loop closes it)."""
    asyncio.get_running_loop().create_task(stream.aclose())
