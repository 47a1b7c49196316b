"""KnowledgeBaseService: the one API the CLI and the HTTP routes call. Knows nothing of HTTP.

Writes to a KB hold its file lock; the slow parts of adding (parsing, embedding) run before the
lock is taken, so concurrent uploads to one KB overlap and all land. The first time a service
touches a KB it sweeps away what a writer killed mid-commit left there (KBStore.sweep).
"""

from __future__ import annotations

import hashlib
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import PurePath

from langchain_core.documents import Document

from rag.bm25 import BM25Index
from rag.config import KBSettings
from rag.embeddings import Embedder, embedder_for
from rag.errors import Conflict, InvalidInput, KBError, NotFound, TooLarge
from rag.hybrid_retriever import HybridRetriever, Mode
from rag.kb_index import KBIndex
from rag.loaders import load_bytes
from rag.models import (
    AddResult,
    DocumentInfo,
    FileResult,
    KnowledgeBaseInfo,
    ReindexResult,
    SearchHit,
    Upload,
)
from rag.names import validate_filename, validate_kb_name
from rag.splitter import split_pages
from rag.store import KBStore, file_lock, test_pause

MAX_QUERY_CHARS = 2000


@dataclass
class _Prepared:
    """A parsed, split and embedded upload waiting to be committed."""

    info: DocumentInfo
    extension: str
    data: bytes
    chunks: list[Document]
    vectors: list[list[float]]


