"""What every token-producing engine shares: admission, per-request streams, text, cancellation.

A `QueuedEngine` runs at most `max_running` requests and queues up to `max_waiting` behind
them (beyond that `submit` raises `QueueFullError`, which the API turns into a 429). Each
request gets a `RequestSlot`; the backend reports its new token ids with `_deliver` (on the
event loop), which turns them into clean text deltas (`TextStream`: whole characters, stop
strings cut) and finishes the request on EOS, a stop string or the backend's own end. A
subclass only says how to start generating for a slot (`_launch`) and how to stop (`_abort`).
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from abc import abstractmethod
from collections import deque
from dataclasses import dataclass, field

from serving.engine.base import (
    Engine,
    EngineNotReadyError,
    EngineRequest,
    EngineStats,
    FinishReason,
    GenerationDelta,
    QueueFullError,
    SamplingParams,
)
from serving.engine.request_sampler import RowSampling, seeded_generator
from serving.engine.text_stream import TextStream


def model_eos_token_ids(model) -> set[int]:
    """The ids that end generation: the model's generation config holds one id, a list, or none."""
    eos = model.generation_config.eos_token_id
    return set(eos if isinstance(eos, list) else [eos] if eos is not None else [])


def batch_token_budget(max_batch_tokens: int | None, context_length: int) -> int:
    """Tokens per forward pass that takes in prompts: as configured, else max(context, 512)."""
    return max_batch_tokens or max(context_length, 512)


@dataclass
class RequestSlot:
    """One request's life inside an engine (touched on the event loop only)."""

    request: EngineRequest
    engine_id: str
    text: TextStream
    sampling: RowSampling
    seed: int  # the request's seed, or a random one: its sampled tokens come from this stream
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    tokens_seen: int = 0
    running: bool = False
    done: bool = False


