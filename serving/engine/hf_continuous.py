"""First engine: transformers' continuous batching, with per-request sampling and cancellation.

transformers runs the batching loop in its own thread (paged KV cache, requests joining and
leaving between forward passes). This class adds what serving needs around it: a cache sized
from our limits (its default is sized from system RAM), per-request sampling
(`RequestSampler`), and cancellation that ends the stream at once (after `cancel_request`
transformers sends no final result); `QueuedEngine` adds the bounded waiting queue and the
text deltas. On a small CPU model its per-step cost is high (the paged attention builds one
dense mask over every running request's tokens): `serving.engine.slot_batching` is faster.
"""

from __future__ import annotations

import asyncio
import logging
import math

from transformers import GenerationConfig
from transformers.generation.configuration_utils import ContinuousBatchingConfig
from transformers.generation.continuous_batching.cb_logits_processors import (
    ContinuousBatchingLogitsProcessorList,
)
from transformers.generation.logits_process import LogitsProcessorList

from serving.engine.grammar_use import LazyGrammars
from serving.engine.hf_continuous_sampler import RequestSampler
from serving.engine.queued import (
    QueuedEngine,
    RequestState,
    batch_token_budget,
    model_eos_token_ids,
)
from serving.engine.sampling import RowSampling, ends_generation, score_prompt

logger = logging.getLogger(__name__)


class HFContinuousEngine(QueuedEngine):
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
        super().__init__(
            tokenizer,
            context_length=model.config.max_position_embeddings,
            eos_token_ids=model_eos_token_ids(model),
            max_running=max_running,
            max_waiting=max_waiting,
        )
        self.model = model
        self._page_size = page_size
        self._max_batch_tokens = batch_token_budget(max_batch_tokens, self.context_length)
        self._warmup = warmup
        self._manager = None
        self._scoring: set[asyncio.Task] = set()  # prompt-scoring tasks in flight
        self._grammars = LazyGrammars(tokenizer, model)  # structured output

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
            LogitsProcessorList([RequestSampler(self._row_sampling, self.eos_token_ids)])
        )
        processors.tensors_required = 1  # one int32 argument row for RequestSampler
        manager.logit_processor = processors
        return manager

    async def stop(self) -> None:
        self._fail_all("server is shutting down")
        if self._manager is not None:
            manager, self._manager = self._manager, None
            await asyncio.to_thread(manager.stop, True, 30)

    @property
    def is_ready(self) -> bool:
        manager = self._manager
        if manager is None or not manager.is_running():
            return False
        return manager.background_thread_status.fatal_error is None

    # ------------------------------------------------------------------ backend
    def _row_sampling(self, engine_id: str) -> RowSampling | None:
        state = self._requests.get(engine_id)  # read from the batching thread; dict.get is atomic
        return state.sampling if state is not None else None

    def _launch(self, state: RequestState) -> None:
        params = state.request.params
        if params.prompt_logprobs is not None or params.max_new_tokens == 0:
            # the prompt's own logprobs: one plain forward pass first (beside the batch loop)
            task = asyncio.get_running_loop().create_task(self._score_then_add(state))
            self._scoring.add(task)
            task.add_done_callback(self._scoring.discard)
        else:
            self._add(state)

    async def _score_then_add(self, state: RequestState) -> None:
        params = state.request.params
        try:
            scored = await asyncio.to_thread(
                score_prompt, self.model, state.request.prompt_ids, params.prompt_logprobs or 0
            )
        except Exception as exc:  # noqa: BLE001 - the request fails, the engine goes on
            self._finish(state, "error", error=f"scoring the prompt failed: {exc}")
            return
        if state.done:  # cancelled meanwhile
            return
        self._deliver(state, [], params.max_new_tokens == 0, prompt_logprobs=scored)
        if not state.done:
            self._add(state)

    def _add(self, state: RequestState) -> None:
        params = state.request.params
        if params.grammar is not None:
            state.sampling.matcher = self._grammars.matcher(params.grammar)
        ends = set(params.stop_token_ids) | (set() if params.ignore_eos else self.eos_token_ids)
        self._manager.register_result_handler(
            state.engine_id, lambda output, state=state: self._on_output(state, output)
        )
        self._manager.add_request(
            state.request.prompt_ids,
            request_id=state.engine_id,
            # never past the context, whatever the caller asked for
            max_new_tokens=max(
                1,
                min(params.max_new_tokens, self.context_length - len(state.request.prompt_ids)),
            ),
            streaming=True,
            eos_token_id=sorted(ends) or -1,
        )

    def _on_output(self, state: RequestState, output) -> None:
        """Runs on the event loop for every streamed result of this request."""
        if state.done:
            return
        if output.error is not None:
            self._finish(state, "error", error=str(output.error))
            return
        params = state.request.params
        new_tokens = list(output.generated_tokens[state.tokens_seen :])
        hit_end = bool(new_tokens) and ends_generation(new_tokens[-1], params, self.eos_token_ids)
        logprobs = None
        if params.logprobs is not None:
            reported = state.sampling.logprobs
            logprobs = [reported.popleft() for _ in range(min(len(new_tokens), len(reported)))]
        self._deliver(state, new_tokens, output.is_finished() or hit_end, logprobs)

    def _abort(self, state: RequestState) -> None:
        if self._manager is not None:
            self._manager.cancel_request(state.engine_id)
            self._drop_result_handler(state.engine_id)

    def _drop_result_handler(self, engine_id: str) -> None:
        # transformers only removes a handler when its request finishes, and a cancelled
        # request never finishes: remove it ourselves so it does not linger.
        router = self._manager.output_router
        with router._lock:
            router.result_handlers.pop(engine_id, None)