class KnowledgeBaseService:
    """Create, list and delete knowledge bases; add, list and delete documents; search."""

    def __init__(self, settings: KBSettings | None = None, embedder: Embedder | None = None):
        self.settings = settings or KBSettings()
        self.settings.kb_dir.mkdir(parents=True, exist_ok=True)
        self._embedder = embedder
        self._embedder_lock = threading.Lock()
        self._cache: dict[str, KBIndex] = {}
        self._cache_lock = threading.Lock()
        self._swept: set[str] = set()

    # -- helpers -------------------------------------------------------------------------
    @property
    def embedder(self) -> Embedder:
        """The configured embedder, loaded on first use."""
        with self._embedder_lock:
            if self._embedder is None:
                self._embedder = embedder_for(self.settings)
            return self._embedder

    def _store(self, name: str) -> KBStore:
        return KBStore(self.settings.kb_dir / validate_kb_name(name))

    def _existing(self, name: str) -> KBStore:
        store = self._store(name)
        if not store.exists():
            raise NotFound(f"knowledge base {name!r} does not exist; create it first.")
        # Once per service, when it opens the KB; if a writer holds the KB just then, the sweep
        # is skipped (that writer cleans up when it commits) and tried on the next call.
        if name not in self._swept and store.sweep():
            self._swept.add(name)
        return store

    def _index(self, name: str) -> KBIndex:
        """The current version of a KB, from cache when no writer has replaced it since."""
        store = self._existing(name)
        version = store.current_version()
        with self._cache_lock:
            cached = self._cache.get(name)
        if cached is not None and cached.version == version:
            return cached
        index = store.load(self.embedder.embeddings)
        with self._cache_lock:
            self._cache[name] = index
        return index

    def _kb_dir_lock(self):
        return file_lock(
            self.settings.kb_dir / ".kb_dir.lock",
            self.settings.lock_timeout_s,
            "the knowledge-base folder",
        )

    @staticmethod
    def _info(manifest: dict) -> KnowledgeBaseInfo:
        docs = manifest["documents"]
        return KnowledgeBaseInfo(
            name=manifest["name"],
            documents=len(docs),
            chunks=sum(d["chunks"] for d in docs),
            embedding_model=manifest.get("embedding_model"),
            created_at=manifest["created_at"],
            updated_at=manifest["updated_at"],
        )

    def _check_embedder(self, manifest: dict, name: str) -> None:
        built_with = manifest.get("embedding_model")
        if manifest["documents"] and built_with and built_with != self.embedder.model_id:
            raise Conflict(
                f"knowledge base {name!r} was indexed with embedder {built_with!r} but this service "
                f"uses {self.embedder.model_id!r}; run `xiaophi-kb reindex {name}` (or set "
                "XIAOPHI_KB_EMBEDDING_MODEL / XIAOPHI_KB_EMBEDDING_URL back)."
            )

    # -- knowledge bases -----------------------------------------------------------------
    def create_kb(self, name: str) -> KnowledgeBaseInfo:
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
            manifest = {
                "name": name,
                "created_at": now,
                "updated_at": now,
                "embedding_model": None,
                "bm25_tokenizer": self.settings.bm25_tokenizer,
                "chunk_size": self.settings.chunk_size,
                "chunk_overlap": self.settings.chunk_overlap,
                "chunk_unit": self.settings.chunk_unit,
                "documents": [],
            }
            KBStore(tmp).commit(
                KBIndex(
                    manifest=manifest, vectors=None, bm25=BM25Index(self.settings.bm25_tokenizer)
                )
            )
            tmp.rename(store.root)
        return self._info(manifest)

    def list_kbs(self) -> list[KnowledgeBaseInfo]:
        out = []
        for path in sorted(self.settings.kb_dir.iterdir()):
            if path.name.startswith(".") or not KBStore(path).exists():
                continue
            try:
                out.append(self._info(KBStore(path).read_manifest()))
            except (FileNotFoundError, NotFound):  # deleted while we listed
                continue
        return out

    def get_kb(self, name: str) -> KnowledgeBaseInfo:
        return self._info(self._existing(name).read_manifest())

    def delete_kb(self, name: str) -> None:
        store = self._existing(name)
        with self._kb_dir_lock(), store.lock(self.settings.lock_timeout_s):
            trash = self.settings.kb_dir / f".tmp-delete-{uuid.uuid4().hex}"
            store.root.rename(trash)  # one step: the KB is gone for every reader at once
        shutil.rmtree(trash, ignore_errors=True)
        with self._cache_lock:
            self._cache.pop(name, None)
        self._swept.discard(name)

    # -- documents -----------------------------------------------------------------------
    def list_documents(self, name: str) -> list[DocumentInfo]:
        return [DocumentInfo(**d) for d in self._existing(name).read_manifest()["documents"]]

    def _prepare(self, upload: Upload, doc_id_taken: dict[str, str]) -> _Prepared | FileResult:
        filename = upload.filename
        try:
            validate_filename(filename)
            limit = self.settings.max_upload_bytes
            if len(upload.data) > limit:
                raise TooLarge(
                    f"{filename}: larger than the {limit}-byte upload limit; split the file or raise "
                    "XIAOPHI_KB_MAX_UPLOAD_BYTES."
                )
            sha = hashlib.sha256(upload.data).hexdigest()
            doc_id = sha[:16]
            if doc_id in doc_id_taken:
                return FileResult(
                    filename=filename,
                    status="duplicate",
                    duplicate_of=doc_id,
                    reason=f"same content as {doc_id_taken[doc_id]!r} (document {doc_id}).",
                )
            loaded = load_bytes(upload.data, filename, self.settings.max_unzipped_bytes)
        except KBError as exc:
            return FileResult(
                filename=filename, status="rejected", error=exc.kind, reason=exc.message
            )
        extension = PurePath(filename).suffix.lower()
        base = {"doc_id": doc_id, "filename": filename}
        chunks = split_pages(
            loaded.pages,
            self.settings.chunk_size,
            self.settings.chunk_overlap,
            base,
            self._chunk_length(),
        )
        for chunk in chunks:
            chunk.metadata["chunk_id"] = f"{doc_id}:{chunk.metadata['chunk_index']}"
        info = DocumentInfo(
            id=doc_id,
            filename=filename,
            sha256=sha,
            bytes=len(upload.data),
            chunks=len(chunks),
            format=loaded.format,
            encoding=loaded.encoding,
            pages=len(loaded.pages) if loaded.format == "pdf" else None,
            added_at=time.time(),
        )
        doc_id_taken[doc_id] = filename
        return _Prepared(info, extension, upload.data, chunks, [])

    def _chunk_length(self) -> Callable[[str], int]:
        """What chunk sizes count (`chunk_unit`): characters, or the embedder's tokens."""
        return self.embedder.token_counter() if self.settings.chunk_unit == "tokens" else len

    def _embed(self, chunks: list[Document]) -> list[list[float]]:
        if not chunks:
            return []
        return self.embedder.embeddings.embed_documents([c.page_content for c in chunks])

    def add_documents(self, name: str, uploads: Sequence[Upload]) -> AddResult:
        """Add several files; each gets its own result. Bad files never change the KB."""
        store = self._existing(name)
        if not uploads:
            raise InvalidInput("no files given; upload at least one file.")
        existing = {d["id"]: d["filename"] for d in store.read_manifest()["documents"]}
        taken = dict(existing)
        prepared: list[_Prepared | FileResult] = [self._prepare(u, taken) for u in uploads]
        for item in prepared:
            if (
                isinstance(item, FileResult)
                and item.status == "duplicate"
                and item.duplicate_of in existing
            ):
                item.reason = f"already in knowledge base {name!r} as {existing[item.duplicate_of]!r} (document {item.duplicate_of})."
        new = [p for p in prepared if isinstance(p, _Prepared)]
        vectors = self._embed([c for p in new for c in p.chunks])
        offset = 0
        for p in new:
            p.vectors = vectors[offset : offset + len(p.chunks)]
            offset += len(p.chunks)
        test_pause("after_embed")
        results: list[FileResult] = []
        landed: list[str] = []
        if new:
            with store.lock(self.settings.lock_timeout_s):
                index = store.load(self.embedder.embeddings)
                self._check_embedder(index.manifest, name)
                live = {d["id"]: d["filename"] for d in index.documents}
                for p in new:
                    if p.info.id in live:  # another writer added the same content meanwhile
                        continue
                    store.save_original({"id": p.info.id, "extension": p.extension}, p.data)
                    index.add_chunks(
                        p.chunks, p.vectors, self.embedder.embeddings
                    ) if p.chunks else None
                    index.manifest["documents"].append(
                        {**p.info.model_dump(), "extension": p.extension}
                    )
                    live[p.info.id] = p.info.filename
                    landed.append(p.info.id)
                if landed:
                    index.manifest["embedding_model"] = self.embedder.model_id
                    index.manifest["updated_at"] = time.time()
                    store.commit(index)
        for item in prepared:
            if isinstance(item, FileResult):
                results.append(item)
            elif item.info.id in landed:
                results.append(
                    FileResult(filename=item.info.filename, status="added", document=item.info)
                )
            else:
                results.append(
                    FileResult(
                        filename=item.info.filename,
                        status="duplicate",
                        duplicate_of=item.info.id,
                        reason=f"already in knowledge base {name!r} (document {item.info.id}).",
                    )
                )
        return AddResult(knowledge_base=name, results=results)

    def delete_document(self, name: str, doc_id: str) -> DocumentInfo:
        store = self._existing(name)
        with store.lock(self.settings.lock_timeout_s):
            index = store.load(self.embedder.embeddings)
            doc = next((d for d in index.documents if d["id"] == doc_id), None)
            if doc is None:
                raise NotFound(
                    f"document {doc_id!r} is not in knowledge base {name!r}; list its documents to see the ids."
                )
            index.remove_chunks([f"{doc_id}:{i}" for i in range(doc["chunks"])])
            index.manifest["documents"] = [d for d in index.documents if d["id"] != doc_id]
            index.manifest["updated_at"] = time.time()
            store.commit(index)
        return DocumentInfo(**doc)

    def reindex(self, name: str) -> ReindexResult:
        """Re-read every original and rebuild both indexes with the current settings and embedder."""
        store = self._existing(name)
        start = time.time()
        embeddings = self.embedder.embeddings
        with store.lock(self.settings.lock_timeout_s):
            old = store.read_manifest()
            manifest = {
                **old,
                "documents": [],
                "embedding_model": self.embedder.model_id,
                "bm25_tokenizer": self.settings.bm25_tokenizer,
                "chunk_size": self.settings.chunk_size,
                "chunk_overlap": self.settings.chunk_overlap,
                "chunk_unit": self.settings.chunk_unit,
            }
            index = KBIndex(
                manifest=manifest, vectors=None, bm25=BM25Index(self.settings.bm25_tokenizer)
            )
            for doc in old["documents"]:
                data = store.original_path(doc).read_bytes()
                loaded = load_bytes(data, doc["filename"], self.settings.max_unzipped_bytes)
                chunks = split_pages(
                    loaded.pages,
                    self.settings.chunk_size,
                    self.settings.chunk_overlap,
                    {"doc_id": doc["id"], "filename": doc["filename"]},
                    self._chunk_length(),
                )
                for chunk in chunks:
                    chunk.metadata["chunk_id"] = f"{doc['id']}:{chunk.metadata['chunk_index']}"
                if chunks:
                    index.add_chunks(chunks, self._embed(chunks), embeddings)
                manifest["documents"].append({**doc, "chunks": len(chunks)})
            manifest["updated_at"] = time.time()
            store.commit(index)
        return ReindexResult(
            knowledge_base=name,
            documents=len(manifest["documents"]),
            chunks=sum(d["chunks"] for d in manifest["documents"]),
            embedding_model=self.embedder.model_id,
            seconds=round(time.time() - start, 3),
        )

    # -- search --------------------------------------------------------------------------
    def retriever(
        self, name: str, top_k: int | None = None, mode: Mode = "hybrid"
    ) -> HybridRetriever:
        """A LangChain retriever over the KB's current version (RAG chat plugs this in)."""
        index = self._index(name)
        self._check_embedder(index.manifest, name)
        s = self.settings
        return HybridRetriever(
            index=index,
            embeddings=self.embedder.embeddings,
            k=top_k or s.top_k,
            fetch_k=s.fetch_k,
            fusion=s.fusion,
            rrf_k=s.rrf_k,
            bm25_weight=s.bm25_weight,
            dense_weight=s.dense_weight,
            mode=mode,
        )

    def search(
        self, name: str, query: str, top_k: int | None = None, mode: Mode = "hybrid"
    ) -> list[SearchHit]:
        if not isinstance(query, str) or not query.strip():
            raise InvalidInput("the query is empty; ask something, e.g. `画蛇添足是什么意思`.")
        if len(query) > MAX_QUERY_CHARS:
            raise InvalidInput(
                f"the query is {len(query)} characters long; use at most {MAX_QUERY_CHARS}."
            )
        if top_k is not None and not 1 <= top_k <= 100:
            raise InvalidInput(f"top_k={top_k} is out of range; use 1 to 100.")
        if mode not in ("hybrid", "bm25", "dense"):
            raise InvalidInput(f"search mode {mode!r} is unknown; use hybrid, bm25 or dense.")
        docs = self.retriever(name, top_k, mode).invoke(query)
        return [
            SearchHit(
                chunk_id=d.id,
                document_id=d.metadata["doc_id"],
                filename=d.metadata["filename"],
                chunk_index=d.metadata["chunk_index"],
                page=d.metadata.get("page"),
                start=d.metadata["start"],
                end=d.metadata["end"],
                text=d.page_content,
                score=d.metadata["score"],
                bm25_rank=d.metadata["bm25_rank"],
                dense_rank=d.metadata["dense_rank"],
            )
            for d in docs
        ]
