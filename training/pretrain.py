"""Stage 2: pretrain a fresh causal LM on packed documents with the HF Trainer.

Documents become `<|bos|> text <|endoftext|>`, are concatenated and cut into fixed blocks of
`seq_len` tokens, stored once as a compact array (uint16 when the vocabulary allows). The
Trainer's seeded sampler and checkpoints give exact resume: a killed run continues with the
same data order and step count.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import torch
from transformers import Trainer, TrainingArguments, default_data_collator

from training import lora
from training.base_model import start_folder
from training.config import Recipe
from training.distributed import is_main_process, wait_for
from training.lora import quantized_loading
from training.model_factory import (
    build_model,
    check_vocab_fits,
    count_parameters,
    load_model_and_tokenizer,
)
from training.throughput import attach_throughput
from training.time_budget import attach_time_budget
from training.tokenizer import load_tokenizer
from training.trainer_args import (
    last_logged,
    rounded,
    save_trained,
    train_resumably,
    trainer_kwargs,
    trainer_report,
)

STAGE = "pretrain"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


def tokenize_documents(tokenizer, dataset, num_proc: int):
    """Map a `text` dataset to `input_ids` = bos + tokens + eos per document."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id

    backend = tokenizer.backend_tokenizer  # the Rust tokenizer: batched, no length warnings

    start = [bos] if bos is not None else []  # a base's tokenizer may have no start token
    end = [eos] if eos is not None else []

    def encode(batch):
        encodings = backend.encode_batch(batch["text"], add_special_tokens=False)
        return {"input_ids": [[*start, *e.ids, *end] for e in encodings]}

    return dataset.map(
        encode,
        batched=True,
        num_proc=num_proc if len(dataset) >= 1000 * max(num_proc, 1) else None,
        remove_columns=dataset.column_names,
        desc="tokenizing",
    )


def build_token_array(tokenizer, paths: list[str], num_proc: int, cache_path: Path) -> np.ndarray:
    """All documents of `paths` as one flat token array, cached at `cache_path` (.npy). Under a
    multi-process launch the main process tokenizes and the others load its cache."""
    if not is_main_process():
        # N processes tokenizing the same corpus at once would only multiply the CPU work.
        wait_for(cache_path.exists, f"the main process to tokenize into {cache_path}")
    if cache_path.exists():
        return np.load(cache_path, mmap_mode="r")
    from training.data.formats import load_text_dataset

    tokenized = tokenize_documents(tokenizer, load_text_dataset(paths, num_proc=num_proc), num_proc)
    flat = pc.list_flatten(tokenized.data.column("input_ids")).to_numpy()
    array = flat.astype(token_dtype(len(tokenizer)))
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_path.with_name(f"{cache_path.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, cache_path)
    return np.load(cache_path, mmap_mode="r")


class PackedBlocks(torch.utils.data.Dataset):
    """Fixed-length blocks over a flat token array; labels equal inputs (the model shifts)."""

    def __init__(self, tokens: np.ndarray, seq_len: int, max_blocks: int | None = None):
        n_blocks = len(tokens) // seq_len
        if max_blocks is not None:
            n_blocks = min(n_blocks, max_blocks)
        self.tokens, self.seq_len, self.n_blocks = tokens, seq_len, n_blocks

    def __len__(self) -> int:
        return self.n_blocks

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < self.n_blocks:
            raise IndexError(i)
        start = i * self.seq_len
        block = torch.from_numpy(self.tokens[start : start + self.seq_len].astype(np.int64))
        return {"input_ids": block, "labels": block.clone()}


def build_packed_dataset(recipe: Recipe, tokenizer, run_dir: Path, split: str) -> PackedBlocks:
    cfg = recipe.pretrain
    paths = recipe.data.pretrain if split == "train" else [recipe.data.pretrain_eval]
    cache = Path(run_dir) / "data_cache" / f"pretrain_{split}.npy"
    tokens = build_token_array(tokenizer, paths, recipe.data.num_proc, cache)
    blocks = PackedBlocks(tokens, cfg.seq_len, None if split == "train" else cfg.eval_max_blocks)
    if len(blocks) == 0:
        raise ValueError(
            f"the {split} pretraining data ({', '.join(paths)}) has {len(tokens)} tokens, "
            f"not enough for one block of pretrain.seq_len={cfg.seq_len}; add text or lower --pretrain.seq_len."
        )
    return blocks


def perplexity(eval_loss: float | None) -> float | None:
    return None if eval_loss is None else round(math.exp(min(eval_loss, 50.0)), 3)


def main(recipe: Recipe, run_dir: Path, work: Path) -> dict:
    """Pretrain from `run_dir/tokenizer` — or continue pretraining the recipe's base, with all
    weights or a LoRA adapter; save the model into `work` (published as `run_dir/pretrain`)."""
    run_dir = Path(run_dir)
    cfg = recipe.pretrain
    start = start_folder(recipe, run_dir, STAGE)
    if start is None:
        tokenizer = load_tokenizer(run_dir / "tokenizer")
        model = build_model(recipe.model, tokenizer, seed=cfg.seed)
        check_vocab_fits(model, tokenizer, where=STAGE)
    else:
        model, tokenizer = load_model_and_tokenizer(start, STAGE, **quantized_loading(cfg.lora))
    if cfg.lora is not None:
        model = lora.wrap(model, cfg.lora)
    train_data = build_packed_dataset(recipe, tokenizer, run_dir, "train")
    eval_data = build_packed_dataset(recipe, tokenizer, run_dir, "eval")
    args = TrainingArguments(
        **trainer_kwargs(cfg, run_dir, STAGE, has_eval=True, padded=False),
        remove_unused_columns=False,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_data,
        eval_dataset=eval_data,
        data_collator=default_data_collator,
    )
    throughput = attach_throughput(trainer, model, cfg.seq_len)
    budget = attach_time_budget(trainer, cfg.max_steps, cfg) if cfg.max_time_s else None

    run = train_resumably(trainer, run_dir, STAGE, baseline=True)

    if cfg.lora is not None:
        adapter = lora.save_merged(trainer, tokenizer, work, start, cfg.lora)
    else:
        adapter = {}
        save_trained(trainer, tokenizer, work)
    history = trainer.state.log_history
    return trainer_report(
        STAGE,
        trainer,
        run,
        throughput,
        trained_on={
            "base": str(start) if start is not None else None,
            "arch": model.config.model_type,
            "parameters": count_parameters(model),
            **adapter,
            "vocab_size_padded": model.config.vocab_size,
            "train_blocks": len(train_data),
            "seq_len": cfg.seq_len,
        },
        metrics={
            "tokens_seen": int(trainer.state.num_input_tokens_seen),
            "train_loss_mean": round(run.result.training_loss, 4),
            "eval_loss_untrained": rounded(run.baseline_eval_loss),
            "perplexity_untrained": perplexity(run.baseline_eval_loss),
            "eval_loss": round(run.final_eval["eval_loss"], 4),
            "perplexity": perplexity(run.final_eval["eval_loss"]),
            "mfu_last": last_logged(history, "mfu"),
            "max_steps": cfg.max_steps,
            "max_time_s": cfg.max_time_s or None,
            # what ended training: max_steps, or the time budget with fewer steps
            "stopped_by": budget.stopped_by if budget is not None else "max_steps",
        },
    )
