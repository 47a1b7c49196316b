"""Per-request sampling inside transformers' continuous batching.

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
from dataclasses import dataclass

import torch
from transformers.generation.continuous_batching.cb_logits_processors import (
    ContinuousBatchingLogitsProcessor,
)

from serving.engine.base import SamplingParams


@dataclass
class RowSampling:
    params: SamplingParams
    generator: torch.Generator | None


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


def seeded_generator(params: SamplingParams, seed: int) -> torch.Generator | None:
    """A sampled request's own random stream (None for greedy decoding): same seed, same draws."""
    return None if params.greedy else torch.Generator().manual_seed(seed)


def apply_repetition_penalty(
    logits: torch.Tensor, history: list[int], penalty: float
) -> torch.Tensor:
    """CTRL-style penalty as in `generate`: seen tokens' logits divided (or, if negative, multiplied)."""
    ids = torch.tensor(sorted(set(history)), device=logits.device, dtype=torch.long)
    seen = logits.gather(0, ids)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return logits.scatter(0, ids, seen)


def sample_token(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None
) -> int:
    """One token from one row of logits (see `sample_rows`)."""
    return int(sample_rows(logits[None], [params], [generator])[0])


def sample_rows(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator | None],
) -> torch.Tensor:
    """One token per row of `logits` [rows, vocab], each row with its own settings and random
    stream: temperature, then top-k, then top-p (nucleus), then a draw — all rows at once.

    The draw is inverse-CDF sampling with one uniform number from the row's generator, so a
    seeded request gets the same tokens whatever else shares its batch."""
    device, vocab = logits.device, logits.size(-1)
    temperature = torch.tensor([p.temperature for p in params], device=device)
    scores = logits.float() / temperature[:, None]
    ranked, order = torch.sort(scores, dim=-1, descending=True)
    top_k = torch.tensor([p.top_k if 0 < p.top_k < vocab else vocab for p in params], device=device)
    kth = ranked.gather(1, (top_k - 1)[:, None])
    ranked = ranked.masked_fill(ranked < kth, float("-inf"))  # ties with the k-th stay
    probs = ranked.softmax(-1)
    top_p = torch.tensor([p.top_p for p in params], device=device)
    # drop a token once the tokens before it already reach top_p (the first one always stays)
    probs = probs.masked_fill((probs.cumsum(-1) - probs) >= top_p[:, None], 0.0)
    cdf = probs.cumsum(-1)
    uniform = torch.cat([torch.rand(1, generator=g) for g in generators]).to(device)
    picked = torch.searchsorted(cdf, (uniform * cdf[:, -1])[:, None], right=True)
    return order.gather(1, picked.clamp(max=vocab - 1)).squeeze(1)
