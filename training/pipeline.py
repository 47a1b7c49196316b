"""Run every stage of a recipe into one run folder, skipping finished stages, and write
`training_summary.json` (recipe, data, steps, losses, eval figures, wall time, tokens/s).

Under a multi-process launch every process runs this same code: the Trainer stages run in all of
them, the rest in the main process only (see `training.distributed`).
"""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path

from training.config import Recipe
from training.distributed import check_launch_fits_device, is_main_process, wait_for, world_size
from training.stage_dirs import (
    RECIPE_FILE,
    check_run_dir,
    claim_run_dir,
    is_finished,
    stage_dir,
    write_json,
)

# Stage name → module with `main(recipe, run_dir) -> report`, in pipeline order.
STAGE_MODULES = {
    "tokenizer": "training.tokenizer",
    "pretrain": "training.pretrain",
    "sft": "training.sft",
    "dpo-data": "training.dpo_data",
    "dpo": "training.dpo",
    "embedder": "training.embedder",
    "eval": "training.eval_stage",
}
STAGES = list(STAGE_MODULES)
# Stages whose Trainer spreads the work over the processes of a launch; the others run in the
# main process only, the rest waiting for the published stage folder.
TRAINER_STAGES = ("pretrain", "sft", "dpo")
FINAL_STAGE = "dpo"
SUMMARY_FILE = "training_summary.json"


def stage_inputs(recipe: Recipe, stage: str) -> list[tuple[list[str], str]]:
    """(files, kind) each stage reads, for the up-front checks."""
    d = recipe.data
    return {
        "tokenizer": [(d.pretrain, "text"), ([d.pretrain_eval], "text")],
        "pretrain": [(d.pretrain, "text"), ([d.pretrain_eval], "text")],
        "sft": [(d.sft, "sft"), ([d.sft_eval], "sft")],
        "dpo-data": [(d.sft, "sft")],
        "dpo": [(d.dpo, "dpo")] if d.dpo else [],
        "embedder": [],
        "eval": [],
    }[stage]


def wanted_stages(recipe: Recipe) -> list[str]:
    stages = list(STAGES)
    if recipe.data.dpo:
        stages.remove("dpo-data")  # the user brought their own preference pairs
    if not recipe.embedder.enabled:
        stages.remove("embedder")
    if not recipe.eval.enabled:
        stages.remove("eval")
    return stages


def preflight(recipe: Recipe, run_dir: Path, stages: list[str]) -> None:
    """Everything that can be checked before long work starts: recipe, data files, run folder."""
    from training.data.formats import check_files

    recipe.validate()
    check_launch_fits_device()
    if not is_main_process():
        # The main process checks and claims the folder; reading it while that happens could
        # catch it half-claimed. Its failure stops this process through the launcher.
        wait_for(lambda: _claimed_for(run_dir, recipe), f"the main process to claim {run_dir}")
        return
    check_run_dir(run_dir, recipe)
    for stage in stages:
        if is_finished(run_dir, stage):
            continue
        for files, kind in stage_inputs(recipe, stage):
            check_files(files, kind)
    if (
        "embedder" in stages
        and not is_finished(run_dir, "embedder")
        and not Path(recipe.embedder.pairs).is_file()
    ):
        raise FileNotFoundError(
            f"embedder pairs file {recipe.embedder.pairs} does not exist; build the demo data "
            "(`xiaophi-train data demo`), pass --embedder.pairs, or --embedder.enabled false."
        )
    if "eval" in stages and not is_finished(run_dir, "eval"):
        from training.eval_items import load_heldout

        if any(t.startswith("xiaophi") for t in recipe.eval.tasks):
            load_heldout(recipe.eval.heldout)  # a missing file says how to build it
    claim_run_dir(run_dir, recipe)


def _claimed_for(run_dir: Path, recipe: Recipe) -> bool:
    marker = Path(run_dir) / RECIPE_FILE
    if not marker.exists():
        return False
    stored = json.loads(marker.read_text(encoding="utf-8"))
    return stored.get("fingerprint") == recipe.fingerprint()


def read_stage_report(run_dir: Path, stage: str) -> dict:
    path = stage_dir(run_dir, stage) / "stage_report.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"stage": stage}


def run_stage(recipe: Recipe, run_dir: Path, stage: str) -> dict:
    if stage not in TRAINER_STAGES and not is_main_process():
        wait_for(lambda: is_finished(run_dir, stage), f"the main process to finish {stage}")
        return read_stage_report(run_dir, stage)
    module = importlib.import_module(STAGE_MODULES[stage])
    return module.main(recipe, run_dir)


