"""Okapi BM25 over character 1-2-grams (or jieba words), kept as a sparse term-count matrix.

score(chunk, query) = Σ over query terms t of
    count_q(t) × unit_weight(t) × idf(t) × tf × (k1 + 1) / (tf + k1 × (1 − b + b × dl / avgdl))
with idf(t) = ln((N − df + 0.5) / (df + 0.5) + 1) and dl = the chunk's token count. unit_weight(t)
is `unigram_weight` for a term that is one Han character and 1.0 for every other term (bigrams,
words); it is a per-tokenizer constant (`UNIGRAM_WEIGHTS`), 1.0 except for `chargram-weighted`,
whose tokens are exactly `chargram`'s: only the query side changes, documents are counted as
before.

Counts are stored, weights derived on load: adding or removing chunks never re-tokenizes the
rest, and a query is one sparse column slice and a sum, fast at tens of thousands of chunks.
Saved as `.npz` + JSON (no pickle).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import sparse

_HAN = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_PIECES = re.compile(rf"[{_HAN}]+|[^\W_{_HAN}]+")
_IS_HAN = re.compile(rf"[{_HAN}]")


def chargram_tokens(text: str) -> list[str]:
    """Han runs → every character and every adjacent pair; other letters/digits → lowercase words."""
    text = unicodedata.normalize("NFKC", text).lower()
    tokens: list[str] = []
    for piece in _PIECES.findall(text):
        if _IS_HAN.match(piece):
            tokens.extend(piece)
            tokens.extend(piece[i : i + 2] for i in range(len(piece) - 1))
        else:
            tokens.append(piece)
    return tokens


def jieba_tokens(text: str) -> list[str]:
    import jieba

    text = unicodedata.normalize("NFKC", text).lower()
    return [t for t in jieba.lcut_for_search(text) if _PIECES.match(t)]


TOKENIZERS = {
    "chargram": chargram_tokens,
    "jieba": jieba_tokens,
    "chargram-weighted": chargram_tokens,  # same tokens; single characters weigh 2 in a query
}

#: Query-side weight of a single Han character term, per tokenizer (every other term weighs 1).
#: 2.0 for `chargram-weighted`: chosen on the dev queries of `make bench-rag` (1.5, 2, 3, 4 tried).
UNIGRAM_WEIGHTS = {"chargram": 1.0, "jieba": 1.0, "chargram-weighted": 2.0}


def unit_weight(term: str, unigram_weight: float) -> float:
    """A query term's weight: `unigram_weight` for one Han character, else 1.0."""
    return unigram_weight if len(term) == 1 and _IS_HAN.match(term) else 1.0


