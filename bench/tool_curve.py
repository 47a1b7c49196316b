"""`make bench-tools`: how far the demo-sized model is from using its tools — the tool-use and
grounded scores against SFT steps.

One tokenizer and one pretraining (the tiny recipe, with the rendered tool conversations in the
tokenizer's corpus so the format costs few tokens) are shared by every row; each row then runs
the SFT stage from that pretrained model for its own number of steps (a full schedule each, not
a snapshot of a longer one), with the demo's `sft_tools.jsonl` drawn `--tool-repeat` times as
often as the other chats and 256-token sequences (a tool conversation is ~130 tokens). Every SFT
checkpoint is scored on the held-out terms: tool-call validity, exact arguments, no-tool
precision, answer character-F1 with the tool result in the conversation, beside closed-book and
grounded F1. Baseline in the same run: the pretrained model before SFT on the same tasks.

Every row is scored on both held-out splits: dev (where a recipe would be chosen) and test (terms
nothing was tuned on). Each row prints as it finishes; all rows go to `<out>/curve.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import torch

from training.config import load_recipe

SPLITS = ("dev", "test")
TASKS = ["xiaophi_tools", "xiaophi_idiom_gen", "xiaophi_idiom_grounded_gen"]
COLUMNS = [
    ("xiaophi_idiom_tool_call", "valid_call", "valid call"),
    ("xiaophi_idiom_tool_call", "exact_args", "exact args"),
    ("xiaophi_idiom_no_tool", "no_call", "no call when none needed"),
    ("xiaophi_idiom_tool_answer_gen", "char_f1", "F1 with tool result"),
    ("xiaophi_idiom_grounded_gen", "char_f1", "F1 grounded"),
    ("xiaophi_idiom_gen", "char_f1", "F1 closed-book"),
]
#: The issue's goals for the demo model, beside the columns they bound.
GOALS = {"valid_call": 0.95, "exact_args": 0.8, "tool_answer_f1": 0.6, "grounded_f1": 0.5}


def recipe_for(data: Path, steps: int, tool_repeat: int, limit: int):
    files = {name: str(data / name) for name in ("pretrain.jsonl", "sft.jsonl", "sft_tools.jsonl")}
    return load_recipe(
        "tiny",
        {
            "data.pretrain": [files["pretrain.jsonl"]],
            "data.pretrain_eval": str(data / "pretrain_eval.jsonl"),
            "data.sft": [files["sft.jsonl"], files["sft_tools.jsonl"]],
            "data.sft_repeat": [1, tool_repeat],
            "data.sft_eval": str(data / "sft_eval.jsonl"),
            "data.probe": str(data / "idiom_probe.jsonl"),
            "tokenizer.chat_files": [files["sft_tools.jsonl"]],
            "sft.seq_len": 256,
            "sft.max_steps": steps,
            "sft.save_steps": steps + 1,
            "sft.max_train_samples": max(4000, steps * 16 * 2),
            "embedder.enabled": False,
            "eval.heldout": str(data / "heldout.jsonl"),
            "eval.limit": limit,
        },
    )


def ensure_demo_data(data: Path) -> None:
    import subprocess
    import sys

    from training.data.demo import build_status

    if build_status(data) != "current":
        print(f"building the demo corpora into {data}", flush=True)
        subprocess.run(
            [sys.executable, "-m", "training", "data", "demo", "--out", str(data)], check=True
        )


def score(model_dir: Path, recipe, split: str, repetition_penalty: float | None = None) -> dict:
    """The tasks on `model_dir` with its own decoding defaults, or with `repetition_penalty`."""
    from training.eval.harness import evaluate
    from training.model_factory import load_model_and_tokenizer

    model = model_dir
    if repetition_penalty is not None:
        model, _ = load_model_and_tokenizer(model_dir, "bench-tools")
        model.generation_config.repetition_penalty = repetition_penalty
    return evaluate(
        model,
        model_dir,
        TASKS,
        heldout=recipe.eval.heldout,
        eval_text=recipe.data.pretrain_eval,
        split=split,
        limit=recipe.eval.limit,
        max_new_tokens=recipe.eval.max_new_tokens,
    )


def base_run(out: Path, recipe) -> Path:
    """The shared tokenizer and pretrained model (kept between invocations)."""
    from training.pipeline import run_stage
    from training.stage_dirs import is_finished

    base = out / "base"
    for stage in ("tokenizer", "pretrain"):
        if not is_finished(base, stage):
            started = time.time()
            run_stage(recipe, base, stage)
            print(f"{stage}: {time.time() - started:.0f} s", flush=True)
    return base


def both_splits(model_dir: Path, recipe, repetition_penalty: float | None = None) -> dict:
    return {split: score(model_dir, recipe, split, repetition_penalty) for split in SPLITS}


def sft_rows(out: Path, base: Path, recipe, steps: int, tool_repeat: int) -> list[dict]:
    """The SFT checkpoint of `steps` steps (trained, or kept from an earlier invocation), scored
    with the decoding defaults the SFT stage chose on its dev probes and with repetition
    penalty 1.0: a penalty counts the prompt's tokens too, so it works against copying a term
    from the question or an answer from a tool result."""
    from training.pipeline import run_stage
    from training.stage_dirs import is_finished, read_stage_report

    run = out / f"sft{steps}_x{tool_repeat}"
    if is_finished(run, "sft"):
        report = read_stage_report(run, "sft")
    else:
        if run.exists():
            shutil.rmtree(run)
        run.mkdir(parents=True)
        for stage in ("tokenizer", "pretrain"):
            shutil.copytree(base / stage, run / stage)
        report = run_stage(recipe, run, "sft")
        shutil.rmtree(run / "checkpoints", ignore_errors=True)
    chosen = report.get("decoding", {}).get("chosen", {}).get("settings", {})
    penalty = float(chosen.get("repetition_penalty", 1.0))
    common = {"steps": steps, "sft_wall_s": report.get("wall_time_s", 0.0)}
    rows = [
        {
            **common,
            "name": f"{steps} (rp {penalty:g}, chosen)",
            "repetition_penalty": penalty,
            "scores": both_splits(run / "sft", recipe),
        }
    ]
    if penalty != 1.0:
        rows.append(
            {
                **common,
                "name": f"{steps} (rp 1)",
                "repetition_penalty": 1.0,
                "scores": both_splits(run / "sft", recipe, 1.0),
            }
        )
    return rows


def cell(scores: dict, task: str, metric: str) -> str:
    row = scores.get(task, {})
    if metric not in row:
        return "–"
    return f"{row[metric]:.3f} ± {row[metric + '_ci95']:.3f}"


def format_rows(rows: list[dict], split: str) -> str:
    head = f"| SFT steps ({split} split) | SFT wall | " + " | ".join(c[2] for c in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for r in rows:
        wall = f"{r['sft_wall_s']:.0f} s" if r["steps"] else "–"
        cells = " | ".join(cell(r["scores"][split], t, m) for t, m, _ in COLUMNS)
        lines.append(f"| {r['name']} | {wall} | {cells} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="data/demo", help="The demo corpora (built if missing).")
    parser.add_argument("--out", default="bench_out/tools")
    parser.add_argument(
        "--steps", default="120,480,1440", help="SFT steps of each row, comma-separated."
    )
    parser.add_argument("--tool-repeat", type=int, default=8)
    parser.add_argument("--limit", type=int, default=40, help="Held-out terms per task.")
    args = parser.parse_args(argv)
    try:
        steps = [int(s) for s in args.steps.split(",")]
    except ValueError:
        parser.error(f"--steps must be whole numbers separated by commas, not {args.steps!r}")
    if any(s < 1 for s in steps):
        parser.error("--steps must all be ≥ 1")
    data, out = Path(args.data), Path(args.out)
    ensure_demo_data(data)
    out.mkdir(parents=True, exist_ok=True)
    machine = (
        f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"machine: {machine}; tool conversations ×{args.tool_repeat}", flush=True)
    base = base_run(out, recipe_for(data, steps[0], args.tool_repeat, args.limit))
    first = recipe_for(data, steps[0], args.tool_repeat, args.limit)
    rows = [
        {
            "name": "pretrained, no SFT (baseline)",
            "steps": 0,
            "sft_wall_s": 0.0,
            "scores": both_splits(base / "pretrain", first),
        }
    ]
    print(format_rows(rows, "test"), flush=True)
    curve = out / "curve.json"
    for n in steps:
        recipe = recipe_for(data, n, args.tool_repeat, args.limit)
        new = sft_rows(out, base, recipe, n, args.tool_repeat)
        rows += new
        print("\n".join(format_rows(new, "test").splitlines()[2:]), flush=True)
        curve.write_text(
            json.dumps(
                {"machine": machine, "goals": GOALS, "rows": rows}, ensure_ascii=False, indent=2
            )
        )
    for split in SPLITS:
        print()
        print(format_rows(rows, split))
    return rows


if __name__ == "__main__":
    main()
