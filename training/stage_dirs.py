"""Where each stage writes, and how a run directory stays consistent.

A stage works in `<run>/<stage>.partial/` and, once everything is saved, is renamed to
`<run>/<stage>/` in one step: a stage directory exists only when the stage finished. Trainer
checkpoints live in `<run>/checkpoints/<stage>/` so an interrupted stage resumes from them.
`<run>/recipe.json` records the recipe the run was started with; a different recipe is refused
instead of mixing two runs in one folder.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from training.config import Recipe

RECIPE_FILE = "recipe.json"


def stage_dir(run_dir: Path, stage: str) -> Path:
    return Path(run_dir) / stage


def is_finished(run_dir: Path, stage: str) -> bool:
    return stage_dir(run_dir, stage).is_dir()


def checkpoints_dir(run_dir: Path, stage: str) -> Path:
    return Path(run_dir) / "checkpoints" / stage


def stage_work_dir(run_dir: Path, stage: str) -> Path:
    """A fresh `<stage>.partial` folder; refuses to touch a finished stage."""
    if is_finished(run_dir, stage):
        raise FileExistsError(
            f"{stage_dir(run_dir, stage)} is a finished {stage} stage and is never overwritten; "
            "delete that folder to redo the stage, or choose another --out."
        )
    work = Path(run_dir) / f"{stage}.partial"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    return work


def finish_stage(run_dir: Path, stage: str) -> Path:
    """Atomically publish `<stage>.partial` as `<stage>`."""
    work = Path(run_dir) / f"{stage}.partial"
    final = stage_dir(run_dir, stage)
    os.replace(work, final)
    return final


def check_run_dir(run_dir: Path, recipe: Recipe) -> bool:
    """Whether `run_dir` already holds a run of `recipe` (False: free to start one); raises when
    it holds a different recipe's run or something that is not a run. Writes nothing."""
    run_dir = Path(run_dir)
    marker = run_dir / RECIPE_FILE
    wanted = recipe.fingerprint()
    if marker.exists():
        stored = json.loads(marker.read_text(encoding="utf-8"))
        have = stored.get("fingerprint", {})
        if have != wanted:
            diffs = _differences(have, wanted)
            shown = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, a, b in diffs[:5])
            raise ValueError(
                f"{run_dir} holds a run of a different recipe ({stored.get('name')!r}; {shown}). "
                "Its finished stages would not match this recipe: pass another --out, "
                "or delete the folder to start over."
            )
        return True
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ValueError(
            f"{run_dir} is not empty and holds no {RECIPE_FILE}: it is not a xiaophi run folder; "
            "pass another --out."
        )
    return False


def claim_run_dir(run_dir: Path, recipe: Recipe) -> None:
    """Create `run_dir` for `recipe`, or check that it already holds a run of the same recipe."""
    if check_run_dir(run_dir, recipe):
        return
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    marker = run_dir / RECIPE_FILE
    payload = {"name": recipe.name, "fingerprint": recipe.fingerprint(), "recipe": recipe.to_dict()}
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, ensure_ascii=False, indent=2), encoding="utf-8")
    os.replace(tmp, marker)


def _differences(a: dict, b: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _differences(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append((f"{prefix}{key}", va, vb))
    return out


def write_json(path: Path, data: dict) -> None:
    """Write JSON through a temporary file and a rename, so readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")
    os.replace(tmp, path)


def save_stage(trainer, tokenizer, run_dir: Path, stage: str, report: dict) -> None:
    """Save model + tokenizer + report into `<stage>.partial` and publish it (rank 0 publishes)."""
    if trainer.is_world_process_zero():
        stage_work_dir(run_dir, stage)
    trainer.accelerator.wait_for_everyone()
    work = Path(run_dir) / f"{stage}.partial"
    trainer.save_model(str(work))
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(work))
        write_json(work / "stage_report.json", report)
        finish_stage(run_dir, stage)
    trainer.accelerator.wait_for_everyone()
