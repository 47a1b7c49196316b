"""Stage 3: supervised fine-tuning on conversations with trl's SFTTrainer.

Loss falls on assistant tokens only (the chat template's `{% generation %}` marks), over
multi-turn conversations; the held-out eval loss is measured before and after training.
"""

from __future__ import annotations

from pathlib import Path

import torch
from trl import SFTConfig, SFTTrainer

from training import lora
from training.base_model import assistant_mask_source, start_folder, with_chat_template
from training.config import Recipe
from training.decoding import tune_decoding
from training.lora import quantized_loading
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


class SFTTrainerCPU(SFTTrainer):
    """trl's SFTTrainer with the LM head run the plain way on CPU: one projection to full logits
    and a fused log-softmax, where trl always projects in tiles and folds them with torch ops (a
    Triton kernel on GPUs). The tiles save the memory of the full logits, which a large vocabulary
    needs on a GPU; on a CPU, for the tiny recipe, they were two thirds of each SFT step (a
    profile of 120 steps: 32 s of 49). The loss is trl's — the summed log-probability of the
    assistant tokens over `num_items_in_batch` — and so are the logged entropy and token accuracy.
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        trl_only = (  # what trl does that this plain path does not: leave those to trl
            self.args.device.type != "cpu"
            or self.args.loss_type != "nll"
            or self.label_smoother is not None
            or self.compute_loss_func is not None
            or self.aux_loss_enabled
            or "shift_labels" in inputs
            or "attention_mask" not in inputs  # padding-free batches
        )
        if trl_only:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        mode = "train" if self.model.training else "eval"
        labels = inputs["labels"]
        outputs = model(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False)
        logits = outputs.logits[:, :-1].float()
        targets = labels[:, 1:]
        mask = targets != -100
        log_probs = logits.log_softmax(-1)
        picked = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        picked = torch.where(mask, picked, torch.zeros_like(picked))
        tokens = mask.sum() if num_items_in_batch is None else num_items_in_batch
        loss = -picked.sum() / torch.as_tensor(tokens).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # DDP averages the gradients
        with torch.no_grad():
            entropy = -(log_probs.exp() * log_probs).sum(-1)
            correct = (logits.argmax(-1) == targets) & mask
            gather = self.accelerator.gather_for_metrics
            valid = gather(mask.sum()).sum()
            entropy_sum = gather((entropy * mask).sum()).sum()
            n_correct = gather(correct.sum()).sum()
        metrics = self._metrics[mode]
        metrics["entropy"].append((entropy_sum / valid).item() if valid > 0 else 0.0)
        metrics["mean_token_accuracy"].append((n_correct / valid).item() if valid > 0 else 0.0)
        if mode == "train":
            self._total_train_tokens += gather(inputs["attention_mask"].sum()).sum().item()
        metrics["num_tokens"] = [self._total_train_tokens]
        return (loss, outputs) if return_outputs else loss


def build_sft_config(recipe: Recipe, run_dir: Path, stage: str = STAGE) -> SFTConfig:
    cfg = recipe.sft
    return SFTConfig(
        **trainer_kwargs(cfg, run_dir, stage, has_eval=True),
        assistant_only_loss=True,
        max_length=cfg.seq_len,
        packing=cfg.packing,
        dataset_num_proc=recipe.data.num_proc,
    )


def build_trainer(recipe: Recipe, run_dir: Path) -> tuple[SFTTrainerCPU, dict]:
    """The stage's trainer on its start checkpoint (`run_dir/pretrain`, or the recipe's base when
    pretraining is off) and data, with a LoRA adapter if the recipe asks; and what the report
    says of what it trains on and how the chat format was settled."""
    from training.data.formats import check_files, load_sft_dataset

    cfg = recipe.sft
    start = start_folder(recipe, run_dir, STAGE)
    model, tokenizer = load_model_and_tokenizer(start, STAGE, **quantized_loading(cfg.lora))
    template = with_chat_template(model, tokenizer)
    template["assistant_mask"] = assistant_mask_source(tokenizer, start)
    available = sum(check_files(recipe.data.sft, "sft").values())
    # only the seeded sample is converted and tokenised, not every conversation
    train_data = load_sft_dataset(
        recipe.data.sft,
        sample=cfg.max_train_samples,
        seed=cfg.seed,
        repeats=recipe.data.sft_repeat,
    )
    eval_data = load_sft_dataset([recipe.data.sft_eval])
    eval_data = eval_data.select(range(min(cfg.max_eval_samples, len(eval_data))))

    trainer = SFTTrainerCPU(
        model=model,
        args=build_sft_config(recipe, run_dir),
        train_dataset=train_data,
        eval_dataset=eval_data,
        processing_class=tokenizer,
        peft_config=(
            lora.peft_config(cfg.lora, model, template.get("resized")) if cfg.lora else None
        ),
    )
    trained_on = {
        "train_conversations": len(train_data),
        "train_conversations_available": available,
        "eval_conversations": len(eval_data),
        "start": str(start),
        **template,
    }
    return trainer, trained_on


def main(recipe: Recipe, run_dir: Path, work: Path) -> dict:
    """Fine-tune the start checkpoint on the SFT data, all weights or a LoRA adapter; save into
    `work` (published as `run_dir/sft`)."""
    run_dir = Path(run_dir)
    cfg = recipe.sft
    trainer, trained_on = build_trainer(recipe, run_dir)
    tokenizer = trainer.processing_class
    throughput = attach_throughput(trainer, trainer.model, cfg.seq_len)
    run = train_resumably(trainer, run_dir, STAGE, baseline=True)

    report = trainer_report(
        STAGE,
        trainer,
        run,
        throughput,
        trained_on=trained_on,
        metrics={
            "eval_loss_before": rounded(run.baseline_eval_loss),
            "eval_loss": round(run.final_eval["eval_loss"], 4),
        },
    )
    # decoding defaults chosen on the dev probes go into the checkpoint's generation_config.json
    report["decoding"] = tune_decoding(trainer.model, tokenizer, recipe.data.probe, recipe.decoding)
    if cfg.lora is not None:
        start = start_folder(recipe, run_dir, STAGE)
        report.update(lora.save_merged(trainer, tokenizer, work, start, cfg.lora))
    else:
        save_trained(trainer, tokenizer, work)
    return report
