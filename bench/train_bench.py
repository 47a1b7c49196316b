"""`make bench-train`: tokens/s of the pretrain stage for the `tiny` recipe on this machine's
CPU (fresh run folder, demo data), then the GPU benchmark when a CUDA device is present."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
from pathlib import Path

import torch

from training.config import load_recipe
from training.pipeline import run_single_stage


def cpu_pretrain_figures(steps: int, run_dir: Path) -> dict:
    if run_dir.exists():
        shutil.rmtree(run_dir)
    recipe = load_recipe("tiny", {"pretrain.max_steps": steps, "pretrain.save_steps": steps})
    run_single_stage(recipe, run_dir, "tokenizer")
    report = run_single_stage(recipe, run_dir, "pretrain")
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "recipe": "tiny",
        "parameters": report["parameters"],
        "seq_len": report["seq_len"],
        "steps": report["steps"],
        "tokens_per_step": recipe.pretrain.micro_batch
        * recipe.pretrain.grad_accum
        * recipe.pretrain.seq_len,
        "tokens_per_s": report["tokens_per_s"],
        "wall_time_s": report["wall_time_s"],
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--run-dir", default="bench_out/train_tiny")
    parser.add_argument("--out", default="bench_out/train_cpu.json")
    args = parser.parse_args(argv)
    if not Path(load_recipe("tiny").data.pretrain[0]).exists():
        from training.data.demo import DEFAULT_CACHE_DIR, DEFAULT_OUT_DIR, build_demo

        build_demo(DEFAULT_OUT_DIR, DEFAULT_CACHE_DIR)
    figures = cpu_pretrain_figures(args.steps, Path(args.run_dir))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(figures, indent=2))
    print(f"machine: {figures['machine']}")
    print("| recipe | parameters | seq | tokens/step | steps | tokens/s | wall |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(
        f"| tiny | {figures['parameters']:,} | {figures['seq_len']} | {figures['tokens_per_step']:,} | "
        f"{figures['steps']} | {figures['tokens_per_s']:,} | {figures['wall_time_s']} s |"
    )
    if torch.cuda.is_available():
        from bench.gpu_pretrain_bench import main as gpu_main

        gpu_main([])
    else:
        print("no CUDA device: skipped the GPU benchmark (python -m bench.gpu_pretrain_bench)")
    return figures


if __name__ == "__main__":
    main()
