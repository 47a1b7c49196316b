"""What every token-producing engine shares: admission, per-request streams, text, cancellation.

A `QueuedEngine` runs at most `max_running` requests and queues up to `max_waiting` behind
them (beyond that `submit` raises `QueueFullError`, which the API turns into a 429). Each
request gets a `RequestState`; the backend reports its new token ids with `_deliver` (on the
event loop), which turns them into clean text deltas (`TextStream`: whole characters, stop
strings cut) and finishes the request on EOS, a stop string or the backend's own end. A
subclass only says how to start generating for a request (`_launch`) and how to stop (`_abort`).
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
    EngineRequest,
    EngineStats,
    FinishReason,
    GenerationDelta,
    QueueFullError,
    SamplingParams,
    TokenLogprob,
)
from serving.engine.sampling import RowSampling, ends_generation, seeded_generator
from serving.engine.text_stream import TextStream


def model_eos_token_ids(model) -> set[int]:
    """The ids that end generation: the model's generation config holds one id, a list, or none."""
    eos = model.generation_config.eos_token_id
    return set(eos if isinstance(eos, list) else [eos] if eos is not None else [])


def batch_token_budget(max_batch_tokens: int | None, context_length: int) -> int:
    """Tokens per forward pass that takes in prompts: as configured, else max(context, 512)."""
    return max_batch_tokens or max(context_length, 512)


