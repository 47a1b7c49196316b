"""The app's knowledge-base service, created on first use and shared by the KB routes and RAG chat.

Created lazily so a server that never touches a knowledge base creates no folder; the service
itself loads its embedder once, on the first request that needs embeddings.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

from rag.config import KBSettings
from rag.embeddings import Embedder, served_embedder_name
from rag.service import KnowledgeBaseService
from serving.api.body_limit import PathLimit

#: slack per uploaded file for its multipart headers
_PART_OVERHEAD = 16 * 1024


def server_kb_settings(model: Path | None, kb_dir: Path | None) -> KBSettings:
    """The `XIAOPHI_KB_*` settings of a server for `model`, with its `kb_dir` when given.

    When no embedder is configured, a checkpoint served from a run folder (`<run>/dpo`) uses
    that run's own embedder (`<run>/embedder`) if the pipeline trained one, wherever the
    server was started from; otherwise the default path stands.
    """
    settings = KBSettings(**({"kb_dir": kb_dir} if kb_dir else {}))
    if "embedding_model" in settings.model_fields_set or model is None:
        return settings
    own = Path(model).resolve().parent / "embedder"
    if (own / "modules.json").is_file():  # a sentence-transformers folder
        return settings.model_copy(update={"embedding_model": str(own)})
    return settings


class KnowledgeBases:
    def __init__(self, settings: KBSettings, embedder: Embedder | None = None) -> None:
        self.settings = settings
        self._embedder = embedder
        self._service: KnowledgeBaseService | None = None
        self._lock = threading.Lock()

    @property
    def embedder_name(self) -> str:
        """What `/v1/embeddings` answers to (without loading the embedder)."""
        if self._embedder is not None:
            return self._embedder.served_name
        return served_embedder_name(self.settings)

    def get(self) -> KnowledgeBaseService:
        with self._lock:
            if self._service is None:
                self._service = KnowledgeBaseService(self.settings, self._embedder)
            return self._service

    def close(self) -> None:
        with self._lock:
            if self._service is not None:
                self._service.close()
                self._service = None

    def health(self) -> dict:
        """What `/health` says of the knowledge bases: the backend, and for postgres whether
        its database answers (asked at most `database_timeout_s`, 1 s at most; a local backend
        is not touched)."""
        out = {"backend": self.settings.backend, "status": "ok"}
        if self.settings.backend == "postgres":
            problem = self.get().backend.health()
            if problem:
                out |= {"status": "unavailable", "error": problem}
        return out

    def upload_limit(self, max_files: int, floor: int) -> PathLimit:
        """The body limit of the upload route: room for `max_files` files at the KB's size limit.

        A file over the KB limit still gets through to the KB's own check (a 413 naming the
        file); a body bigger than any acceptable upload is cut off while it arrives.
        """
        per_file = self.settings.max_upload_bytes
        limit = max(floor, max_files * (per_file + _PART_OVERHEAD))
        return PathLimit(
            method="POST",
            path=re.compile(r"/v1/knowledge_bases/[^/]+/documents/?"),
            max_bytes=limit,
            hint=(
                f"Upload at most {max_files} files of at most {per_file} bytes each per request "
                "(XIAOPHI_MAX_UPLOAD_FILES, XIAOPHI_KB_MAX_UPLOAD_BYTES)."
            ),
        )
