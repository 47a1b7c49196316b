"""Scores for generated answers: character F1 against the gold text, loops and stops.

Shared by the lm-eval generation tasks (training/eval/tasks) and the decoding-defaults search
(training/decoding.py), so both count a loop the same way.
"""

from __future__ import annotations

import math
import re
from collections import Counter

#: Characters that carry no content for F1 (punctuation and spaces, Chinese and ASCII).
_IGNORED = re.compile(
    r"[\s\u3000-\u303f\uff00-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65!-/:-@\[-`{-~“”‘’…—·]"
)
#: An answer loops when some character n-gram of this length occurs this often in its last
#: LOOP_TAIL_CHARS characters (characters, not tokens: comparable across tokenizers).
LOOP_NGRAM = 3
LOOP_REPEATS = 3
LOOP_TAIL_CHARS = 32


def content_chars(text: str) -> list[str]:
    return [c for c in text if not _IGNORED.match(c)]


def char_f1(prediction: str, reference: str) -> float:
    """F1 over the multiset of content characters (SQuAD-style, one character = one token)."""
    pred, ref = Counter(content_chars(prediction)), Counter(content_chars(reference))
    overlap = sum((pred & ref).values())
    if overlap == 0:
        return 0.0
    precision = overlap / sum(pred.values())
    recall = overlap / sum(ref.values())
    return 2 * precision * recall / (precision + recall)


def repeats_ngram(text: str, n: int = LOOP_NGRAM, times: int = LOOP_REPEATS) -> bool:
    """Whether some n-gram occurs at least `times` times in the last LOOP_TAIL_CHARS characters."""
    tail = text[-LOOP_TAIL_CHARS:]
    counts = Counter(tuple(tail[i : i + n]) for i in range(len(tail) - n + 1))
    return bool(counts) and max(counts.values()) >= times


def is_loop(text: str, stopped: bool) -> bool:
    """A loop: the answer ran to the token limit while repeating an n-gram."""
    return not stopped and repeats_ngram(text)


def mean_interval(values: list[float], z: float = 1.96) -> tuple[float, float]:
    """The mean and the half-width of its normal-approximation 95% interval."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    mean = sum(values) / n
    if n == 1:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, z * math.sqrt(var / n)
