"""`make bench-tokenizer`: train the byte-level BPE tokenizer on >= 100M characters (the demo
pretraining corpus repeated) and print wall time and peak resident memory."""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

from training.data.formats import iter_texts
from training.tokenizer import chars_per_token, train_tokenizer


def repeated_corpus(paths: list[str], target_chars: int, counter: dict):
    """Yield the corpus again and again until `target_chars` characters went out."""
    while counter["chars"] < target_chars:
        for text in iter_texts(paths):
            counter["chars"] += len(text)
            yield text
            if counter["chars"] >= target_chars:
                return


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="data/demo")
    parser.add_argument("--chars", type=int, default=100_000_000)
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("--out", default="bench_out/tokenizer.json")
    args = parser.parse_args(argv)

    data = Path(args.data)
    if not (data / "pretrain.jsonl").exists():
        from training.data.demo import DEFAULT_CACHE_DIR, build_demo

        build_demo(data, DEFAULT_CACHE_DIR)
    rss_before = peak_rss_mib()
    counter = {"chars": 0}
    start = time.perf_counter()
    tokenizer = train_tokenizer(
        repeated_corpus([str(data / "pretrain.jsonl")], args.chars, counter), args.vocab_size
    )
    wall = time.perf_counter() - start
    heldout = list(iter_texts([str(data / "pretrain_eval.jsonl")]))
    result = {
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs",
        "characters": counter["chars"],
        "vocab_size": len(tokenizer),
        "wall_time_s": round(wall, 1),
        "chars_per_s": round(counter["chars"] / wall),
        "peak_rss_mib": round(peak_rss_mib()),
        "peak_rss_mib_before_training": round(rss_before),
        "chars_per_token_heldout": round(chars_per_token(tokenizer, heldout), 3),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print("| characters | vocab | wall time | chars/s | peak RSS | chars/token (held-out) |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {result['characters']:,} | {result['vocab_size']:,} | {result['wall_time_s']} s | "
        f"{result['chars_per_s']:,} | {result['peak_rss_mib']:,} MiB | {result['chars_per_token_heldout']} |"
    )
    return result


if __name__ == "__main__":
    main()
