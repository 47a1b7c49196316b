"""Where each stage writes, and how a run directory stays consistent.

A stage works in `<run>/<stage>.partial/` and, once everything is saved, is renamed to
`<run>/<stage>/` in one step: a stage directory exists only when the stage finished. Trainer
checkpoints live in `<run>/checkpoints/<stage>/` so an interrupted stage resumes from them.
`<run>/recipe.json` records the recipe the run was started with. A recipe that differs only in
fields of stages not finished yet (say a new embedder setting, or a stage whose folder was deleted
to redo it) takes over the run; one that would change a finished stage is refused, naming the
stage folders to delete, instead of mixing two runs in one folder (the fields each stage
depends on are its `fields` in `training.stages`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from training.config import Recipe, without_runtime_knobs
from training.stages import STAGE_NAMES, STAGES

RECIPE_FILE = "recipe.json"
REPORT_FILE = "stage_report.json"


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


def publish_stage(run_dir: Path, stage: str, report: dict) -> Path:
    """Write the stage's report into `<stage>.partial` and publish the folder."""
    write_json(Path(run_dir) / f"{stage}.partial" / REPORT_FILE, report)
    return finish_stage(run_dir, stage)


def read_stage_report(run_dir: Path, stage: str) -> dict:
    path = stage_dir(run_dir, stage) / REPORT_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"stage": stage}


def stages_changed_by(field: str) -> list[str]:
    """The stages whose output depends on the dotted recipe `field`."""
    return [stage.name for stage in STAGES if stage.depends_on(field)]


def check_run_dir(run_dir: Path, recipe: Recipe) -> bool:
    """Whether `run_dir` already holds a run of exactly `recipe` (False: free to start one, or
    to take over a run whose recipe differs only for stages not finished yet); raises when the
    difference would change a finished stage, or the folder is not a run. Writes nothing."""
    run_dir = Path(run_dir)
    marker = run_dir / RECIPE_FILE
    wanted = recipe.fingerprint()
    if marker.exists():
        stored = json.loads(marker.read_text(encoding="utf-8"))
        # fields added to the recipe after this run started read as their defaults
        have = without_runtime_knobs(
            _with_defaults(stored.get("fingerprint", {}), Recipe().fingerprint())
        )
        if have == wanted:
            return True
        diffs = _differences(have, wanted)
        stale = [
            (field, a, b, [s for s in stages_changed_by(field) if is_finished(run_dir, s)])
            for field, a, b in diffs
        ]
        stale = [row for row in stale if row[3]]
        if stale:
            shown = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, a, b, _ in stale[:5])
            folders = sorted({s for *_, stages in stale for s in stages}, key=STAGE_NAMES.index)
            raise ValueError(
                f"{run_dir} holds a run of a different recipe ({stored.get('name')!r}; {shown}). "
                f"Finished stages would not match this recipe: delete "
                f"{', '.join(str(stage_dir(run_dir, s)) for s in folders)} to redo "
                f"{'it' if len(folders) == 1 else 'them'}, pass another --out, or delete the "
                "folder to start over."
            )
        return False
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ValueError(
            f"{run_dir} is not empty and holds no {RECIPE_FILE}: it is not a xiaophi run folder; "
            "pass another --out."
        )
    return False


def claim_run_dir(run_dir: Path, recipe: Recipe) -> None:
    """Create `run_dir` for `recipe`, check that it already holds a run of the same recipe, or
    record `recipe` for a run it may take over (see `check_run_dir`)."""
    if check_run_dir(run_dir, recipe):
        return
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    marker = run_dir / RECIPE_FILE
    payload = {"name": recipe.name, "fingerprint": recipe.fingerprint(), "recipe": recipe.to_dict()}
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, ensure_ascii=False, indent=2), encoding="utf-8")
    os.replace(tmp, marker)


def _with_defaults(stored: dict, defaults: dict) -> dict:
    out = dict(stored)
    for key, value in defaults.items():
        if key not in out:
            out[key] = value
        elif isinstance(value, dict) and isinstance(out[key], dict):
            out[key] = _with_defaults(out[key], value)
    return out


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
