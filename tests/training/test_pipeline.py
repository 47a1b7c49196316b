"""The whole pipeline on tiny data: it learns, publishes plain HF checkpoints, skips finished
stages, and refuses bad input before any long work starts."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.training.conftest import tiny_overrides, write_jsonl
from training.chat_format import IM_END
from training.cli import main as cli_main
from training.config import load_recipe
from training.model_factory import load_model_and_tokenizer
from training.pipeline import run_pipeline, run_single_stage


@pytest.fixture(scope="module")
def finished_run(tiny_data, tmp_path_factory):
    """One finished tiny run shared by the tests below; they only read it (or re-run it unchanged)."""
    recipe = load_recipe("tiny", tiny_overrides(tiny_data))
    run = tmp_path_factory.mktemp("pipeline") / "run"
    summary = run_pipeline(recipe, run, log=lambda *_: None)
    return recipe, run, summary


def test_pipeline_learns_and_writes_a_summary(finished_run):
    _, run, summary = finished_run
    stages = summary["stages"]
    # the tiny recipe's export.gguf: the chat model for llama.cpp and ollama too
    assert summary["ran_this_time"] == ["tokenizer", "pretrain", "sft", "dpo-data", "dpo", "gguf"]
    assert (run / "gguf" / f"{run.name}-q8_0.gguf").is_file()
    pre, sft, dpo = stages["pretrain"], stages["sft"], stages["dpo"]
    assert pre["perplexity"] < 0.8 * pre["perplexity_untrained"]
    assert pre["train_loss_last"] < pre["train_loss_first"]
    assert sft["eval_loss"] < sft["eval_loss_before"]
    assert (
        dpo["steps"] == 4
        and dpo["reward_accuracy_last"] is not None
        and dpo["reward_margin_last"] is not None
    )
    assert stages["dpo-data"]["rejected_source"] == "sft_model_generation"
    assert set(summary["tokens_per_s"]) == {"pretrain", "sft", "dpo"}
    on_disk = json.loads((run / "training_summary.json").read_text())
    assert on_disk["stages"]["pretrain"]["steps"] == 12


def test_every_stage_is_a_plain_hf_checkpoint_with_the_chat_template(finished_run):
    _, run, _ = finished_run
    for stage in ("pretrain", "sft", "dpo"):
        names = {p.name for p in (run / stage).iterdir()}
        assert {
            "config.json",
            "model.safetensors",
            "generation_config.json",
            "tokenizer.json",
            "chat_template.jinja",
        } <= names
    model = AutoModelForCausalLM.from_pretrained(run / "dpo")
    tok = AutoTokenizer.from_pretrained(run / "dpo")
    assert model.config.vocab_size % 64 == 0 and model.config.vocab_size >= len(tok)
    assert tok.convert_tokens_to_ids(IM_END) in model.generation_config.eos_token_id
    assert "{% generation %}" in tok.chat_template or "generation" in tok.chat_template


def test_dpo_data_pairs_gold_answers_against_the_sft_models_own(finished_run):
    _, run, _ = finished_run
    pairs = [
        json.loads(line) for line in (run / "dpo-data" / "pairs.jsonl").read_text().splitlines()
    ]
    assert pairs
    for pair in pairs:
        assert pair["prompt"][-1]["role"] == "user"
        assert pair["chosen"][0]["content"] != pair["rejected"][0]["content"]
        assert pair["rejected_source"] == "sft_model_generation"


def test_second_run_skips_finished_stages_and_changes_nothing(finished_run):
    recipe, run, _ = finished_run
    weights = run / "dpo" / "model.safetensors"
    before = (weights.stat().st_mtime_ns, weights.read_bytes()[:4096])
    summary = run_pipeline(recipe, run, log=lambda *_: None)
    assert summary["ran_this_time"] == []
    assert (weights.stat().st_mtime_ns, weights.read_bytes()[:4096]) == before
    with pytest.raises(FileExistsError, match="never overwritten"):
        run_single_stage(recipe, run, "sft")


def test_a_different_recipe_is_refused_in_an_existing_run(finished_run, tiny_data):
    _, run, _ = finished_run
    other = load_recipe("tiny", tiny_overrides(tiny_data, **{"pretrain.max_steps": 99}))
    # pretrain and every stage after it were trained with the old value: each is named.
    folders = ", ".join(str(run / s) for s in ("pretrain", "sft", "dpo-data", "dpo", "gguf"))
    with pytest.raises(ValueError, match=rf"pretrain\.max_steps.*delete {re.escape(folders)} to"):
        run_pipeline(other, run, log=lambda *_: None)


def test_a_recipe_change_for_stages_not_finished_takes_the_run_over(
    finished_run, tiny_data, tmp_path
):
    """A new setting of a stage that has not run (here the disabled embedder), or of a stage
    whose folder was deleted to redo it, is taken: the run's recipe.json records the new recipe
    and the finished stages stay as they are."""
    recipe, run, _ = finished_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    assert recipe.embedder.enabled is False
    other = load_recipe(
        "tiny", tiny_overrides(tiny_data, **{"embedder.sif_weight": 0.5, "dpo.max_steps": 5})
    )
    folders = f"{copy / 'dpo-data'}, {copy / 'dpo'}, {copy / 'gguf'}"
    with pytest.raises(
        ValueError, match=rf"dpo\.max_steps.*delete {re.escape(folders)} to redo them"
    ):
        run_pipeline(other, copy, log=lambda *_: None)
    stored = json.loads((copy / "recipe.json").read_text())
    assert stored["fingerprint"] == recipe.fingerprint()  # nothing written on refusal

    shutil.rmtree(copy / "dpo-data")
    shutil.rmtree(copy / "dpo")
    shutil.rmtree(copy / "gguf")
    summary = run_pipeline(other, copy, log=lambda *_: None)
    assert summary["ran_this_time"] == ["dpo-data", "dpo", "gguf"]
    stored = json.loads((copy / "recipe.json").read_text())
    assert stored["fingerprint"] == other.fingerprint()
    assert stored["recipe"]["embedder"]["sif_weight"] == 0.5
    assert summary["stages"]["dpo"]["steps"] == 5
    assert run_pipeline(other, copy, log=lambda *_: None)["ran_this_time"] == []

    # Redoing one stage on its own: the next pipeline call rebuilds the summary from the stages'
    # reports instead of returning the stale one.
    for stage in ("dpo-data", "dpo", "gguf"):
        shutil.rmtree(copy / stage)
    third = load_recipe("tiny", tiny_overrides(tiny_data, **{"dpo.max_steps": 6}))
    run_single_stage(third, copy, "dpo-data")
    assert run_single_stage(third, copy, "dpo")["steps"] == 6
    run_single_stage(third, copy, "gguf")
    assert not (copy / "training_summary.json").exists()
    summary = run_pipeline(third, copy, log=lambda *_: None)
    assert summary["ran_this_time"] == [] and summary["stages"]["dpo"]["steps"] == 6
    assert json.loads((copy / "training_summary.json").read_text())["stages"]["dpo"]["steps"] == 6


def test_sft_trains_on_a_seeded_sample_when_max_train_samples_is_set(
    finished_run, tiny_data, tmp_path
):
    """Only the sample is tokenised and trained on: 12 steps x 4 conversations go once through
    the whole file (48) but 6 times round a sample of 8."""
    _, run, summary = finished_run
    full = summary["stages"]["sft"]
    assert full["train_conversations"] == full["train_conversations_available"] == 48
    assert full["epochs"] == pytest.approx(1, abs=0.01)
    copy = tmp_path / "run"
    copy.mkdir()
    for stage in ("tokenizer", "pretrain"):
        shutil.copytree(run / stage, copy / stage)
    shutil.copy(run / "recipe.json", copy)
    sampled = load_recipe("tiny", tiny_overrides(tiny_data, **{"sft.max_train_samples": 8}))
    report = run_single_stage(sampled, copy, "sft")
    assert report["train_conversations"] == 8
    assert report["train_conversations_available"] == full["train_conversations_available"]
    assert report["epochs"] == pytest.approx(6, abs=0.01)


def test_tokenizer_and_model_vocabulary_mismatch_is_refused(finished_run, tmp_path):
    _, run, _ = finished_run
    from training.tokenizer import train_tokenizer

    mixed = tmp_path / "mixed"
    AutoModelForCausalLM.from_pretrained(run / "sft").save_pretrained(mixed)
    texts = [f"第{i}个句子：{chr(0x4E00 + i)}{chr(0x4E00 + 2 * i)}" for i in range(400)]
    train_tokenizer(texts, vocab_size=3000, min_frequency=1).save_pretrained(mixed)
    with pytest.raises(
        ValueError, match="tokenizer has .* tokens but the model's embedding has only"
    ):
        load_model_and_tokenizer(mixed, "sft")


def run_cli(args, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(args)
    return exit_info.value.code, capsys.readouterr().err


def test_missing_empty_and_malformed_files_fail_fast_naming_what_to_fix(
    tiny_data, tmp_path, capsys
):
    out = tmp_path / "run"
    base = ["pipeline", "--recipe", "tiny", "--out", str(out)]
    flags = [
        f"--{k}={json.dumps(v) if isinstance(v, list) else v}"
        for k, v in tiny_overrides(tiny_data).items()
    ]

    code, err = run_cli([*base, *flags, "--data.pretrain", str(tmp_path / "nope.jsonl")], capsys)
    assert code == 2 and "nope.jsonl" in err
    assert not (out / "tokenizer").exists()

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, err = run_cli([*base, *flags, "--data.pretrain", str(empty)], capsys)
    assert code == 2 and "empty.jsonl" in err and "empty" in err

    bad = write_jsonl(
        tmp_path / "bad_sft.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "ok"},
                ]
            },
            {"question": "no messages"},
        ],
    )
    code, err = run_cli([*base, *flags, "--data.sft", bad], capsys)
    assert code == 2 and "bad_sft.jsonl" in err and "2" in err and "messages" in err
    assert not (out / "tokenizer").exists()  # nothing ran

    code, err = run_cli([*base, *flags, "--pretrain.seq_len", "4096"], capsys)
    assert code == 2 and "--pretrain.seq_len" in err


@pytest.mark.slow
def test_pretrain_runs_unchanged_under_torchrun_with_two_gloo_processes(tiny_data, tmp_path):
    overrides = tiny_overrides(tiny_data, **{"pretrain.max_steps": 4})
    recipe = load_recipe("tiny", overrides)
    run = tmp_path / "ddp"
    run_single_stage(recipe, run, "tokenizer")
    flags = [f"--{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in overrides.items()]
    with socket.socket() as sock:  # torchrun's static rendezvous needs a concrete free port
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(port),
    ]
    proc = subprocess.run(
        [*torchrun, "-m", "training", "pretrain", "--recipe", "tiny", "--out", str(run), *flags],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((run / "pretrain" / "stage_report.json").read_text())
    assert report["steps"] == 4
    # both processes trained: each step saw 2 processes × micro_batch × seq_len tokens
    assert report["tokens_seen"] == 4 * 2 * recipe.pretrain.micro_batch * recipe.pretrain.seq_len
    model = AutoModelForCausalLM.from_pretrained(run / "pretrain")
    assert torch.isfinite(next(model.parameters())).all()
