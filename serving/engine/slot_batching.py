"""In-house engine: one KV-cache row per running request, one batched decode step for all of them.

The cache holds, per layer, keys and values of shape [max_running, kv_heads, context, head_dim].
Running requests occupy rows 0..B-1 (a finished request's row is refilled by moving the last
row into it), so every decode step is one forward pass over B new tokens that reads a plain
slice of the cache: attention costs B × (longest sequence), not (all tokens)², and no mask
over the whole batch is rebuilt each step. New requests are prefilled together (right-padded,
up to `max_batch_tokens` per forward) into fresh rows, then join the next decode step.

`SlotBatcher` does the model work; `run_batching_loop` feeds it commands (add, abort, stop)
and emits each step's new tokens in one batch. `SlotBatchingEngine` runs that loop in a thread
of the server; `serving.engine.engine_process` runs it in a process of its own. Either way
`QueuedEngine` turns the tokens into text deltas on the event loop.

Works with any transformers causal LM whose attention layers call `cache.update(key, value,
layer_idx, ...)` and accept a prepared 4D mask (Phi, Llama, Qwen2, ...): the engine passes
explicit position ids and its own mask, so per-row positions need no padding tricks.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from serving.engine.grammar import GrammarMatcher

from serving.engine.base import SamplingParams, TokenLogprob
from serving.engine.grammar_use import LazyGrammars
from serving.engine.queued import (
    QueuedEngine,
    RequestState,
    batch_token_budget,
    model_eos_token_ids,
)
from serving.engine.sampling import (
    adjust_logits,
    ends_generation,
    prompt_token_logprobs,
    sample_rows,
    score_prompt,
    seeded_generator,
    token_logprobs,
)
from serving.engine.slot_cache import SlotKVCache

logger = logging.getLogger(__name__)


@dataclass
class Job:
    """A request as the batching loop sees it (picklable: it may cross to another process)."""

    engine_id: str
    prompt_ids: list[int]
    params: SamplingParams
    seed: int  # for sampled requests: the request's own random stream


@dataclass
class _Row:
    """A running request inside the batcher."""

    job: Job
    length: int  # tokens in the cache
    generator: torch.Generator | None
    last: int = 0  # the token the next decode step feeds
    output: list[int] | None = None  # the generated tokens, kept for penalties and min_tokens
    generated: int = 0
    matcher: GrammarMatcher | None = None  # structured output: where the request is in its grammar


@dataclass
class TokenExtras:
    """What a token carries beyond its id when its request asked for it."""

    logprob: TokenLogprob | None = None
    #: on a request's first output only: its prompt's logprobs (completions' `echo`)
    prompt_logprobs: list[TokenLogprob | None] | None = None


#: One new token of one request: (engine_id, token, finished, extras). The token is None for a
#: request that asked for no new token (`max_new_tokens == 0`: its prompt's logprobs only).
Output = tuple[str, int | None, bool, TokenExtras | None]


class SlotBatcher:
    """The model side of the engine: rows, prefill and decode steps. No threads, no asyncio."""

    def __init__(
        self, model, *, max_running: int, max_batch_tokens: int | None = None, tokenizer=None
    ) -> None:
        self.model = model
        # structured output: the grammars' compiler, made at the first request that has one
        self._grammars = LazyGrammars(tokenizer, model)
        self.context_length = int(model.config.max_position_embeddings)
        self.max_running = max_running
        self.max_batch_tokens = batch_token_budget(max_batch_tokens, self.context_length)
        self.eos_token_ids = model_eos_token_ids(model)
        self._device = next(model.parameters()).device
        if model.config._attn_implementation not in ("sdpa", "eager"):
            model.set_attn_implementation("sdpa")  # the batcher passes its own dense 4D masks
        self._bool_mask = model.config._attn_implementation == "sdpa"
        # transformers renamed the forward's `past_key_values` to `cache` (after 5.17; both
        # are in the project's range): hand the cache over under the model's own name
        forward = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in forward else "past_key_values"
        self._cache = SlotKVCache(max_running, self.context_length)
        self._pending: deque[Job] = deque()  # added, not yet prefilled
        self._rows: list[_Row] = []

    @property
    def busy(self) -> bool:
        return bool(self._rows or self._pending)

    def add(self, job: Job) -> None:
        self._pending.append(job)

    def abort(self, engine_ids: set[str]) -> None:
        self._pending = deque(j for j in self._pending if j.engine_id not in engine_ids)
        self._remove([i for i, row in enumerate(self._rows) if row.job.engine_id in engine_ids])

    @torch.inference_mode()
    def step(self) -> list[Output]:
        """One forward pass: prefill waiting requests while rows are free, else decode."""
        outputs: list[Output] = []
        if self._pending and self._pending[0].params.max_new_tokens == 0:
            self._score_prompt(self._pending.popleft(), outputs)
        elif self._pending and len(self._rows) < self.max_running:
            self._prefill(outputs)
        elif self._rows:
            self._decode(outputs)
        return outputs

    def _remove(self, indices: list[int]) -> None:
        """Free rows, keeping the running ones in 0..B-1 (the last row moves into a gap)."""
        for index in sorted(indices, reverse=True):
            last = len(self._rows) - 1
            if index != last:
                moved = self._rows[last]
                self._cache.move_row(last, index, moved.length)
                self._rows[index] = moved
            self._rows.pop()

    def _score_prompt(self, job: Job, outputs: list[Output]) -> None:
        """A request for no new token: one forward pass over its prompt, outside the cache."""
        scored = score_prompt(self.model, job.prompt_ids, job.params.prompt_logprobs or 0)
        outputs.append((job.engine_id, None, True, TokenExtras(prompt_logprobs=scored)))

    def _prefill(self, outputs: list[Output]) -> None:
        batch: list[Job] = []
        width = 0
        while self._pending and len(self._rows) + len(batch) < self.max_running:
            if self._pending[0].params.max_new_tokens == 0:
                break  # scored on its own in the next step
            n = len(self._pending[0].prompt_ids)
            if batch and (len(batch) + 1) * max(width, n) > self.max_batch_tokens:
                break
            batch.append(self._pending.popleft())
            width = max(width, n)
        start = len(self._rows)
        lengths = [len(job.prompt_ids) for job in batch]
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        for i, job in enumerate(batch):
            ids[i, : lengths[i]] = torch.tensor(job.prompt_ids)
        length_t = torch.tensor(lengths, device=self._device)
        steps = torch.arange(width, device=self._device)
        # query i of row b sees keys j <= i that are real tokens (j < length_b)
        visible = (steps[None, :, None] >= steps[None, None, :]) & (
            steps[None, None, :] < length_t[:, None, None]
        )
        last = length_t - 1
        # logits only where a row's prompt ends, unless a row wants its prompt's logprobs
        scoring = any(job.params.prompt_logprobs is not None for job in batch)
        keep = torch.arange(width, device=self._device) if scoring else torch.unique(last)
        self._cache.for_prefill(start, start + len(batch), width)
        all_logits = self.model(
            input_ids=ids.to(self._device),
            position_ids=steps.expand(len(batch), width),
            attention_mask=self._mask(visible.unsqueeze(1)),
            **{self._cache_arg: self._cache},
            use_cache=True,
            logits_to_keep=keep,
        ).logits
        logits = all_logits[
            torch.arange(len(batch), device=self._device), torch.searchsorted(keep, last)
        ]
        rows = []
        for job, n in zip(batch, lengths, strict=True):
            generator = seeded_generator(job.params, job.seed)
            row = _Row(job, n, generator, output=[] if job.params.adjusts_logits else None)
            if job.params.grammar is not None:
                row.matcher = self._grammars.matcher(job.params.grammar)
            rows.append(row)
        self._rows.extend(rows)
        prompt_scores = {
            i: prompt_token_logprobs(all_logits[i, :n], job.prompt_ids, job.params.prompt_logprobs)
            for i, (job, n) in enumerate(zip(batch, lengths, strict=True))
            if job.params.prompt_logprobs is not None
        }
        self._advance(
            rows, *self._sample(logits, rows), outputs, offset=start, prompt=prompt_scores
        )

    def _decode(self, outputs: list[Output]) -> None:
        rows = self._rows
        positions = torch.tensor([r.length for r in rows], device=self._device)
        kv_len = max(r.length for r in rows) + 1
        visible = torch.arange(kv_len, device=self._device)[None, :] <= positions[:, None]
        self._cache.for_decode(positions, kv_len)
        logits = self.model(
            input_ids=torch.tensor([[r.last] for r in rows], device=self._device),
            position_ids=positions[:, None],
            attention_mask=self._mask(visible[:, None, None, :]),
            **{self._cache_arg: self._cache},
            use_cache=True,
        ).logits[:, -1]
        for row in rows:
            row.length += 1
        self._advance(rows, *self._sample(logits, rows), outputs, offset=0)

    def _mask(self, visible: torch.Tensor) -> torch.Tensor:
        if self._bool_mask:
            return visible
        dtype = self.model.dtype  # eager attention adds the mask to its scores
        return torch.zeros(visible.shape, dtype=dtype, device=self._device).masked_fill(
            ~visible, torch.finfo(dtype).min
        )

    def _sample(
        self, logits: torch.Tensor, rows: list[_Row]
    ) -> tuple[list[int], dict[int, TokenLogprob]]:
        """The next token of every row, and the logprobs of the rows that asked for them."""
        logits = logits.float()
        if any(row.matcher is not None for row in rows):
            # the grammar first, as vLLM applies its bitmask before the sampler: the
            # logprobs reported are those of the masked distribution
            logits = logits.clone()
            self._grammars.mask(logits, [row.matcher for row in rows])
        raw = logits
        adjusted = [i for i, row in enumerate(rows) if row.output is not None]
        if adjusted:
            logits = logits.clone()
            for i in adjusted:
                row = rows[i]
                logits[i] = adjust_logits(
                    logits[i], row.job.params, row.job.prompt_ids, row.output, self.eos_token_ids
                )
                if row.matcher is not None and not bool(torch.isfinite(logits[i]).any()):
                    logits[i] = raw[i]  # min_tokens against a finished grammar: the grammar wins
        chosen = logits.argmax(dim=-1).tolist()
        sampled = [i for i, row in enumerate(rows) if not row.job.params.greedy]
        if sampled:
            tokens = sample_rows(
                logits[sampled],
                [rows[i].job.params for i in sampled],
                [rows[i].generator for i in sampled],
            )
            for i, token in zip(sampled, tokens.tolist(), strict=True):
                chosen[i] = token
        wanted = [i for i, row in enumerate(rows) if row.job.params.logprobs is not None]
        logprobs = {}
        if wanted:
            scored = token_logprobs(
                raw[wanted],
                [chosen[i] for i in wanted],
                [rows[i].job.params.logprobs for i in wanted],
            )
            logprobs = dict(zip(wanted, scored, strict=True))
        return chosen, logprobs

    def _advance(
        self,
        rows: list[_Row],
        tokens: list[int],
        logprobs: dict[int, TokenLogprob],
        outputs: list[Output],
        offset: int,
        prompt: dict[int, list[TokenLogprob | None]] | None = None,
    ) -> None:
        done = []
        for i, (row, token) in enumerate(zip(rows, tokens, strict=True)):
            row.last = token
            row.generated += 1
            if row.output is not None:
                row.output.append(token)
            if row.matcher is not None:
                row.matcher.accept(token)
            finished = (
                ends_generation(token, row.job.params, self.eos_token_ids)
                # a finished grammar allows only EOS, which ends the answer as vLLM's does; with
                # ignore_eos nothing would: end here
                or (
                    row.job.params.ignore_eos
                    and row.matcher is not None
                    and row.matcher.is_finished()
                )
                or row.generated >= row.job.params.max_new_tokens
                or row.length + 1 >= self.context_length
            )
            extras = None
            if i in logprobs or (prompt and i in prompt):
                extras = TokenExtras(logprobs.get(i), prompt.get(i) if prompt else None)
            outputs.append((row.job.engine_id, token, finished, extras))
            if finished:
                done.append(offset + i)
        if done:
            self._remove(done)


#: What reaches the batching loop: ("add", Job), ("abort", {engine_id, ...}) or ("stop", None)
Command = tuple[str, object]


def run_batching_loop(
    batcher: SlotBatcher,
    take: Callable[[bool], list[Command]],
    emit: Callable[[list[Output]], None],
) -> None:
    """Take commands (waiting for one only when idle), run a step, emit its tokens; until "stop"."""
    while True:
        for kind, payload in take(not batcher.busy):
            if kind == "stop":
                return
            if kind == "add":
                batcher.add(payload)
            elif kind == "abort":
                batcher.abort(payload)
        outputs = batcher.step()
        if outputs:
            emit(outputs)


class SlotBatchingEngine(QueuedEngine):
    """The batcher in a thread of this process (`serving.engine.engine_process` runs it in
    its own process instead, out of the way of the web server's Python)."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        max_running: int = 32,
        max_waiting: int = 128,
        max_batch_tokens: int | None = None,
        warmup: bool = True,
    ) -> None:
        self._batcher = SlotBatcher(
            model, max_running=max_running, max_batch_tokens=max_batch_tokens, tokenizer=tokenizer
        )
        super().__init__(
            tokenizer,
            context_length=self._batcher.context_length,
            eos_token_ids=self._batcher.eos_token_ids,
            max_running=max_running,
            max_waiting=max_waiting,
        )
        self._warmup = warmup
        self._commands: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._fatal: BaseException | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="xiaophi-engine", daemon=True)
        self._thread.start()
        if self._warmup:
            await self._warm_up()

    async def stop(self) -> None:
        self._fail_all("server is shutting down")
        self._stopping = True
        self._commands.put(("stop", None))
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30)

    @property
    def is_ready(self) -> bool:
        thread = self._thread
        return (
            thread is not None and thread.is_alive() and not self._stopping and self._fatal is None
        )

    def _launch(self, state: RequestState) -> None:
        self._commands.put(("add", job_of(state)))

    def _abort(self, state: RequestState) -> None:
        self._commands.put(("abort", {state.engine_id}))

    def _take(self, block: bool) -> list[Command]:
        commands = [self._commands.get()] if block else []
        while not self._commands.empty():
            commands.append(self._commands.get_nowait())
        return commands

    def _run(self) -> None:
        try:
            run_batching_loop(
                self._batcher,
                self._take,
                lambda outputs: self._loop.call_soon_threadsafe(self._dispatch, outputs),
            )
        except BaseException as exc:  # the engine is dead: every open request ends with an error
            logger.exception("the engine thread failed")
            self._fatal = exc
            if self._loop is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._fail_all, f"engine error: {exc}")


def job_of(state: RequestState) -> Job:
    return Job(state.engine_id, list(state.request.prompt_ids), state.request.params, state.seed)
