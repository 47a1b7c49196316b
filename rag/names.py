"""Validation of knowledge-base names and uploaded file names (they must never escape kb_dir)."""

from __future__ import annotations

import re
import unicodedata

from rag.errors import InvalidInput

MAX_KB_NAME = 64
MAX_FILENAME = 255
#: A letter or digit (any script), then letters, digits, `_`, `-` and dots, never two dots in a
#: row. Also the pattern /openapi.json gives for KB names (Python `re` semantics: `\w` is Unicode).
KB_NAME_PATTERN = r"^[^\W_][\w\-]*(?:\.[\w\-]+)*\.?$"
_KB_NAME = re.compile(KB_NAME_PATTERN)


def validate_kb_name(name: str) -> str:
    """Return `name` if it is a safe KB name: letters (any script), digits, `_`, `-`, `.`."""
    if not isinstance(name, str) or not name:
        raise InvalidInput("knowledge base name is empty; give a name such as `demo`.")
    if len(name) > MAX_KB_NAME:
        raise InvalidInput(
            f"knowledge base name is {len(name)} characters long; use at most {MAX_KB_NAME}."
        )
    if not _KB_NAME.fullmatch(name):
        raise InvalidInput(
            f"knowledge base name {name!r} is not allowed: start with a letter or digit and use only "
            "letters, digits, `_`, `-` and single dots (no `/`, no `..`)."
        )
    return name


def check_kb_list(names: list[str]) -> list[str]:
    """Knowledge bases searched together: at least one, at most MAX_KBS_PER_SEARCH, each once."""
    from rag.models import MAX_KBS_PER_SEARCH

    if not names:
        raise InvalidInput("no knowledge base named; give at least one.")
    if len(names) > MAX_KBS_PER_SEARCH:
        raise InvalidInput(
            f"{len(names)} knowledge bases named; search at most {MAX_KBS_PER_SEARCH} at once."
        )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InvalidInput(f"knowledge base {repeated[0]!r} is named twice; name each once.")
    return names


def validate_filename(name: str) -> str:
    """Return `name` if it is a plain file name (no folders, no absolute path, no NUL)."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidInput("file name is empty; upload files with a name such as `notes.txt`.")
    if "\x00" in name:
        raise InvalidInput(f"file name {name!r} contains a NUL byte; rename the file.")
    if any(unicodedata.category(ch) == "Cc" for ch in name):
        raise InvalidInput(f"file name {name!r} contains control characters; rename the file.")
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:[\\/]", name):
        raise InvalidInput(f"file name {name!r} is an absolute path; send the bare file name.")
    if "/" in name or "\\" in name or name in (".", ".."):
        raise InvalidInput(
            f"file name {name!r} contains a folder (`/`, `\\` or `..`); send the bare file name."
        )
    if len(name.encode("utf-8")) > MAX_FILENAME:
        raise InvalidInput(f"file name is longer than {MAX_FILENAME} bytes; shorten it.")
    return name
