"""Per-request sampling inside transformers' continuous batching (the `hf-continuous` engine).

transformers' continuous batching applies one `do_sample` flag to the whole batch, and its
per-request processors cover temperature/top-k/top-p only: no per-request greedy choice,
seed, penalties or logprobs. So the engine runs the batch greedily (argmax) and plugs this
processor in: for each row it records the raw logprobs when asked, applies the request's
bias and penalties (`adjust_logits`) and, for sampled requests, draws the token itself
(temperature → min-p → top-k → top-p, with the request's own `torch.Generator`), then masks
every other logit so the batch argmax picks that token. Greedy rows keep their logits, so
greedy output is exactly `generate`'s argmax.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers.generation.continuous_batching.cb_logits_processors import (
    ContinuousBatchingLogitsProcessor,
)

from serving.engine.sampling import RowSampling, adjust_logits, sample_token, token_logprobs


class RequestSampler(ContinuousBatchingLogitsProcessor):
    """One logits processor for all per-request decoding settings.

    `prepare_tensor_args` runs when a batch is built and `__call__` right after its forward
    pass, in the same thread and order (the engine turns off async double-buffering and CUDA
    graphs), so the rows remembered in the first are the rows scored in the second.
    """

    supported_kwargs: dict[str, type] = {}
    ignored_kwargs: tuple[str, ...] = ()

    def __init__(self, lookup: Callable[[str], RowSampling | None], end_ids: set[int]) -> None:
        self._lookup = lookup
        self._end_ids = end_ids  # EOS ids, masked while a request is short of `min_tokens`
        self._rows: list[tuple[RowSampling | None, list[int], list[int]]] = []

    def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
        int32_tensor.fill_(0)

    def prepare_tensor_args(self, requests_with_new_token: list) -> torch.Tensor:
        self._rows = []
        for future in requests_with_new_token:
            state = future.state
            row = self._lookup(state.request_id)
            if row is not None and row.params.adjusts_logits:
                self._rows.append((row, list(state.initial_tokens), list(state.generated_tokens)))
            else:
                self._rows.append((row, [], []))
        return torch.zeros(len(requests_with_new_token), dtype=torch.int32)

    def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
        for i, (row, prompt, output) in enumerate(self._rows[: scores.size(0)]):
            if row is None:
                continue
            params = row.params
            if row.matcher is not None:
                row.matcher.mask(scores[i])  # the grammar first, as in the slots engine
            raw = scores[i].clone() if params.logprobs is not None or row.matcher else None
            if params.adjusts_logits:
                scores[i] = adjust_logits(scores[i], params, prompt, output, self._end_ids)
                if row.matcher is not None and not bool(torch.isfinite(scores[i]).any()):
                    scores[i] = raw  # min_tokens against a finished grammar: the grammar wins
            if params.greedy:
                token = int(scores[i].argmax())
            else:
                token = sample_token(scores[i], params, row.generator)
                chosen = scores[i, token].clone()
                scores[i].fill_(float("-inf"))
                scores[i, token] = chosen
            if row.matcher is not None:
                row.matcher.accept(token)
            if params.logprobs is not None:
                row.logprobs.extend(token_logprobs(raw[None], [token], [params.logprobs]))
        return scores
