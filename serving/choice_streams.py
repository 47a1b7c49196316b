"""The choices of one request: their engine streams merged into one, closed together, and
gathered into whole answers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from serving.engine.base import DeltaStream, GenerationDelta, TokenLogprob
from serving.errors import GenerationFailedError

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


@dataclass
class Outcome:
    """One choice's whole answer, gathered from its deltas."""

    text: str = ""
    reason: str = "stop"
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None


async def collect_outcomes(choices: list[Choice]) -> tuple[list[Outcome], int]:
    """Every choice's whole answer, and the tokens they generated together."""
    outcomes = [Outcome() for _ in choices]
    completion_tokens = 0
    async with contextlib.aclosing(merge_choices(choices)) as deltas:
        async for index, delta in deltas:
            outcome = outcomes[index]
            outcome.text += delta.text
            outcome.token_ids += delta.token_ids
            if delta.logprobs is not None:
                outcome.logprobs = (outcome.logprobs or []) + delta.logprobs
            if delta.prompt_logprobs is not None:
                outcome.prompt_logprobs = delta.prompt_logprobs
            if delta.finish_reason is not None:
                outcome.reason = public_reason(delta)
                completion_tokens += delta.completion_tokens
    return outcomes, completion_tokens


def public_reason(delta: GenerationDelta) -> str:
    """A last delta's finish reason as the API says it; an error or cancellation raises."""
    if delta.finish_reason == "error":
        raise GenerationFailedError(delta.error or "generation failed", delta.status, delta.code)
    if delta.finish_reason == "cancelled":
        raise GenerationFailedError("generation was cancelled by the server")
    return delta.finish_reason
