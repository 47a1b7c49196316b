"""The `local` backend: each KB a crash-safe folder under `kb_dir` (rag/backends/local_store.py), searched in
memory (rag/backends/kb_index.py). Writers of one KB take its file lock; readers never wait.

The first time a backend touches a KB it sweeps away what a writer killed mid-commit left there
(KBStore.sweep). Loaded indexes are cached per KB until a writer replaces the version.
"""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence

from langchain_core.embeddings import Embeddings

from rag.backends.base import KBHeader, NewDocument, Rebuild
from rag.backends.kb_index import KBIndex
from rag.backends.local_store import KBStore, file_lock
from rag.config import KBSettings
from rag.errors import Conflict, NotFound
from rag.models import KnowledgeBaseInfo, Layout, Manifest, StoredDocument
from rag.names import validate_kb_name


class LocalBackend:
    def __init__(self, settings: KBSettings, embeddings: Callable[[], Embeddings] | None = None):
        self.settings = settings
        self.settings.kb_dir.mkdir(parents=True, exist_ok=True)
        # FAISS wants the embedding function beside the vectors; it is never called for our
        # searches (vectors come in ready), so a loader that may fail is only used if needed
        self._embeddings = embeddings
        self._cache: dict[str, KBIndex] = {}
        self._cache_lock = threading.Lock()
        self._swept: set[str] = set()

    def bind_embeddings(self, embeddings: Callable[[], Embeddings]) -> None:
        self._embeddings = embeddings

    # -- helpers -------------------------------------------------------------------------
    def _store(self, name: str) -> KBStore:
        return KBStore(self.settings.kb_dir / validate_kb_name(name))

    def _existing(self, name: str) -> KBStore:
        store = self._store(name)
        if not store.exists():
            raise NotFound(f"knowledge base {name!r} does not exist; create it first.")
        # Once per backend, when it opens the KB; if a writer holds the KB just then, the sweep
        # is skipped (that writer cleans up when it commits) and tried on the next call.
        if name not in self._swept and store.sweep():
            self._swept.add(name)
        return store

    def _load(self, store: KBStore) -> KBIndex:
        return store.load(self._embeddings() if self._embeddings else None)

    def _kb_dir_lock(self):
        return file_lock(
            self.settings.kb_dir / ".kb_dir.lock",
            self.settings.lock_timeout_s,
            "the knowledge-base folder",
        )

    # -- knowledge bases -----------------------------------------------------------------
    def create(self, name: str, layout: Layout) -> KnowledgeBaseInfo:
        store = self._store(name)
        with self._kb_dir_lock():
            if store.root.exists():
                raise Conflict(
                    f"knowledge base {name!r} already exists; pick another name or delete it first."
                )
            tmp = self.settings.kb_dir / f".tmp-create-{uuid.uuid4().hex}"
            tmp.mkdir()
            (tmp / "files").mkdir()
            now = time.time()
            manifest = Manifest(name=name, created_at=now, updated_at=now, **layout.model_dump())
            KBStore(tmp).commit(KBIndex.empty(manifest))
            tmp.rename(store.root)
        return manifest.info()

    def list(self) -> list[KnowledgeBaseInfo]:
        out = []
        for path in sorted(self.settings.kb_dir.iterdir()):
            if path.name.startswith(".") or not KBStore(path).exists():
                continue
            try:
                out.append(KBStore(path).read_manifest().info())
            except (FileNotFoundError, NotFound):  # deleted while we listed
                continue
        return out

    def info(self, name: str) -> KnowledgeBaseInfo:
        return self._existing(name).read_manifest().info()

    def delete(self, name: str) -> None:
        store = self._existing(name)
        with self._kb_dir_lock(), store.lock(self.settings.lock_timeout_s):
            trash = self.settings.kb_dir / f".tmp-delete-{uuid.uuid4().hex}"
            store.root.rename(trash)  # one step: the KB is gone for every reader at once
        shutil.rmtree(trash, ignore_errors=True)
        with self._cache_lock:
            self._cache.pop(name, None)
        self._swept.discard(name)

    # -- documents -----------------------------------------------------------------------
    def documents(self, name: str) -> list[StoredDocument]:
        return self._existing(name).read_manifest().documents

    def header(self, name: str) -> KBHeader:
        manifest = self._existing(name).read_manifest()
        return KBHeader(
            embedding_model=manifest.embedding_model,
            documents={d.id: d.filename for d in manifest.documents},
        )

    def add(
        self,
        name: str,
        docs: Sequence[NewDocument],
        embedding_model: str,
        check: Callable[[str | None, bool], None],
    ) -> list[str]:
        store = self._existing(name)
        landed: list[str] = []
        with store.lock(self.settings.lock_timeout_s):
            index = self._load(store)
            check(index.embedding_model, index.has_documents)
            live = {d.id for d in index.documents}
            for doc in docs:
                if doc.info.id in live:  # another writer added the same content meanwhile
                    continue
                store.save_original(doc.info, doc.data)
                if doc.chunks:
                    index.add_chunks(doc.chunks, doc.vectors, self._embeddings())
                index.documents.append(doc.info)
                live.add(doc.info.id)
                landed.append(doc.info.id)
            if landed:
                index.manifest.embedding_model = embedding_model
                index.manifest.updated_at = time.time()
                store.commit(index)
        return landed

    def remove(self, name: str, doc_id: str) -> StoredDocument:
        store = self._existing(name)
        with store.lock(self.settings.lock_timeout_s):
            index = self._load(store)
            doc = next((d for d in index.documents if d.id == doc_id), None)
            if doc is None:
                raise NotFound(
                    f"document {doc_id!r} is not in knowledge base {name!r}; list its documents to see the ids."
                )
            index.remove_chunks(doc.chunk_ids)
            index.manifest.documents = [d for d in index.documents if d.id != doc_id]
            index.manifest.updated_at = time.time()
            store.commit(index)
        return doc

    def rebuild(self, name: str, layout: Layout, embedding_model: str, build: Rebuild) -> None:
        store = self._existing(name)
        with store.lock(self.settings.lock_timeout_s):
            old = store.read_manifest()
            originals = [(d, store.original_path(d).read_bytes()) for d in old.documents]
            docs = build(originals)
            manifest = old.model_copy(
                update={
                    **layout.model_dump(),
                    "embedding_model": embedding_model,
                    "documents": [doc.info for doc in docs],
                    "updated_at": time.time(),
                }
            )
            index = KBIndex.empty(manifest)
            for doc in docs:
                if doc.chunks:
                    index.add_chunks(doc.chunks, doc.vectors, self._embeddings())
            store.commit(index)

    def originals(self, name: str) -> Iterator[tuple[StoredDocument, bytes]]:
        store = self._existing(name)
        for doc in store.read_manifest().documents:
            yield doc, store.original_path(doc).read_bytes()

    # -- search --------------------------------------------------------------------------
    def search_index(self, name: str) -> KBIndex:
        """The current version of a KB, from cache when no writer has replaced it since."""
        store = self._existing(name)
        version = store.current_version()
        with self._cache_lock:
            cached = self._cache.get(name)
        if cached is not None and cached.version == version:
            return cached
        index = self._load(store)
        with self._cache_lock:
            self._cache[name] = index
        return index

    def counts(self, name: str) -> dict[str, int]:
        index = self._load(self._existing(name))
        return {
            "documents": len(index.documents),
            "chunks": sum(d.chunks for d in index.documents),
            "vectors": index.vector_count,
            "lexical_rows": len(index.bm25),
        }

    def health(self) -> str | None:
        return None if self.settings.kb_dir.is_dir() else f"{self.settings.kb_dir} is missing"

    def close(self) -> None:
        pass
