"""`make bench-serve`: load-test the real server, beside sequential `model.generate`.

Starts `python -m serving` on a free port, sends the same chat prompts at each concurrency
(streaming, greedy, fixed max_tokens) from an async load generator, and reports request
throughput, output tokens/s and TTFT / TPOT / ITL percentiles. The baseline generates the
same prompts one after another with `model.generate` in this process (before the server
starts, so the two never share the CPU). Greedy decoding makes both produce the same tokens.
Then, at `--extras-concurrency` (32), the same load with logprobs (top 5) — beside the plain
rows: the same tokens — and with a JSON schema (`response_format`) — beside `ignore_eos`: both run
to max_tokens: what each costs.

    python -m bench.serve_bench [--model DIR | --preset tiny|seed] [--concurrency 1 8 32]
"""

from __future__ import annotations

import os

# Same OpenMP setting as `xiaophi-serve` (see serving/cli.py), so the baseline and the server
# run torch under the same conditions. Must precede the torch import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.bench_model import BENCH_TEXTS, build_checkpoint  # noqa: E402
from serving.engine.loading import engine_process_threads  # noqa: E402


@dataclass
class RequestResult:
    ttft: float
    e2e: float
    output_tokens: int
    itls: list[float] = field(default_factory=list)
    text: str = ""

    @property
    def tpot(self) -> float | None:
        return (self.e2e - self.ttft) / (self.output_tokens - 1) if self.output_tokens > 1 else None


def make_prompts(n: int) -> list[str]:
    """Varied lengths: one to three sentences, rotated."""
    prompts = []
    for i in range(n):
        parts = [BENCH_TEXTS[(i + k) % len(BENCH_TEXTS)] for k in range(1 + i % 3)]
        prompts.append("".join(parts) + f"（第{i}题）")
    return prompts


# ------------------------------------------------------------------ baseline
def sequential_generate(model_dir: Path, prompts: list[str], max_tokens: int, device: str) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).to(device).eval()

    def one(prompt: str) -> int:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, return_dict=False
        )
        with torch.no_grad():
            out = model.generate(
                torch.tensor([ids], device=device), max_new_tokens=max_tokens, do_sample=False
            )
        return out.shape[1] - len(ids)

    one(prompts[0])  # warm-up (also on the second call: cheap, and keeps both runs alike)
    start = time.perf_counter()
    tokens = sum(one(p) for p in prompts)
    elapsed = time.perf_counter() - start
    return {
        "requests": len(prompts),
        "output_tokens": tokens,
        "seconds": elapsed,
        "output_tok_s": tokens / elapsed,
    }


# ------------------------------------------------------------------ load generator
#: request fields measured beside the plain request, at --extras-concurrency
EXTRAS = {
    # every answer runs to max_tokens: the reference for json_schema, whose answers (a random
    # model's JSON strings) rarely end before it, where plain answers often stop early
    "ignore_eos": {"ignore_eos": True},
    "logprobs": {"logprobs": True, "top_logprobs": 5},
    "json_schema": {
        "response_format": {
            "type": "json_schema",
            "json_schema": {
                "name": "idiom",
                "schema": {
                    "type": "object",
                    "properties": {
                        "idiom": {"type": "string"},
                        "meaning": {"type": "string"},
                        "stars": {"type": "integer", "minimum": 1, "maximum": 5},
                    },
                    "required": ["idiom", "meaning", "stars"],
                    "additionalProperties": False,
                },
            },
        }
    },
}


async def stream_one(
    client: httpx.AsyncClient, model: str, prompt: str, max_tokens: int, extra: dict | None = None
) -> RequestResult:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        **(extra or {}),
    }
    start = time.perf_counter()
    first = last = None
    itls: list[float] = []
    tokens = 0
    text = []
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            pieces = [c["delta"].get("content") or "" for c in chunk["choices"]]
            text += pieces
            if any(pieces):
                now = time.perf_counter()
                if first is None:
                    first = now
                else:
                    itls.append(now - last)
                last = now
    end = time.perf_counter()
    first = first if first is not None else end
    return RequestResult(
        ttft=first - start, e2e=end - start, output_tokens=tokens, itls=itls, text="".join(text)
    )


