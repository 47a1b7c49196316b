"""Per-request sampling on plain logits: repetition penalty, temperature, top-k, top-p, seeds.

The in-house batcher calls these directly; `hf_continuous_sampler.py` wraps them for
transformers' continuous batching. Nothing here imports transformers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from serving.engine.base import SamplingParams


@dataclass
class RowSampling:
    """A request's decoding settings and its own random stream (None when greedy)."""

    params: SamplingParams
    generator: torch.Generator | None


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
