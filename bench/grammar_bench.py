"""Structured output's cost (serving/engine/grammar.py): building the per-model compiler,
compiling a typical schema (cold and cached), and masking one decoding step — µs per row, one row
at a time and in batches — for byte-level BPE vocabularies of a few sizes, trained here on
synthetic Chinese + JSON-ish text. `python -m bench.grammar_bench [--vocab 448 8000]`."""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time

import torch

from serving.engine.grammar import GrammarBatch, GrammarCompiler, GrammarSpec
from training.tokenizer import train_tokenizer

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "city": {"enum": ["北京", "上海", "广州", "深圳"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 5},
        "address": {
            "type": "object",
            "properties": {
                "street": {"type": "string"},
                "zip": {"type": "string", "pattern": "^[0-9]{6}$"},
            },
            "required": ["street", "zip"],
        },
        "married": {"type": "boolean"},
        "score": {"type": ["number", "null"]},
    },
    "required": ["name", "age", "city", "tags", "address", "married", "score"],
}
# where the matcher stands when it masks: the start, inside a free string (most tokens allowed),
# inside a number
STATES = {
    "start": "",
    "in string": '{"name": "张三',
    "in number": '{"name": "张三", "age": 4',
}


def corpus(n: int, seed: int = 0):
    rng = random.Random(seed)
    han = [chr(c) for c in range(0x4E00, 0x4E00 + 3500)]
    words = ["name", "city", "value", "true", "false", "null", "北京", "上海", "arguments"]
    for _ in range(n):
        parts = []
        for _ in range(40):
            if rng.random() < 0.7:
                parts.append("".join(rng.choice(han) for _ in range(rng.randint(1, 4))))
            else:
                parts.append(json.dumps({rng.choice(words): rng.randint(0, 999)}))
        yield "，".join(parts)


def timed(fn, repeat: int) -> float:
    """Median seconds of one call."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(vocab: int) -> dict:
    tokenizer = train_tokenizer(
        corpus(20000 if vocab > 1000 else 500), vocab_size=vocab, min_frequency=1
    )
    width = (len(tokenizer) + 63) // 64 * 64  # a padded logits row, as models have
    start = time.perf_counter()
    compiler = GrammarCompiler(tokenizer, vocab_size=width, stop_token_ids=[tokenizer.eos_token_id])
    result = {"tokenizer_len": len(tokenizer), "logits_width": width}
    result["compiler_build_ms"] = (time.perf_counter() - start) * 1e3
    spec = GrammarSpec.json_schema(SCHEMA)
    start = time.perf_counter()
    compiler.compile(spec)
    result["schema_compile_cold_ms"] = (time.perf_counter() - start) * 1e3
    result["schema_compile_cached_us"] = timed(lambda: compiler.compile(spec), 200) * 1e6
    fresh = GrammarCompiler(tokenizer, vocab_size=width, stop_token_ids=[tokenizer.eos_token_id])
    tools = GrammarSpec.tool_calls(
        [{"name": "get_weather", "parameters": SCHEMA}, {"name": "confirm"}], parallel=True
    )
    start = time.perf_counter()
    fresh.compile(tools)
    result["tool_grammar_compile_cold_ms"] = (time.perf_counter() - start) * 1e3
    result["matcher_create_us"] = timed(lambda: compiler.matcher(spec), 200) * 1e6
    row = torch.randn(width)
    for name, prefix in STATES.items():
        matcher = compiler.matcher(spec)
        for token in tokenizer.encode(prefix, add_special_tokens=False):
            assert matcher.accept(token)
        allowed = len(matcher.allowed_token_ids())
        result[f"mask_row_us[{name}, {allowed} allowed]"] = (
            timed(lambda m=matcher: m.mask(row.clone()), 300) * 1e6
        )
    result["clone_row_us (included above)"] = timed(lambda: row.clone(), 300) * 1e6
    for state in ("in number", "in string"):
        prefix = tokenizer.encode(STATES[state], add_special_tokens=False)
        for rows in (8, 32):
            matchers = [compiler.matcher(spec) for _ in range(rows)]
            for matcher in matchers:
                for token in prefix:
                    matcher.accept(token)
            logits = torch.randn(rows, width)
            for threads in (1, 2):
                batch = GrammarBatch(width, max_threads=threads)
                seconds = timed(lambda b=batch, x=logits, m=matchers: b.mask(x, m), 100)
                key = f"batch_mask_us_per_row[{rows} rows {state}, {threads} thread(s)]"
                result[key] = seconds / rows * 1e6

    def accept_one():
        matcher = compiler.matcher(spec)
        for t in prefix:
            matcher.accept(t)
        return matcher

    per_prefix = timed(accept_one, 100) - result["matcher_create_us"] / 1e6
    result["accept_token_us"] = per_prefix / len(prefix) * 1e6
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vocab", type=int, nargs="+", default=[448, 8000])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    report = {"load_average": os.getloadavg(), "cpus": os.cpu_count(), "torch_threads": 1}
    for vocab in args.vocab:
        report[f"vocab {vocab}"] = measure(vocab)
    print(json.dumps(report, ensure_ascii=False, indent=2))
    return report


if __name__ == "__main__":
    main()