class BM25Index:
    """Chunk ids, a vocabulary and a (chunks × terms) count matrix; scores with Okapi BM25."""

    def __init__(
        self,
        tokenizer: str = "chargram",
        k1: float = 1.5,
        b: float = 0.75,
        unigram_weight: float | None = None,
    ):
        if tokenizer not in TOKENIZERS:
            raise ValueError(
                f"unknown BM25 tokenizer {tokenizer!r}; use one of {', '.join(TOKENIZERS)}."
            )
        self.tokenizer = tokenizer
        self.k1, self.b = k1, b
        self.unigram_weight = (
            UNIGRAM_WEIGHTS[tokenizer] if unigram_weight is None else float(unigram_weight)
        )
        if self.unigram_weight < 0:
            raise ValueError(f"unigram_weight={self.unigram_weight} must be ≥ 0.")
        self.ids: list[str] = []
        self.vocab: dict[str, int] = {}
        self.counts = sparse.csr_matrix((0, 0), dtype=np.float32)
        self._weights: sparse.csc_matrix | None = None
        self._rows: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def tokenize(self, text: str) -> list[str]:
        return TOKENIZERS[self.tokenizer](text)

    def add(self, ids: Sequence[str], texts: Sequence[str]) -> None:
        rows, cols, vals = [], [], []
        for row, text in enumerate(texts):
            for term, count in Counter(self.tokenize(text)).items():
                col = self.vocab.setdefault(term, len(self.vocab))
                rows.append(row)
                cols.append(col)
                vals.append(count)
        new = sparse.csr_matrix(
            (vals, (rows, cols)), shape=(len(texts), len(self.vocab)), dtype=np.float32
        )
        old = self.counts
        old.resize((old.shape[0], len(self.vocab)))
        self.counts = sparse.vstack([old, new], format="csr")
        self.ids.extend(ids)
        self._weights = None
        self._rows = None

    def remove(self, ids: set[str]) -> None:
        keep = [i for i, chunk_id in enumerate(self.ids) if chunk_id not in ids]
        self.counts = self.counts[keep]
        self.ids = [self.ids[i] for i in keep]
        self._weights = None
        self._rows = None

    def _weight_matrix(self) -> sparse.csc_matrix:
        if self._weights is None:
            tf = self.counts.tocsr(copy=True)
            n_docs = tf.shape[0]
            doc_len = np.asarray(tf.sum(axis=1)).ravel()
            avg_len = doc_len.mean() if n_docs else 1.0
            df = np.bincount(tf.indices, minlength=tf.shape[1])
            idf = np.log((n_docs - df + 0.5) / (df + 0.5) + 1.0).astype(np.float32)
            norm = self.k1 * (1 - self.b + self.b * doc_len / max(avg_len, 1e-9))
            row_of = np.repeat(np.arange(n_docs), np.diff(tf.indptr))
            tf.data = idf[tf.indices] * tf.data * (self.k1 + 1) / (tf.data + norm[row_of])
            self._weights = tf.tocsc()
        return self._weights

    def _all_scores(self, query: str) -> np.ndarray | None:
        """Every chunk's BM25 score for `query` (row order of `ids`); None: no known term."""
        query_counts = Counter(t for t in self.tokenize(query) if t in self.vocab)
        if not self.ids or not query_counts:
            return None
        cols = [self.vocab[t] for t in query_counts]
        mult = np.array(
            [c * unit_weight(t, self.unigram_weight) for t, c in query_counts.items()],
            dtype=np.float32,
        )
        return np.asarray(self._weight_matrix()[:, cols] @ mult).ravel()

    def search(self, query: str, k: int) -> list[tuple[str, float]]:
        """The `k` best (chunk id, BM25 score) pairs with a positive score, best first."""
        scores = self._all_scores(query)
        if scores is None:
            return []
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(self.ids[i], float(scores[i])) for i in top if scores[i] > 0]

    def scores(self, query: str, ids: Sequence[str]) -> list[float]:
        """The BM25 score of each chunk in `ids` for `query` (0.0 when it shares no term)."""
        scores = self._all_scores(query) if ids else None
        if scores is None:
            return [0.0] * len(ids)
        if self._rows is None:
            self._rows = {chunk_id: row for row, chunk_id in enumerate(self.ids)}
        return [float(scores[self._rows[chunk_id]]) for chunk_id in ids]

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        sparse.save_npz(folder / "bm25_counts.npz", self.counts.tocsr())
        meta = {
            "tokenizer": self.tokenizer,
            "k1": self.k1,
            "b": self.b,
            "unigram_weight": self.unigram_weight,
            "ids": self.ids,
            "vocab": list(self.vocab),
        }
        (folder / "bm25.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> BM25Index:
        meta = json.loads((folder / "bm25.json").read_text(encoding="utf-8"))
        index = cls(meta["tokenizer"], meta["k1"], meta["b"], meta.get("unigram_weight", 1.0))
        index.ids = meta["ids"]
        index.vocab = {term: i for i, term in enumerate(meta["vocab"])}
        index.counts = sparse.load_npz(folder / "bm25_counts.npz").tocsr().astype(np.float32)
        return index
