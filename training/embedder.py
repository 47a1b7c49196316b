"""Embedder stage: train the offline default sentence embedder from scratch on demo data.

The default (`arch: static`, `training.embedder_model`) is a bag of trained token embeddings
over a character-level tokenizer. It encodes thousands of chunks per second on one CPU thread
and trains so fast that thousands of large-batch steps fit in the tiny recipe's minute, which
beat a small transformer given the same time by a wide margin (see the README's embedder
figures). `arch: bert` keeps the small BERT-style encoder (mean pooling) for bigger machines.

Training uses MultipleNegativesRankingLoss (in-batch negatives) on (anchor, positive) pairs:
the demo pairs file plus inverse-cloze pairs cut from the pretraining corpus, without anything
the RAG benchmark asks about (`training.data.embedder_pairs`).

The saved folder is a plain sentence-transformers model, so
`HuggingFaceEmbeddings(model_name=<folder>)` loads it offline.
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

import torch

from training import cpu_share, progress
from training.data.embedder_pairs import load_pairs, training_pairs
from training.embedder_model import (
    apply_sif_weights,
    build_model,
    build_tokenizer,
    pretokenise,
)

# A 6k vocabulary is settled long before 40k texts; more only costs time on a small CPU.
TOKENIZER_TEXTS = 40_000


@torch.no_grad()
def evaluate_pairs(model, pairs: list[tuple[str, str]], batch_size: int = 128) -> dict:
    """Each anchor ranks every positive in `pairs`: recall@1/5/10 and MRR of its own positive."""
    if not pairs:
        return {}
    anchors = model.encode([a for a, _ in pairs], batch_size=batch_size, convert_to_tensor=True)
    positives = model.encode([p for _, p in pairs], batch_size=batch_size, convert_to_tensor=True)
    scores = anchors @ positives.T
    gold = scores.diagonal().unsqueeze(1)
    ranks = (scores > gold).sum(dim=1) + 1  # 1 = the right positive scored highest
    out = {f"recall@{k}": round(float((ranks <= k).float().mean()), 4) for k in (1, 5, 10)}
    out["mrr"] = round(float((1.0 / ranks.float()).mean()), 4)
    out["candidates"] = len(pairs)
    return out


def train_embedder(
    pairs: list[tuple[str, str]],
    out_dir: Path,
    cfg,
    eval_pairs: list[tuple[str, str]] | None = None,
    seed: int = 0,
    texts: list[str] | None = None,
) -> dict:
    """Train on `pairs` (plus inverse-cloze pairs from `texts` / `cfg.ict_texts`), save a
    sentence-transformers folder at `out_dir`, return a report."""
    if len(pairs) < 2:
        raise ValueError(
            "the embedder needs at least 2 training pairs (in-batch negatives); check embedder pairs file."
        )
    torch.manual_seed(seed)
    rng = random.Random(seed)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(cfg.num_threads or torch.get_num_threads())
    try:
        return _train(pairs, Path(out_dir), cfg, eval_pairs, rng, texts)
    finally:
        torch.set_num_threads(threads_before)


def _train(pairs, out_dir: Path, cfg, eval_pairs, rng: random.Random, texts) -> dict:
    start = time.time()
    pairs, counts = training_pairs(pairs, cfg, rng, texts)
    if len(pairs) < 2:
        raise ValueError("fewer than 2 training pairs are left after the held-out filter.")
    tokenizer_texts = [t for pair in pairs for t in pair]
    if len(tokenizer_texts) > TOKENIZER_TEXTS:
        tokenizer_texts = rng.sample(tokenizer_texts, TOKENIZER_TEXTS)
    tokenizer = build_tokenizer(tokenizer_texts, cfg)
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(tokenizer, cfg, Path(tmp))
    before = evaluate_pairs(model, eval_pairs or [])
    token_ids = pretokenise(model, pairs) if cfg.arch == "static" else None
    batch_size = min(cfg.batch_size, len(pairs))
    losses_seen = _fit(model, pairs, token_ids, cfg, batch_size, rng)
    unweighted = None
    if cfg.arch == "static" and cfg.sif_weight > 0:
        unweighted = evaluate_pairs(model, eval_pairs or [])
        apply_sif_weights(model, token_ids[0] + token_ids[1], cfg.sif_weight)
    wall = time.time() - start
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save(str(out_dir))
    head = losses_seen[: max(1, len(losses_seen) // 10)]
    tail = losses_seen[-max(1, len(losses_seen) // 10) :]
    report = {
        "stage": "embedder",
        "arch": cfg.arch,
        "tokenizer": cfg.tokenizer,
        "pairs": len(pairs),
        **counts,
        "eval_pairs": len(eval_pairs or []),
        "steps": cfg.max_steps,
        "batch_size": batch_size,
        "vocab_size": len(tokenizer),
        "dimension": model.get_embedding_dimension(),
        "loss_first": round(sum(head) / len(head), 4),
        "loss_last": round(sum(tail) / len(tail), 4),
        "heldout_before": before,
        "sif_weight": cfg.sif_weight if unweighted is not None else 0.0,
        "heldout_without_sif": unweighted,
        "heldout": evaluate_pairs(model, eval_pairs or []),
        "wall_time_s": round(wall, 2),
    }
    return report


def _fit(model, pairs, token_ids, cfg, batch_size: int, rng: random.Random) -> list[float]:
    """`cfg.max_steps` AdamW steps of MultipleNegativesRankingLoss; returns each step's loss.

    A hand loop rather than sentence-transformers' `SentenceTransformerTrainer` (6.2, same loss,
    AdamW, warmup, linear decay, clipping, batches and seed), measured on the demo data with the
    default recipe (800 steps of 1024 pairs, one thread): held-out pair MRR is the same within
    seed noise (seed 0: loop 0.631, trainer 0.627; seed 1: 0.633, 0.635), but the trainer is
    slower. With its collator re-tokenising every batch its loop took 124 s of CPU against this
    loop's 49 s (2.5x); even fed these pretokenised batches through a custom collator it took
    63 s (+28%): the Trainer's per-step machinery outweighs a step this small.
    """
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    loss_fn = MultipleNegativesRankingLoss(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    warmup = max(1, cfg.max_steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * max(0.0, 1 - step / cfg.max_steps)
    )
    batcher = _static_batcher(token_ids) if token_ids is not None else _batcher(model, pairs)
    model.train()
    order: list[int] = []
    losses_seen = []
    progress.report(done=0, total=cfg.max_steps, unit="steps")
    share = cpu_share.CpuShare() if cfg.num_threads == 0 and cpu_share.managed() else None
    for step in range(cfg.max_steps):
        if len(order) < batch_size:
            order += rng.sample(range(len(pairs)), len(pairs))
        batch = order[:batch_size]
        del order[:batch_size]
        loss = loss_fn(batcher(batch), labels=None)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses_seen.append(loss.item())
        progress.report(done=step + 1)
        if share is not None and (step + 1) % 100 == 0:  # other programs come and go
            torch.set_num_threads(share.threads() or torch.get_num_threads())
    model.eval()
    return losses_seen


def _batcher(model, pairs):
    """Batch indices → (anchor features, positive features), tokenised on the fly."""

    def features(batch: list[int]) -> list[dict]:
        return [
            model.preprocess([pairs[i][0] for i in batch]),
            model.preprocess([pairs[i][1] for i in batch]),
        ]

    return features


def _static_batcher(sides: list[list]):
    """Like `_batcher` for a StaticEmbedding model, but on texts tokenised once up front
    (`pretokenise`; half of a step's time otherwise): a batch is only concatenated ids plus bag
    offsets — the features `StaticEmbedding.preprocess` would have built."""
    import numpy as np

    def features(batch: list[int]) -> list[dict]:
        out = []
        for ids in sides:
            chunks = [ids[i] for i in batch]
            lengths = np.fromiter((len(c) for c in chunks), dtype=np.int64, count=len(chunks))
            offsets = np.concatenate([[0], np.cumsum(lengths[:-1])])
            out.append(
                {
                    "input_ids": torch.from_numpy(np.concatenate(chunks)),
                    "offsets": torch.from_numpy(offsets),
                }
            )
        return out

    return features


def main(recipe, run_dir: Path, work: Path) -> dict:
    """Train the embedder for `recipe` into `work` (published as `run_dir/embedder`)."""
    cfg = recipe.embedder
    pairs = load_pairs(cfg.pairs)
    eval_path = Path(cfg.eval_pairs)
    eval_pairs = load_pairs(eval_path) if eval_path.exists() else []
    return train_embedder(pairs, work, cfg, eval_pairs=eval_pairs, seed=recipe.pretrain.seed)
