"""Batched per-row sampling: each row's own temperature / top-k / top-p and random stream."""

from __future__ import annotations

import torch

from serving.engine.base import SamplingParams
from serving.engine.sampling import sample_rows

PROBS = torch.tensor([0.5, 0.3, 0.15, 0.05])
LOGITS = PROBS.log()


def draw(params: SamplingParams, n: int, seed: int = 0, logits=LOGITS) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return sample_rows(logits.expand(n, -1), [params] * n, [generator] * n)


def frequencies(tokens: torch.Tensor) -> torch.Tensor:
    return torch.bincount(tokens, minlength=len(PROBS)).float() / len(tokens)


def test_plain_sampling_follows_the_softmax():
    freq = frequencies(draw(SamplingParams(max_new_tokens=1, temperature=1.0), 20_000))
    assert torch.allclose(freq, PROBS, atol=0.015)


def test_temperature_sharpens_and_flattens():
    cold = frequencies(draw(SamplingParams(max_new_tokens=1, temperature=0.25), 5_000))
    hot = frequencies(draw(SamplingParams(max_new_tokens=1, temperature=4.0), 5_000))
    assert cold[0] > 0.85
    expected_hot = (LOGITS / 4.0).softmax(-1)
    assert torch.allclose(hot, expected_hot, atol=0.03)


def test_top_k_and_top_p_keep_only_the_best_tokens_renormalised():
    top2 = frequencies(draw(SamplingParams(max_new_tokens=1, top_k=2), 10_000))
    assert top2[2:].sum() == 0
    assert abs(top2[0] - 0.5 / 0.8) < 0.02
    # 0.5 + 0.3 reach 0.8: the tokens after them are dropped
    nucleus = frequencies(draw(SamplingParams(max_new_tokens=1, top_p=0.8), 10_000))
    assert nucleus[2:].sum() == 0 and abs(nucleus[0] - 0.5 / 0.8) < 0.02
    assert set(draw(SamplingParams(max_new_tokens=1, top_p=0.01), 500).tolist()) == {0}
    assert set(draw(SamplingParams(max_new_tokens=1, top_k=1), 500).tolist()) == {0}


def test_each_row_keeps_its_own_settings_and_seed_whatever_shares_the_batch():
    logits = torch.randn(3, 50)
    params = [
        SamplingParams(max_new_tokens=1, temperature=0.7, top_p=0.9, seed=1),
        SamplingParams(max_new_tokens=1, top_k=1),
        SamplingParams(max_new_tokens=1, temperature=1.3, top_k=10, seed=2),
    ]

    def run(rows):
        generators = [torch.Generator().manual_seed(params[i].seed or 0) for i in rows]
        out = []
        for _ in range(20):
            out.append(sample_rows(logits[rows], [params[i] for i in rows], generators).tolist())
        return [[step[j] for step in out] for j in range(len(rows))]

    together = run([0, 1, 2])
    assert together[0] == run([0])[0] and together[2] == run([2])[0]
    assert together[1] == [int(logits[1].argmax())] * 20
    top10 = set(logits[2].topk(10).indices.tolist())
    assert set(together[2]) <= top10 and len(set(together[2])) > 1
