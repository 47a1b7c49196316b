"""The local lm-eval tasks load through lm-eval and score planted models exactly.

The planted models are real 2-layer Phi checkpoints whose output layer is zeroed and whose bias
is set by hand, so their next-token distribution is the same at every position: one that always
prefers "A", a uniform one, one that always ends the turn, one that repeats a character.
"""

from __future__ import annotations

import json
import math

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.training.conftest import SUBJECTS, planted, run
from training.eval import items as eval_items
from training.eval.harness import LOCAL_TASKS
from training.eval.metrics import char_f1, is_loop


@pytest.mark.slow
def test_every_local_task_loads_and_a_model_that_always_says_a_gets_the_share_of_a(
    tiny_checkpoint, tmp_path, eval_files
):
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_checkpoint))
    letter_a = tokenizer(" A", add_special_tokens=False)["input_ids"][-1]
    model_dir = planted(tiny_checkpoint, tmp_path / "always_a", letter_a)
    scores = run(model_dir, ["xiaophi"], eval_files)
    assert set(LOCAL_TASKS) <= set(scores)
    for kind in ("idiom", "word", "xiehouyu"):
        rows = eval_items.build(f"mc:{kind}", eval_files["heldout"], split="test")
        share = sum(r["gold"] == 0 for r in rows) / len(rows)
        assert scores[f"xiaophi_{kind}_mc"]["n"] == len(rows)
        assert scores[f"xiaophi_{kind}_mc"]["acc"] == pytest.approx(share, abs=1e-4)
    # the gold positions are mixed, so the share is a real test of the scoring
    assert any(0 < scores[f"xiaophi_{k}_mc"]["acc"] < 1 for k in ("idiom", "word", "xiehouyu"))
    # "A" is no end token: every answer runs to the limit, repeating itself
    gen = scores["xiaophi_idiom_gen"]
    assert gen["stop_rate"] == 0 and gen["loop_rate"] == 1 and gen["char_f1"] == 0


def test_a_uniform_model_has_exactly_log2_vocab_bits_per_token(
    tiny_checkpoint, tmp_path, eval_files
):
    model_dir = planted(tiny_checkpoint, tmp_path / "uniform", None)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    vocab = AutoModelForCausalLM.from_pretrained(str(model_dir)).config.vocab_size
    texts = eval_items.bpc_texts(eval_files["eval_text"], "test")
    tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    expected = tokens * math.log2(vocab) / sum(len(t) for t in texts)
    scores = run(model_dir, ["xiaophi_heldout_bpc"], eval_files)
    assert scores["xiaophi_heldout_bpc"]["bits_per_char"] == pytest.approx(expected, rel=1e-4)


def test_stops_and_loops_are_told_apart(tiny_checkpoint, tmp_path, eval_files):
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_checkpoint))
    ends = planted(
        tiny_checkpoint, tmp_path / "ends", tokenizer.convert_tokens_to_ids("<|im_end|>")
    )
    scores = run(ends, ["xiaophi_idiom_gen", "xiaophi_idiom_grounded_gen"], eval_files)
    for task in ("xiaophi_idiom_gen", "xiaophi_idiom_grounded_gen"):
        assert scores[task]["stop_rate"] == 1 and scores[task]["loop_rate"] == 0
        assert scores[task]["n"] == len(SUBJECTS["idiom"]) - 2  # the test split only


def test_items_come_from_the_split_and_distractors_from_other_items(eval_files):
    dev = eval_items.build("mc:idiom", eval_files["heldout"], split="dev")
    test = eval_items.build("mc:idiom", eval_files["heldout"], split="test")
    assert {r["subject"] for r in dev} == {"画蛇添足", "守株待兔"}
    assert not {r["subject"] for r in dev} & {r["subject"] for r in test}
    for row in test:
        assert row["choices"][row["gold"]] == row["answer"]
        assert len(set(row["choices"])) == 4
        assert "A. " in row["prompt"] and row["prompt"].endswith("答案：")
    assert test == eval_items.build("mc:idiom", eval_files["heldout"], split="test")  # seeded


def test_grounded_items_hold_the_gold_entry_among_three(tiny_checkpoint, eval_files):
    rows = eval_items.build(
        "grounded_gen:idiom", eval_files["heldout"], tokenizer=str(tiny_checkpoint)
    )
    for row in rows:
        docs = json.loads(row["documents"])
        assert len(docs) == 3 and {"title": row["subject"], "text": row["answer"]} in docs
        assert f"{row['answer']}" in row["prompt"] and row["prompt"].endswith(
            "<|im_start|>assistant\n"
        )


def test_a_missing_heldout_file_says_how_to_build_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="xiaophi-train data demo"):
        eval_items.build("mc:idiom", tmp_path / "nope.jsonl")


def test_char_f1_and_loops():
    assert char_f1("比喻死守，不知变通。", "比喻死守狭隘经验，不知变通。") == pytest.approx(0.8)
    assert char_f1("", "比喻") == 0
    assert is_loop("答案是的的的的的的的的的", stopped=False)
    assert not is_loop("答案是的的的的的的的的的", stopped=True)
    assert not is_loop("比喻做了多余的事，反而不恰当。", stopped=False)