@dataclass
class RequestState:
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
        self._requests: dict[str, RequestState] = {}
        self._waiting: deque[RequestState] = deque()
        self._running: set[str] = set()
        self._ids = itertools.count()

    # ------------------------------------------------------------------ backend hooks
    @abstractmethod
    def _launch(self, state: RequestState) -> None:
        """Start generating for `state` (called on the event loop, within `max_running`)."""

    @abstractmethod
    def _abort(self, state: RequestState) -> None:
        """Stop generating for a launched `state` that is not finished on the backend's side."""

    # ------------------------------------------------------------------ Engine
    def stats(self) -> EngineStats:
        return EngineStats(running=len(self._running), waiting=len(self._waiting))

    def submit(self, request: EngineRequest) -> RequestStream:
        if not self.is_ready:
            raise self.not_ready_error()
        if len(self._running) >= self.max_running and len(self._waiting) >= self.max_waiting:
            raise QueueFullError(
                f"{len(self._running)} requests running and {len(self._waiting)} waiting; retry later"
            )
        seed = request.params.seed
        if seed is None:
            seed = secrets.randbits(63)
        generator = seeded_generator(request.params, seed)
        state = RequestState(
            request=request,
            engine_id=f"{request.request_id}#{next(self._ids)}",
            text=TextStream(
                self.tokenizer, request.params.stop, request.params.include_stop_str_in_output
            ),
            sampling=RowSampling(request.params, generator),
            seed=seed,
        )
        self._requests[state.engine_id] = state
        if len(self._running) < self.max_running:
            self._start(state)
        else:
            self._waiting.append(state)
        return RequestStream(self, state)

    async def cancel(self, request_id: str) -> None:
        for state in [s for s in self._requests.values() if s.request.request_id == request_id]:
            self._cancel_request(state)

    async def _warm_up(self) -> None:
        prompt = self.tokenizer("warm up")["input_ids"] or [0]
        stream = self.submit(EngineRequest("warmup", prompt, SamplingParams(max_new_tokens=2)))
        async for _ in stream:
            pass

    # ------------------------------------------------------------------ bookkeeping
    def _start(self, state: RequestState) -> None:
        state.running = True
        self._running.add(state.engine_id)
        self._launch(state)

    def _deliver(
        self,
        state: RequestState,
        new_tokens: list[int],
        finished: bool,
        logprobs: list[TokenLogprob] | None = None,
        prompt_logprobs: list[TokenLogprob | None] | None = None,
    ) -> None:
        """New token ids of `state` from the backend; `finished`: the backend is done with it.
        `logprobs`: one per new token, when the request asked; `prompt_logprobs`: its prompt's."""
        if state.done:
            return
        params = state.request.params
        state.tokens_seen += len(new_tokens)
        hit_end = bool(new_tokens) and ends_generation(new_tokens[-1], params, self.eos_token_ids)
        shown = [t for t in new_tokens if t not in self.eos_token_ids]
        keep_stop = params.include_stop_str_in_output
        if hit_end and shown and shown[-1] == new_tokens[-1] and not keep_stop:
            shown.pop()  # a stop token's text is left out, as a stop string's is
        result = state.text.push(shown)
        extra = {"logprobs": logprobs, "prompt_logprobs": prompt_logprobs}
        if result.stopped:
            self._finish(
                state, "stop", text=result.text, token_ids=new_tokens, abort=not finished, **extra
            )
        elif finished or hit_end:
            tail = state.text.finish()
            reason: FinishReason = "stop" if hit_end or tail.stopped else "length"
            self._finish(
                state,
                reason,
                text=result.text + tail.text,
                token_ids=new_tokens,
                abort=not finished,
                **extra,
            )
        elif result.text or new_tokens or prompt_logprobs:
            state.queue.put_nowait(
                GenerationDelta(
                    text=result.text,
                    token_ids=new_tokens,
                    completion_tokens=state.tokens_seen,
                    **extra,
                )
            )

    def _deliver_text(
        self,
        state: RequestState,
        text: str,
        completion_tokens: int,
        finish: str | None,
        logprobs: list[TokenLogprob] | None = None,
        prompt_logprobs: list[TokenLogprob | None] | None = None,
    ) -> None:
        """New text of `state` from a backend that sends text (`finish`: its finish reason, if
        it is done); the same stop-string cut and finish reasons as for token ids."""
        if state.done:
            return
        state.tokens_seen = completion_tokens
        result = state.text.push_text(text)
        extra = {"logprobs": logprobs, "prompt_logprobs": prompt_logprobs}
        # with logprobs the backend named its tokens: they are the delta's token ids
        ids = [entry.token for entry in logprobs] if logprobs else []
        if result.stopped:
            self._finish(
                state, "stop", text=result.text, token_ids=ids, abort=finish is None, **extra
            )
        elif finish is not None:
            tail = state.text.finish()
            reason: FinishReason = "stop" if finish == "stop" or tail.stopped else "length"
            self._finish(state, reason, text=result.text + tail.text, token_ids=ids, **extra)
        elif result.text or logprobs or prompt_logprobs:
            state.queue.put_nowait(
                GenerationDelta(
                    text=result.text,
                    token_ids=ids,
                    completion_tokens=state.tokens_seen,
                    **extra,
                )
            )

    def _dispatch(self, outputs: list[tuple]) -> None:
        """One step's new tokens, `(engine_id, token, finished, extras)` each (token backends;
        see `slot_batching.Output`)."""
        for engine_id, token, finished, extras in outputs:
            state = self._requests.get(engine_id)
            if state is None:
                continue
            tokens = [] if token is None else [token]
            if extras is None:
                self._deliver(state, tokens, finished)
            else:
                logprobs = None if extras.logprob is None else [extras.logprob]
                self._deliver(state, tokens, finished, logprobs, extras.prompt_logprobs)

    def _cancel_request(self, state: RequestState) -> None:
        if not state.done:
            self._finish(state, "cancelled", abort=True)

    def _finish(
        self,
        state: RequestState,
        reason: FinishReason,
        *,
        text: str = "",
        token_ids: list[int] | None = None,
        error: str | None = None,
        status: int | None = None,
        code: str | None = None,
        abort: bool = False,
        logprobs: list[TokenLogprob] | None = None,
        prompt_logprobs: list[TokenLogprob | None] | None = None,
    ) -> None:
        state.done = True
        if state.running and abort:
            self._abort(state)
        if state in self._waiting:
            self._waiting.remove(state)
        self._running.discard(state.engine_id)
        self._requests.pop(state.engine_id, None)
        state.queue.put_nowait(
            GenerationDelta(
                text=text,
                token_ids=token_ids or [],
                logprobs=logprobs,
                prompt_logprobs=prompt_logprobs,
                finish_reason=reason,
                error=error,
                status=status,
                code=code,
                completion_tokens=state.tokens_seen,
            )
        )
        self._admit_waiting()

    def _fail_all(self, error: str, status: int | None = None, code: str | None = None) -> None:
        """End every request, running or waiting, with `error` (`status`/`code`: see
        `GenerationDelta`)."""
        for state in list(self._requests.values()):
            self._finish(state, "error", error=error, status=status, code=code)

    def _admit_waiting(self) -> None:
        while self._waiting and len(self._running) < self.max_running and self.is_ready:
            self._start(self._waiting.popleft())


class RequestStream:
    """The deltas of one request; `aclose()` cancels it, whether iteration started or not."""

    def __init__(self, engine: QueuedEngine, state: RequestState) -> None:
        self._engine = engine
        self._state = state
        self._ended = False

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> GenerationDelta:
        if self._ended:
            raise StopAsyncIteration
        delta = await self._state.queue.get()
        # A consumer that fell behind gets everything pending as one delta (fewer SSE events).
        while delta.finish_reason is None and not self._state.queue.empty():
            delta = join_deltas(delta, self._state.queue.get_nowait())
        if delta.finish_reason is not None:
            self._ended = True
        return delta

    async def aclose(self) -> None:
        self._ended = True
        self._engine._cancel_request(self._state)


def join_deltas(first: GenerationDelta, second: GenerationDelta) -> GenerationDelta:
    logprobs = None
    if first.logprobs is not None or second.logprobs is not None:
        logprobs = (first.logprobs or []) + (second.logprobs or [])
    return GenerationDelta(
        text=first.text + second.text,
        token_ids=first.token_ids + second.token_ids,
        logprobs=logprobs,
        prompt_logprobs=first.prompt_logprobs or second.prompt_logprobs,
        finish_reason=second.finish_reason,
        error=second.error,
        status=second.status,
        code=second.code,
        completion_tokens=second.completion_tokens,
    )
