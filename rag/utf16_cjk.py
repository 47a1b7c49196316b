"""Recognise BOM-less UTF-16 (LE or BE) Chinese text, as Windows "Unicode" text files often are.

Mostly-Chinese UTF-16 has no NUL bytes to tell it apart, and arbitrary binary often decodes as
UTF-16 without error, so a decoding counts only when its text is overwhelmingly what Chinese text
is made of: common ideographs, CJK and fullwidth punctuation, ASCII, whitespace.
"""

from __future__ import annotations

import unicodedata

# Below this many characters the checks below cannot tell text from chance: random 16-byte
# strings (8 characters) pass them about once in 10^4 tries; of 300,000 random 32-byte ones,
# none did.
MIN_CHARS = 8
# Share of characters that must come from the ranges Chinese text is written in.
MIN_CORE_SHARE = 0.9
# Share of ideographs that must be everyday ones: real text, Simplified or Traditional, is made
# of them, while random code units (and binary such as bytecode) mostly land elsewhere.
MIN_COMMON_IDEOGRAPHS = 0.8
# Most share of ideographs whose two bytes are both printable ASCII. ASCII or Latin-1 text read
# as UTF-16 gives nothing but those (b"ab" is U+6261 or U+6162); Chinese text about 30 %.
MAX_ASCII_PAIR_SHARE = 0.6
# Categories no text file contains: controls, unassigned, private use, surrogates.
_BAD_CATEGORIES = frozenset({"Cc", "Cn", "Co", "Cs"})


def _is_ideograph(ch: str) -> bool:
    return "\u4e00" <= ch <= "\u9fff"


def _is_ascii_pair(ch: str) -> bool:
    return all(0x20 <= byte <= 0x7E for byte in divmod(ord(ch), 256))


def _is_core(ch: str) -> bool:
    """Ideographs, CJK and fullwidth punctuation, the quotes and dashes Chinese uses, ASCII."""
    return (
        _is_ideograph(ch)
        or "\u3000" <= ch <= "\u303f"
        or "\uff00" <= ch <= "\uffef"
        or ch in "\u2013\u2014\u2018\u2019\u201c\u201d\u2026\u00b7"
        or " " <= ch <= "~"
        or ch in "\t\r\n"
    )


def _is_common(ch: str) -> bool:
    """In GB2312's level 1 (its 3,755 most frequent hanzi) or Big5's 5,401 frequent characters."""
    try:
        if 0xB0 <= ch.encode("gb2312")[0] <= 0xD7:
            return True
    except UnicodeEncodeError:
        pass
    try:
        return 0xA440 <= int.from_bytes(ch.encode("big5"), "big") <= 0xC67E
    except UnicodeEncodeError:
        return False


def _score(text: str) -> float | None:
    """Share of common ideographs among all ideographs, or None when `text` is not Chinese."""
    if len(text) < MIN_CHARS:
        return None
    ideographs = common = ascii_pairs = others = 0
    for ch in text:
        if ch not in "\t\r\n" and unicodedata.category(ch) in _BAD_CATEGORIES:
            return None
        if _is_ideograph(ch):
            ideographs += 1
            common += _is_common(ch)
            ascii_pairs += _is_ascii_pair(ch)
        elif _is_core(ch):
            others += 1
    # Text has punctuation, spaces, line breaks or Latin somewhere; unbroken runs of ideographs
    # are what binary made of byte pairs in that range (Python bytecode, say) reads as.
    if ideographs + others < MIN_CORE_SHARE * len(text) or not ideographs or not others:
        return None
    if ascii_pairs > MAX_ASCII_PAIR_SHARE * ideographs:
        return None
    share = common / ideographs
    return share if share >= MIN_COMMON_IDEOGRAPHS else None


def utf16_chinese_without_bom(data: bytes) -> tuple[str, str] | None:
    """(text, "utf-16-le" or "utf-16-be") when `data` reads as Chinese in that byte order (the
    likelier one, should both), else None."""
    if len(data) % 2:
        return None
    candidates = []
    for encoding in ("utf-16-le", "utf-16-be"):
        try:
            text = data.decode(encoding)  # strict: lone surrogates are an error
        except UnicodeDecodeError:
            continue
        score = _score(text)
        if score is not None:
            # ASCII characters put their NUL byte second in LE and first in BE; that is the
            # surest sign of byte order when both readings look like Chinese.
            nuls = data[1::2].count(0) if encoding == "utf-16-le" else data[0::2].count(0)
            candidates.append((nuls, score, encoding, text))
    if not candidates:
        return None
    _, _, encoding, text = max(candidates)
    return text, encoding
