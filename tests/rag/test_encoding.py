import codecs
import random

import pytest

from rag.encoding import decode_text
from rag.errors import InvalidInput
from tests.rag.files import UTF16_CHINESE, make_docx, make_pdf

TEXT = "守株待兔比喻死守狭隘经验，不知变通。\n画蛇添足：做了多余的事。ABC 123"


@pytest.mark.parametrize(
    ("data", "encoding"),
    [
        (TEXT.encode("utf-8"), "utf-8"),
        (codecs.BOM_UTF8 + TEXT.encode("utf-8"), "utf-8-sig"),
        (TEXT.encode("gbk"), "gb18030"),
        (TEXT.encode("gb2312"), "gb18030"),
        ((TEXT + "𠀀").encode("gb18030"), "gb18030"),
        (TEXT.encode("utf-16"), "utf-16"),
        (codecs.BOM_UTF16_BE + TEXT.encode("utf-16-be"), "utf-16"),
        (TEXT.encode("utf-16-le"), "utf-16-le"),
        (TEXT.encode("utf-16-be"), "utf-16-be"),
    ],
)
def test_chinese_text_decodes_in_every_supported_encoding(data, encoding):
    decoded = decode_text(data)
    assert decoded.text.rstrip("𠀀") == TEXT
    assert decoded.encoding == encoding


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
@pytest.mark.parametrize("text", UTF16_CHINESE.values(), ids=UTF16_CHINESE.keys())
def test_mostly_chinese_utf16_without_bom_is_detected(text, encoding):
    decoded = decode_text(text.encode(encoding))
    assert decoded.text == text
    assert decoded.encoding == encoding


def test_short_gbk_text_is_not_mistaken_for_another_encoding():
    assert decode_text("你好".encode("gbk")).text == "你好"


def test_documents_that_are_not_utf16_keep_their_reading():
    """What decoded before BOM-less Chinese UTF-16 was recognised decodes the same way now."""
    text = UTF16_CHINESE["pure"]
    assert decode_text(text.encode("gbk")).encoding == "gb18030"
    assert decode_text(text.encode("utf-8")).encoding == "utf-8"
    assert decode_text(b"ok").encoding == "utf-8"
    # Its bytes happen to be ASCII; far too short for a UTF-16 reading to be trusted.
    assert decode_text("你好".encode("utf-16-le")).encoding == "utf-8"
    assert decode_text(make_pdf([text])).encoding == "gb18030"  # mostly ASCII, as before
    with pytest.raises(InvalidInput, match="binary"):  # too short to tell from chance
        decode_text("你好，世界。".encode("utf-16-le"))


_JUNK = random.Random(1)


@pytest.mark.parametrize(
    "junk",
    [
        *(random.Random(0).randbytes(size) for size in (16, 64, 256, 1024, 4000, 65536)),
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 8,
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + _JUNK.randbytes(2000),
        b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + _JUNK.randbytes(2000),
        b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" + _JUNK.randbytes(2000),
        make_docx([UTF16_CHINESE["pure"]]),
        b"\x00\x01\x02\x03" * 500,
    ],
    ids=[
        *(f"random-{size}" for size in (16, 64, 256, 1024, 4000, 65536)),
        "png",
        "png-random",
        "zip-random",
        "pdf-random",
        "docx",
        "control-bytes",
    ],
)
def test_binary_junk_is_rejected(junk):
    with pytest.raises(InvalidInput, match="binary"):
        decode_text(junk, "junk.txt")
