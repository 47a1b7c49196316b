"""Throughput and MFU accounting, and the GPU benchmark script's own path (smoke mode on CPU)."""

import json

import pytest

from bench.gpu_pretrain_bench import main as gpu_bench
from tests.conftest import TINY_TEXTS
from training.config import ModelConfig
from training.model_factory import build_model
from training.throughput import bf16_peak_flops, flops_per_token
from training.tokenizer import train_tokenizer


def test_flops_per_token_is_6n_plus_attention():
    tok = train_tokenizer(TINY_TEXTS, vocab_size=400, min_frequency=1)
    cfg = ModelConfig(
        hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, max_position_embeddings=128
    )
    model = build_model(cfg, tok)
    n_all = sum(p.numel() for p in model.parameters())
    n_embed = model.get_input_embeddings().weight.numel()
    assert flops_per_token(model, seq_len=128) == 6 * (n_all - n_embed) + 12 * 2 * 32 * 128
    tied = build_model(ModelConfig(**{**cfg.__dict__, "tie_word_embeddings": True}), tok)
    assert (
        flops_per_token(tied, 128)
        == 6 * sum(p.numel() for p in tied.parameters()) + 12 * 2 * 32 * 128
    )


def test_peak_table_matches_card_names():
    assert bf16_peak_flops("NVIDIA H200") == pytest.approx(989.4e12)
    assert bf16_peak_flops("NVIDIA H100 PCIe") == pytest.approx(756e12)
    assert bf16_peak_flops("NVIDIA H100 80GB HBM3") == pytest.approx(989.4e12)
    assert bf16_peak_flops("NVIDIA A100-SXM4-80GB") == pytest.approx(312e12)
    assert bf16_peak_flops("Some Unknown Card") is None


def test_gpu_benchmark_script_runs_both_settings_in_smoke_mode(tmp_path):
    out = tmp_path / "gpu.json"
    results = gpu_bench(["--smoke", "--steps", "2", "--out", str(out)])
    assert [r["setting"] for r in results] == ["a_seed_article", "b_project_defaults"]
    assert [r["attn"] for r in results] == ["eager", "sdpa"]
    assert [r["optim"] for r in results] == ["adafactor", "auto"]
    assert all(r["steps"] == 2 and r["tokens_per_s"] > 0 for r in results)
    assert json.loads(out.read_text())["device"] == "cpu"
