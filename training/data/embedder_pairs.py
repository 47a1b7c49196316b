"""The embedder's training pairs: pairs files, inverse-cloze pairs mined from a corpus, and the
benchmark hold-out rule (`bench_held_out`, also the rule `make bench-rag` asks by) with its filter.

Benchmark hygiene: `make bench-rag` asks for idioms whose sha1 % 10 == 0 (`bench_held_out`);
with `exclude_bench_held_out` (default) every pair and pretraining record that names such an
idiom or carries its explanation is dropped, and 三国演义 chapter-title records (the benchmark's
other queries) never become inverse-cloze pairs.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import re
from collections.abc import Iterable
from pathlib import Path

# Sentence ends for inverse-cloze pairs; a chapter-title record of the novel is never used.
_SENTENCE_END = re.compile(r"(?<=[。！？!?；;\n])")
_CHAPTER_TITLE = re.compile(r"^\s*第[一二三四五六七八九十百零〇\d]+回")
_IDIOM_RECORD = re.compile(r"^成语“([^”]+)”")
MIN_ICT_SENTENCE = 6


def bench_held_out(word: str) -> bool:
    """The benchmark's held-out tenth of idioms (sha1 % 10 == 0): `bench.rag_bench`
    asks only these, and the embedder's training drops every pair and text about them."""
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
    """The documents of a pretraining-format text file (`training.data.formats`: txt lines or
    jsonl/json/parquet `text` fields, checked first), in file order."""
    # Imported here: the benchmark imports this module for `bench_held_out` alone.
    from training.data.formats import iter_texts

    return list(itertools.islice(iter_texts(path), limit))


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
        from training.data.demo_heldout import SubstringBlocker

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
