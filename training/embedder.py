"""Embedder stage: train the offline default sentence embedder from scratch on demo data.

The default (`arch: static`) is a bag of trained token embeddings (sentence-transformers'
`StaticEmbedding`, mean of token vectors, L2-normalised) over a character-level tokenizer. It
encodes thousands of chunks per second on one CPU thread and trains so fast that thousands of
large-batch steps fit in the tiny recipe's minute, which beat a small transformer given the
same time by a wide margin (see the README's embedder figures). `arch: bert` keeps the small
BERT-style encoder (mean pooling) for bigger machines.

Training uses MultipleNegativesRankingLoss (in-batch negatives) on (anchor, positive) pairs:
the demo pairs file (idiom ↔ explanation, word ↔ definition, 歇后语) plus inverse-cloze pairs
cut from the pretraining corpus (one sentence ↔ the sentences around it).

Benchmark hygiene: `make bench-rag` asks for idioms whose sha1 % 10 == 0 (`bench_held_out`);
with `exclude_bench_held_out` (default) every pair and pretraining record that names such an
idiom or carries its explanation is dropped, and 三国演义 chapter-title records (the benchmark's
other queries) never become inverse-cloze pairs.

The saved folder is a plain sentence-transformers model, so
`HuggingFaceEmbeddings(model_name=<folder>)` loads it offline.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import torch

# A 6k vocabulary is settled long before 40k texts; more only costs time on a small CPU.
TOKENIZER_TEXTS = 40_000
ARCHITECTURES = ("static", "bert")
TOKENIZERS = ("char", "bpe")
UNK, PAD = "[UNK]", "[PAD]"
# Sentence ends for inverse-cloze pairs; a chapter-title record of the novel is never used.
_SENTENCE_END = re.compile(r"(?<=[。！？!?；;\n])")
_CHAPTER_TITLE = re.compile(r"^\s*第[一二三四五六七八九十百零〇\d]+回")
_IDIOM_RECORD = re.compile(r"^成语“([^”]+)”")
MIN_ICT_SENTENCE = 6


def bench_held_out(word: str) -> bool:
    """The benchmark's held-out tenth (`rag.benchmarks.rag_bench.held_out`): sha1 % 10 == 0."""
    return int(hashlib.sha1(word.encode("utf-8")).hexdigest(), 16) % 10 == 0


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


def read_texts(path: str | Path, limit: int | None = None) -> list[str]:
    """`text` fields of a jsonl file (or lines of a txt file), in file order."""
    out = []
    with Path(path).open(encoding="utf-8") as fh:
        for line in fh:
            if limit is not None and len(out) >= limit:
                break
            line = line.strip()
            if not line:
                continue
            if str(path).endswith(".jsonl"):
                text = json.loads(line).get("text")
                if text:
                    out.append(str(text))
            else:
                out.append(line)
    return out


def inverse_cloze_pairs(
    texts: Iterable[str], n: int, rng: random.Random, context_chars: int = 240
) -> list[tuple[str, str]]:
    """Up to `n` (sentence, the sentences around it) pairs, one per text, from shuffled `texts`.

    The anchor sentence is taken out of its context (inverse cloze task), so the pair teaches
    which words go together rather than exact overlap. Texts with fewer than two sentences and
    chapter-title records of the novel are skipped.
    """
    texts = list(texts)
    rng.shuffle(texts)
    pairs: list[tuple[str, str]] = []
    for text in texts:
        if len(pairs) >= n:
            break
        if _CHAPTER_TITLE.match(text):
            continue
        sentences = [t.strip() for t in _SENTENCE_END.split(text) if t.strip()]
        if len(sentences) < 2:
            continue
        i = rng.randrange(len(sentences))
        anchor = sentences[i]
        if len(anchor) < MIN_ICT_SENTENCE:
            continue
        before, after, lo, hi = [], [], i - 1, i + 1
        size = 0
        while size < context_chars and (lo >= 0 or hi < len(sentences)):
            if hi < len(sentences):
                after.append(sentences[hi])
                size += len(sentences[hi])
                hi += 1
            if lo >= 0 and size < context_chars:
                before.insert(0, sentences[lo])
                size += len(sentences[lo])
                lo -= 1
        pairs.append((anchor, "".join(before + after)))
    return pairs


