"""The pipeline's last stage: the run's models through `training.eval.harness` (lm-eval).

Evaluates what `eval.models` lists (the untrained model of the same shape and seed, and finished
stage folders) on the held-out `eval.split` and publishes `<run>/eval/` with `results.json` (every
score with its 95% interval) and the printed table, with the run's chat model's answers to the
first probe questions (`data.probe`; greedy, with the checkpoint's own repetition penalty) as the
report's `probe`.
"""

from __future__ import annotations

import time
from pathlib import Path

from training import progress
from training.config import Recipe
from training.stage_dirs import stage_dir, write_json

STAGE = "eval"
CHAT_STAGES = ("dpo", "sft")  # the run's chat model: the last of these that finished


def models_to_score(recipe: Recipe) -> list[str]:
    """`eval.models`, with the base first when the run has one (what training changed is read
    against it) and without pretrain when that stage is off."""
    models = [m for m in recipe.eval.models if m != "pretrain" or recipe.pretrain.enabled]
    if recipe.base and "base" not in models:
        models.insert(0, "base")
    return models


def fresh_like(folder: Path, seed: int):
    """Fresh weights in the shape of the model in `folder` (seeded)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(folder)))


def main(recipe: Recipe, run_dir: Path, work: Path) -> dict:
    """Evaluate `eval.models` of `run_dir`; write the scores into `work` (published as
    `run_dir/eval`)."""
    from training.eval.harness import evaluate, format_table
    from training.eval.probe import probe_model
    from training.model_factory import build_model
    from training.tokenizer import load_tokenizer

    run_dir = Path(run_dir)
    cfg = recipe.eval
    started = time.time()
    columns = {}
    models = models_to_score(recipe)
    for done, name in enumerate(models):
        progress.report(done=done, total=len(models), unit="models", detail=f"now: {name}")
        if name == "untrained" and recipe.base:
            tok_dir = Path(recipe.base)
            model = fresh_like(tok_dir, seed=recipe.pretrain.seed)
        elif name == "untrained":
            tok_dir = run_dir / "tokenizer"
            model = build_model(recipe.model, load_tokenizer(tok_dir), seed=recipe.pretrain.seed)
        elif name == "base":
            if not recipe.base:
                raise ValueError("eval.models names base, but the recipe has none; give --base.")
            model = tok_dir = Path(recipe.base)
        else:
            model = tok_dir = stage_dir(run_dir, name)
            if not (tok_dir / "config.json").is_file():
                raise FileNotFoundError(
                    f"eval.models names {name}, but {tok_dir} holds no finished model; run that "
                    "stage first or drop it from --eval.models"
                )
        columns[name] = evaluate(
            model,
            tok_dir,
            cfg.tasks,
            heldout=cfg.heldout,
            eval_text=recipe.data.pretrain_eval,
            split=cfg.split,
            limit=cfg.limit or None,
            bpc_max_chars=cfg.bpc_max_chars or None,
            batch_size=cfg.batch_size,
            max_new_tokens=cfg.max_new_tokens,
        )
    progress.report(done=len(models), detail="asking the probe questions")
    table = format_table(columns)
    chat = next(
        (
            stage_dir(run_dir, s)
            for s in CHAT_STAGES
            if (stage_dir(run_dir, s) / "config.json").is_file()
        ),
        None,
    )
    probe = (
        probe_model(chat, recipe.data.probe)
        if chat is not None and Path(recipe.data.probe).exists()
        else []
    )
    report = {
        "stage": STAGE,
        "split": cfg.split,
        "limit": cfg.limit or None,
        "bpc_max_chars": cfg.bpc_max_chars or None,
        "results": columns,
        "table": table,
        "probe": probe,
        "wall_time_s": round(time.time() - started, 2),
    }
    (work / "table.txt").write_text(table + "\n", encoding="utf-8")
    write_json(work / "results.json", columns)
    return report