async def run_load(
    url: str,
    model: str,
    prompts: list[str],
    max_tokens: int,
    concurrency: int,
    extra: dict | None = None,
) -> dict:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        gate = asyncio.Semaphore(concurrency)

        async def gated(prompt: str) -> RequestResult:
            async with gate:
                return await stream_one(client, model, prompt, max_tokens, extra)

        start = time.perf_counter()
        results = await asyncio.gather(*(gated(p) for p in prompts))
        elapsed = time.perf_counter() - start
    return summarize(results, elapsed, concurrency)


def summarize(results: list[RequestResult], elapsed: float, concurrency: int) -> dict:
    def pct(values: list[float], q: float) -> float:
        return float(np.percentile(values, q) * 1000) if values else float("nan")

    ttfts = [r.ttft for r in results]
    tpots = [r.tpot for r in results if r.tpot is not None]
    itls = [x for r in results for x in r.itls]
    tokens = sum(r.output_tokens for r in results)
    return {
        "concurrency": concurrency,
        "requests": len(results),
        "seconds": elapsed,
        "req_s": len(results) / elapsed,
        "output_tokens": tokens,
        "output_tok_s": tokens / elapsed,
        "ttft_p50_ms": pct(ttfts, 50),
        "ttft_p99_ms": pct(ttfts, 99),
        "tpot_p50_ms": pct(tpots, 50),
        "tpot_p99_ms": pct(tpots, 99),
        "itl_p50_ms": pct(itls, 50),
        "itl_p99_ms": pct(itls, 99),
        "texts": [r.text for r in results],
    }


# ------------------------------------------------------------------ server
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(
    model_dir: Path,
    port: int,
    max_running: int,
    device: str,
    torch_threads: int | None,
    extra_args: list[str] | None = None,
) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "serving", "--model", str(model_dir), "--port", str(port),
        "--served-model-name", "bench", "--max-running", str(max_running), "--max-waiting", "1024",
        "--device", device, "--log-level", "warning",
    ]  # fmt: skip
    if torch_threads:
        cmd += ["--torch-threads", str(torch_threads)]
    process = subprocess.Popen(cmd + (extra_args or []))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.terminate()
    raise RuntimeError("the server did not become healthy")


def engine_runs_in_process(args) -> bool:
    return args.engine == "slots" and not args.no_engine_process


