"""Stage 3: supervised fine-tuning on conversations with trl's SFTTrainer.

Loss falls on assistant tokens only (the chat template's `{% generation %}` marks), over
multi-turn conversations; the held-out eval loss is measured before and after training.
"""

from __future__ import annotations

from pathlib import Path

from trl import SFTConfig, SFTTrainer

from training.config import Recipe
from training.decoding import tune_decoding
from training.model_factory import load_model_and_tokenizer
from training.throughput import attach_throughput
from training.trainer_args import (
    rounded,
    save_trained,
    train_resumably,
    trainer_kwargs,
    trainer_report,
)

STAGE = "sft"


def build_sft_config(recipe: Recipe, run_dir: Path, stage: str = STAGE) -> SFTConfig:
    cfg = recipe.sft
    return SFTConfig(
        **trainer_kwargs(cfg, run_dir, stage, has_eval=True),
        assistant_only_loss=True,
        max_length=cfg.seq_len,
        packing=cfg.packing,
        dataset_num_proc=recipe.data.num_proc,
    )


def main(recipe: Recipe, run_dir: Path, work: Path) -> dict:
    """Fine-tune `run_dir/pretrain` on the SFT data; save into `work` (published as
    `run_dir/sft`)."""
    from training.data.formats import check_files, load_sft_dataset

    run_dir = Path(run_dir)
    cfg = recipe.sft
    model, tokenizer = load_model_and_tokenizer(run_dir / "pretrain", STAGE)
    available = sum(check_files(recipe.data.sft, "sft").values())
    # only the seeded sample is converted and tokenised, not every conversation
    train_data = load_sft_dataset(recipe.data.sft, sample=cfg.max_train_samples, seed=cfg.seed)
    eval_data = load_sft_dataset([recipe.data.sft_eval])
    eval_data = eval_data.select(range(min(cfg.max_eval_samples, len(eval_data))))

    trainer = SFTTrainer(
        model=model,
        args=build_sft_config(recipe, run_dir),
        train_dataset=train_data,
        eval_dataset=eval_data,
        processing_class=tokenizer,
    )
    throughput = attach_throughput(trainer, model, cfg.seq_len)
    run = train_resumably(trainer, run_dir, STAGE, baseline=True)

    report = trainer_report(
        STAGE,
        trainer,
        run,
        throughput,
        trained_on={
            "train_conversations": len(train_data),
            "train_conversations_available": available,
            "eval_conversations": len(eval_data),
        },
        metrics={
            "eval_loss_before": rounded(run.baseline_eval_loss),
            "eval_loss": round(run.final_eval["eval_loss"], 4),
        },
    )
    # decoding defaults chosen on the dev probes go into the checkpoint's generation_config.json
    report["decoding"] = tune_decoding(model, tokenizer, recipe.data.probe, recipe.decoding)
    save_trained(trainer, tokenizer, work)
    return report
