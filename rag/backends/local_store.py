"""A knowledge base on disk, written so that a crash at any moment leaves the last good state.

    <kb_dir>/<name>/
        kb.lock            flock(2) here: one writer per KB, across threads and processes
        CURRENT            names the live version folder; replaced atomically (rename)
        v000007/           manifest.json, faiss/ (LangChain save_local), bm25_counts.npz, bm25.json
        files/<doc_id>.ext the uploaded originals (write-once, content-addressed)

A writer builds the next version in `.tmp-*`, renames it to `vNNNNNN`, then swaps CURRENT. Until
that swap readers see the old version; leftovers of a crashed writer are removed by the next
writer, or sooner by `sweep()` when a service opens the KB and no writer holds it.
The FAISS pickle is loaded only from a version folder we wrote, after its SHA-256 matches the one
recorded in that folder's manifest.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from langchain_community.vectorstores import FAISS
from langchain_community.vectorstores.utils import DistanceStrategy
from langchain_core.embeddings import Embeddings

from rag.backends.kb_index import KBIndex
from rag.bm25 import BM25Index
from rag.errors import Conflict, KBError, NotFound
from rag.models import Manifest, StoredDocument

CURRENT = "CURRENT"
LOCK = "kb.lock"
MANIFEST = "manifest.json"
FILES = "files"
_VERSION = re.compile(r"v(\d{6,})")


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def file_lock(path: Path, timeout_s: float, what: str) -> Iterator[None]:
    """Exclusive flock on `path`; waits up to `timeout_s`. Released when the process dies."""
    with path.open("a+") as fh:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise Conflict(
                        f"{what} is busy with another writer for over {timeout_s:.0f} s; try again later."
                    ) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _read_manifest(folder: Path) -> Manifest:
    return Manifest.model_validate_json((folder / MANIFEST).read_text(encoding="utf-8"))


class KBStore:
    """The folder of one knowledge base: versions, the CURRENT pointer, originals, the lock."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.name = self.root.name

    # -- reading -------------------------------------------------------------------------
    def exists(self) -> bool:
        return (self.root / CURRENT).is_file()

    def current_version(self) -> str:
        try:
            return (self.root / CURRENT).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise NotFound(
                f"knowledge base {self.name!r} does not exist; create it first."
            ) from None

    def read_manifest(self, version: str | None = None) -> Manifest:
        for attempt in range(5):
            v = version or self.current_version()
            try:
                return _read_manifest(self.root / v)
            except FileNotFoundError:
                if version or attempt == 4:
                    raise
                time.sleep(0.02)  # a writer swapped versions under us; read the new one
        raise AssertionError("unreachable")

    def load(self, embeddings: Embeddings) -> KBIndex:
        """The current version, fully loaded. Retries if a writer retires it meanwhile."""
        for attempt in range(5):
            version = self.current_version()
            try:
                return self._load_version(version, embeddings)
            except FileNotFoundError:
                if attempt == 4:
                    raise
                time.sleep(0.02)
        raise AssertionError("unreachable")

    def _load_version(self, version: str, embeddings: Embeddings) -> KBIndex:
        folder = self.root / version
        manifest = _read_manifest(folder)
        vectors = None
        if manifest.faiss_pkl_sha256:
            pkl = folder / "faiss" / "index.pkl"
            if _sha256_file(pkl) != manifest.faiss_pkl_sha256:
                raise KBError(
                    f"knowledge base {self.name!r}: {pkl} does not match its manifest; refusing to load it."
                )
            vectors = FAISS.load_local(
                str(folder / "faiss"),
                embeddings,
                allow_dangerous_deserialization=True,  # our own file, checked against our manifest
                distance_strategy=DistanceStrategy.MAX_INNER_PRODUCT,
            )
        bm25 = BM25Index.load(folder)
        return KBIndex(manifest=manifest, vectors=vectors, bm25=bm25, version=version)

    def original_path(self, doc: StoredDocument) -> Path:
        return self.root / FILES / f"{doc.id}{doc.extension}"

    # -- writing (hold `lock()` around these) --------------------------------------------
    @contextlib.contextmanager
    def lock(self, timeout_s: float) -> Iterator[None]:
        if not self.exists():
            raise NotFound(f"knowledge base {self.name!r} does not exist; create it first.")
        with file_lock(self.root / LOCK, timeout_s, f"knowledge base {self.name!r}"):
            if not self.exists():  # deleted while we waited
                raise NotFound(f"knowledge base {self.name!r} does not exist; create it first.")
            yield

    def sweep(self) -> bool:
        """Remove what a writer killed mid-commit left (its `.tmp-*` folder, a version it never
        made current, originals only that version listed), unless a writer holds the KB now:
        waiting on it would stall the caller, and its own commit cleans up anyway. True if the
        sweep ran."""
        try:
            # a zero wait: a lock held now is a Conflict at once
            with file_lock(self.root / LOCK, 0, f"knowledge base {self.name!r}"):
                if not self.exists():
                    return False
                current = self.current_version()
                if not _VERSION.fullmatch(current):  # not ours to judge; never guess what is live
                    return False
                older = [v for v in self._versions() if int(v[1:]) < int(current[1:])]
                self._clean(current, older[-1] if older else None)
                return True
        except Conflict:  # a writer holds it
            return False
        except OSError:  # deleted meanwhile, or a read-only folder: leave it to the next writer
            return False

    def save_original(self, doc: StoredDocument, data: bytes) -> None:
        path = self.original_path(doc)
        path.parent.mkdir(exist_ok=True)
        if not path.exists():
            write_file_atomic(path, data)

    def commit(self, index: KBIndex) -> str:
        """Write `index` as the next version and make it current; returns the version name."""
        tmp = self.root / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        manifest = index.manifest.model_copy(update={"faiss_pkl_sha256": None})
        if index.vectors is not None:
            index.vectors.save_local(str(tmp / "faiss"))
            manifest.faiss_pkl_sha256 = _sha256_file(tmp / "faiss" / "index.pkl")
        index.bm25.save(tmp)
        (tmp / MANIFEST).write_text(
            json.dumps(manifest.model_dump(mode="json"), ensure_ascii=False, indent=1),
            encoding="utf-8",
        )
        for path in tmp.rglob("*"):
            if path.is_file():
                with path.open("rb") as fh:
                    os.fsync(fh.fileno())
        version = self._next_version()
        previous = self.current_version() if self.exists() else None
        os.rename(tmp, self.root / version)
        self._make_current(version)
        index.manifest, index.version = manifest, version
        self._clean(version, previous)
        return version

    def _make_current(self, version: str) -> None:
        """The commit itself: CURRENT names `version` (an atomic rename, then made durable)."""
        write_file_atomic(self.root / CURRENT, version.encode("utf-8"))
        _fsync_dir(self.root)

    def _versions(self) -> list[str]:
        """Version folder names, oldest first."""
        found = [p.name for p in self.root.iterdir() if _VERSION.fullmatch(p.name)]
        return sorted(found, key=lambda name: int(name[1:]))

    def _next_version(self) -> str:
        versions = self._versions()
        return f"v{int(versions[-1][1:]) + 1 if versions else 1:06d}"

    def _clean(self, current: str, previous: str | None) -> None:
        """Drop crashed writers' leftovers and every version but `current` and `previous` (kept
        for readers that read CURRENT just before it changed), plus originals neither lists.
        Only the lock holder may call this: it alone creates the things removed here."""
        keep = {current} | ({previous} if previous else set())
        for path in self.root.iterdir():
            if path.name.startswith(".tmp-") or (
                _VERSION.fullmatch(path.name) and path.name not in keep
            ):
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(
                    missing_ok=True
                )
        live = set()
        for v in keep:
            with contextlib.suppress(FileNotFoundError):
                live |= {f"{d.id}{d.extension}" for d in self.read_manifest(v).documents}
        files = self.root / FILES
        if files.is_dir():
            for path in files.iterdir():  # also write_file_atomic's `.tmp-*` of a killed writer
                if path.name not in live:
                    path.unlink(missing_ok=True)
