"""The stage registry and its runner: which stages a recipe wants and needs, which recipe fields
each depends on, and how the runner publishes what a stage writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.config import Recipe, load_recipe
from training.pipeline import run_stage
from training.stage_dirs import read_stage_report, stages_changed_by
from training.stages import STAGE_NAMES, STAGES, Stage, get_stage, needed_stages, wanted_stages


def test_the_stages_run_in_pipeline_order_and_only_trainer_stages_in_every_process():
    assert STAGE_NAMES == [
        "tokenizer",
        "pretrain",
        "sft",
        "dpo-data",
        "dpo",
        "embedder",
        "gguf",
        "eval",
    ]
    assert [s.name for s in STAGES if s.all_processes] == ["pretrain", "sft", "dpo"]


def test_which_stages_a_recipe_wants():
    recipe = Recipe()
    assert [s.name for s in wanted_stages(recipe)] == [n for n in STAGE_NAMES if n != "gguf"]
    recipe.export.gguf = ["f16", "q4_k_m"]  # asked for: GGUF files of the chat model
    assert "gguf" in [s.name for s in wanted_stages(recipe)]
    recipe.export.gguf = []
    recipe.data.dpo = ["pairs.jsonl"]  # the user brought their own preference pairs
    recipe.embedder.enabled = False
    recipe.eval.enabled = False
    assert [s.name for s in wanted_stages(recipe)] == ["tokenizer", "pretrain", "sft", "dpo"]


def test_what_each_stage_needs_first():
    recipe = Recipe()
    needs = {s.name: needed_stages(recipe, s) for s in STAGES}
    assert needs == {
        "tokenizer": [],
        "pretrain": ["tokenizer"],
        "sft": ["pretrain"],
        "dpo-data": ["sft"],
        "dpo": ["sft", "dpo-data"],
        "embedder": [],
        "gguf": ["dpo"],
        "eval": [],
    }
    recipe.data.dpo = ["pairs.jsonl"]
    assert needed_stages(recipe, get_stage("dpo")) == ["sft"]


def test_what_each_stage_reads_comes_from_the_recipe():
    recipe = load_recipe("tiny")
    d = recipe.data
    assert get_stage("sft").reads(recipe) == [(d.sft, "sft"), ([d.sft_eval], "sft")]
    assert get_stage("dpo").reads(recipe) == []  # the dpo-data stage makes its pairs
    recipe.data.dpo = ["mine.jsonl"]
    assert get_stage("dpo").reads(recipe) == [(["mine.jsonl"], "dpo")]


@pytest.mark.parametrize(
    "field, stages",
    [
        ("data.num_proc", ["tokenizer", "pretrain", "sft", "dpo-data", "dpo", "gguf", "eval"]),
        ("model.hidden_size", ["pretrain", "sft", "dpo-data", "dpo", "gguf", "eval"]),
        ("decoding.probes", ["sft", "dpo-data", "dpo", "gguf", "eval"]),
        ("dpo.beta", ["dpo-data", "dpo", "gguf", "eval"]),
        ("eval.limit", ["eval"]),
        ("export.gguf", ["gguf"]),
        ("embedder.lr", ["embedder"]),
        # the embedder trains with the run's seed, and with nothing else of pretrain
        ("pretrain.seed", ["pretrain", "sft", "dpo-data", "dpo", "embedder", "gguf", "eval"]),
        ("pretrain.lr", ["pretrain", "sft", "dpo-data", "dpo", "gguf", "eval"]),
    ],
)
def test_which_stages_a_recipe_field_changes(field, stages):
    assert stages_changed_by(field) == stages


def test_an_unknown_stage_is_named():
    with pytest.raises(ValueError, match="unknown stage 'sfft'"):
        get_stage("sfft")


# A stage of this very module, as the registry would list it: `main(recipe, run_dir, work)`.
TOY = Stage("toy", __name__, fields=("toy.",))


def main(recipe, run_dir: Path, work: Path) -> dict:
    assert work == run_dir / "toy.partial" and work.is_dir() and not (run_dir / "toy").exists()
    if recipe.name == "broken":
        (work / "half.txt").write_text("half", encoding="utf-8")
        raise RuntimeError("the toy stage broke")
    (work / "out.txt").write_text("made", encoding="utf-8")
    return {"stage": "toy", "made": 1}


def test_the_runner_publishes_what_a_stage_writes_with_its_report(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    report = run_stage(Recipe(), run, TOY)
    assert report["made"] == 1 and report["wall_time_s"] >= 0  # the runner timed it
    assert (run / "toy" / "out.txt").read_text() == "made"
    assert json.loads((run / "toy" / "stage_report.json").read_text()) == report
    assert read_stage_report(run, "toy") == report
    assert not (run / "toy.partial").exists()
    with pytest.raises(FileExistsError, match="never overwritten"):
        run_stage(Recipe(), run, TOY)


def test_a_stage_that_fails_publishes_nothing(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(RuntimeError, match="broke"):
        run_stage(Recipe(name="broken"), run, TOY)
    assert not (run / "toy").exists()
    run_stage(Recipe(), run, TOY)  # the next try starts from a fresh partial folder
    assert not (run / "toy" / "half.txt").exists()


def test_a_main_only_stage_is_waited_for_in_the_other_processes(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    run_stage(Recipe(), run, TOY)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    before = sorted(p.name for p in run.rglob("*"))
    # rank 1 never runs a main-only stage: it reads the report the main process published
    assert run_stage(Recipe(), run, TOY) == read_stage_report(run, "toy")
    assert sorted(p.name for p in run.rglob("*")) == before
