"""`make bench-gguf`: a checkpoint exported to GGUF and run in llama.cpp (llama-cpp-python), beside
the checkpoint itself in transformers, on the same machine in the same run.

For f32, f16, q8_0 (written by xiaophi-train export gguf) and q4_k_m (llama.cpp's quantizer):
the file's size; bits per character on held-out text (the test half of `pretrain_eval`, windows
of the model's context, every token scored once) and its difference from transformers' f32
figure; greedy decoding speed (tokens/s, one stream, all cores, prompt included in the time);
and on how many chat prompts the first 32 greedy tokens equal transformers'. Baseline row:
transformers (f32, `model.generate`, KV cache), which is what xiaophi's own engine runs.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

PROMPTS = [
    "你好，请介绍一下你自己。",
    "“守株待兔”是什么意思？",
    "“画蛇添足”是什么意思？",
    "请用一句话解释“亡羊补牢”。",
    "北京是一座什么样的城市？",
    "“一箭双雕”是什么意思？",
    "三国演义里的刘备是谁？",
    "今天天气怎么样？",
]
NEW_TOKENS = 32
FORMATS = ("f32", "f16", "q8_0", "q4_k_m")


def windows(ids: list[int], size: int) -> list[list[int]]:
    return [ids[i : i + size] for i in range(0, len(ids), size) if len(ids[i : i + size]) > 1]


def hf_nll(model, chunks: list[list[int]]) -> float:
    total = 0.0
    with torch.no_grad():
        for chunk in chunks:
            out = model(torch.tensor([chunk]), labels=torch.tensor([chunk]))
            total += out.loss.item() * (len(chunk) - 1)
    return total


def gguf_nll(llm, chunks: list[list[int]]) -> float:
    total = 0.0
    for chunk in chunks:
        llm.reset()
        llm.eval(chunk)
        logits = np.array(llm.scores[: len(chunk) - 1], dtype=np.float64)
        top = logits.max(-1, keepdims=True)
        logz = (top + np.log(np.exp(logits - top).sum(-1, keepdims=True)))[:, 0]
        total += float((logz - logits[np.arange(len(chunk) - 1), chunk[1:]]).sum())
    return total


def hf_greedy(model, ids: list[int]) -> list[int]:
    out = model.generate(
        torch.tensor([ids]),
        max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS,
        do_sample=False,
        repetition_penalty=1.0,
        eos_token_id=None,
    )
    return out[0, len(ids) :].tolist()


def gguf_greedy(llm, ids: list[int]) -> list[int]:
    out = []
    for token in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
        out.append(token)
        if len(out) == NEW_TOKENS:
            break
    return out


def timed(generate, prompts: list[list[int]]) -> tuple[list[list[int]], float]:
    started = time.perf_counter()
    outputs = [generate(ids) for ids in prompts]
    return outputs, NEW_TOKENS * len(prompts) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="runs/tiny/dpo", help="A checkpoint or run folder.")
    parser.add_argument("--eval-text", default="data/demo/pretrain_eval.jsonl")
    parser.add_argument("--max-chars", type=int, default=20_000)
    parser.add_argument(
        "--out", default=None, help="Where the GGUF files go (default: a temp dir)."
    )
    args = parser.parse_args(argv)

    import llama_cpp
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.eval.items import bpc_texts
    from training.export_gguf import checkpoint_of, export_gguf, quantize_gguf

    folder = checkpoint_of(args.model)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    context = model.config.max_position_embeddings
    texts = bpc_texts(args.eval_text, "test", args.max_chars)
    chars = sum(len(t) for t in texts)
    chunks = [w for t in texts for w in windows(tokenizer(t)["input_ids"], context)]
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, return_dict=False
        )
        for p in PROMPTS
    ]
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    machine = f"{platform.machine()}, {threads} CPUs, torch {torch.__version__}"
    print(f"machine: {machine}; {folder}; {chars:,} held-out characters", flush=True)

    base_bpc = hf_nll(model, chunks) / chars / math.log(2)
    reference, base_speed = timed(lambda ids: hf_greedy(model, ids), prompts)
    params = sum(p.numel() for p in model.parameters())
    rows = [
        {
            "format": "transformers f32 (baseline)",
            "mb": params * 4 / 1e6,
            "bpc": base_bpc,
            "tokens_per_s": base_speed,
            "same": len(prompts),
        }
    ]
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(args.out or scratch)
        out.mkdir(parents=True, exist_ok=True)
        files = {}
        for kind in FORMATS[:3]:
            files[kind] = export_gguf(folder, out / f"model-{kind}.gguf", kind, force=True).path
        files["q4_k_m"] = quantize_gguf(files["f16"], "q4_k_m", out / "model-q4_k_m.gguf", True)
        for kind in FORMATS:
            llm = llama_cpp.Llama(
                str(files[kind]), n_ctx=context, n_threads=threads, logits_all=True, verbose=False
            )
            bpc = gguf_nll(llm, chunks) / chars / math.log(2)
            outputs, speed = timed(lambda ids, llm=llm: gguf_greedy(llm, ids), prompts)
            rows.append(
                {
                    "format": f"llama.cpp {kind}",
                    "mb": files[kind].stat().st_size / 1e6,
                    "bpc": bpc,
                    "tokens_per_s": speed,
                    "same": sum(a == b for a, b in zip(outputs, reference, strict=True)),
                }
            )
            print(format_rows(rows[-1:], base_bpc).splitlines()[-1], flush=True)
    print()
    print(format_rows(rows, base_bpc))
    return rows


def format_rows(rows: list[dict], base_bpc: float) -> str:
    lines = [
        "| runtime / format | size | bits/char (test) | vs f32 | greedy tokens/s | first 32 tokens = transformers |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['format']} | {r['mb']:.2f} MB | {r['bpc']:.4f} | {r['bpc'] - base_bpc:+.4f} | "
            f"{r['tokens_per_s']:.0f} | {r['same']}/{len(PROMPTS)} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