# ------------------------------------------------------------------ report
def format_table(baseline: dict, rows: list[dict]) -> str:
    header = (
        f"{'setup':<34}{'req/s':>8}{'out tok/s':>11}{'× base':>8}{'TTFT p50':>10}{'TTFT p99':>10}"
        f"{'TPOT p50':>10}{'TPOT p99':>10}{'ITL p50':>9}{'ITL p99':>9}"
    )
    lines = [header, "-" * len(header)]
    base = baseline["output_tok_s"]
    lines.append(
        f"{'generate, sequential':<34}{baseline['requests'] / baseline['seconds']:>8.2f}{base:>11.1f}{1.0:>8.1f}"
        + "".join(f"{'-':>10}" for _ in range(4)) + f"{'-':>9}{'-':>9}"
    )  # fmt: skip
    for r in rows:
        lines.append(
            f"{'server, conc ' + str(r['concurrency']) + (', ' + r['fields'] if r.get('fields') else ''):<34}{r['req_s']:>8.2f}{r['output_tok_s']:>11.1f}"
            f"{r['output_tok_s'] / base:>8.1f}{r['ttft_p50_ms']:>10.1f}{r['ttft_p99_ms']:>10.1f}"
            f"{r['tpot_p50_ms']:>10.1f}{r['tpot_p99_ms']:>10.1f}{r['itl_p50_ms']:>9.1f}{r['itl_p99_ms']:>9.1f}"
        )
    lines.append(
        "(latencies in ms; TPOT = (e2e - TTFT) / (output tokens - 1); ITL = gap between streamed chunks)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        type=Path,
        help="checkpoint directory (default: build a random one from --preset)",
    )
    parser.add_argument("--preset", choices=["tiny", "seed"], default="tiny")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--requests-per-level", type=int, default=None, help="default: max(16, 4 × concurrency)"
    )
    parser.add_argument("--baseline-requests", type=int, default=16)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument(
        "--torch-threads",
        type=int,
        help="CPU threads for torch, baseline and server alike (default: the server's default)",
    )
    parser.add_argument(
        "--engine", choices=["slots", "hf-continuous"], default="slots", help="server engine"
    )
    parser.add_argument(
        "--no-engine-process",
        action="store_true",
        help="slots engine: run the model loop in a server thread instead of its own process",
    )
    parser.add_argument(
        "--extras",
        nargs="*",
        choices=sorted(EXTRAS),
        default=sorted(EXTRAS),
        help="request fields measured beside the plain request (default: all; none: --extras)",
    )
    parser.add_argument("--extras-concurrency", type=int, default=32)
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    device = (
        args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    if args.torch_threads is None and device == "cpu" and engine_runs_in_process(args):
        # the server's engine process defaults to every core but one: the baseline gets the same
        args.torch_threads = engine_process_threads()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    threads = torch.get_num_threads()

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or build_checkpoint(Path(tmp) / f"bench-{args.preset}", args.preset)
        print(
            f"model: {model_dir} ({'given' if args.model else 'random ' + args.preset})  device: {device}",
            flush=True,
        )
        baseline_prompts = make_prompts(args.baseline_requests)
        baseline = sequential_generate(model_dir, baseline_prompts, args.max_tokens, device)
        print(
            f"baseline: {baseline['output_tokens']} tokens in {baseline['seconds']:.1f}s",
            flush=True,
        )
        if device == "cuda":
            torch.cuda.empty_cache()

        port = free_port()
        server = start_server(
            model_dir,
            port,
            max_running=max(args.concurrency),
            device=device,
            torch_threads=args.torch_threads,
            extra_args=["--engine", args.engine]
            + (["--no-engine-process"] if args.no_engine_process else []),
        )
        rows = []
        try:
            url = f"http://127.0.0.1:{port}"
            asyncio.run(run_load(url, "bench", make_prompts(4), args.max_tokens, 4))  # warm-up
            for concurrency in args.concurrency:
                n = args.requests_per_level or max(16, 4 * concurrency)
                rows.append(
                    asyncio.run(
                        run_load(url, "bench", make_prompts(n), args.max_tokens, concurrency)
                    )
                )
                print(
                    f"concurrency {concurrency}: {rows[-1]['output_tok_s']:.1f} tok/s", flush=True
                )
            for name in args.extras:
                n = args.requests_per_level or max(16, 4 * args.extras_concurrency)
                prompts = make_prompts(n)
                load = run_load(
                    url, "bench", prompts, args.max_tokens, args.extras_concurrency, EXTRAS[name]
                )
                rows.append({**asyncio.run(load), "fields": name})
                print(
                    f"concurrency {args.extras_concurrency}, {name}: "
                    f"{rows[-1]['output_tok_s']:.1f} tok/s",
                    flush=True,
                )
        finally:
            server.terminate()
            server.wait(timeout=60)
        # Once more after the server: on a shared machine the load drifts, so the baseline
        # is the mean of a run before and a run after the server's.
        after = sequential_generate(model_dir, baseline_prompts, args.max_tokens, device)
        print(
            f"baseline again: {after['output_tokens']} tokens in {after['seconds']:.1f}s",
            flush=True,
        )
        baseline = {
            "requests": baseline["requests"] + after["requests"],
            "output_tokens": baseline["output_tokens"] + after["output_tokens"],
            "seconds": baseline["seconds"] + after["seconds"],
            "output_tok_s_runs": [baseline["output_tok_s"], after["output_tok_s"]],
        }
        baseline["output_tok_s"] = baseline["output_tokens"] / baseline["seconds"]

    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, {threads} torch threads, torch {torch.__version__}"
    engine = args.engine + (" (in a server thread)" if args.no_engine_process else "")
    if device == "cuda":
        machine += f", {torch.cuda.get_device_name()}"
    print(
        f"\nxiaophi serving benchmark — {machine}; engine {engine}; max_tokens {args.max_tokens}, "
        "greedy, streaming"
    )
    print(format_table(baseline, rows))
    report = {
        "machine": machine,
        "engine": engine,
        "device": device,
        "max_tokens": args.max_tokens,
        "baseline": baseline,
        "server": rows,
    }
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