class QueuedEngine(Engine):
    def __init__(
        self, tokenizer, *, context_length: int, eos_token_ids, max_running: int, max_waiting: int
    ) -> None:
        self.tokenizer = tokenizer
        self.context_length = int(context_length)
        self.eos_token_ids: set[int] = set(eos_token_ids)
        self.max_running = max_running
        self.max_waiting = max_waiting
        self._slots: dict[str, RequestSlot] = {}
        self._waiting: deque[RequestSlot] = deque()
        self._running: set[str] = set()
        self._ids = itertools.count()

    # ------------------------------------------------------------------ backend hooks
    @abstractmethod
    def _launch(self, slot: RequestSlot) -> None:
        """Start generating for `slot` (called on the event loop, within `max_running`)."""

    @abstractmethod
    def _abort(self, slot: RequestSlot) -> None:
        """Stop generating for a launched `slot` that is not finished on the backend's side."""

    # ------------------------------------------------------------------ Engine
    def stats(self) -> EngineStats:
        return EngineStats(running=len(self._running), waiting=len(self._waiting))

    def submit(self, request: EngineRequest) -> SlotStream:
        if not self.is_ready:
            raise EngineNotReadyError(self.unavailable_reason)
        if len(self._running) >= self.max_running and len(self._waiting) >= self.max_waiting:
            raise QueueFullError(
                f"{len(self._running)} requests running and {len(self._waiting)} waiting; retry later"
            )
        seed = request.params.seed
        if seed is None:
            seed = secrets.randbits(63)
        generator = seeded_generator(request.params, seed)
        slot = RequestSlot(
            request=request,
            engine_id=f"{request.request_id}#{next(self._ids)}",
            text=TextStream(self.tokenizer, request.params.stop),
            sampling=RowSampling(request.params, generator),
            seed=seed,
        )
        self._slots[slot.engine_id] = slot
        if len(self._running) < self.max_running:
            self._start(slot)
        else:
            self._waiting.append(slot)
        return SlotStream(self, slot)

    async def cancel(self, request_id: str) -> None:
        for slot in [s for s in self._slots.values() if s.request.request_id == request_id]:
            self._cancel_slot(slot)

    async def _warm_up(self) -> None:
        prompt = self.tokenizer("warm up")["input_ids"] or [0]
        stream = self.submit(EngineRequest("warmup", prompt, SamplingParams(max_new_tokens=2)))
        async for _ in stream:
            pass

    # ------------------------------------------------------------------ bookkeeping
    def _start(self, slot: RequestSlot) -> None:
        slot.running = True
        self._running.add(slot.engine_id)
        self._launch(slot)

    def _deliver(self, slot: RequestSlot, new_tokens: list[int], finished: bool) -> None:
        """New token ids of `slot` from the backend; `finished`: the backend is done with it."""
        if slot.done:
            return
        slot.tokens_seen += len(new_tokens)
        hit_eos = bool(new_tokens) and new_tokens[-1] in self.eos_token_ids
        result = slot.text.push([t for t in new_tokens if t not in self.eos_token_ids])
        if result.stopped:
            self._finish(slot, "stop", text=result.text, token_ids=new_tokens, abort=not finished)
        elif finished or hit_eos:
            tail = slot.text.finish()
            reason: FinishReason = "stop" if hit_eos or tail.stopped else "length"
            self._finish(
                slot,
                reason,
                text=result.text + tail.text,
                token_ids=new_tokens,
                abort=not finished,
            )
        elif result.text or new_tokens:
            slot.queue.put_nowait(
                GenerationDelta(
                    text=result.text, token_ids=new_tokens, completion_tokens=slot.tokens_seen
                )
            )

    def _deliver_text(
        self, slot: RequestSlot, text: str, completion_tokens: int, finish: str | None
    ) -> None:
        """New text of `slot` from a backend that sends text (`finish`: its finish reason, if
        it is done); the same stop-string cut and finish reasons as for token ids."""
        if slot.done:
            return
        slot.tokens_seen = completion_tokens
        result = slot.text.push_text(text)
        if result.stopped:
            self._finish(slot, "stop", text=result.text, abort=finish is None)
        elif finish is not None:
            tail = slot.text.finish()
            reason: FinishReason = "stop" if finish == "stop" or tail.stopped else "length"
            self._finish(slot, reason, text=result.text + tail.text)
        elif result.text:
            slot.queue.put_nowait(
                GenerationDelta(text=result.text, completion_tokens=slot.tokens_seen)
            )

    def _dispatch(self, outputs: list[tuple[str, int, bool]]) -> None:
        """One step's new tokens, `(engine_id, token, finished)` each (token backends)."""
        for engine_id, token, finished in outputs:
            slot = self._slots.get(engine_id)
            if slot is not None:
                self._deliver(slot, [token], finished)

    def _cancel_slot(self, slot: RequestSlot) -> None:
        if not slot.done:
            self._finish(slot, "cancelled", abort=True)

    def _finish(
        self,
        slot: RequestSlot,
        reason: FinishReason,
        *,
        text: str = "",
        token_ids: list[int] | None = None,
        error: str | None = None,
        status: int | None = None,
        abort: bool = False,
    ) -> None:
        slot.done = True
        if slot.running and abort:
            self._abort(slot)
        if slot in self._waiting:
            self._waiting.remove(slot)
        self._running.discard(slot.engine_id)
        self._slots.pop(slot.engine_id, None)
        slot.queue.put_nowait(
            GenerationDelta(
                text=text,
                token_ids=token_ids or [],
                finish_reason=reason,
                error=error,
                status=status,
                completion_tokens=slot.tokens_seen,
            )
        )
        self._admit_waiting()

    def _fail_all(self, error: str) -> None:
        for slot in list(self._slots.values()):
            self._finish(slot, "error", error=error)

    def _admit_waiting(self) -> None:
        while self._waiting and len(self._running) < self.max_running and self.is_ready:
            self._start(self._waiting.popleft())


class SlotStream:
    """The deltas of one request; `aclose()` cancels it, whether iteration started or not."""

    def __init__(self, engine: QueuedEngine, slot: RequestSlot) -> None:
        self._engine = engine
        self._slot = slot
        self._ended = False

    def __aiter__(self) -> SlotStream:
        return self

    async def __anext__(self) -> GenerationDelta:
        if self._ended:
            raise StopAsyncIteration
        delta = await self._slot.queue.get()
        # A consumer that fell behind gets everything pending as one delta (fewer SSE events).
        while delta.finish_reason is None and not self._slot.queue.empty():
            delta = join_deltas(delta, self._slot.queue.get_nowait())
        if delta.finish_reason is not None:
            self._ended = True
        return delta

    async def aclose(self) -> None:
        self._ended = True
        self._engine._cancel_slot(self._slot)


def join_deltas(first: GenerationDelta, second: GenerationDelta) -> GenerationDelta:
    return GenerationDelta(
        text=first.text + second.text,
        token_ids=first.token_ids + second.token_ids,
        finish_reason=second.finish_reason,
        error=second.error,
        status=second.status,
        completion_tokens=second.completion_tokens,
    )
