"""Turn uploaded bytes into LangChain Documents: txt, md, pdf, docx, html, csv, json, jsonl.

Every loader returns at least one non-empty Document or raises InvalidInput saying why; the
detected text encoding (or the binary format) goes into each Document's metadata.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePath

from langchain_core.documents import Document

from rag.encoding import decode_text
from rag.errors import InvalidInput, TooLarge

SUPPORTED_EXTENSIONS = (
    ".txt",
    ".md",
    ".markdown",
    ".pdf",
    ".docx",
    ".html",
    ".htm",
    ".csv",
    ".json",
    ".jsonl",
)


@dataclass(frozen=True)
class LoadedFile:
    """Pages (one Document each for PDFs, else one) and how the bytes were read."""

    pages: list[Document]
    encoding: str
    format: str


def extension_of(filename: str) -> str:
    ext = PurePath(filename).suffix.lower()
    if ext not in SUPPORTED_EXTENSIONS:
        raise InvalidInput(
            f"{filename}: unsupported file type {ext or '(no extension)'!r}; "
            f"supported: {', '.join(SUPPORTED_EXTENSIONS)}."
        )
    return ext


def _text_doc(text: str, filename: str) -> list[Document]:
    if not text.strip():
        raise InvalidInput(f"{filename}: contains no text.")
    return [Document(page_content=text)]


def _load_plain(data: bytes, filename: str, max_unzipped: int) -> LoadedFile:
    decoded = decode_text(data, filename)
    return LoadedFile(_text_doc(decoded.text, filename), decoded.encoding, "text")


def _load_html(data: bytes, filename: str, max_unzipped: int) -> LoadedFile:
    from bs4 import BeautifulSoup

    decoded = decode_text(data, filename)
    soup = BeautifulSoup(decoded.text, "html.parser")
    for tag in soup(["script", "style", "noscript", "template"]):
        tag.decompose()
    lines = (line.strip() for line in soup.get_text("\n").splitlines())
    text = "\n".join(line for line in lines if line)
    return LoadedFile(_text_doc(text, filename), decoded.encoding, "html")


def _record_text(record: object) -> str:
    """One JSON/CSV record as readable `key: value` text (nested values kept as compact JSON)."""
    if isinstance(record, dict):
        parts = []
        for key, value in record.items():
            shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            parts.append(f"{key}: {shown}")
        return "；".join(parts)
    if isinstance(record, str):
        return record
    return json.dumps(record, ensure_ascii=False)


def _load_csv(data: bytes, filename: str, max_unzipped: int) -> LoadedFile:
    decoded = decode_text(data, filename)
    try:
        dialect = csv.Sniffer().sniff(decoded.text[:4096], delimiters=",\t;|")
    except csv.Error:
        dialect = csv.excel
    rows = list(csv.reader(io.StringIO(decoded.text), dialect))
    rows = [row for row in rows if any(cell.strip() for cell in row)]
    if not rows:
        raise InvalidInput(f"{filename}: contains no rows.")
    header, body = rows[0], rows[1:]
    if body:
        lines = [_record_text(dict(zip(header, row, strict=False))) for row in body]
    else:
        lines = [",".join(header)]
    return LoadedFile(_text_doc("\n".join(lines), filename), decoded.encoding, "csv")


def _load_json(data: bytes, filename: str, max_unzipped: int) -> LoadedFile:
    decoded = decode_text(data, filename)
    try:
        value = json.loads(decoded.text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            f"{filename}: is not valid JSON ({exc.msg} at line {exc.lineno})."
        ) from None
    records = value if isinstance(value, list) else [value]
    return LoadedFile(
        _text_doc("\n".join(_record_text(r) for r in records), filename), decoded.encoding, "json"
    )


def _load_jsonl(data: bytes, filename: str, max_unzipped: int) -> LoadedFile:
    decoded = decode_text(data, filename)
    lines = []
    for number, line in enumerate(decoded.text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            lines.append(_record_text(json.loads(line)))
        except json.JSONDecodeError as exc:
            raise InvalidInput(
                f"{filename}: line {number} is not valid JSON ({exc.msg})."
            ) from None
    return LoadedFile(_text_doc("\n".join(lines), filename), decoded.encoding, "jsonl")


def _load_pdf(data: bytes, filename: str, max_unzipped: int) -> LoadedFile:
    from pypdf import PdfReader
    from pypdf.errors import LimitReachedError, PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            raise InvalidInput(
                f"{filename}: the PDF is encrypted; remove the password and upload it again."
            )
        pages, text_bytes = [], 0
        for number, page in enumerate(reader.pages, start=1):
            text = page.extract_text() or ""
            text_bytes += len(text.encode("utf-8"))
            if text_bytes > max_unzipped:
                raise TooLarge(
                    f"{filename}: the PDF's text runs past {max_unzipped} bytes "
                    "(XIAOPHI_KB_MAX_UNZIPPED_BYTES); split the document."
                )
            if text.strip():
                pages.append(Document(page_content=text, metadata={"page": number}))
    except (InvalidInput, TooLarge):
        raise
    except LimitReachedError as exc:  # pypdf's own bound on each decompressed stream
        raise TooLarge(
            f"{filename}: a stream in the PDF decompresses past pypdf's safety limit "
            f"({exc}); it looks like a decompression bomb."
        ) from None
    except (
        PdfReadError,
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
        IndexError,
        OSError,
    ) as exc:
        raise InvalidInput(
            f"{filename}: is not a readable PDF ({type(exc).__name__}: {exc})."
        ) from None
    if not pages:
        raise InvalidInput(
            f"{filename}: the PDF has no extractable text (scanned pages need OCR first)."
        )
    return LoadedFile(pages, "pdf", "pdf")


def _load_docx(data: bytes, filename: str, max_unzipped: int) -> LoadedFile:
    import docx2txt

    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InvalidInput(f"{filename}: is not a readable .docx (a zip archive): {exc}.") from None
    unzipped = sum(info.file_size for info in infos)
    if unzipped > max_unzipped:
        raise TooLarge(
            f"{filename}: unpacks to {unzipped} bytes, over the {max_unzipped}-byte limit "
            "(a zip bomb or a huge document); split it or raise XIAOPHI_KB_MAX_UNZIPPED_BYTES."
        )
    if "word/document.xml" not in {info.filename for info in infos}:
        raise InvalidInput(
            f"{filename}: is a zip archive but not a Word document (no word/document.xml)."
        )
    try:
        text = docx2txt.process(io.BytesIO(data))
    except Exception as exc:  # docx2txt raises whatever its XML parser raises
        raise InvalidInput(
            f"{filename}: the Word document could not be read ({type(exc).__name__})."
        ) from None
    return LoadedFile(_text_doc(text, filename), "docx", "docx")


_LOADERS: dict[str, Callable[[bytes, str, int], LoadedFile]] = {
    ".txt": _load_plain,
    ".md": _load_plain,
    ".markdown": _load_plain,
    ".html": _load_html,
    ".htm": _load_html,
    ".csv": _load_csv,
    ".json": _load_json,
    ".jsonl": _load_jsonl,
    ".pdf": _load_pdf,
    ".docx": _load_docx,
}


def load_bytes(
    data: bytes, filename: str, max_unzipped_bytes: int = 200 * 1024 * 1024
) -> LoadedFile:
    """Parse one uploaded file by its extension; raise InvalidInput / TooLarge when it cannot be."""
    ext = extension_of(filename)
    if not data:
        raise InvalidInput(f"{filename}: the file is empty.")
    return _LOADERS[ext](data, filename, max_unzipped_bytes)
