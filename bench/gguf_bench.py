"""`make bench-gguf`: a checkpoint exported to GGUF and run in llama.cpp (llama-cpp-python), beside
the checkpoint itself in transformers, on the same machine in the same run.

For f32, f16, q8_0 (written by xiaophi-train export gguf) and q4_k_m (llama.cpp's quantizer):
the file's size; bits per character on held-out text (the test half of `pretrain_eval`, windows
of the model's context, every token scored once) and its difference from transformers' f32
figure; greedy decoding speed (tokens/s, one stream, all cores, prompt included in the time);
and on how many chat prompts the first 32 greedy tokens equal transformers'. Baseline row:
transformers (f32, `model.generate`, KV cache), which is what xiaophi's own engine runs.

Then served over HTTP, each server started for real on a free port: `xiaophi-serve` on the
checkpoint beside `python -m llama_cpp.server` on each GGUF file, with the same torch / llama.cpp
threads (those of xiaophi's engine process). The same chat prompts, streamed, greedy, exactly 32
new tokens (`min_tokens`), no repetition penalty: output tokens/s and time to first token with
one request at a time and with 4 at once, and on how many prompts the answer equals xiaophi's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
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
SERVED_CONCURRENCY = (1, 4)


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


def start_llama_cpp_server(
    gguf_file: Path, port: int, n_ctx: int, threads: int, log: Path
) -> subprocess.Popen:
    """`python -m llama_cpp.server` on `gguf_file`, returned once it lists its model."""
    command = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_file),
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx),
        "--n_threads", str(threads), "--verbose", "false",
        # queue requests as xiaophi does (its default cuts a stream short for a newer request)
        "--interrupt_requests", "false",
    ]  # fmt: skip
    with open(log, "ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while True:
        if process.poll() is not None:
            raise RuntimeError(
                f"llama_cpp.server exited: {log.read_text(errors='replace')[-2000:]}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                return process
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("llama_cpp.server did not start in 120 s")
        time.sleep(0.3)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def served_figures(url: str, model: str, penalty: dict) -> dict:
    """Streamed greedy chats of exactly NEW_TOKENS tokens at each SERVED_CONCURRENCY."""
    from bench.serve_bench import run_load

    extra = {"min_tokens": NEW_TOKENS, **penalty}
    answers = []
    for prompt in PROMPTS:  # warm-up, and every answer is NEW_TOKENS long (llama_cpp.server
        # reports no usage in streams, so its token counts are taken from here)
        body = {"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0}
        body.update(max_tokens=NEW_TOKENS, **extra)
        answer = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300).json()
        if answer.get("usage", {}).get("completion_tokens") != NEW_TOKENS:
            raise RuntimeError(f"answered {str(answer)[-300:]} for min_tokens={NEW_TOKENS}")
        answers.append(answer["choices"][0]["message"]["content"])
    figures = {}
    for c in SERVED_CONCURRENCY:
        f = asyncio.run(run_load(url, model, PROMPTS * 2, NEW_TOKENS, c, extra))
        if f["texts"] != answers * 2:  # each stream whole, so NEW_TOKENS tokens long
            raise RuntimeError(f"{c} at once: streamed answers differ from the whole ones")
        f["output_tokens"] = NEW_TOKENS * f["requests"]
        f["output_tok_s"] = f["output_tokens"] / f["seconds"]
        figures[c] = f
    return figures


def served_rows(folder: Path, files: dict[str, Path], context: int, scratch: Path) -> list[dict]:
    """xiaophi-serve on the checkpoint, then llama_cpp.server on each file, one at a time."""
    from bench.serve_bench import free_port, start_server
    from serving.engine.loading import engine_process_threads

    threads = engine_process_threads()
    port = free_port()
    server = start_server(folder, port, max_running=8, device="cpu", torch_threads=threads)
    try:
        figures = served_figures(f"http://127.0.0.1:{port}", "bench", {"repetition_penalty": 1.0})
    finally:
        stop(server)
    rows = [
        {
            "server": "xiaophi-serve, checkpoint f32 (baseline)",
            "threads": threads,
            "figures": figures,
        }
    ]
    reference = figures[1]["texts"]
    print(served_line(rows[-1], reference), flush=True)
    for kind, path in files.items():
        port = free_port()
        server = start_llama_cpp_server(path, port, context, threads, scratch / f"{kind}.log")
        try:
            model = httpx.get(f"http://127.0.0.1:{port}/v1/models").json()["data"][0]["id"]
            penalty = {"repeat_penalty": 1.0}
            row = {"server": f"llama_cpp.server, {kind}", "threads": threads}
            row["figures"] = served_figures(f"http://127.0.0.1:{port}", model, penalty)
        except (RuntimeError, httpx.HTTPError) as err:
            # llama-cpp-python goes on past max_tokens while the text ends inside a UTF-8
            # character (random weights emit lone bytes) until the context is full: a 500
            row["failed"] = str(err)
        finally:
            stop(server)
        rows.append(row)
        print(served_line(rows[-1], reference), flush=True)
    return rows


def served_line(row: dict, reference: list[str]) -> str:
    cells = [row["server"], str(row["threads"])]
    if "failed" in row:
        return "| " + " | ".join(cells) + f" | failed: {row['failed'][:200]} |"
    for c in SERVED_CONCURRENCY:
        f = row["figures"][c]
        cells += [f"{f['output_tok_s']:.0f}", f"{f['ttft_p50_ms']:.0f}"]
    same = sum(a == b for a, b in zip(row["figures"][1]["texts"], reference, strict=True))
    cells.append(f"{same}/{len(reference)}")
    return "| " + " | ".join(cells) + " |"


def served_table(rows: list[dict]) -> str:
    head = ["server", "threads"]
    for c in SERVED_CONCURRENCY:
        head += [f"tokens/s, {c} at once", f"TTFT p50 ms, {c} at once"]
    head.append("answer = xiaophi's")
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    reference = rows[0]["figures"][1]["texts"]
    return "\n".join(lines + [served_line(r, reference) for r in rows])


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="runs/tiny/dpo", help="A checkpoint or run folder.")
    parser.add_argument("--eval-text", default="data/demo/pretrain_eval.jsonl")
    parser.add_argument("--max-chars", type=int, default=20_000)
    parser.add_argument(
        "--out", default=None, help="Where the GGUF files go (default: a temp dir)."
    )
    parser.add_argument(
        "--no-serve", action="store_true", help="Skip xiaophi-serve beside llama_cpp.server."
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
            del llm
        served = [] if args.no_serve else served_rows(folder, files, context, out)
    print()
    print(format_rows(rows, base_bpc))
    if served:
        print()
        print(f"served over HTTP, {NEW_TOKENS} tokens per answer, {len(PROMPTS) * 2} requests:")
        print(served_table(served))
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
