"""Stage 5: align the SFT model with trl's DPOTrainer on (prompt, chosen, rejected) pairs,
through the same chat template as SFT. Reward accuracy and margins go into the report.
"""

from __future__ import annotations

from pathlib import Path

from trl import DPOConfig, DPOTrainer

from training import lora
from training.base_model import start_folder
from training.config import Recipe
from training.decoding import tune_decoding
from training.lora import quantized_loading
from training.model_factory import load_model_and_tokenizer
from training.throughput import attach_throughput
from training.trainer_args import (
    last_logged,
    save_trained,
    train_resumably,
    trainer_kwargs,
    trainer_report,
)

STAGE = "dpo"


def dpo_files(recipe: Recipe, run_dir: Path) -> tuple[list[str], list[str]]:
    """User-supplied pairs if the recipe names them, else the dpo-data stage's output."""
    if recipe.data.dpo:
        return list(recipe.data.dpo), []
    pairs = Path(run_dir) / "dpo-data"
    return [str(pairs / "pairs.jsonl")], [str(pairs / "pairs_eval.jsonl")]


def main(recipe: Recipe, run_dir: Path, work: Path) -> dict:
    """DPO from `run_dir/sft`; save into `work` (published as `run_dir/dpo`)."""
    from training.data.formats import load_dpo_dataset

    run_dir = Path(run_dir)
    cfg = recipe.dpo
    start = start_folder(recipe, run_dir, STAGE)
    model, tokenizer = load_model_and_tokenizer(start, STAGE, **quantized_loading(cfg.lora))
    train_files, eval_files = dpo_files(recipe, run_dir)
    train_data = load_dpo_dataset(train_files)
    eval_data = load_dpo_dataset(eval_files) if eval_files else None

    args = DPOConfig(
        **trainer_kwargs(cfg, run_dir, STAGE, has_eval=eval_data is not None),
        beta=cfg.beta,
        max_length=cfg.seq_len,
        dataset_num_proc=recipe.data.num_proc,
    )
    # With LoRA the reference is the same model with its adapter off: no second copy in memory.
    trainer = DPOTrainer(
        model=model,
        ref_model=None,
        args=args,
        train_dataset=train_data,
        eval_dataset=eval_data,
        processing_class=tokenizer,
        peft_config=lora.peft_config(cfg.lora, model) if cfg.lora else None,
    )
    throughput = attach_throughput(trainer, model, cfg.seq_len)
    run = train_resumably(trainer, run_dir, STAGE, evaluate=eval_data is not None)

    history = trainer.state.log_history
    report = trainer_report(
        STAGE,
        trainer,
        run,
        throughput,
        trained_on={
            "train_pairs": len(train_data),
            "eval_pairs": len(eval_data) if eval_data is not None else 0,
        },
        metrics={
            "beta": cfg.beta,
            "reward_accuracy_last": last_logged(history, "rewards/accuracies"),
            "reward_margin_last": last_logged(history, "rewards/margins"),
            "eval_loss": run.final_eval.get("eval_loss"),
            "eval_reward_accuracy": run.final_eval.get("eval_rewards/accuracies"),
            "eval_reward_margin": run.final_eval.get("eval_rewards/margins"),
        },
    )
    # decoding defaults chosen on the dev probes go into the checkpoint's generation_config.json
    report["decoding"] = tune_decoding(trainer.model, tokenizer, recipe.data.probe, recipe.decoding)
    if cfg.lora is not None:
        report["reference_model"] = "the adapter switched off"
        report.update(lora.save_merged(trainer, tokenizer, work, start, cfg.lora))
    else:
        save_trained(trainer, tokenizer, work)
    return report
