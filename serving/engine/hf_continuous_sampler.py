"""Per-request sampling inside transformers' continuous batching (the `hf-continuous` engine).

transformers' continuous batching applies one `do_sample` flag to the whole batch, and its
per-request processors cover temperature/top-k/top-p only: no per-request greedy choice,
seed or repetition penalty. So the engine runs the batch greedily (argmax) and plugs this
processor in: for each row it applies the request's repetition penalty and, for sampled
requests, draws the token itself (temperature → top-k → top-p, with the request's own
`torch.Generator`), then masks every other logit so the batch argmax picks that token.
Greedy rows keep their logits, so greedy output is exactly `generate`'s argmax.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers.generation.continuous_batching.cb_logits_processors import (
    ContinuousBatchingLogitsProcessor,
)

from serving.engine.sampling import RowSampling, apply_repetition_penalty, sample_token


class RequestSampler(ContinuousBatchingLogitsProcessor):
    """One logits processor for all per-request decoding settings.

    `prepare_tensor_args` runs when a batch is built and `__call__` right after its forward
    pass, in the same thread and order (the engine turns off async double-buffering and CUDA
    graphs), so the rows remembered in the first are the rows scored in the second.
    """

    supported_kwargs: dict[str, type] = {}
    ignored_kwargs: tuple[str, ...] = ()

    def __init__(self, lookup: Callable[[str], RowSampling | None]) -> None:
        self._lookup = lookup
        self._rows: list[tuple[RowSampling | None, list[int]]] = []

    def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
        int32_tensor.fill_(0)

    def prepare_tensor_args(self, requests_with_new_token: list) -> torch.Tensor:
        self._rows = []
        for future in requests_with_new_token:
            state = future.state
            row = self._lookup(state.request_id)
            needs_history = row is not None and row.params.repetition_penalty != 1.0
            history = state.initial_tokens + state.generated_tokens if needs_history else []
            self._rows.append((row, history))
        return torch.zeros(len(requests_with_new_token), dtype=torch.int32)

    def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
        for i, (row, history) in enumerate(self._rows[: scores.size(0)]):
            if row is None:
                continue
            params = row.params
            if history:
                scores[i] = apply_repetition_penalty(scores[i], history, params.repetition_penalty)
            if not params.greedy:
                token = sample_token(scores[i], params, row.generator)
                chosen = scores[i, token].clone()
                scores[i].fill_(float("-inf"))
                scores[i, token] = chosen
        return scores
