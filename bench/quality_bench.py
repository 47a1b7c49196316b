"""`make bench-quality`: the tiny recipe's pretraining over a small grid at one fixed budget.

Every row trains the tokenizer it needs (cached per vocabulary size) and pretrains from scratch on
the demo corpus with the same training FLOPs as the reference row (today's tiny recipe at its 200
steps; FLOPs per token as in training/throughput.py), so the budget is reproducible on a shared
machine; the wall time of each row is printed beside it. Each row is scored through lm-eval on the
held-out **dev** split (bits per character on held-out pretraining text, cloze accuracies), the
split the choice is made on; the chosen row is then reported on the test split. Baseline: the
reference row, and the untrained model of the reference shape.
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

#: Today's tiny pretraining (before issue 16): the reference every row is compared with.
REFERENCE = {
    "model.arch": "phi",
    "model.hidden_size": 128,
    "model.num_layers": 4,
    "model.num_heads": 4,
    "model.intermediate_size": 512,
    "model.tie_word_embeddings": False,
    "tokenizer.vocab_size": 4096,
    "pretrain.lr": 3.0e-3,
    "pretrain.schedule": "cosine",
    "pretrain.micro_batch": 8,
    "pretrain.warmup_steps": 20,
}
REFERENCE_STEPS = 200

# In the order they run (the most informative first, for a run cut short).
GRID = {
    "reference (phi 128x4, 4k, lr 3e-3 cosine, batch 8)": {},
    "lr 6e-3": {"pretrain.lr": 6.0e-3},
    "wsd": {"pretrain.schedule": "wsd"},
    "llama": {"model.arch": "llama"},
    "qwen2": {"model.arch": "qwen2"},
    "vocab 8k": {"tokenizer.vocab_size": 8192},
    "batch 16": {"pretrain.micro_batch": 16},
    "tied embeddings": {"model.tie_word_embeddings": True},
    "wide 192x3": {"model.hidden_size": 192, "model.num_layers": 3, "model.intermediate_size": 768},
    "deep 96x6": {"model.hidden_size": 96, "model.num_layers": 6, "model.intermediate_size": 384},
    "vocab 16k": {"tokenizer.vocab_size": 16384},
    "batch 4": {"pretrain.micro_batch": 4},
}
#: Held-out characters for bits per character in each row (enough to rank rows; a whole split
#: would take longer than the training).
BPC_CHARS = 20_000
DEV_TASKS = [
    "xiaophi_heldout_bpc",
    "xiaophi_idiom_cloze",
    "xiaophi_word_cloze",
    "xiaophi_xiehouyu_cloze",
    "xiaophi_idiom_mc",
]


def flops_per_step(recipe, tokenizer) -> float:
    from training.model_factory import build_model
    from training.throughput import flops_per_token

    model = build_model(recipe.model, tokenizer)
    tokens = recipe.pretrain.micro_batch * recipe.pretrain.grad_accum * recipe.pretrain.seq_len
    return flops_per_token(model, recipe.pretrain.seq_len) * tokens


def tokenizer_for(vocab: int, cache: Path) -> Path:
    from training.pipeline import run_stage

    folder = cache / f"vocab{vocab}"
    if not (folder / "tokenizer").is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        run_stage(
            load_recipe("tiny", {**REFERENCE, "tokenizer.vocab_size": vocab}), folder, "tokenizer"
        )
    return folder / "tokenizer"


def recipe_for(overrides: dict, steps: int | None = None):
    merged = {**REFERENCE, **overrides}
    if steps is not None:
        merged.update({"pretrain.max_steps": steps, "pretrain.save_steps": steps + 1})
        merged["pretrain.warmup_steps"] = max(1, round(steps * 0.1))
    return load_recipe("tiny", merged)


def run_row(name: str, overrides: dict, budget: float, out: Path, split: str) -> dict:
    from training.eval.harness import evaluate
    from training.pipeline import run_stage
    from training.tokenizer import load_tokenizer

    probe = recipe_for(overrides)
    tok_dir = tokenizer_for(probe.tokenizer.vocab_size, out / "tokenizers")
    steps = max(1, round(budget / flops_per_step(probe, load_tokenizer(tok_dir))))
    recipe = recipe_for(overrides, steps)
    run = out / "rows" / name.split(" (")[0].replace(" ", "_")
    if run.exists():
        shutil.rmtree(run)
    run.mkdir(parents=True)
    shutil.copytree(tok_dir, run / "tokenizer")
    started = time.time()
    report = run_stage(recipe, run, "pretrain")
    wall = time.time() - started
    scores = evaluate(
        run / "pretrain",
        run / "tokenizer",
        DEV_TASKS,
        heldout=recipe.eval.heldout,
        eval_text=recipe.data.pretrain_eval,
        split=split,
        bpc_max_chars=BPC_CHARS,
    )
    shutil.rmtree(run / "checkpoints", ignore_errors=True)
    return {
        "name": name,
        "overrides": overrides,
        "steps": steps,
        "parameters": report["parameters"],
        "tokens_seen": report["tokens_seen"],
        "pretrain_wall_s": round(wall, 1),
        "tokens_per_s": report["tokens_per_s"],
        "scores": scores,
    }


def untrained_row(out: Path, split: str) -> dict:
    from training.eval.harness import evaluate
    from training.model_factory import build_model
    from training.tokenizer import load_tokenizer

    recipe = recipe_for({})
    tok_dir = tokenizer_for(4096, out / "tokenizers")
    model = build_model(recipe.model, load_tokenizer(tok_dir), seed=recipe.pretrain.seed)
    scores = evaluate(
        model,
        tok_dir,
        DEV_TASKS,
        heldout=recipe.eval.heldout,
        eval_text=recipe.data.pretrain_eval,
        split=split,
        bpc_max_chars=BPC_CHARS,
    )
    return {
        "name": "untrained (reference shape)",
        "overrides": {},
        "steps": 0,
        "parameters": sum(p.numel() for p in model.parameters()),
        "tokens_seen": 0,
        "pretrain_wall_s": 0.0,
        "tokens_per_s": None,
        "scores": scores,
    }


def format_rows(rows: list[dict], split: str) -> str:
    head = (
        f"| row ({split} split) | params | steps | tokens | wall | bits/char | idiom cloze | "
        "word cloze | 歇后语 cloze | idiom MC (letters) |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        s = r["scores"]

        def acc(task, s=s):
            row = s.get(task, {})
            return f"{row['acc']:.3f} ± {row['acc_ci95']:.3f}" if "acc" in row else "–"

        lines.append(
            f"| {r['name']} | {r['parameters'] / 1e6:.2f}M | {r['steps']} | {r['tokens_seen']:,} | "
            f"{r['pretrain_wall_s']:.0f} s | {s['xiaophi_heldout_bpc']['bits_per_char']:.3f} | "
            f"{acc('xiaophi_idiom_cloze')} | {acc('xiaophi_word_cloze')} | "
            f"{acc('xiaophi_xiehouyu_cloze')} | {acc('xiaophi_idiom_mc')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="bench_out/quality")
    parser.add_argument("--rows", nargs="*", help="Grid rows to run (default: all).")
    parser.add_argument(
        "--extra",
        default=None,
        help='A JSON object {"name": {overrides}} of rows to add (e.g. a candidate).',
    )
    parser.add_argument("--split", default="dev", choices=["dev", "test"])
    parser.add_argument(
        "--budget-scale",
        type=float,
        default=1.0,
        help="Train every row on this multiple of the reference's FLOPs (e.g. 2.5: what the "
        "5-minute pipeline leaves for pretraining); the reference row then shows what the old "
        "recipe does with the same compute.",
    )
    args = parser.parse_args(argv)
    if args.budget_scale <= 0:
        parser.error("--budget-scale must be > 0")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    grid = {k: v for k, v in GRID.items() if not args.rows or k.split(" (")[0] in args.rows}
    if args.extra:
        grid.update(json.loads(args.extra))
    reference = recipe_for({})
    from training.tokenizer import load_tokenizer

    ref_tok = load_tokenizer(tokenizer_for(4096, out / "tokenizers"))
    budget = flops_per_step(reference, ref_tok) * REFERENCE_STEPS * args.budget_scale
    machine = (
        f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    print(
        f"machine: {machine}; budget {budget / 1e12:.2f} TFLOP per row ({args.budget_scale:g} × "
        f"the reference's {REFERENCE_STEPS} steps)",
        flush=True,
    )
    scale = "" if args.budget_scale == 1 else f"_x{args.budget_scale:g}"
    grid_file = out / f"grid_{args.split}{scale}.json"
    rows = [untrained_row(out, args.split)]
    for name, overrides in grid.items():
        rows.append(run_row(name, overrides, budget, out, args.split))
        print(format_rows(rows[-1:], args.split).splitlines()[-1], flush=True)
        grid_file.write_text(
            json.dumps(
                {"machine": machine, "budget_flops": budget, "rows": rows},
                ensure_ascii=False,
                indent=2,
            )
        )
    print()
    print(format_rows(rows, args.split))
    return rows


if __name__ == "__main__":
    main()
