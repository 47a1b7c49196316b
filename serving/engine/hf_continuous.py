"""First engine: transformers' continuous batching, with per-request sampling and cancellation.

transformers runs the batching loop in its own thread (paged KV cache, requests joining and
leaving between forward passes). This class adds what serving needs around it: a cache sized
from our limits (its default is sized from system RAM), a bounded waiting queue in front of
a fixed number of running slots, per-request sampling (`RequestSampler`), clean text deltas
with stop strings (`TextStream`), and cancellation that ends the stream at once (after
`cancel_request` transformers sends no final result).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
from collections import deque
from dataclasses import dataclass, field

import torch
from transformers import GenerationConfig
from transformers.generation.configuration_utils import ContinuousBatchingConfig
from transformers.generation.continuous_batching.cb_logits_processors import (
    ContinuousBatchingLogitsProcessorList,
)
from transformers.generation.logits_process import LogitsProcessorList

from serving.engine.base import (
    Engine,
    EngineNotReadyError,
    EngineRequest,
    EngineStats,
    FinishReason,
    GenerationDelta,
    QueueFullError,
)
from serving.engine.request_sampler import RequestSampler, RowSampling
from serving.engine.text_stream import TextStream

logger = logging.getLogger(__name__)


@dataclass
class _Slot:
    """One request's life inside the engine."""

    request: EngineRequest
    engine_id: str
    text: TextStream
    sampling: RowSampling
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    tokens_seen: int = 0
    running: bool = False
    done: bool = False


