"""KnowledgeBaseService: the one API the CLI and the HTTP routes call. Knows nothing of HTTP.

The service checks, parses, splits and embeds uploads; a backend (rag/backends/base.py: a folder per KB,
or PostgreSQL) stores them. The slow parts of adding run before the backend takes the KB's write
lock, so concurrent uploads to one KB overlap and all land.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import PurePath

from langchain_core.documents import Document

from rag.backends import backend_for
from rag.backends.base import KBBackend, NewDocument, SearchIndex
from rag.config import KBSettings
from rag.embeddings import Embedder, embedder_for
from rag.errors import Conflict, InvalidInput, KBError, TooLarge
from rag.hybrid_retriever import (
    HybridRetriever,
    Mode,
    SearchOptions,
    hybrid_search,
    pooled_search,
    reciprocal_rank_fusion,
)
from rag.loaders import load_bytes
from rag.models import (
    MAX_QUERY_CHARS,
    AddResult,
    DocumentInfo,
    FileResult,
    KnowledgeBaseInfo,
    Layout,
    ReindexResult,
    SearchHit,
    StoredDocument,
    Upload,
    chunk_id,
)
from rag.names import check_kb_list, validate_filename, validate_kb_name
from rag.rerank import CrossEncoderReranker, Reranker
from rag.splitter import split_pages


@dataclass
class _Prepared:
    """A parsed, split and embedded upload waiting to be committed."""

    info: StoredDocument
    data: bytes
    chunks: list[Document]
    vectors: list[list[float]]

    def new_document(self) -> NewDocument:
        return NewDocument(info=self.info, data=self.data, chunks=self.chunks, vectors=self.vectors)


class KnowledgeBaseService:
    """Create, list and delete knowledge bases; add, list and delete documents; search."""

    def __init__(
        self,
        settings: KBSettings | None = None,
        embedder: Embedder | None = None,
        backend: KBBackend | None = None,
        reranker: Reranker | None = None,
    ):
        self.settings = settings or KBSettings()
        self._embedder = embedder
        self._embedder_lock = threading.Lock()
        self._reranker = reranker  # None: built from settings.reranker on first use
        self.backend = backend or backend_for(self.settings)
        if hasattr(self.backend, "bind_embeddings"):  # FAISS keeps the embedding function
            self.backend.bind_embeddings(lambda: self.embedder.embeddings)

    # -- helpers -------------------------------------------------------------------------
    @property
    def embedder(self) -> Embedder:
        """The configured embedder, loaded on first use."""
        with self._embedder_lock:
            if self._embedder is None:
                self._embedder = embedder_for(self.settings)
            return self._embedder

    @property
    def reranker(self) -> Reranker | None:
        """The reranker given, else `settings.reranker` loaded on first use; None: off."""
        if self._reranker is None and self.settings.reranker is None:
            return None
        with self._embedder_lock:
            if self._reranker is None:
                self._reranker = CrossEncoderReranker(self.settings.reranker)
            return self._reranker

    def close(self) -> None:
        self.backend.close()

    def _layout(self) -> Layout:
        """How this service splits and tokenises: recorded with each KB it creates or rebuilds."""
        return Layout.model_validate(self.settings, from_attributes=True)

    def _index(self, name: str) -> SearchIndex:
        return self.backend.search_index(validate_kb_name(name))

    def _check_embedder(self, built_with: str | None, has_documents: bool, name: str) -> None:
        if has_documents and built_with and built_with != self.embedder.model_id:
            raise Conflict(
                f"knowledge base {name!r} was indexed with embedder {built_with!r} but this service "
                f"uses {self.embedder.model_id!r}; run `xiaophi-kb reindex {name}` (or set "
                "XIAOPHI_KB_EMBEDDING_MODEL / XIAOPHI_KB_EMBEDDING_URL back)."
            )

    # -- knowledge bases -----------------------------------------------------------------
    def create_kb(self, name: str) -> KnowledgeBaseInfo:
        return self.backend.create(validate_kb_name(name), self._layout())

    def list_kbs(self) -> list[KnowledgeBaseInfo]:
        return self.backend.list()

    def get_kb(self, name: str) -> KnowledgeBaseInfo:
        return self.backend.info(validate_kb_name(name))

    def delete_kb(self, name: str) -> None:
        self.backend.delete(validate_kb_name(name))

    def counts(self, name: str) -> dict[str, int]:
        """Documents, chunks, vectors and lexical rows as the backend stores them."""
        return self.backend.counts(validate_kb_name(name))

    # -- documents -----------------------------------------------------------------------
    def list_documents(self, name: str) -> list[DocumentInfo]:
        return [d.public() for d in self.backend.documents(validate_kb_name(name))]

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
        # outside the try: an embedder that cannot count tokens is the server's fault, not the file's
        chunks = self._split(loaded.pages, doc_id, filename)
        info = StoredDocument(
            id=doc_id,
            filename=filename,
            sha256=sha,
            bytes=len(upload.data),
            chunks=len(chunks),
            format=loaded.format,
            encoding=loaded.encoding,
            pages=len(loaded.pages) if loaded.format == "pdf" else None,
            added_at=time.time(),
            extension=PurePath(filename).suffix.lower(),
        )
        doc_id_taken[doc_id] = filename
        return _Prepared(info, upload.data, chunks, [])

    def _chunk_length(self) -> Callable[[str], int]:
        """What chunk sizes count (`chunk_unit`): characters, or the embedder's tokens."""
        return self.embedder.token_counter() if self.settings.chunk_unit == "tokens" else len

    def _embed(self, chunks: list[Document]) -> list[list[float]]:
        if not chunks:
            return []
        return self.embedder.embeddings.embed_documents([c.page_content for c in chunks])

    def add_documents(self, name: str, uploads: Sequence[Upload]) -> AddResult:
        """Add several files; each gets its own result. Bad files never change the KB."""
        name = validate_kb_name(name)
        existing = self.backend.header(name).documents
        if not uploads:
            raise InvalidInput("no files given; upload at least one file.")
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
        landed: set[str] = set()
        if new:

            def check(built_with: str | None, has_documents: bool) -> None:
                self._check_embedder(built_with, has_documents, name)

            docs = [p.new_document() for p in new]
            landed = set(self.backend.add(name, docs, self.embedder.model_id, check))
        results: list[FileResult] = []
        for item in prepared:
            if isinstance(item, FileResult):
                results.append(item)
            elif item.info.id in landed:
                results.append(
                    FileResult(
                        filename=item.info.filename, status="added", document=item.info.public()
                    )
                )
            else:  # another writer added the same content meanwhile
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
        return self.backend.remove(validate_kb_name(name), doc_id).public()

    def _split(self, pages: list, doc_id: str, filename: str) -> list[Document]:
        """Chunks of a document's pages, with this service's settings; ids `<doc_id>:<index>`."""
        chunks = split_pages(
            pages,
            self.settings.chunk_size,
            self.settings.chunk_overlap,
            {"doc_id": doc_id, "filename": filename},
            self._chunk_length(),
        )
        for chunk in chunks:
            chunk.metadata["chunk_id"] = chunk_id(doc_id, chunk.metadata["chunk_index"])
        return chunks

    def reindex(self, name: str) -> ReindexResult:
        """Re-read every original and rebuild both indexes with the current settings and embedder."""
        name = validate_kb_name(name)
        start = time.time()

        def build(originals: list[tuple[StoredDocument, bytes]]) -> list[NewDocument]:
            out = []
            for doc, data in originals:
                loaded = load_bytes(data, doc.filename, self.settings.max_unzipped_bytes)
                chunks = self._split(loaded.pages, doc.id, doc.filename)
                out.append(
                    NewDocument(
                        info=doc.model_copy(update={"chunks": len(chunks)}),
                        data=data,
                        chunks=chunks,
                        vectors=self._embed(chunks),
                    )
                )
            return out

        self.backend.rebuild(name, self._layout(), self.embedder.model_id, build)
        info = self.backend.info(name)
        return ReindexResult(
            knowledge_base=name,
            documents=info.documents,
            chunks=info.chunks,
            embedding_model=self.embedder.model_id,
            seconds=round(time.time() - start, 3),
        )

    # -- search --------------------------------------------------------------------------
    def _search_options(self, top_k: int | None, mode: Mode) -> SearchOptions:
        s = self.settings
        return SearchOptions(
            k=top_k or s.top_k,
            fetch_k=s.fetch_k,
            fusion=s.fusion,
            rrf_k=s.rrf_k,
            bm25_weight=s.bm25_weight,
            dense_weight=s.dense_weight,
            mode=mode,
            reranker=self.reranker if mode == "hybrid" else None,
            rerank_top_n=s.rerank_top_n,
            rerank_weight=s.rerank_weight,
        )

    def _search_index(self, name: str) -> SearchIndex:
        """The KB's index, once it is known to be searchable with this service's embedder."""
        index = self._index(name)
        self._check_embedder(index.embedding_model, index.has_documents, name)
        return index

    def retriever(
        self, name: str, top_k: int | None = None, mode: Mode = "hybrid"
    ) -> HybridRetriever:
        """A LangChain retriever over the KB as it is now (for LangChain chains)."""
        return HybridRetriever(
            index=self._search_index(name),
            embeddings=self.embedder.embeddings,
            **dict(self._search_options(top_k, mode)),
        )

    def _check_query(self, query: str, top_k: int | None, mode: Mode) -> None:
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

    def search(
        self, name: str, query: str, top_k: int | None = None, mode: Mode = "hybrid"
    ) -> list[SearchHit]:
        self._check_query(query, top_k, mode)
        index = self._search_index(name)
        options = self._search_options(top_k, mode)
        ranked = hybrid_search(index, self.embedder.embeddings, query, options)
        return [_hit(name, r) for r in ranked]

    def search_many(
        self, names: Sequence[str], query: str, top_k: int | None = None, mode: Mode = "hybrid"
    ) -> list[SearchHit]:
        """Several knowledge bases searched as one, by `multi_kb_fusion`: `pooled` ranks every
        KB's candidates together by their raw scores (BM25 from each KB's own term statistics;
        cosine similarities of the one embedder, which compare across KBs), fused as one KB's
        search fuses them; `rank` fuses each KB's own ranking by reciprocal rank (scores never
        compared; an equal rank in two KBs ties, the tie going to the KB named first). One
        name: that KB's own search."""
        names = check_kb_list(list(names))
        if len(names) == 1:
            return self.search(names[0], query, top_k, mode)
        if self.settings.multi_kb_fusion == "pooled":
            self._check_query(query, top_k, mode)
            indexes = {name: self._search_index(name) for name in names}
            options = self._search_options(top_k, mode)
            pooled = pooled_search(indexes, self.embedder.embeddings, query, options)
            return [_hit(name, r) for name, r in pooled]
        runs = [self.search(name, query, top_k, mode) for name in names]
        hits = {(hit.knowledge_base, hit.chunk_id): hit for run in runs for hit in run}
        fused = reciprocal_rank_fusion(
            [([f"{h.knowledge_base}\0{h.chunk_id}" for h in run], 1.0) for run in runs],
            self.settings.rrf_k,
        )
        out = []
        for key, score in fused[: top_k or self.settings.top_k]:
            kb, chunk_id = key.split("\0", 1)
            out.append(hits[(kb, chunk_id)].model_copy(update={"score": score}))
        return out


def _hit(name: str, r) -> SearchHit:
    """A ranked chunk of knowledge base `name` as the API returns it."""
    return SearchHit(
        knowledge_base=name,
        chunk_id=r.chunk_id,
        document_id=r.chunk.metadata["doc_id"],
        filename=r.chunk.metadata["filename"],
        chunk_index=r.chunk.metadata["chunk_index"],
        page=r.chunk.metadata.get("page"),
        start=r.chunk.metadata["start"],
        end=r.chunk.metadata["end"],
        text=r.chunk.page_content,
        score=r.score,
        bm25_rank=r.bm25_rank,
        dense_rank=r.dense_rank,
    )
