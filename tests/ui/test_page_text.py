"""The page's pure helpers: what goes back to the API as history, how results read."""

from __future__ import annotations

from ui.client import Source, UploadResult
from ui.page_text import (
    ERROR_TITLE,
    api_messages,
    format_documents,
    format_sources,
    format_upload_results,
    message_text,
)


def test_history_sent_to_the_api_skips_sources_and_error_notes():
    history = [
        {"role": "user", "content": [{"type": "text", "text": "问题一"}]},
        {"role": "assistant", "content": "回答一"},
        {"role": "assistant", "content": "1. **a.txt**", "metadata": {"title": "参考来源（1）"}},
        {"role": "user", "content": "问题二"},
        {"role": "assistant", "content": "无法连接", "metadata": {"title": ERROR_TITLE}},
    ]
    assert api_messages(history, "  你是小Phi。 ") == [
        {"role": "system", "content": "你是小Phi。"},
        {"role": "user", "content": "问题一"},
        {"role": "assistant", "content": "回答一"},
        {"role": "user", "content": "问题二"},
    ]
    assert api_messages([], "") == []
    assert message_text([{"type": "text", "text": "a"}, "b"]) == "ab"


def test_sources_read_as_name_snippet_and_score():
    text = format_sources(
        [
            Source(
                filename="成语.txt",
                snippet="守株待兔\n比喻" + "长" * 300,
                score=0.0328,
                chunk_index=2,
                page=3,
            )
        ]
    )
    assert "**成语.txt**" in text and "片段 #2" in text and "第 3 页" in text
    assert "score 0.0328" in text and "守株待兔 比喻" in text and text.endswith("…")
    assert "没有检索到" in format_sources([])
    # from several knowledge bases, each source says which
    several = format_sources(
        [Source("a.txt", "甲", knowledge_base="手册"), Source("b.txt", "乙", knowledge_base="问答")]
    )
    assert "**手册 / a.txt**" in several and "**问答 / b.txt**" in several
    one = format_sources([Source("a.txt", "甲", knowledge_base="手册")])
    assert "**a.txt**" in one


def test_upload_results_say_what_happened_to_each_file():
    text = format_upload_results(
        [
            UploadResult("a.txt", "added", chunks=4),
            UploadResult("b.txt", "duplicate", duplicate_of="doc-1"),
            UploadResult(
                "c.exe", "rejected", error="unsupported", reason="c.exe: unsupported format"
            ),
        ]
    )
    assert "a.txt**：已添加，4 个片段" in text
    assert "b.txt**：重复" in text and "doc-1" in text
    assert "c.exe**：被拒绝——c.exe: unsupported format" in text


def test_document_listing():
    assert format_documents("", []) == ""
    assert "还没有文档" in format_documents("kb", [])
    listing = format_documents(
        "kb", [{"filename": "a.txt", "chunks": 3, "format": "text", "encoding": "gbk"}]
    )
    assert "| a.txt | 3 | text | gbk |" in listing