def chapter_titles(texts: Iterable[str]) -> set[str]:
    """The halves of every `第N回 上句　下句` chapter-title record (each 4+ characters)."""
    halves = set()
    for text in texts:
        m = _CHAPTER_TITLE.match(text)
        if m:
            first_line = text[m.end() :].split("\n", 1)[0]
            halves |= {h for h in re.split(r"[\s\u3000，,]+", first_line) if len(h) >= 4}
    return halves


class HeldOutFilter:
    """Drops pairs and texts that mention a benchmark held-out subject.

    Held-out subjects are the pair anchors and the idioms named by `成语“…”` records for which
    `bench_held_out` is true; their own positives (explanations) are held out too. A pair is
    dropped when its anchor is a held-out subject or when either side contains a held-out
    subject or explanation (3+ characters), or a half of a chapter title of the novel (the
    benchmark's other queries; taken from the `第N回 …` records among `texts`).
    """

    K = 3

    def __init__(self, pairs: list[tuple[str, str]], texts: Iterable[str] = ()):
        texts = list(texts)
        from training.data.demo import SubstringBlocker

        subjects = {a for a, _ in pairs if bench_held_out(a)}
        for text in texts:
            m = _IDIOM_RECORD.match(text)
            if m and bench_held_out(m.group(1)):
                subjects.add(m.group(1))
        explanations = {p for a, p in pairs if a in subjects}
        self.subjects = subjects
        self.titles = chapter_titles(texts)
        self.blocker = SubstringBlocker(
            {s for s in subjects | explanations | self.titles if len(s) >= self.K}, k=self.K
        )

    def keeps_text(self, text: str) -> bool:
        return not self.blocker.find(text)

    def keeps(self, pair: tuple[str, str]) -> bool:
        anchor, positive = pair
        return anchor not in self.subjects and self.keeps_text(anchor + "\n" + positive)


def char_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 2):
    """A `tokenizers.Tokenizer` with one token per character (NFKC, lower-cased, no spaces):
    the `vocab_size - 2` most frequent characters seen at least `min_frequency` times."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

    normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(normalizer.normalize_str(text))
    vocab = {UNK: 0, PAD: 1}
    for ch, count in counts.most_common():
        if len(vocab) >= vocab_size or count < min_frequency:
            break
        if not ch.isspace():
            vocab[ch] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex("."), behavior="isolated")]
    )
    return tok


def build_tokenizer(texts: list[str], cfg):
    """The embedder's own tokenizer as an HF fast tokenizer (`cfg.tokenizer`: char or bpe)."""
    if cfg.tokenizer == "char":
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast(
            tokenizer_object=char_tokenizer(texts, cfg.vocab_size),
            unk_token=UNK,
            pad_token=PAD,
            model_max_length=cfg.max_seq_length,
        )
    from training.tokenizer import train_tokenizer

    return train_tokenizer(
        texts, vocab_size=cfg.vocab_size, min_frequency=2, model_max_length=cfg.max_seq_length
    )


def build_model(tokenizer, cfg, work: Path):
    """A randomly initialised embedder for `cfg.arch`, ending in L2 normalisation.

    static: StaticEmbedding (mean of trained token vectors, `hidden_size` wide).
    bert: BERT-style encoder wrapped as Transformer + mean Pooling.
    """
    from sentence_transformers import SentenceTransformer, models

    if cfg.arch == "static":
        from sentence_transformers.sentence_transformer.modules import StaticEmbedding

        static = StaticEmbedding(tokenizer, embedding_dim=cfg.hidden_size)
        torch.nn.init.normal_(static.embedding.weight, std=cfg.hidden_size**-0.5)
        return SentenceTransformer(modules=[static, models.Normalize()], device="cpu")

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


