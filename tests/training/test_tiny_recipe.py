"""The shipped `tiny` recipe on the real demo corpora, every stage: it visibly learns, and the
final model answers a held-out idiom question in Chinese and stops at its end token."""

import pytest

from training.config import load_recipe
from training.pipeline import run_pipeline


@pytest.mark.slow
def test_tiny_recipe_learns_and_answers_held_out_idioms(demo_data, tmp_path):
    d = demo_data
    recipe = load_recipe(
        "tiny",
        {
            "data.pretrain": [str(d / "pretrain.jsonl")],
            "data.pretrain_eval": str(d / "pretrain_eval.jsonl"),
            "data.sft": [str(d / "sft.jsonl")],
            "data.sft_eval": str(d / "sft_eval.jsonl"),
            "data.probe": str(d / "idiom_probe.jsonl"),
            "embedder.pairs": str(d / "embedder_pairs.jsonl"),
            "embedder.eval_pairs": str(d / "embedder_pairs_eval.jsonl"),
        },
    )
    summary = run_pipeline(recipe, tmp_path / "tiny", log=lambda *_: None)
    stages = summary["stages"]
    assert set(stages) == {"tokenizer", "pretrain", "sft", "dpo-data", "dpo", "embedder"}
    pre, sft, dpo = stages["pretrain"], stages["sft"], stages["dpo"]
    # held-out perplexity far below the untrained model's
    assert pre["perplexity"] < pre["perplexity_untrained"] / 4
    # SFT eval loss below the pretrained model's on the same held-out conversations
    assert sft["eval_loss"] < sft["eval_loss_before"]
    assert dpo["reward_accuracy_last"] is not None and dpo["reward_margin_last"] > 0
    # the probe questions are held-out idioms: never in any training file (tests/training/test_demo_data.py)
    assert summary["probe"]
    for answer in summary["probe"]:
        assert answer["stopped_at_end_token"], answer
        assert answer["chinese_chars"] >= 2, answer
