"""Pretraining: packed blocks with document boundaries, compact storage, exact resume after kill -9."""

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.conftest import TINY_TEXTS
from tests.training.conftest import tiny_overrides, write_jsonl
from training.config import load_recipe
from training.pipeline import run_single_stage
from training.pretrain import PackedBlocks, build_token_array, token_dtype
from training.tokenizer import train_tokenizer


def test_documents_are_packed_with_bos_eos_boundaries_as_uint16(tmp_path):
    tok = train_tokenizer(TINY_TEXTS, vocab_size=400, min_frequency=1)
    docs = ["画蛇添足", "守株待兔比喻死守狭隘经验。"]
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": d} for d in docs])
    tokens = build_token_array(tok, [path], num_proc=1, cache_path=tmp_path / "cache.npy")
    assert tokens.dtype == np.uint16
    expected = []
    for d in docs:
        expected += [
            tok.bos_token_id,
            *tok(d, add_special_tokens=False)["input_ids"],
            tok.eos_token_id,
        ]
    assert tokens.tolist() == expected
    blocks = PackedBlocks(tokens, seq_len=4)
    assert len(blocks) == len(expected) // 4
    item = blocks[1]
    assert item["input_ids"].tolist() == expected[4:8]
    assert item["labels"].tolist() == item["input_ids"].tolist()
    with pytest.raises(IndexError):
        blocks[len(blocks)]


def test_token_dtype_widens_only_when_needed():
    assert token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from transformers import TrainerCallback
    import training.pretrain as pretrain

    class KillAfter(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == int(os.environ["KILL_AT_STEP"]):
                os.kill(os.getpid(), signal.SIGKILL)

    attach = pretrain.attach_throughput

    def attach_and_arm(trainer, model, seq_len):
        trainer.add_callback(KillAfter())
        return attach(trainer, model, seq_len)

    pretrain.attach_throughput = attach_and_arm
    from training.cli import main
    main(sys.argv[1:])
    """
)


@pytest.mark.slow
def test_killed_run_resumes_with_the_same_data_order_and_loss_curve(tiny_data, tmp_path):
    overrides = tiny_overrides(tiny_data)
    recipe = load_recipe("tiny", overrides)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run_single_stage(recipe, straight, "tokenizer")
    shutil.copytree(straight, killed)

    reference = run_single_stage(recipe, straight, "pretrain")
    assert reference["steps"] == 12 and not reference["resumed"]

    flags = [
        f"--{k}={json.dumps(v, ensure_ascii=False) if isinstance(v, list) else v}"
        for k, v in overrides.items()
    ]
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    proc = subprocess.run(
        [sys.executable, str(script), "pretrain", "--recipe", "tiny", "--out", str(killed), *flags],
        env={**__import__("os").environ, "KILL_AT_STEP": "6"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert not (killed / "pretrain").exists()  # the stage never published a half-trained model
    assert (killed / "checkpoints" / "pretrain" / "checkpoint-4").is_dir()

    resumed = run_single_stage(recipe, killed, "pretrain")
    assert resumed["resumed"] and resumed["steps"] == 12
    steps = [s for s, _ in reference["loss_curve"]]
    assert [s for s, _ in resumed["loss_curve"]] == steps
    np.testing.assert_allclose(
        [loss for _, loss in resumed["loss_curve"]],
        [loss for _, loss in reference["loss_curve"]],
        rtol=1e-4,
    )
    assert resumed["eval_loss"] == pytest.approx(reference["eval_loss"], rel=1e-4)
