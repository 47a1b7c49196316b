"""GPU pretraining benchmark: the `seed` model (Phi, hidden 960, 24 layers, 16 heads, ff 4096,
seq 512) on random tokens, through the project's own pretrain path (model factory, Trainer
arguments, throughput/MFU callback). Needs only torch and transformers (plus pyyaml, which
transformers brings), so it runs on a bare CUDA machine with this repository checked out:

    python -m bench.gpu_pretrain_bench            # both settings, prints a table

(a) the seed article's settings: eager attention, Adafactor, micro-batch 4 x accumulation 32;
(b) the project's defaults: sdpa, fused AdamW, bf16, torch.compile, micro-batch 64.
`--smoke` runs a tiny model for two steps on CPU, to check the script itself.

It avoids `training.pretrain` (which imports pyarrow, a `datasets` dependency that a bare CUDA
machine lacks) and adapts the Trainer arguments to the installed transformers, so it also runs
where transformers is older than the project's own venv. `bench.gpu_check` reuses
`run_setting` and `make_trainer`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator

from training.config import load_recipe
from training.model_factory import build_model, count_parameters
from training.throughput import attach_throughput
from training.tokenizer import train_tokenizer
from training.trainer_args import trainer_kwargs

SETTINGS = {
    "a_seed_article": dict(
        attn="eager", optim="adafactor", micro_batch=4, grad_accum=32, compile=False
    ),
    "b_project_defaults": dict(
        attn="sdpa", optim="auto", micro_batch=64, grad_accum=2, compile=True
    ),
}


class TokenBlocks(torch.utils.data.Dataset):
    """Fixed-length blocks of a flat token array, labels = inputs (the model shifts them); the
    same items as `training.pretrain.PackedBlocks`, without importing that module's pyarrow."""

    def __init__(self, tokens: np.ndarray, seq_len: int) -> None:
        self.tokens, self.seq_len = tokens, seq_len

    def __len__(self) -> int:
        return len(self.tokens) // self.seq_len

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        block = torch.from_numpy(
            self.tokens[i * self.seq_len : (i + 1) * self.seq_len].astype(np.int64)
        )
        return {"input_ids": block, "labels": block.clone()}


class DeadlineCallback(TrainerCallback):
    """Stops training after the step that passes `deadline` (time.time()), so a slow setting
    reports the steps it managed instead of overrunning its time budget."""

    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline
        self.stopped = False

    def on_step_end(self, args, state, control, **kwargs):
        if self.deadline is not None and time.time() > self.deadline:
            control.should_training_stop = self.stopped = True


def make_trainer(model, cfg, data, workdir: Path, name: str, deadline: float | None = None):
    """A Trainer over `data` with the project's stage arguments (no saving, no reporting), its
    throughput callback and a deadline."""
    kwargs = trainer_kwargs(cfg, workdir / name, "pretrain", has_eval=False, padded=False)
    kwargs.update(save_strategy="no", report_to=[])
    trainer = Trainer(
        model=model,
        args=TrainingArguments(**kwargs, remove_unused_columns=False),
        train_dataset=data,
        data_collator=default_data_collator,
    )
    throughput = attach_throughput(trainer, model, cfg.seq_len)
    stopper = DeadlineCallback(deadline)
    trainer.add_callback(stopper)
    return trainer, throughput, stopper


def run_setting(
    name: str,
    setting: dict,
    steps: int,
    smoke: bool,
    workdir: Path,
    deadline: float | None = None,
) -> dict:
    recipe = load_recipe("seed")
    model_cfg = recipe.model.model_copy(update=dict(attn_implementation=setting["attn"]))
    cfg = recipe.pretrain.model_copy(
        update=dict(
            max_steps=steps,
            micro_batch=setting["micro_batch"],
            grad_accum=setting["grad_accum"],
            optim=setting["optim"],
            torch_compile=setting["compile"],
            warmup_steps=1,
            logging_steps=1,
            save_steps=10**9,
            eval_steps=0,
        )
    )
    vocab = recipe.tokenizer.vocab_size
    if smoke:
        model_cfg = model_cfg.model_copy(
            update=dict(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128)
        )
        cfg = cfg.model_copy(
            update=dict(micro_batch=2, grad_accum=2, torch_compile=False, seq_len=64)
        )
        vocab = 512
    tokenizer = train_tokenizer(
        ["小Phi 基准测试 random tokens"] * 4, vocab_size=300, min_frequency=1
    )
    model = build_model(model_cfg, tokenizer, seed=0, min_vocab_size=vocab)
    n_tokens = (steps + 1) * cfg.micro_batch * cfg.grad_accum * cfg.seq_len
    rng = np.random.default_rng(0)
    data = TokenBlocks(
        rng.integers(0, vocab, size=n_tokens, dtype=np.int64).astype(np.uint16), cfg.seq_len
    )

    trainer, throughput, stopper = make_trainer(model, cfg, data, workdir, name, deadline)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start

    logs = [e for e in trainer.state.log_history if "tokens_per_s" in e]
    steady = logs[len(logs) // 3 :] or logs  # skip warm-up (compilation, allocator)
    if not steady:
        raise RuntimeError(f"{name}: no step finished within the time budget")
    tokens_per_s = statistics.median(e["tokens_per_s"] for e in steady)
    tokens_per_step = cfg.micro_batch * cfg.grad_accum * cfg.seq_len
    result = {
        "setting": name,
        **setting,
        "micro_batch": cfg.micro_batch,
        "grad_accum": cfg.grad_accum,
        "compile": cfg.torch_compile,
        "parameters": count_parameters(model),
        "steps": trainer.state.global_step,
        "stopped_by_deadline": stopper.stopped,
        "tokens_per_step": tokens_per_step,
        "tokens_per_s": round(tokens_per_s),
        # wall time beyond what the steady rate explains: compilation and allocator warm-up
        "warmup_s": round(
            max(wall - tokens_per_step * trainer.state.global_step / tokens_per_s, 0), 1
        ),
        "tflops": round(tokens_per_s * throughput.flops_per_token / 1e12, 1),
        "mfu": round(tokens_per_s * throughput.flops_per_token / throughput.peak_flops, 4)
        if throughput.peak_flops
        else None,
        "wall_time_s": round(wall, 1),
        "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1)
        if torch.cuda.is_available()
        else None,
    }
    del trainer, model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=12, help="Optimizer steps per setting.")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument(
        "--smoke", action="store_true", help="Tiny model on CPU, to check the script."
    )
    parser.add_argument("--out", default="bench_out/gpu_pretrain.json")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() and not args.smoke:
        parser.error(
            "no CUDA device: this benchmark needs a GPU (use --smoke to check the script on CPU)"
        )

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        results = [
            run_setting(name, SETTINGS[name], args.steps, args.smoke, Path(tmp))
            for name in args.settings
        ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"device": device, "results": results}, indent=2))
    print(f"device: {device}; torch {torch.__version__}")
    print(
        "| setting | attention | optimizer | micro-batch x accum | compile | tokens/s | TFLOP/s | MFU | peak mem |"
    )
    print("|---|---|---|---|---|---:|---:|---:|---:|")
    for r in results:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        mem = f"{r['peak_gpu_mem_gib']} GiB" if r["peak_gpu_mem_gib"] is not None else "n/a"
        print(
            f"| {r['setting']} | {r['attn']} | {r['optim']} | {r['micro_batch']} x {r['grad_accum']} | "
            f"{r['compile']} | {r['tokens_per_s']:,} | {r['tflops']} | {mfu} | {mem} |"
        )
    return results


if __name__ == "__main__":
    main()
