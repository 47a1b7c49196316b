import codecs
import random

import pytest

from rag.encoding import decode_text
from rag.errors import InvalidInput

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


def test_short_gbk_text_is_not_mistaken_for_another_encoding():
    assert decode_text("你好".encode("gbk")).text == "你好"


@pytest.mark.parametrize(
    "junk",
    [
        random.Random(0).randbytes(4000),
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 8,
        b"\x00\x01\x02\x03" * 500,
    ],
    ids=["random", "png", "control-bytes"],
)
def test_binary_junk_is_rejected(junk):
    with pytest.raises(InvalidInput, match="binary"):
        decode_text(junk, "junk.txt")
