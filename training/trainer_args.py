"""What every Trainer stage shares: a recipe stage (`TrainConfig`) as Trainer arguments, resumable
training, saving into the stage folder, and the common fields of its report.

CUDA: bf16 and fused AdamW. CPU: fp32, plain AdamW, and gloo when launched distributed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import TrainerCallback, TrainingArguments
from transformers.trainer_utils import TrainOutput

from training import cpu_share, progress
from training.config import TrainConfig
from training.distributed import world_size
from training.stage_dirs import checkpoints_dir

# transformers renamed `gradient_checkpointing` to `activation_checkpointing` after 5.17; both
# releases are in the project's range (the GPU machine has 5.17)
_CHECKPOINTING = (
    "activation_checkpointing"
    if "activation_checkpointing" in {f.name for f in dataclasses.fields(TrainingArguments)}
    else "gradient_checkpointing"
)


def is_distributed_launch() -> bool:
    return world_size() > 1


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
        **schedule_kwargs(cfg),
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
        **{_CHECKPOINTING: cfg.gradient_checkpointing},
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    if not cuda and is_distributed_launch():
        kwargs["ddp_backend"] = "gloo"
    return kwargs


def schedule_kwargs(cfg: TrainConfig) -> dict:
    """The LR schedule after warm-up: cosine to a floor, or warmup-stable-decay."""
    if cfg.schedule == "wsd":
        decay = max(1, round(cfg.max_steps * cfg.decay_fraction))
        return dict(
            lr_scheduler_type="warmup_stable_decay",
            lr_scheduler_kwargs={
                "num_decay_steps": decay,
                "num_stable_steps": max(0, cfg.max_steps - cfg.warmup_steps - decay),
                "min_lr_ratio": cfg.min_lr_ratio,
            },
        )
    return dict(
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": cfg.min_lr_ratio},
    )


def baseline_eval_loss(trainer) -> float | None:
    """The held-out loss before any training: the step-0 evaluation `train_resumably(...,
    baseline=True)` asks for, which the log history keeps across resumes."""
    # Run folders from before the step-0 evaluation kept the figure in a file of their own.
    record = Path(trainer.args.output_dir) / "baseline_eval.json"
    if record.exists():
        return json.loads(record.read_text())["eval_loss"]
    for entry in trainer.state.log_history:
        if entry.get("step") == 0 and "eval_loss" in entry:
            return entry["eval_loss"]
    return None


@dataclass
class TrainingRun:
    """What a stage's report needs from one `trainer.train()`: resumed or not, the result, the
    wall time, and the held-out metrics afterwards (empty without an eval set)."""

    resumed: bool
    result: TrainOutput
    wall_time_s: float
    final_eval: dict
    baseline_eval_loss: float | None = None


def train_resumably(
    trainer, run_dir: Path, stage: str, evaluate: bool = True, baseline: bool = False
) -> TrainingRun:
    """Train, resuming from the stage's last checkpoint when one exists, then evaluate; with
    `baseline`, the held-out loss before any training is measured too (once per stage)."""
    resumed = has_checkpoint(run_dir, stage)
    if baseline and not resumed:
        # The Trainer evaluates at step 0 inside train(), after accelerate has wrapped the model.
        # A trainer.evaluate() before train() would prepare the bare model for evaluation and
        # mark it prepared, and train() would then never wrap it in DistributedDataParallel:
        # every process would train its own replica on unsynchronised gradients.
        trainer.args.eval_on_start = True
    if progress.active() is not None:  # the pipeline shows this stage's line on the console
        trainer.add_callback(ProgressCallback())
    if cpu_share.managed() and world_size() == 1:  # follow the cores other programs leave free
        trainer.add_callback(cpu_share.CpuShareCallback())
    start = time.time()
    result = trainer.train(resume_from_checkpoint=True if resumed else None)
    wall = time.time() - start
    return TrainingRun(
        resumed,
        result,
        round(wall, 2),
        trainer.evaluate() if evaluate else {},
        baseline_eval_loss(trainer) if baseline else None,
    )


class ProgressCallback(TrainerCallback):
    """Steps done of the total, and the last logged loss, for the stage's console line
    (`training.progress`); a step only sets a few attributes there."""

    loss = ""

    def on_train_begin(self, args, state, control, **kwargs):
        progress.report(done=state.global_step, total=state.max_steps, unit="steps")

    def on_step_end(self, args, state, control, **kwargs):
        progress.report(done=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and isinstance(logs.get("loss"), (int, float)):
            self.loss = f"loss {logs['loss']:.3f}"
            progress.report(detail=self.loss)

    def on_train_end(self, args, state, control, **kwargs):
        progress.report(detail=f"{self.loss} · evaluating and saving".lstrip(" ·"))


def has_checkpoint(run_dir: Path, stage: str) -> bool:
    folder = checkpoints_dir(run_dir, stage)
    return folder.is_dir() and any(p.name.startswith("checkpoint-") for p in folder.iterdir())


def parallelism(trainer) -> dict:
    """How the stage was spread out, for its report: processes and accelerate's distributed type
    (NO, MULTI_CPU, MULTI_GPU, FSDP, DEEPSPEED)."""
    return {
        "world_size": trainer.args.world_size,
        "distributed_type": str(trainer.accelerator.distributed_type.value),
    }


def loss_history(log_history: list[dict]) -> list[tuple[int, float]]:
    """(step, training loss) pairs from a Trainer's log history."""
    return [(e["step"], e["loss"]) for e in log_history if "loss" in e]


def rounded(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def save_trained(trainer, tokenizer, work: Path) -> None:
    """Save the trained model (every process takes part, as FSDP and DeepSpeed need) and the
    tokenizer into the stage's `work` folder; returns once every process is done writing."""
    trainer.save_model(str(work))
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(work))
    trainer.accelerator.wait_for_everyone()


def trainer_report(
    stage: str, trainer, run: TrainingRun, throughput, trained_on: dict, metrics: dict
) -> dict:
    """A Trainer stage's report: what it trained on, then steps, resume and parallelism, the
    training loss, the stage's own `metrics`, tokens/s, wall time and the loss curve."""
    history = trainer.state.log_history
    return {
        "stage": stage,
        **trained_on,
        "steps": trainer.state.global_step,
        "epochs": round(trainer.state.epoch or 0.0, 4),
        "resumed": run.resumed,
        **parallelism(trainer),
        "train_loss_first": loss_history(history)[0][1],
        "train_loss_last": last_logged(history, "loss"),
        **metrics,
        "tokens_per_s": throughput.mean_tokens_per_s(trainer.state),
        "wall_time_s": run.wall_time_s,
        "loss_curve": loss_history(history),
    }


def last_logged(log_history: list[dict], key: str):
    for entry in reversed(log_history):
        if key in entry:
            return entry[key]
    return None
