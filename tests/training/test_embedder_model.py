"""The embedder's tokenizer and network: one token per character, and SIF weighting that makes
a mean of token vectors lean on the rare characters."""

from __future__ import annotations

import pytest
import torch

from training.config import EmbedderConfig
from training.embedder_model import (
    apply_sif_weights,
    build_model,
    build_tokenizer,
    char_tokenizer,
    pretokenise,
)


def test_sif_weights_scale_each_token_vector_by_its_smoothed_inverse_share(tmp_path):
    texts = ["的的的的的的猫", "的的的的的的狗"] * 2  # 的: 24 of 28 tokens
    cfg = EmbedderConfig(hidden_size=16)
    torch.manual_seed(0)
    model = build_model(build_tokenizer(texts, cfg), cfg, tmp_path)
    vocab = model[0].tokenizer.get_vocab()
    before = model[0].embedding.weight.detach().clone()
    anchors, positives = pretokenise(model, [(t, t) for t in texts])
    weights = apply_sif_weights(model, anchors, a=0.01)
    after = model[0].embedding.weight.detach()
    for ch, share in (("的", 24 / 28), ("猫", 2 / 28)):
        i = vocab[ch]
        assert weights[i].item() == pytest.approx(0.01 / (0.01 + share))
        assert torch.allclose(after[i], before[i] * weights[i])
    # "的猫" now lands next to 猫: the frequent character hardly counts in the mean any more.
    q, cat, de = model.encode(["的猫", "猫", "的"], convert_to_tensor=True)
    assert float(q @ cat) > 0.95 and float(q @ cat) > float(q @ de) + 0.5


def test_char_tokenizer_gives_one_token_per_character():
    tok = char_tokenizer(["画蛇添足，画蛇添足", "守株待兔 守株待兔"], vocab_size=100)
    assert tok.encode("画蛇 添足").tokens == ["画", "蛇", "添", "足"]
    assert tok.encode("龘").tokens == ["[UNK]"]
