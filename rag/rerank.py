"""An optional reranking stage after hybrid fusion: a cross-encoder rescores the best candidates.

The fused ranking's first `top_n` chunks (at least the `k` a search returns) are scored again by
a reranker that reads the query and each chunk together. Both score lists are min-max normalised
over those candidates (best → 1, worst → 0, all equal → 1) and added:

    final(chunk) = norm(fused score) + weight × norm(reranker score)

so `weight` 0 keeps the fused order and a large weight hands the order to the reranker. Chunks
after the first `top_n` are dropped (a search never returns more than `k ≤ top_n`).

The reranker is a sentence-transformers `CrossEncoder` loaded from a folder
(`XIAOPHI_KB_RERANKER`), for example a downloaded `bge-reranker-base`. Off by default: the
cross-encoder and the language-model query likelihood that this project can train offline on the
demo data did not beat the fused ranking on the benchmark's dev queries (README, "Reranking").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from rag.embeddings import is_missing_folder
from rag.errors import EmbedderUnavailable


@runtime_checkable
class Reranker(Protocol):
    """Scores (query, passage) pairs; higher is more relevant. Scores need not be bounded."""

    model_id: str

    def score(self, query: str, passages: Sequence[str]) -> list[float]: ...


def _normalise(values: Sequence[float]) -> list[float]:
    top, bottom = max(values), min(values)
    span = top - bottom
    return [(v - bottom) / span if span > 0 else 1.0 for v in values]


def rerank(
    query: str,
    ranked: Sequence[tuple[str, float]],
    text_of: Callable[[Sequence[str]], dict[str, str]],
    reranker: Reranker,
    top_n: int,
    weight: float = 1.0,
) -> list[tuple[str, float]]:
    """The first `top_n` of `ranked` (best-first (id, fused score)) re-ordered by
    norm(fused) + weight × norm(reranker score), best first; ties keep the fused order.

    `text_of(ids)` gives each candidate's text; a candidate it does not return (removed by a
    writer meanwhile) is dropped.
    """
    if top_n < 1:
        raise ValueError(f"rerank top_n={top_n} must be at least 1.")
    if weight < 0:
        raise ValueError(f"rerank weight={weight} must be ≥ 0.")
    head = list(ranked[:top_n])
    texts = text_of([chunk_id for chunk_id, _ in head])
    head = [(chunk_id, score) for chunk_id, score in head if chunk_id in texts]
    if not head:
        return []
    scores = reranker.score(query, [texts[chunk_id] for chunk_id, _ in head])
    if len(scores) != len(head):
        raise ValueError(f"the reranker returned {len(scores)} scores for {len(head)} passages.")
    fused = _normalise([score for _, score in head])
    model = _normalise([float(s) for s in scores])
    final = [
        (chunk_id, f + weight * m) for (chunk_id, _), f, m in zip(head, fused, model, strict=True)
    ]
    return sorted(final, key=lambda item: item[1], reverse=True)  # stable: ties keep fused order


class CrossEncoderReranker:
    """A sentence-transformers CrossEncoder from a folder (or a hub name when one is cached)."""

    def __init__(self, spec: str, max_length: int | None = None, batch_size: int = 32):
        """`max_length`: tokens of query + passage kept (None: the model's own limit)."""
        if is_missing_folder(spec):
            raise EmbedderUnavailable(
                f"reranker folder {spec!r} does not exist: set XIAOPHI_KB_RERANKER to a "
                "sentence-transformers CrossEncoder folder (e.g. a bge-reranker download), or "
                "unset it to search without reranking."
            )
        path = Path(spec).expanduser()
        try:
            from sentence_transformers import CrossEncoder

            self.model = CrossEncoder(
                str(path) if path.exists() else spec, device="cpu", max_length=max_length
            )
        except Exception as exc:  # noqa: BLE001 - any loading failure is the same to a user
            raise EmbedderUnavailable(
                f"could not load reranker {spec!r} as a sentence-transformers CrossEncoder: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        self.model_id = spec
        self.batch_size = batch_size

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        if not passages:
            return []
        out = self.model.predict(
            [(query, p) for p in passages],
            batch_size=self.batch_size,
            show_progress_bar=False,
            convert_to_numpy=True,
        )
        return [float(x) for x in out.reshape(len(passages), -1)[:, 0]]
