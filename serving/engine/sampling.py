"""Per-request sampling on plain logits: biases and penalties, temperature, min-p, top-k,
top-p, seeds; and the logprobs reported beside the tokens.

The in-house batcher calls these directly; `hf_continuous_sampler.py` wraps them for
transformers' continuous batching. Nothing here imports transformers.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import torch

from serving.engine.base import SamplingParams, TokenLogprob


@dataclass
class RowSampling:
    """A request's decoding settings and its own random stream (None when greedy)."""

    params: SamplingParams
    generator: torch.Generator | None
    #: logprobs of the tokens chosen so far and not yet delivered, when the request asked for
    #: them (filled by a batching thread, emptied on the event loop: a deque is safe for that)
    logprobs: deque[TokenLogprob] = field(default_factory=deque)
    #: structured output: the request's place in its grammar (a `GrammarMatcher`), if any
    matcher: object | None = None


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


def ends_generation(token: int, params: SamplingParams, eos_token_ids: set[int]) -> bool:
    """Whether `token` ends its request: EOS (unless `ignore_eos`) or one of its stop token ids."""
    return (token in eos_token_ids and not params.ignore_eos) or token in params.stop_token_ids


def adjust_logits(
    logits: torch.Tensor,
    params: SamplingParams,
    prompt_ids: list[int],
    output_ids: list[int],
    end_ids: set[int],
) -> torch.Tensor:
    """One row's logits before the choice, in vLLM's order: logit bias, then the ends (EOS, stop
    token ids) masked until `min_tokens` are out, then the repetition penalty (prompt and
    output tokens), then frequency and presence penalties (output tokens only)."""
    device = logits.device
    if params.logit_bias:
        ids = torch.tensor(list(params.logit_bias), device=device, dtype=torch.long)
        bias = torch.tensor(list(params.logit_bias.values()), device=device)
        logits = logits.index_add(0, ids, bias.to(logits.dtype))
    if len(output_ids) < params.min_tokens:
        ends = set(params.stop_token_ids) | (set() if params.ignore_eos else end_ids)
        if ends:
            ids = torch.tensor(sorted(ends), device=device, dtype=torch.long)
            logits = logits.index_fill(0, ids, float("-inf"))
    if params.repetition_penalty != 1.0:
        logits = apply_repetition_penalty(
            logits, [*prompt_ids, *output_ids], params.repetition_penalty
        )
    if output_ids and (params.frequency_penalty or params.presence_penalty):
        counts = torch.bincount(torch.tensor(output_ids, device=device), minlength=logits.numel())[
            : logits.numel()
        ].to(logits.dtype)
        logits = logits - params.frequency_penalty * counts
        logits = logits - params.presence_penalty * (counts > 0).to(logits.dtype)
    return logits


def token_logprobs(logits: torch.Tensor, tokens: list[int], top: list[int]) -> list[TokenLogprob]:
    """For each row of raw `logits` [rows, vocab]: the logprob of `tokens[row]` and the
    `top[row]` likeliest tokens' (log-softmax in float32, before any adjustment)."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    index = torch.tensor(tokens, device=logits.device)[:, None]
    chosen = logprobs.gather(1, index)[:, 0].tolist()
    k = max(top, default=0)
    best_values, best_ids = logprobs.topk(k, dim=-1) if k else (None, None)
    out = []
    for row, (token, value) in enumerate(zip(tokens, chosen, strict=True)):
        ranked = []
        if top[row]:
            ids = best_ids[row, : top[row]].tolist()
            ranked = list(zip(ids, best_values[row, : top[row]].tolist(), strict=True))
        out.append(TokenLogprob(token, value, ranked))
    return out


def prompt_token_logprobs(
    logits: torch.Tensor, prompt_ids: list[int], top: int
) -> list[TokenLogprob | None]:
    """The prompt's own tokens under the model: `logits` [len(prompt), vocab] are the model's
    outputs at each prompt position; token i is scored by position i - 1 (the first: None)."""
    scored = token_logprobs(logits[:-1], prompt_ids[1:], [top] * (len(prompt_ids) - 1))
    return [None, *scored]


@torch.inference_mode()
def score_prompt(model, prompt_ids: list[int], top: int) -> list[TokenLogprob | None]:
    """The prompt's logprobs from one forward pass of `model` over it, without a cache."""
    device = next(model.parameters()).device
    logits = model(input_ids=torch.tensor([prompt_ids], device=device), use_cache=False).logits
    return prompt_token_logprobs(logits[0], prompt_ids, top)


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
    stream: temperature, then min-p, top-k, top-p (nucleus), then a draw — all rows at once.

    The draw is inverse-CDF sampling with one uniform number from the row's generator, so a
    seeded request gets the same tokens whatever else shares its batch."""
    device, vocab = logits.device, logits.size(-1)
    temperature = torch.tensor([p.temperature for p in params], device=device)
    scores = logits.float() / temperature[:, None]
    min_p = torch.tensor([p.min_p for p in params], device=device)
    if bool((min_p > 0).any()):
        # drop tokens less likely than min_p × the likeliest token's probability
        probs = scores.softmax(-1)
        floor = min_p[:, None] * probs.max(dim=-1, keepdim=True).values
        scores = scores.masked_fill(probs < floor, float("-inf"))
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
