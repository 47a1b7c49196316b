"""Run every stage of a recipe into one run folder, skipping finished stages, and write
`training_summary.json` (recipe, data, steps, losses, eval figures, wall time, tokens/s).

The stages are listed in `training.stages`; this runner gives each a fresh `<stage>.partial`
folder, then publishes it with the stage's report. Under a multi-process launch every process
runs this same code: the Trainer stages run in all of them, the rest in the main process only
(see `training.distributed`). What the console shows meanwhile, and where each stage's own output
goes (`<run>/logs/<stage>.log`), is `training.stage_console`'s business.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from training.config import Recipe
from training.cpu_share import set_threads_for_free_cores
from training.distributed import check_launch_fits_device, is_main_process, wait_for, world_size
from training.stage_console import StageConsole
from training.stage_dirs import (
    RECIPE_FILE,
    check_run_dir,
    claim_run_dir,
    is_finished,
    publish_stage,
    read_stage_report,
    stage_dir,
    stage_work_dir,
    write_json,
)
from training.stages import Stage, get_stage, needed_stages, wanted_stages

FINAL_STAGE = "dpo"
SUMMARY_FILE = "training_summary.json"


def preflight(recipe: Recipe, run_dir: Path, stages: list[Stage]) -> None:
    """Everything that can be checked before long work starts: recipe, data files, run folder."""
    from training.data.formats import check_files

    recipe.check()
    check_launch_fits_device()
    if not is_main_process():
        # The main process checks and claims the folder; reading it while that happens could
        # catch it half-claimed. Its failure stops this process through the launcher.
        wait_for(lambda: _claimed_for(run_dir, recipe), f"the main process to claim {run_dir}")
        return
    check_run_dir(run_dir, recipe)
    for stage in stages:
        if is_finished(run_dir, stage.name):
            continue
        for files, kind in stage.reads(recipe):
            check_files(files, kind)
        if stage.check:
            stage.check(recipe)
    claim_run_dir(run_dir, recipe)


def _claimed_for(run_dir: Path, recipe: Recipe) -> bool:
    marker = Path(run_dir) / RECIPE_FILE
    if not marker.exists():
        return False
    stored = json.loads(marker.read_text(encoding="utf-8"))
    return stored.get("fingerprint") == recipe.fingerprint()


def run_stage(recipe: Recipe, run_dir: Path, stage: Stage | str) -> dict:
    """Run one stage into `<stage>.partial` and publish it with its report. A stage that runs in
    the main process only is waited for by the others, which then read its report."""
    stage = get_stage(stage) if isinstance(stage, str) else stage
    run_dir = Path(run_dir)
    if not is_main_process():
        work = run_dir / f"{stage.name}.partial"  # the main process creates it
        report = stage.run(recipe, run_dir, work) if stage.all_processes else None
        # The next stage reads this one's published folder.
        wait_for(
            lambda: is_finished(run_dir, stage.name), f"the main process to publish {stage.name}"
        )
        return report if report is not None else read_stage_report(run_dir, stage.name)
    work = stage_work_dir(run_dir, stage.name)
    # one process on a CPU shared with other programs: threads for the cores they leave free
    threads = set_threads_for_free_cores() if world_size() == 1 else None
    started = time.time()
    report = stage.run(recipe, run_dir, work)
    report.setdefault("wall_time_s", round(time.time() - started, 2))
    if threads is not None:
        report.setdefault("torch_threads_at_start", threads)
    publish_stage(run_dir, stage.name, report)
    return report


def run_pipeline(
    recipe: Recipe, run_dir: Path, log=print, console: StageConsole | None = None
) -> dict:
    """Every stage not finished yet, then the summary. Under a multi-process launch only the main
    process logs and writes the summary; the others return what they ran.

    Each stage's start and end (with its figures) go to `log`, its own output where it goes; with
    a `console` (`StageConsole.for_terminal`, what `xiaophi-train pipeline` uses) each stage shows
    a progress line instead and its output goes to `<run>/logs/<stage>.log`."""
    run_dir = Path(run_dir)
    if console is None:
        console = StageConsole(log=log)  # says nothing outside the main process
    stages = wanted_stages(recipe)
    preflight(recipe, run_dir, stages)
    started = time.time()
    reports, ran = {}, []
    for stage in stages:
        name = stage.name
        if is_finished(run_dir, name):
            console.skipped(name, stage_dir(run_dir, name))
            reports[name] = read_stage_report(run_dir, name)
            continue
        reports[name] = console.run(
            name, run_dir, lambda stage=stage: run_stage(recipe, run_dir, stage)
        )
        ran.append(name)
    if not is_main_process():
        return {"ran_this_time": ran, "world_size": world_size()}
    summary_path = run_dir / SUMMARY_FILE
    if not ran and summary_path.exists():  # nothing new: the summary still holds
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        summary["ran_this_time"] = []
        return summary
    summary = build_summary(recipe, run_dir, reports, ran, time.time() - started)
    write_json(summary_path, summary)
    return summary


def build_summary(
    recipe: Recipe, run_dir: Path, reports: dict, ran: list[str], wall: float
) -> dict:
    final = stage_dir(run_dir, FINAL_STAGE)
    return {
        "recipe": recipe.to_dict(),
        "data": data_summary(recipe),
        "final_model": str(final),
        "stages": reports,
        "ran_this_time": ran,
        "wall_time_s": round(wall, 2),
        "wall_time_s_all_stages": round(sum(r.get("wall_time_s", 0) for r in reports.values()), 2),
        "tokens_per_s": {s: r["tokens_per_s"] for s, r in reports.items() if r.get("tokens_per_s")},
        "probe": reports.get("eval", {}).get("probe", []),
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


def run_single_stage(recipe: Recipe, run_dir: Path, name: str) -> dict:
    """One stage on its own (the `xiaophi-train <stage>` commands), with the same checks."""
    run_dir = Path(run_dir)
    stage = get_stage(name)
    if not is_main_process():
        # The checks below are the main process's: a main-only stage it has just published would
        # look "already finished" to a process that gets here late.
        preflight(recipe, run_dir, [stage])
        return run_stage(recipe, run_dir, stage)
    if is_finished(run_dir, name):
        raise FileExistsError(
            f"the {name} stage already finished in {stage_dir(run_dir, name)}; it is never overwritten. "
            "Delete that folder to redo it, or pass another --out."
        )
    preflight(recipe, run_dir, [stage])
    for previous in needed_stages(recipe, stage):
        if not is_finished(run_dir, previous):
            raise FileNotFoundError(
                f"the {name} stage needs the {previous} stage of {run_dir}, which has not finished; "
                f"run `xiaophi-train {previous} --out {run_dir}` (or `pipeline`) first."
            )
    report = run_stage(recipe, run_dir, stage)
    # The run's summary no longer describes it; the next `pipeline` call writes a fresh one.
    (run_dir / SUMMARY_FILE).unlink(missing_ok=True)
    return report
