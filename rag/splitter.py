"""Chinese-aware chunking with LangChain's RecursiveCharacterTextSplitter, offsets kept.

Sizes are measured by a length function: characters by default, or the embedding model's tokens
(`KBSettings.chunk_unit`), so a chunk never outgrows what the embedder reads.
"""

from __future__ import annotations

from collections.abc import Callable

from langchain_core.documents import Document
from langchain_text_splitters import RecursiveCharacterTextSplitter

# Paragraphs, lines, then sentence ends (Chinese and Western), then clause breaks, then anything.
CHINESE_SEPARATORS = [
    "\n\n",
    "\n",
    "。",
    "！",
    "？",
    "；",
    "!",
    "?",
    ";",
    "…",
    "，",
    ",",
    "、",
    " ",
    "",
]


def build_splitter(
    chunk_size: int, chunk_overlap: int, length: Callable[[str], int] = len
) -> RecursiveCharacterTextSplitter:
    return RecursiveCharacterTextSplitter(
        chunk_size=chunk_size,
        chunk_overlap=chunk_overlap,
        length_function=length,
        separators=CHINESE_SEPARATORS,
        keep_separator="end",
        add_start_index=True,
        strip_whitespace=True,
    )


def split_pages(
    pages: list[Document],
    chunk_size: int,
    chunk_overlap: int,
    base: dict,
    length: Callable[[str], int] = len,
) -> list[Document]:
    """Chunks of `pages` numbered across the document, each with `base` metadata plus
    `chunk_index`, `start` and `end` (character offsets into its page's text) and `page` if any.
    `chunk_size` and `chunk_overlap` are in the units `length` counts (characters by default)."""
    splitter = build_splitter(chunk_size, chunk_overlap, length)
    chunks: list[Document] = []
    for page in pages:
        for piece in splitter.split_documents([page]):
            start = piece.metadata.pop("start_index", -1)
            if start < 0:  # the splitter could not locate it (should not happen); search ourselves
                start = page.page_content.find(piece.page_content)
            meta = {**base, **piece.metadata, "chunk_index": len(chunks)}
            meta["start"] = start
            meta["end"] = start + len(piece.page_content)
            chunks.append(Document(page_content=piece.page_content, metadata=meta))
    return chunks
