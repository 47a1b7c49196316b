"""Embedding models: any sentence-transformers model through `HuggingFaceEmbeddings`, the
built-in `hashing` embedder (character n-grams hashed into a fixed vector; no model files), or
any OpenAI-compatible embeddings server (`RemoteEmbeddings`, through LangChain's OpenAIEmbeddings).

Vectors are L2-normalised so the FAISS inner product is the cosine similarity.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from langchain_core.embeddings import Embeddings

from rag.bm25 import chargram_tokens
from rag.errors import EmbedderUnavailable

if TYPE_CHECKING:
    from rag.config import KBSettings

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


class RemoteEmbeddings(Embeddings):
    """An OpenAI-compatible `POST <url>/embeddings`, through LangChain's `OpenAIEmbeddings`.

    Texts go as strings (no tiktoken ids: other servers have other tokenizers), `batch_size`
    per request; the openai client retries connection errors, timeouts and 408/409/429/5xx.
    Whatever still fails is `EmbedderUnavailable` naming the URL and the setting to check.
    """

    def __init__(
        self,
        url: str,
        model: str,
        api_key: str | None = None,
        batch_size: int = 64,
        max_retries: int = 2,
        timeout_s: float = 60.0,
    ) -> None:
        from langchain_openai import OpenAIEmbeddings  # imported only when a URL is set

        self.url, self.model, self.max_retries = url, model, max_retries
        self._openai = OpenAIEmbeddings(
            model=model,
            base_url=url,
            # the client insists on a key; a server without keys ignores the header
            api_key=api_key or "unused",
            chunk_size=batch_size,
            max_retries=max_retries,
            timeout=timeout_s,
            check_embedding_ctx_length=False,
            tiktoken_enabled=False,
            # asked for explicitly: the client would ask for base64, which not every server speaks
            model_kwargs={"encoding_format": "float"},
        )

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        import openai

        try:
            vectors = self._openai.embed_documents(list(texts))
        except openai.APIStatusError as exc:
            raise EmbedderUnavailable(self._status_message(exc)) from None
        except openai.APIConnectionError as exc:  # timeouts included
            raise EmbedderUnavailable(
                f"cannot reach the embedding server at {self.url} ({exc.message.rstrip('.')} "
                f"after {self.max_retries} retries): is it running? Check "
                "XIAOPHI_KB_EMBEDDING_URL."
            ) from None
        except (openai.OpenAIError, KeyError, TypeError, ValueError) as exc:
            raise EmbedderUnavailable(
                f"the embedding server at {self.url} gave an answer that is not an OpenAI "
                f"embeddings response ({type(exc).__name__}: {exc}); check "
                "XIAOPHI_KB_EMBEDDING_URL."
            ) from None
        return self._normalised(vectors, len(texts))

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]

    def _normalised(self, vectors: list[list[float]], expected: int) -> list[list[float]]:
        try:
            array = np.asarray(vectors, dtype=np.float32)
        except ValueError:  # ragged: vectors of several lengths
            array = np.empty((0,))
        if array.ndim != 2 or len(array) != expected or not np.isfinite(array).all():
            raise EmbedderUnavailable(
                f"the embedding server at {self.url} answered {len(vectors)} vectors for "
                f"{expected} texts, or vectors of different lengths or not finite; check that "
                f"XIAOPHI_KB_EMBEDDING_MODEL={self.model!r} is an embedding model."
            )
        # the KB scores by inner product: unit vectors make it the cosine, whatever the server does
        norms = np.linalg.norm(array, axis=1, keepdims=True)
        return (array / np.where(norms > 0, norms, 1.0)).tolist()

    def _status_message(self, exc) -> str:
        status = exc.status_code
        body = exc.body if isinstance(exc.body, dict) else {}
        detail = str(body.get("message") or exc.message).rstrip(".")
        said = f"the embedding server at {self.url} answered {status}: {detail}"
        if status in (401, 403):
            return f"{said}; check XIAOPHI_KB_EMBEDDING_API_KEY."
        if status == 404:
            return (
                f"{said}; check XIAOPHI_KB_EMBEDDING_MODEL={self.model!r} (the model id it "
                "serves) and that XIAOPHI_KB_EMBEDDING_URL is the API's base URL (it usually "
                "ends in /v1)."
            )
        if status in (408, 409, 429) or status >= 500:
            return (
                f"{said} (after {self.max_retries} retries); try again later, or raise "
                "XIAOPHI_KB_EMBEDDING_MAX_RETRIES."
            )
        return (
            f"{said}; check XIAOPHI_KB_EMBEDDING_MODEL, and lower XIAOPHI_KB_CHUNK_SIZE if it "
            "refuses long texts."
        )


@dataclass
class Embedder:
    """An Embeddings object, the identity recorded in each KB it indexes, and the short name
    `POST /v1/embeddings` serves it under (the identity when not given)."""

    embeddings: Embeddings
    model_id: str
    name: str | None = None

    @property
    def served_name(self) -> str:
        return self.name or self.model_id

    @cached_property
    def dim(self) -> int:
        # cached: for a remote embedder every probe is a request
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


def remote_embedder_id(url: str, model: str) -> str:
    """How a KB records a remote embedder: `remote:<url>#<model>`."""
    return f"remote:{url}#{model}"


def served_embedder_name(settings: KBSettings) -> str:
    """The name `POST /v1/embeddings` serves the configured embedder under, known without
    loading it: `hashing`, a remote model's id, a folder's own name, or a hub name as is."""
    spec = settings.embedding_model
    if settings.embedding_url is not None or spec == HASHING:
        return spec
    path = Path(spec).expanduser()
    return path.resolve().name if path.exists() else spec


def embedder_for(settings: KBSettings) -> Embedder:
    """The embedder `settings` configure: remote when `embedding_url` is set, else loaded here."""
    if settings.embedding_url is None:
        return load_embedder(settings.embedding_model, settings.embedding_batch_size)
    key = settings.embedding_api_key
    remote = RemoteEmbeddings(
        settings.embedding_url,
        settings.embedding_model,
        api_key=key.get_secret_value() if key is not None else None,
        batch_size=settings.embedding_batch_size,
        max_retries=settings.embedding_max_retries,
        timeout_s=settings.embedding_timeout_s,
    )
    return Embedder(
        remote,
        remote_embedder_id(settings.embedding_url, settings.embedding_model),
        name=settings.embedding_model,
    )


def is_missing_folder(spec: str) -> bool:
    """`spec` names a folder (hub names are `name` or `org/name`) and that folder is absent."""
    looks_like_path = spec.startswith((".", "/", "~")) or spec.count("/") > 1
    return looks_like_path and not Path(spec).expanduser().exists()


def load_embedder(spec: str, batch_size: int = 64) -> Embedder:
    """Load `spec`: `hashing`, or a sentence-transformers model name or folder."""
    if spec == HASHING:
        return Embedder(HashingEmbeddings(), HASHING, name=HASHING)
    if is_missing_folder(spec):
        raise EmbedderUnavailable(
            f"embedding model folder {spec!r} does not exist: train the default one with "
            "`xiaophi-train embedder` (or `make demo`), or set XIAOPHI_KB_EMBEDDING_MODEL to a "
            "sentence-transformers model name or folder (e.g. a bge-small-zh download), or to "
            "`hashing` for the built-in lexical embedder."
        )
    path = Path(spec).expanduser()
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
    # served under the folder's own name (no server paths in API answers), a hub name as is
    return Embedder(
        embeddings, embedder_id(spec), name=path.resolve().name if path.exists() else spec
    )
