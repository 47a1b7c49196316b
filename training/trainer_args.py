"""Turn a recipe stage (`TrainConfig`) into Trainer arguments, the same way for every stage.

CUDA: bf16 and fused AdamW. CPU: fp32, plain AdamW, and gloo when launched distributed.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers.trainer_utils import TrainOutput

from training.config import TrainConfig
from training.stage_dirs import checkpoints_dir, write_json


def is_distributed_launch() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def resolve_optim(name: str) -> str:
    if name != "auto":
        return name
    return "adamw_torch_fused" if torch.cuda.is_available() else "adamw_torch"


def trainer_kwargs(
    cfg: TrainConfig, run_dir: Path, stage: str, has_eval: bool, padded: bool = True
) -> dict:
    """Keyword arguments shared by TrainingArguments, SFTConfig and DPOConfig; `padded` = batches
    carry padding, so only non-padding tokens count towards tokens/s."""
    cuda = torch.cuda.is_available()
    # Tensorboard event files per stage, outside the checkpoint folder.
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(Path(run_dir) / "tensorboard" / stage)
    eval_steps = cfg.eval_steps if cfg.eval_steps > 0 else None
    kwargs = dict(
        output_dir=str(checkpoints_dir(run_dir, stage)),
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.micro_batch,
        per_device_eval_batch_size=cfg.micro_batch,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": cfg.min_lr_ratio},
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        optim=resolve_optim(cfg.optim),
        bf16=cuda and torch.cuda.is_bf16_supported(),
        use_cpu=not cuda,
        seed=cfg.seed,
        data_seed=cfg.seed,
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        eval_strategy=("steps" if eval_steps else "no") if has_eval else "no",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=2,
        report_to=["tensorboard"],
        include_num_input_tokens_seen="non_padding" if padded else "all",
        torch_compile=cfg.torch_compile,
        activation_checkpointing=cfg.gradient_checkpointing,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    if not cuda and is_distributed_launch():
        kwargs["ddp_backend"] = "gloo"
    return kwargs


def baseline_eval_loss(trainer) -> float:
    """Held-out loss before any training, measured once per stage and kept across resumes."""
    record = Path(trainer.args.output_dir) / "baseline_eval.json"
    if record.exists():
        return json.loads(record.read_text())["eval_loss"]
    loss = trainer.evaluate()["eval_loss"]
    if trainer.is_world_process_zero():
        record.parent.mkdir(parents=True, exist_ok=True)
        write_json(record, {"eval_loss": loss})
    return loss


@dataclass
class TrainingRun:
    """What a stage's report needs from one `trainer.train()`: resumed or not, the result, the
    wall time, and the held-out metrics afterwards (empty without an eval set)."""

    resumed: bool
    result: TrainOutput
    wall_time_s: float
    final_eval: dict


def train_resumably(trainer, run_dir: Path, stage: str, evaluate: bool = True) -> TrainingRun:
    """Train, resuming from the stage's last checkpoint when one exists, then evaluate."""
    resumed = has_checkpoint(run_dir, stage)
    start = time.time()
    result = trainer.train(resume_from_checkpoint=True if resumed else None)
    wall = time.time() - start
    return TrainingRun(resumed, result, round(wall, 2), trainer.evaluate() if evaluate else {})


def has_checkpoint(run_dir: Path, stage: str) -> bool:
    folder = checkpoints_dir(run_dir, stage)
    return folder.is_dir() and any(p.name.startswith("checkpoint-") for p in folder.iterdir())


def loss_history(log_history: list[dict]) -> list[tuple[int, float]]:
    """(step, training loss) pairs from a Trainer's log history."""
    return [(e["step"], e["loss"]) for e in log_history if "loss" in e]


def last_logged(log_history: list[dict], key: str):
    for entry in reversed(log_history):
        if key in entry:
            return entry[key]
    return None
