"""Embedder stage: train the offline default sentence embedder from scratch on demo pairs.

A tiny BERT-style encoder (our byte-level BPE tokenizer, mean pooling, L2 normalisation) is
trained with sentence-transformers' MultipleNegativesRankingLoss on (anchor, positive) pairs
such as idiom ↔ explanation. The saved folder is a plain sentence-transformers model, so
`HuggingFaceEmbeddings(model_name=<folder>)` loads it offline.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path

import torch

# A 6k vocabulary is settled long before 40k texts; more only costs time on a small CPU.
TOKENIZER_TEXTS = 40_000


def load_pairs(path: str | Path) -> list[tuple[str, str]]:
    """Read `{"anchor", "positive"}` jsonl; a row without both fields is an error naming it."""
    pairs = []
    with Path(path).open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row, dict) or not row.get("anchor") or not row.get("positive"):
                raise ValueError(
                    f"{path}: row {number} needs non-empty `anchor` and `positive` fields."
                )
            pairs.append((str(row["anchor"]), str(row["positive"])))
    return pairs


def build_model(tokenizer, cfg, work: Path):
    """A randomly initialised BERT-style encoder wrapped as Transformer + mean Pooling + Normalize."""
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=4 * cfg.hidden_size,
        max_position_embeddings=cfg.max_seq_length,
        pad_token_id=tokenizer.pad_token_id,
        type_vocab_size=1,
    )
    BertModel(config).save_pretrained(str(work))
    tokenizer.save_pretrained(str(work))
    encoder = models.Transformer(str(work), max_seq_length=cfg.max_seq_length)
    pooling = models.Pooling(encoder.get_embedding_dimension(), pooling_mode="mean")
    return SentenceTransformer(modules=[encoder, pooling, models.Normalize()], device="cpu")


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
) -> dict:
    """Train on `pairs`, save a sentence-transformers folder at `out_dir`, return a report."""
    if len(pairs) < 2:
        raise ValueError(
            "the embedder needs at least 2 training pairs (in-batch negatives); check embedder pairs file."
        )
    torch.manual_seed(seed)
    rng = random.Random(seed)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(cfg.num_threads)
    try:
        return _train(pairs, Path(out_dir), cfg, eval_pairs, rng)
    finally:
        torch.set_num_threads(threads_before)


def _train(pairs, out_dir: Path, cfg, eval_pairs, rng: random.Random) -> dict:
    from sentence_transformers import losses

    from training.tokenizer import train_tokenizer

    start = time.time()
    texts = [t for pair in pairs for t in pair]
    if len(texts) > TOKENIZER_TEXTS:
        texts = rng.sample(texts, TOKENIZER_TEXTS)
    tokenizer = train_tokenizer(
        texts,
        vocab_size=cfg.vocab_size,
        min_frequency=2,
        model_max_length=cfg.max_seq_length,
    )
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(tokenizer, cfg, Path(tmp))
    loss_fn = losses.MultipleNegativesRankingLoss(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    warmup = max(1, cfg.max_steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * max(0.0, 1 - step / cfg.max_steps)
    )
    before = evaluate_pairs(model, eval_pairs or [])
    model.train()
    order: list[int] = []
    losses_seen = []
    for _ in range(cfg.max_steps):
        if len(order) < cfg.batch_size:
            order += rng.sample(range(len(pairs)), len(pairs))
        batch = [pairs[i] for i in order[: cfg.batch_size]]
        del order[: cfg.batch_size]
        features = [
            model.preprocess([a for a, _ in batch]),
            model.preprocess([p for _, p in batch]),
        ]
        loss = loss_fn(features, labels=None)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses_seen.append(loss.item())
    model.eval()
    wall = time.time() - start
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save(str(out_dir))
    head = losses_seen[: max(1, len(losses_seen) // 10)]
    tail = losses_seen[-max(1, len(losses_seen) // 10) :]
    report = {
        "stage": "embedder",
        "pairs": len(pairs),
        "eval_pairs": len(eval_pairs or []),
        "steps": cfg.max_steps,
        "batch_size": cfg.batch_size,
        "vocab_size": len(tokenizer),
        "dimension": model.get_embedding_dimension(),
        "loss_first": round(sum(head) / len(head), 4),
        "loss_last": round(sum(tail) / len(tail), 4),
        "heldout_before": before,
        "heldout": evaluate_pairs(model, eval_pairs or []),
        "wall_time_s": round(wall, 2),
    }
    (out_dir / "embedder_report.json").write_text(
        json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8"
    )
    return report


def main(recipe, run_dir: Path) -> dict:
    """Train the embedder for `recipe` into `run_dir/embedder` (published only when complete)."""
    from training.stage_dirs import finish_stage, stage_work_dir

    cfg = recipe.embedder
    pairs = load_pairs(cfg.pairs)
    eval_path = Path(cfg.eval_pairs)
    eval_pairs = load_pairs(eval_path) if eval_path.exists() else []
    work = stage_work_dir(run_dir, "embedder")
    seed = recipe.pretrain.seed
    report = train_embedder(pairs, work, cfg, eval_pairs=eval_pairs, seed=seed)
    finish_stage(run_dir, "embedder")
    return report
