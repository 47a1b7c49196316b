"""Embedding models: any sentence-transformers model through `HuggingFaceEmbeddings`, or the
built-in `hashing` embedder (character n-grams hashed into a fixed vector; no model files).

Vectors are L2-normalised so the FAISS inner product is the cosine similarity.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from langchain_core.embeddings import Embeddings

from rag.bm25 import chargram_tokens
from rag.errors import EmbedderUnavailable

HASHING = "hashing"


class HashingEmbeddings(Embeddings):
    """Signed feature hashing of character 1-2-grams: deterministic, instant, lexical only.

    Useful for tests and as a no-model fallback; it adds nothing BM25 does not already see.
    """

    def __init__(self, dim: int = 256):
        self.dim = dim

    def _vector(self, text: str) -> list[float]:
        vec = np.zeros(self.dim, dtype=np.float32)
        for token in chargram_tokens(text):
            h = int.from_bytes(
                hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest(), "little"
            )
            vec[h % self.dim] += 1.0 if (h >> 63) & 1 else -1.0
        norm = float(np.linalg.norm(vec))
        return (vec / norm if norm else vec).tolist()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self._vector(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._vector(text)


@dataclass
class Embedder:
    """An Embeddings object and the identity recorded in each KB it indexes."""

    embeddings: Embeddings
    model_id: str

    @property
    def dim(self) -> int:
        return len(self.embeddings.embed_query("维度"))

    def token_counter(self) -> Callable[[str], int]:
        """Counts a text's tokens with the model's own tokenizer (special tokens left out)."""
        model = getattr(self.embeddings, "_client", None)  # HuggingFaceEmbeddings' model
        tokenizer = getattr(model, "tokenizer", None)
        if tokenizer is None:
            raise EmbedderUnavailable(
                f"chunk_unit=tokens counts tokens with the embedding model's tokenizer, and "
                f"{self.model_id!r} has none; set XIAOPHI_KB_CHUNK_UNIT=chars or use a "
                "sentence-transformers embedder."
            )

        def count(text: str) -> int:
            encoded = tokenizer.encode(text, add_special_tokens=False)
            return len(getattr(encoded, "ids", encoded))  # tokenizers.Encoding or a list of ids

        return count


def embedder_id(spec: str) -> str:
    """How a KB records its embedder: `hashing`, a hub name, or an absolute folder path with a
    digest of the folder's files (`/abs/path@1a2b3c4d5e6f`), so that a model retrained in the
    same folder is not mistaken for the one that indexed the KB."""
    if spec == HASHING:
        return HASHING
    path = Path(spec).expanduser()
    if not path.exists():
        return spec
    return f"{path.resolve()}@{folder_digest(path)}"


def folder_digest(folder: Path) -> str:
    """SHA-256 (first 12 hex digits) over every file's relative name and bytes, README aside."""
    digest = hashlib.sha256()
    for file in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        relative = file.relative_to(folder).as_posix()
        if file.name.lower() == "readme.md":
            continue  # sentence-transformers rewrites it; it does not change the vectors
        digest.update(relative.encode("utf-8") + b"\0")
        with file.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:12]


def load_embedder(spec: str, batch_size: int = 64) -> Embedder:
    """Load `spec`: `hashing`, or a sentence-transformers model name or folder."""
    if spec == HASHING:
        return Embedder(HashingEmbeddings(), HASHING)
    path = Path(spec).expanduser()
    # Hub names are `name` or `org/name`; anything else is a folder.
    looks_like_path = spec.startswith((".", "/", "~")) or spec.count("/") > 1
    if not path.exists() and looks_like_path:
        raise EmbedderUnavailable(
            f"embedding model folder {spec!r} does not exist: train the default one with "
            "`xiaophi-train embedder` (or `make demo`), or set XIAOPHI_KB_EMBEDDING_MODEL to a "
            "sentence-transformers model name or folder (e.g. a bge-small-zh download), or to "
            "`hashing` for the built-in lexical embedder."
        )
    try:
        from langchain_huggingface import HuggingFaceEmbeddings

        embeddings = HuggingFaceEmbeddings(
            model_name=str(path) if path.exists() else spec,
            encode_kwargs={"normalize_embeddings": True, "batch_size": batch_size},
        )
    except Exception as exc:  # sentence-transformers raises many kinds for a missing/broken model
        raise EmbedderUnavailable(
            f"could not load embedding model {spec!r} ({type(exc).__name__}: {exc}); check "
            "XIAOPHI_KB_EMBEDDING_MODEL (offline, a name only works if the model is in the local cache)."
        ) from None
    return Embedder(embeddings, embedder_id(spec))
