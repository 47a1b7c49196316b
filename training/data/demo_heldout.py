"""Which demo items are held out, and the rule that keeps them out of every training file.

Held-out idioms, words and 歇后语 are chosen first (by seed); the first idioms are the probe.
`SubstringBlocker` finds any training text that contains a held-out string of
`MIN_BLOCKED_CHARS`+ characters (the term itself, a 歇后语's first half, a gold explanation).
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from training.data.demo_chats import idiom_answer, word_answer
from training.data.demo_sources import MAX_ANSWER_CHARS, Idiom, Raw, Word, Xiehouyu

N_HELD_IDIOMS = 300
N_PROBE = 50
N_HELD_WORDS = 200
N_HELD_XIEHOUYU = 150
MIN_BLOCKED_CHARS = 4

_HAN = re.compile(r"^[\u4e00-\u9fff]+$")


@dataclass
class HeldOut:
    idioms: list[Idiom]  # the first N_PROBE go to the probe
    words: list[Word]
    xiehouyu: list[Xiehouyu]

    @property
    def keys(self) -> set[str]:
        """Every held-out subject: no training record may be about one of these."""
        return (
            {i.word for i in self.idioms}
            | {w.word for w in self.words}
            | {x.riddle for x in self.xiehouyu}
        )

    def blocked_strings(self) -> set[str]:
        """Strings no training record may contain: subjects and gold answers of 4+ chars."""
        strings = set(self.keys)
        strings |= {idiom_answer(i) for i in self.idioms}
        strings |= {word_answer(w) for w in self.words}
        return {s for s in strings if len(s) >= MIN_BLOCKED_CHARS}


def choose_held_out(raw: Raw, seed: int) -> HeldOut:
    """Pick held-out idioms, words and 歇后语 deterministically, before anything else is built."""
    rng = random.Random(seed)
    explanation_counts: dict[str, int] = defaultdict(int)
    for idiom in raw.idioms:
        explanation_counts[idiom.explanation] += 1
    idiom_words = {i.word for i in raw.idioms}
    idioms = [
        i
        for i in raw.idioms
        if len(i.word) >= 4
        and _HAN.match(i.word)
        and 8 <= len(i.explanation) <= MAX_ANSWER_CHARS
        and explanation_counts[i.explanation] == 1
        and not i.explanation.startswith(("同", "见"))
    ]
    words = [
        w
        for w in raw.words
        if w.word not in idiom_words
        and _HAN.match(w.word)
        and 6 <= len(w.definition) <= MAX_ANSWER_CHARS
    ]
    xiehouyu = [x for x in raw.xiehouyu if len(x.riddle) >= 4]
    return HeldOut(
        idioms=rng.sample(idioms, N_HELD_IDIOMS),
        words=rng.sample(words, N_HELD_WORDS),
        xiehouyu=rng.sample(xiehouyu, N_HELD_XIEHOUYU),
    )


class SubstringBlocker:
    """Finds which of many fixed strings (each ≥ k chars) occur in a text.

    Every needle is indexed by its first k characters; a text's set of k-character windows is
    intersected with that index and only the hits are verified.
    """

    def __init__(self, needles: Iterable[str], k: int = MIN_BLOCKED_CHARS) -> None:
        self.k = k
        self.by_prefix: dict[str, list[str]] = defaultdict(list)
        for needle in needles:
            if len(needle) < k:
                raise ValueError(f"needle {needle!r} is shorter than {k} characters")
            self.by_prefix[needle[:k]].append(needle)
        self.prefixes = frozenset(self.by_prefix)

    def find(self, text: str) -> list[str]:
        k = self.k
        windows = {text[i : i + k] for i in range(len(text) - k + 1)}
        hits = windows & self.prefixes
        return [n for p in hits for n in self.by_prefix[p] if n in text]
