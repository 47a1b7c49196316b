"""`make bench-lora`: SFT from a pretrained checkpoint with a LoRA adapter beside full SFT, the
same steps, data and schedule (the tiny recipe's SFT on the demo data).

Each method runs the real `sft` stage (the recipe's `base:` is the given checkpoint, pretraining
off) in its own process, one after the other: held-out SFT loss before and after, training
tokens/s, the process's peak resident memory, trainable parameters, and the adapter's size on
disk. The baseline is full SFT; LoRA rows follow for each `--ranks` value (alpha = 2 × r).

    python -m bench.lora_bench --base runs/tiny/pretrain [--steps 120] [--ranks 8 32]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ONE_RUN = """
import json, resource, sys
from training.config import load_recipe
from training.pipeline import run_single_stage
overrides = json.loads(sys.argv[1])
report = run_single_stage(load_recipe("tiny", overrides), sys.argv[2], "sft")
report["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("REPORT " + json.dumps(report))
"""


def one(base: str, run: Path, steps: int, rank: int | None) -> dict:
    overrides = {
        "base": base,
        "pretrain.enabled": False,
        "sft.max_steps": steps,
        "decoding.tune": False,
        "eval.enabled": False,
        "embedder.enabled": False,
    }
    if rank:
        overrides["sft.lora"] = {"r": rank, "alpha": 2.0 * rank, "dropout": 0.0}
    out = subprocess.run(
        [sys.executable, "-c", ONE_RUN, json.dumps(overrides), str(run)],
        capture_output=True,
        text=True,
        check=False,
    )
    line = next((x for x in out.stdout.splitlines() if x.startswith("REPORT ")), None)
    if line is None:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(line[len("REPORT ") :])


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", default="runs/tiny/pretrain", help="A pretrained checkpoint.")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--ranks", type=int, nargs="+", default=[8, 32])
    args = parser.parse_args(argv)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}; "
        f"base {args.base}; {args.steps} SFT steps each",
        flush=True,
    )
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for rank in [None, *args.ranks]:
            report = one(args.base, Path(scratch) / f"run-{rank or 'full'}", args.steps, rank)
            params = report.get("trainable_parameters")
            rows.append(
                {
                    "method": f"LoRA r={rank}" if rank else "full SFT (baseline)",
                    "eval_loss_before": report["eval_loss_before"],
                    "eval_loss": report["eval_loss"],
                    "tokens_per_s": report["tokens_per_s"],
                    "peak_rss_mb": report["peak_rss_mb"],
                    "trainable": params,
                    "adapter_mb": report.get("adapter_bytes", 0) / 1e6,
                    "wall_s": report.get("wall_time_s"),
                }
            )
            print(format_rows(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(format_rows(rows))
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = [
        "| method | held-out loss before → after | tokens/s | peak memory | trainable parameters | adapter |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        trainable = f"{r['trainable']:,}" if r["trainable"] else "all"
        adapter = f"{r['adapter_mb']:.2f} MB" if r["adapter_mb"] else "–"
        lines.append(
            f"| {r['method']} | {r['eval_loss_before']:.3f} → {r['eval_loss']:.3f} | "
            f"{r['tokens_per_s']:.0f} | {r['peak_rss_mb']:.0f} MB | {trainable} | {adapter} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
