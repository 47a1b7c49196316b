"""The real `xiaophi-kb` or `xiaophi-serve`, paused at one point of a KB write so a test can
kill it there: `python -m tests.rag.paused_writer POINT:SECONDS (rag|serving) ARGS…`.

At POINT it prints `XIAOPHI_KB_PAUSED POINT` and sleeps SECONDS (every time it gets there):
- after_embed: the upload is parsed, split and embedded; nothing is written, no lock is held;
- mid_write: a write half done: the local backend's new version folder has its FAISS files but
  no BM25 index yet; in postgres the chunk rows are in, their postings not (in the transaction);
- before_commit: everything written but not yet live: the local version folder is in place but
  CURRENT still names the old one; in postgres, the last statement before the transaction commits.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable

from rag.backends.local_store import KBStore
from rag.backends.postgres import PostgresBackend
from rag.bm25 import BM25Index
from rag.service import KnowledgeBaseService


def pause(point: str, seconds: float) -> None:
    print(f"XIAOPHI_KB_PAUSED {point}", flush=True)
    time.sleep(seconds)


def pause_before(owner: type, name: str, point: str, seconds: float) -> None:
    original: Callable = getattr(owner, name)

    @functools.wraps(original)
    def paused(*args, **kwargs):
        pause(point, seconds)
        return original(*args, **kwargs)

    setattr(owner, name, paused)


def pause_after(owner: type, name: str, point: str, seconds: float) -> None:
    original: Callable = getattr(owner, name)

    @functools.wraps(original)
    def paused(*args, **kwargs):
        result = original(*args, **kwargs)
        pause(point, seconds)
        return result

    setattr(owner, name, paused)


def install(point: str, seconds: float) -> None:
    """Patch the real functions so the process pauses at `point`."""
    if point == "after_embed":
        pause_after(KnowledgeBaseService, "_embed", point, seconds)
    elif point == "mid_write":
        pause_before(BM25Index, "save", point, seconds)  # local: FAISS saved, BM25 next
        pause_before(PostgresBackend, "_insert_postings", point, seconds)
    elif point == "before_commit":
        pause_before(KBStore, "_make_current", point, seconds)
        pause_after(PostgresBackend, "_add_new", point, seconds)
    else:
        raise SystemExit(
            f"unknown pause point {point!r}; use after_embed, mid_write or before_commit"
        )


def main(argv: list[str]) -> int | None:
    spec, program, *args = argv
    point, _, seconds = spec.partition(":")
    install(point, float(seconds or 30))
    if program == "rag":
        from rag.cli import main as kb_cli

        return kb_cli(args)
    if program == "serving":
        from serving.cli import main as serve

        return serve(args)
    raise SystemExit(f"unknown program {program!r}; use rag or serving")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