def training_pairs(
    pairs: list[tuple[str, str]], cfg, rng: random.Random, texts: list[str] | None = None
) -> tuple[list[tuple[str, str]], dict]:
    """The pairs the embedder trains on and counts of what was added and dropped.

    `texts` (default: read from `cfg.ict_texts` when set) feed up to `cfg.ict_pairs`
    inverse-cloze pairs; with `cfg.exclude_bench_held_out` pairs and texts that touch the
    benchmark's held-out idioms are dropped first.
    """
    counts: dict = {"given_pairs": len(pairs)}
    if texts is None:
        texts = []
        if cfg.ict_texts and cfg.ict_pairs > 0:
            if Path(cfg.ict_texts).is_file():
                texts = read_texts(cfg.ict_texts)
            else:  # a custom recipe without the demo corpus: train on the pairs alone
                counts["ict_texts_missing"] = cfg.ict_texts
    if cfg.exclude_bench_held_out:
        held = HeldOutFilter(pairs, texts)
        kept = [p for p in pairs if held.keeps(p)]
        counts["dropped_bench_held_out_pairs"] = len(pairs) - len(kept)
        pairs = kept
    ict = inverse_cloze_pairs(texts, cfg.ict_pairs, rng) if texts and cfg.ict_pairs > 0 else []
    if ict and cfg.exclude_bench_held_out:
        kept = [p for p in ict if held.keeps(p)]
        counts["dropped_bench_held_out_ict"] = len(ict) - len(kept)
        ict = kept
    counts["inverse_cloze_pairs"] = len(ict)
    return pairs + ict, counts


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
    if cfg.arch not in ARCHITECTURES:
        raise ValueError(f"embedder.arch={cfg.arch!r}; use one of {', '.join(ARCHITECTURES)}.")
    if cfg.tokenizer not in TOKENIZERS:
        raise ValueError(
            f"embedder.tokenizer={cfg.tokenizer!r}; use one of {', '.join(TOKENIZERS)}."
        )
    torch.manual_seed(seed)
    rng = random.Random(seed)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(cfg.num_threads)
    try:
        return _train(pairs, Path(out_dir), cfg, eval_pairs, rng, texts)
    finally:
        torch.set_num_threads(threads_before)


def _train(pairs, out_dir: Path, cfg, eval_pairs, rng: random.Random, texts) -> dict:
    from sentence_transformers import losses

    from training.stage_dirs import write_json

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
    loss_fn = losses.MultipleNegativesRankingLoss(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    warmup = max(1, cfg.max_steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * max(0.0, 1 - step / cfg.max_steps)
    )
    before = evaluate_pairs(model, eval_pairs or [])
    if cfg.arch == "static":
        token_ids = pretokenise(model, pairs)
        batcher = _static_batcher(token_ids)
    else:
        batcher = _batcher(model, pairs)
    model.train()
    order: list[int] = []
    losses_seen = []
    batch_size = min(cfg.batch_size, len(pairs))
    for _ in range(cfg.max_steps):
        if len(order) < batch_size:
            order += rng.sample(range(len(pairs)), len(pairs))
        batch = order[:batch_size]
        del order[:batch_size]
        features = batcher(batch)
        loss = loss_fn(features, labels=None)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses_seen.append(loss.item())
    model.eval()
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
    # Named like every stage's report, so a pipeline that skips the finished stage still shows it.
    write_json(out_dir / "stage_report.json", report)
    return report


@torch.no_grad()
def apply_sif_weights(model, token_ids: list, a: float) -> torch.Tensor:
    """Scale every token vector of a StaticEmbedding model by a / (a + p(token)), p = the
    token's share of all ids in `token_ids` (one id array per training text).

    Smooth inverse frequency (Arora, Liang and Ma, ICLR 2017): a mean of token vectors is
    dominated by frequent tokens (的, 之, 曰 …) that say little about a text; weighting them
    down makes the mean lean on the rare, telling ones. Training with in-batch negatives only
    partly learns this through vector norms; on the dev queries of `rag.benchmarks.fusion_dev`
    the weighting lifts dense MRR@10 on both query kinds. Returns the weights applied.
    """
    import numpy as np

    table = model[0].embedding.weight
    counts = np.bincount(np.concatenate(token_ids), minlength=table.shape[0])[: table.shape[0]]
    shares = torch.from_numpy(counts / max(1, counts.sum()))
    weights = (a / (a + shares)).to(table.dtype)
    table.mul_(weights.unsqueeze(1))
    return weights


def _batcher(model, pairs):
    """Batch indices → (anchor features, positive features), tokenised on the fly."""

    def features(batch: list[int]) -> list[dict]:
        return [
            model.preprocess([pairs[i][0] for i in batch]),
            model.preprocess([pairs[i][1] for i in batch]),
        ]

    return features


def pretokenise(model, pairs) -> list[list]:
    """(anchor id arrays, positive id arrays) of `pairs` for a StaticEmbedding model."""
    import numpy as np

    tokenizer = model[0].tokenizer
    sides = []
    for side in (0, 1):
        encodings = tokenizer.encode_batch([p[side] for p in pairs], add_special_tokens=False)
        sides.append([np.asarray(e.ids, dtype=np.int64) for e in encodings])
    return sides


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
