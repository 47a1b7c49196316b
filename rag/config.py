"""Knowledge-base settings: from arguments or `XIAOPHI_KB_*` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_EMBEDDER = "runs/tiny/embedder"
# Chosen together on the benchmark's dev queries (`python -m bench.fusion_dev`): with
# `chargram-weighted` BM25 only a dense weight of 0.2 keeps hybrid at or above both single methods
# on every metric of every dev query kind.
DEFAULT_BM25_TOKENIZER = "chargram-weighted"
DEFAULT_DENSE_WEIGHT = 0.2


class KBSettings(BaseSettings):
    """Where knowledge bases live and how documents are split, embedded and searched."""

    model_config = SettingsConfigDict(
        env_prefix="XIAOPHI_KB_", populate_by_name=True, extra="ignore"
    )

    kb_dir: Path = Field(
        Path("kb"),
        validation_alias=AliasChoices("kb_dir", "XIAOPHI_KB_DIR"),
        description="Folder holding one sub-folder per knowledge base.",
    )
    chunk_size: int = Field(300, ge=20, description="Largest chunk, in `chunk_unit`s.")
    chunk_overlap: int = Field(
        50, ge=0, description="How much neighbouring chunks share, in `chunk_unit`s."
    )
    chunk_unit: Literal["chars", "tokens"] = Field(
        "chars",
        description=(
            "What chunk_size and chunk_overlap count: characters, or tokens of the embedding "
            "model's tokenizer (keeps chunks within what the embedder reads)."
        ),
    )
    max_upload_bytes: int = Field(
        20 * 1024 * 1024, ge=1, description="Largest accepted file (bytes)."
    )
    max_unzipped_bytes: int = Field(
        200 * 1024 * 1024, ge=1, description="Largest uncompressed size of a docx (zip-bomb guard)."
    )
    embedding_model: str = Field(
        DEFAULT_EMBEDDER,
        description=(
            "sentence-transformers model name or path (e.g. a bge-small-zh folder), or "
            "`hashing` for the built-in character n-gram hashing embedder. The default is the "
            "embedder `xiaophi-train embedder` trains. With embedding_url set: the model id that "
            "server serves (required then), e.g. `BAAI/bge-small-zh-v1.5`."
        ),
    )
    embedding_url: str | None = Field(
        None,
        description=(
            "Base URL of an OpenAI-compatible embeddings API (vLLM, TEI, Xinference, OpenAI, "
            "another xiaophi), e.g. `http://host:8000/v1`. When set, chunks and queries are "
            "embedded by its `POST /embeddings` with embedding_model as the model id, instead "
            "of by a model loaded here; KBs record `remote:<url>#<model>`, so switching "
            "between embedders needs `xiaophi-kb reindex`."
        ),
    )
    embedding_api_key: SecretStr | None = Field(
        None, description="Bearer key for embedding_url (leave unset for a server without keys)."
    )
    embedding_max_retries: int = Field(
        2,
        ge=0,
        description=(
            "Retries of a remote embedding request that failed to connect, timed out or got "
            "408/409/429/5xx (exponential back-off, honouring Retry-After)."
        ),
    )
    embedding_timeout_s: float = Field(
        60.0, gt=0, description="Longest wait for one remote embedding request (seconds)."
    )
    embedding_batch_size: int = Field(
        64, ge=1, description="Chunks per embedding batch (per request with embedding_url)."
    )
    bm25_tokenizer: Literal["chargram", "jieba", "chargram-weighted"] = Field(
        DEFAULT_BM25_TOKENIZER,
        description=(
            "BM25 tokens of a new KB (a KB keeps the ones it was built with): `chargram-weighted` "
            "(default: character 1-2-grams, a single character weighing 2 in the query), "
            "`chargram` (the same 1-2-grams unweighted) or jieba words."
        ),
    )
    top_k: int = Field(5, ge=1, le=100, description="Chunks a search returns by default.")
    fetch_k: int = Field(
        50, ge=1, description="Candidates each retriever contributes to the fusion."
    )
    fusion: Literal["convex", "rrf"] = Field(
        "convex",
        description=(
            "How hybrid search fuses BM25 and dense: `convex` = weighted sum of each retriever's "
            "min-max normalised scores over both retrievers' fetch_k candidates (each scores "
            "every candidate); `rrf` = reciprocal-rank fusion."
        ),
    )
    rrf_k: int = Field(
        60, ge=1, description="Reciprocal-rank-fusion constant: score = Σ w/(rrf_k + rank)."
    )
    multi_kb_fusion: Literal["pooled", "rank"] = Field(
        "pooled",
        description=(
            "How a search of several KBs (a chat with several `knowledge_base` names) ranks "
            "them together: `pooled` = every KB's candidates in one BM25 and one dense run by "
            "their raw scores, fused as one KB's are; `rank` = reciprocal-rank fusion of each "
            "KB's own ranking. Chosen on the dev queries of `make bench-rag`."
        ),
    )
    bm25_weight: float = Field(1.0, ge=0, description="Weight of BM25 in the fusion.")
    dense_weight: float = Field(
        DEFAULT_DENSE_WEIGHT,
        ge=0,
        description=(
            "Weight of the dense retriever in the fusion (BM25's is bm25_weight). The default was "
            "chosen on a dev split disjoint from the benchmark (`python -m bench.fusion_dev`)."
        ),
    )
    lock_timeout_s: float = Field(
        300.0, gt=0, description="Longest wait for another writer of a KB."
    )
    backend: Literal["local", "postgres"] = Field(
        "local",
        description=(
            "Where KBs are kept: `local` = one folder per KB under kb_dir, searched in this "
            "process's memory (one server); `postgres` = a PostgreSQL database with pgvector at "
            "database_url, shared by every server that points at it."
        ),
    )
    database_url: SecretStr | None = Field(
        None,
        description=(
            "PostgreSQL connection URL for the postgres backend, e.g. "
            "`postgresql://xiaophi:secret@db:5432/xiaophi`. The database needs the pgvector "
            "extension available (the `pgvector/pgvector` image has it); the schema is created "
            "and migrated by the application."
        ),
    )
    database_pool_size: int = Field(
        10, ge=1, description="Most database connections one process keeps open (postgres)."
    )
    database_timeout_s: float = Field(
        5.0,
        gt=0,
        description=(
            "Longest wait for a database connection (postgres); past it a KB request answers "
            "503 saying the database is unavailable."
        ),
    )
    reranker: str | None = Field(
        None,
        description=(
            "Reranking after hybrid fusion (off when unset): a sentence-transformers "
            "CrossEncoder folder (e.g. a bge-reranker download) that rescores the fused "
            "ranking's first rerank_top_n chunks; final = norm(fused) + rerank_weight × "
            "norm(cross-encoder score). Costs one cross-encoder pass over rerank_top_n chunks "
            "per search."
        ),
    )
    rerank_top_n: int = Field(
        30, ge=1, le=200, description="Fused candidates the reranker rescores (at least top_k)."
    )
    rerank_weight: float = Field(
        1.0, ge=0, description="Weight of the reranker's normalised score beside the fused one."
    )

    @field_validator("reranker")
    @classmethod
    def _reranker(cls, value: str | None) -> str | None:
        # "" is unset, as for the other optional settings compose files pass through
        return (value or "").strip() or None

    @field_validator("embedding_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        # "" is unset: compose files pass `${XIAOPHI_KB_EMBEDDING_URL:-}`
        value = (value or "").strip().rstrip("/")
        if not value:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError(
                f"XIAOPHI_KB_EMBEDDING_URL={value!r} is not an http(s) URL; use the API's base "
                "URL, e.g. http://host:8000/v1."
            )
        # the full endpoint is a common paste; the client adds `/embeddings` itself
        return value.removesuffix("/embeddings")

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: SecretStr | None) -> SecretStr | None:
        url = (value.get_secret_value() if value else "").strip()
        if not url:  # compose files pass `${XIAOPHI_KB_DATABASE_URL:-}`
            return None
        if not url.startswith(("postgresql://", "postgres://")):
            raise ValueError(
                "XIAOPHI_KB_DATABASE_URL is not a PostgreSQL URL; use "
                "postgresql://user:password@host:5432/database."
            )
        return SecretStr(url)

    @model_validator(mode="after")
    def _check(self) -> KBSettings:
        if self.backend == "postgres" and self.database_url is None:
            raise ValueError(
                "XIAOPHI_KB_BACKEND=postgres needs XIAOPHI_KB_DATABASE_URL, e.g. "
                "postgresql://xiaophi:secret@db:5432/xiaophi."
            )
        if self.embedding_url and "embedding_model" not in self.model_fields_set:
            raise ValueError(
                f"XIAOPHI_KB_EMBEDDING_URL is set ({self.embedding_url}) but not "
                "XIAOPHI_KB_EMBEDDING_MODEL: set it to the model id that server serves "
                "(its GET /models lists it; another xiaophi serves its KB embedder under the "
                "embedder folder's name, e.g. `embedder`)."
            )
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError(
                f"chunk_overlap={self.chunk_overlap} must be smaller than chunk_size={self.chunk_size}; "
                "lower XIAOPHI_KB_CHUNK_OVERLAP or raise XIAOPHI_KB_CHUNK_SIZE."
            )
        return self
