"""Decode uploaded text: UTF-8 (with or without BOM), GB18030/GBK, UTF-16, else a careful guess.

Binary junk is refused rather than decoded into mojibake: a decoding is accepted only when the
text it gives is mostly printable. BOM-less UTF-16 that is mostly Chinese (no NUL bytes to go
by) is checked last and strictly, in rag.utf16_cjk.
"""

from __future__ import annotations

import codecs
import unicodedata
from dataclasses import dataclass

from rag.errors import InvalidInput
from rag.utf16_cjk import utf16_chinese_without_bom

_BOMS = (
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
# Share of characters that may be control / unassigned / private-use before text counts as junk.
MAX_BAD_SHARE = 0.02


@dataclass(frozen=True)
class DecodedText:
    text: str
    encoding: str


def _bad_share(text: str) -> float:
    if not text:
        return 0.0
    bad = 0
    for ch in text:
        if ch in "\t\n\r\f\v":
            continue
        if unicodedata.category(ch) in ("Cc", "Cn", "Co", "Cs"):
            bad += 1
    return bad / len(text)


def _mostly_common_chinese(text: str) -> bool:
    """Real GBK/GB18030 text is mostly GB2312 characters; bytes that merely happen to decode
    (short binary junk) give rare characters instead."""
    wide = [ch for ch in text if ord(ch) > 127]
    if not wide:
        return True
    common = 0
    for ch in wide:
        try:
            ch.encode("gb2312")
            common += 1
        except UnicodeEncodeError:
            pass
    return common / len(wide) >= 0.8


def _try(data: bytes, encoding: str) -> str | None:
    try:
        text = data.decode(encoding)
    except (UnicodeDecodeError, LookupError):
        return None
    return text if _bad_share(text) <= MAX_BAD_SHARE else None


def _utf16_without_bom(data: bytes) -> str | None:
    """UTF-16 without BOM: text that is mostly ASCII or CJK leaves NULs mostly on one side."""
    if len(data) < 4 or len(data) % 2:
        return None
    even_nuls = data[0::2].count(0)
    odd_nuls = data[1::2].count(0)
    half = len(data) // 2
    for encoding, nuls, other in (
        ("utf-16-le", odd_nuls, even_nuls),
        ("utf-16-be", even_nuls, odd_nuls),
    ):
        if nuls >= 0.2 * half and other <= 0.02 * half:
            text = _try(data, encoding)
            if text is not None:
                return text
    return None


def decode_text(data: bytes, filename: str = "file") -> DecodedText:
    """Decode `data` and name the encoding; raise InvalidInput for binary or undecodable data."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            text = _try(data, encoding)
            if text is None:
                raise InvalidInput(
                    f"{filename}: starts with a {encoding} byte-order mark but does not decode as {encoding}."
                )
            return DecodedText(text, "utf-8-sig" if encoding == "utf-8-sig" else encoding)
    text = _try(data, "utf-8")
    if text is not None:
        return DecodedText(text, "utf-8")
    text = _utf16_without_bom(data)
    if text is not None:
        return DecodedText(
            text, "utf-16-le" if data[1::2].count(0) > data[0::2].count(0) else "utf-16-be"
        )
    if b"\x00" not in data:
        # GB18030 is a superset of GBK and GB2312, so one attempt covers all three.
        text = _try(data, "gb18030")
        if text is not None and _mostly_common_chinese(text):
            return DecodedText(text, "gb18030")
        from charset_normalizer import from_bytes

        best = from_bytes(data).best()
        # A guess on a few bytes is noise; UTF-16/32 are handled above and below.
        if (
            best is not None
            and len(data) >= 64
            and best.chaos <= 0.1
            and not best.encoding.startswith("utf")
        ):
            text = _try(data, best.encoding)
            if text is not None:
                return DecodedText(text, best.encoding)
    # Last, so that it only ever rescues data every other reading refused: mostly-Chinese UTF-16
    # has too few NULs for the check above, and GB18030 and the guess reject it as junk.
    utf16 = utf16_chinese_without_bom(data)
    if utf16 is not None:
        return DecodedText(*utf16)
    raise InvalidInput(
        f"{filename}: looks like binary data, not text in UTF-8, UTF-16 or GB18030/GBK; "
        "upload a text file or give it its real extension."
    )