def run_pipeline(recipe: Recipe, run_dir: Path, log=print) -> dict:
    """Every stage not finished yet, then the summary. Under a multi-process launch only the main
    process logs and writes the summary; the others return what they ran."""
    run_dir = Path(run_dir)
    if not is_main_process():
        log = _silent
    stages = wanted_stages(recipe)
    preflight(recipe, run_dir, stages)
    started = time.time()
    reports, ran = {}, []
    for stage in stages:
        if is_finished(run_dir, stage):
            log(f"[{stage}] finished earlier in {stage_dir(run_dir, stage)}, skipping")
            reports[stage] = read_stage_report(run_dir, stage)
            continue
        log(f"[{stage}] running")
        t0 = time.time()
        reports[stage] = run_stage(recipe, run_dir, stage)
        reports[stage].setdefault("wall_time_s", round(time.time() - t0, 2))
        ran.append(stage)
        log(f"[{stage}] done in {time.time() - t0:.1f}s")
    if not is_main_process():
        return {"ran_this_time": ran, "world_size": world_size()}
    summary_path = run_dir / SUMMARY_FILE
    if not ran and summary_path.exists():  # nothing new: the summary (and its probe) still holds
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        summary["ran_this_time"] = []
        return summary
    summary = build_summary(recipe, run_dir, reports, ran, time.time() - started)
    write_json(summary_path, summary)
    return summary


def build_summary(
    recipe: Recipe, run_dir: Path, reports: dict, ran: list[str], wall: float
) -> dict:
    from training.probe import probe_model

    final = stage_dir(run_dir, FINAL_STAGE)
    probe = probe_model(final, recipe.data.probe) if Path(recipe.data.probe).exists() else []
    return {
        "recipe": recipe.to_dict(),
        "data": data_summary(recipe),
        "final_model": str(final),
        "stages": reports,
        "ran_this_time": ran,
        "wall_time_s": round(wall, 2),
        "wall_time_s_all_stages": round(sum(r.get("wall_time_s", 0) for r in reports.values()), 2),
        "tokens_per_s": {s: r["tokens_per_s"] for s, r in reports.items() if r.get("tokens_per_s")},
        "probe": probe,
        "decoding": {
            s: reports[s]["decoding"] for s in ("sft", "dpo") if "decoding" in reports.get(s, {})
        },
        "eval": {k: reports["eval"][k] for k in ("split", "limit", "results", "table")}
        if "results" in reports.get("eval", {})
        else None,
    }


def data_summary(recipe: Recipe) -> dict:
    d = recipe.data
    files = [*d.pretrain, d.pretrain_eval, *d.sft, d.sft_eval, *d.dpo]
    out = {"files": {f: Path(f).stat().st_size for f in files if Path(f).exists()}}
    demo_summary = Path(d.pretrain[0]).parent / "summary.json"
    if demo_summary.exists():
        out["demo_corpus"] = json.loads(demo_summary.read_text(encoding="utf-8"))
    return out


def run_single_stage(recipe: Recipe, run_dir: Path, stage: str) -> dict:
    """One stage on its own (the `xiaophi-train <stage>` commands), with the same checks."""
    run_dir = Path(run_dir)
    if not is_main_process():
        # The checks below are the main process's: a main-only stage it has just published would
        # look "already finished" to a process that gets here late.
        preflight(recipe, run_dir, [stage])
        return run_stage(recipe, run_dir, stage)
    if is_finished(run_dir, stage):
        raise FileExistsError(
            f"the {stage} stage already finished in {stage_dir(run_dir, stage)}; it is never overwritten. "
            "Delete that folder to redo it, or pass another --out."
        )
    preflight(recipe, run_dir, [stage])
    previous = (
        STAGES[STAGES.index(stage) - 1] if stage not in ("tokenizer", "embedder", "eval") else None
    )
    if stage == "dpo" and recipe.data.dpo:
        previous = "sft"
    if previous and not is_finished(run_dir, previous):
        raise FileNotFoundError(
            f"the {stage} stage needs the {previous} stage of {run_dir}, which has not finished; "
            f"run `xiaophi-train {previous} --out {run_dir}` (or `pipeline`) first."
        )
    report = run_stage(recipe, run_dir, stage)
    if is_main_process():
        # The run's summary no longer describes it; the next `pipeline` call writes a fresh one.
        (run_dir / SUMMARY_FILE).unlink(missing_ok=True)
    return report


def _silent(*_args, **_kwargs) -> None:
    pass