class HFContinuousEngine(Engine):
    def __init__(
        self,
        model,
        tokenizer,
        *,
        max_running: int = 32,
        max_waiting: int = 128,
        page_size: int = 32,
        max_batch_tokens: int | None = None,
        warmup: bool = True,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.context_length = int(model.config.max_position_embeddings)
        self.max_running = max_running
        self.max_waiting = max_waiting
        self._page_size = page_size
        self._max_batch_tokens = max_batch_tokens or max(self.context_length, 512)
        self._warmup = warmup
        eos = model.generation_config.eos_token_id
        self.eos_token_ids: set[int] = set(
            eos if isinstance(eos, list) else [eos] if eos is not None else []
        )
        self._manager = None
        self._slots: dict[str, _Slot] = {}
        self._waiting: deque[_Slot] = deque()
        self._running: set[str] = set()
        self._ids = itertools.count()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._manager = await asyncio.to_thread(self._build_manager)
        self._manager.start()
        if self._warmup:
            await self._warm_up()

    def _build_manager(self):
        # Every admitted request can hold a full context: no eviction, no surprise OOM.
        num_blocks = math.ceil(self.max_running * self.context_length / self._page_size) + 1
        cb_config = ContinuousBatchingConfig(
            page_size=self._page_size,
            num_blocks=num_blocks,
            max_batch_tokens=self._max_batch_tokens,
            max_requests_per_batch=self.max_running,
            # RequestSampler keeps Python state between batch preparation and sampling.
            use_async_batching=False,
            use_cuda_graph=False,
            allow_block_sharing=False,
        )
        generation_config = GenerationConfig(
            do_sample=False,  # the batch takes the argmax; RequestSampler decides what it sees
            eos_token_id=sorted(self.eos_token_ids) or -1,
            max_new_tokens=self.context_length,
        )
        manager = self.model.init_continuous_batching(
            generation_config=generation_config, continuous_batching_config=cb_config
        )
        processors = ContinuousBatchingLogitsProcessorList(
            LogitsProcessorList([RequestSampler(self._row_sampling)])
        )
        processors.tensors_required = 1  # one int32 argument row for RequestSampler
        manager.logit_processor = processors
        return manager

    async def _warm_up(self) -> None:
        from serving.engine.base import SamplingParams

        prompt = self.tokenizer("warm up")["input_ids"] or [0]
        stream = self.submit(EngineRequest("warmup", prompt, SamplingParams(max_new_tokens=2)))
        async for _ in stream:
            pass

    async def stop(self) -> None:
        for slot in list(self._slots.values()):
            self._finish(slot, "error", error="server is shutting down")
        if self._manager is not None:
            manager, self._manager = self._manager, None
            await asyncio.to_thread(manager.stop, True, 30)

    @property
    def is_ready(self) -> bool:
        manager = self._manager
        if manager is None or not manager.is_running():
            return False
        return manager.background_thread_status.fatal_error is None

    def stats(self) -> EngineStats:
        return EngineStats(running=len(self._running), waiting=len(self._waiting))

    # ------------------------------------------------------------------ requests
    def submit(self, request: EngineRequest) -> _SlotStream:
        if not self.is_ready:
            raise EngineNotReadyError("the model engine is not running")
        if len(self._running) >= self.max_running and len(self._waiting) >= self.max_waiting:
            raise QueueFullError(
                f"{len(self._running)} requests running and {len(self._waiting)} waiting; retry later"
            )
        generator = None
        if not request.params.greedy:
            generator = torch.Generator()
            if request.params.seed is not None:
                generator.manual_seed(request.params.seed)
            else:
                generator.seed()
        slot = _Slot(
            request=request,
            engine_id=f"{request.request_id}#{next(self._ids)}",
            text=TextStream(self.tokenizer, request.params.stop),
            sampling=RowSampling(request.params, generator),
        )
        self._slots[slot.engine_id] = slot
        if len(self._running) < self.max_running:
            self._launch(slot)
        else:
            self._waiting.append(slot)
        return _SlotStream(self, slot)

    async def cancel(self, request_id: str) -> None:
        for slot in [s for s in self._slots.values() if s.request.request_id == request_id]:
            self._cancel_slot(slot)

    def _row_sampling(self, engine_id: str) -> RowSampling | None:
        slot = self._slots.get(engine_id)  # read from the batching thread; dict.get is atomic
        return slot.sampling if slot is not None else None

    def _launch(self, slot: _Slot) -> None:
        slot.running = True
        self._running.add(slot.engine_id)
        self._manager.register_result_handler(
            slot.engine_id, lambda output, slot=slot: self._on_output(slot, output)
        )
        self._manager.add_request(
            slot.request.prompt_ids,
            request_id=slot.engine_id,
            max_new_tokens=slot.request.params.max_new_tokens,
            streaming=True,
            eos_token_id=sorted(self.eos_token_ids) or -1,
        )

    def _on_output(self, slot: _Slot, output) -> None:
        """Runs on the event loop for every streamed result of this request."""
        if slot.done:
            return
        if output.error is not None:
            self._finish(slot, "error", error=str(output.error))
            return
        new_tokens = list(output.generated_tokens[slot.tokens_seen :])
        slot.tokens_seen = len(output.generated_tokens)
        hit_eos = bool(new_tokens) and new_tokens[-1] in self.eos_token_ids
        result = slot.text.push([t for t in new_tokens if t not in self.eos_token_ids])
        if result.stopped:
            self._finish(slot, "stop", text=result.text, token_ids=new_tokens, cancel=True)
        elif output.is_finished() or hit_eos:
            tail = slot.text.finish()
            reason: FinishReason = "stop" if hit_eos or tail.stopped else "length"
            self._finish(slot, reason, text=result.text + tail.text, token_ids=new_tokens)
        elif result.text or new_tokens:
            slot.queue.put_nowait(
                GenerationDelta(
                    text=result.text, token_ids=new_tokens, completion_tokens=slot.tokens_seen
                )
            )

    def _cancel_slot(self, slot: _Slot) -> None:
        if not slot.done:
            self._finish(slot, "cancelled", cancel=True)

    def _finish(
        self,
        slot: _Slot,
        reason: FinishReason,
        *,
        text: str = "",
        token_ids: list[int] | None = None,
        error: str | None = None,
        cancel: bool = False,
    ) -> None:
        slot.done = True
        if slot.running and cancel and self._manager is not None:
            self._manager.cancel_request(slot.engine_id)
            self._drop_result_handler(slot.engine_id)
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
                completion_tokens=slot.tokens_seen,
            )
        )
        self._admit_waiting()

    def _admit_waiting(self) -> None:
        while self._waiting and len(self._running) < self.max_running and self.is_ready:
            self._launch(self._waiting.popleft())

    def _drop_result_handler(self, engine_id: str) -> None:
        # transformers only removes a handler when its request finishes, and a cancelled
        # request never finishes: remove it ourselves so it does not linger.
        router = self._manager.output_router
        with router._lock:
            router.result_handlers.pop(engine_id, None)


class _SlotStream:
    """The deltas of one request; `aclose()` cancels it, whether iteration started or not."""

    def __init__(self, engine: HFContinuousEngine, slot: _Slot) -> None:
        self._engine = engine
        self._slot = slot
        self._ended = False

    def __aiter__(self) -> _SlotStream:
        return self

    async def __anext__(self) -> GenerationDelta:
        if self._ended:
            raise StopAsyncIteration
        delta = await self._slot.queue.get()
        # A consumer that fell behind gets everything pending as one delta (fewer SSE events).
        while delta.finish_reason is None and not self._slot.queue.empty():
            delta = _join(delta, self._slot.queue.get_nowait())
        if delta.finish_reason is not None:
            self._ended = True
        return delta

    async def aclose(self) -> None:
        self._ended = True
        self._engine._cancel_slot(self._slot)


def _join(first: GenerationDelta, second: GenerationDelta) -> GenerationDelta:
    return GenerationDelta(
        text=first.text + second.text,
        token_ids=first.token_ids + second.token_ids,
        finish_reason=second.finish_reason,
        error=second.error,
        completion_tokens=second.completion_tokens,
    )
