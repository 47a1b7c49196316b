"""`make gpu-check`: every GPU-only figure and check of the project in one run of at most 8 minutes
on one CUDA card, printed as one table headed by the card's name.

    python -m bench.gpu_check [--out bench_out/gpu_check.json]
    python -m bench.gpu_check --smoke     # tiny sizes, CPU is fine: checks the script

Sections, each in a child process of its own with a time budget (BUDGETS: 65, 150, 85, 60 and
80 s, 440 s in all; time a section leaves unused passes to the next, and the whole run stops at
TOTAL_BUDGET_S = 465 s). A child stops its own long loops before its budget runs out and reports
what it did; one that overruns anyway is killed with its process group and its missing rows read
SKIP, while the later sections still run; a section that crashes reads ERROR, with the tail of
its traceback printed above the table. Logs of every child land beside `--out`. The sections:
- pretrain_a / pretrain_b: `gpu_pretrain_bench` on the `seed` model, (a) the seed article's
  settings, (b) the project's defaults (bf16, sdpa, fused AdamW, torch.compile);
- learn: 300 Trainer steps, bf16 + torch.compile, of the seed model's widths with 4 layers on a
  repeating token pattern: the last logged loss must be under a quarter of the first (if
  compilation fails, that is reported as a FAIL and the same run repeated without it);
- engine: the `slots` engine's correctness on the device (`bench.gpu_engine_check`);
- throughput: output tokens/s of `slots` at 1, 64 and 256 concurrent requests beside HF
  `generate` (one stream, static batch 64), with the goals for an H200 and PASS/MISS.

Needs torch and transformers (Trainer: accelerate) and pydantic (the recipe's models; `make
gpu-check` installs it from `.whl/` where it is missing) and nothing else outside this repository:
no FastAPI, trl, datasets, LangChain, Gradio or pydantic-settings. This module imports only the
standard library at the top; each child imports what its section needs.
Exit status 1 when a correctness check FAILs or a section has an ERROR; a MISS is a finding.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

#: Full-mode time budget of each section (seconds, child start-up included); they add up to
#: 440 s, and the driver never lets a child run past TOTAL_BUDGET_S.
BUDGETS = {"pretrain_a": 65, "pretrain_b": 150, "learn": 85, "engine": 60, "throughput": 80}
TOTAL_BUDGET_S = 465
#: Smoke mode runs the sections in two children (start-up dominates on a small CPU).
SMOKE_GROUPS = [["pretrain_a", "pretrain_b", "learn"], ["engine", "throughput"]]
SMOKE_BUDGET_S = 600
#: Seconds a child keeps in hand for writing its rows after its cooperative deadline.
MARGIN_S = 8

#: Every row of the table, in order: id -> (section, what is checked or measured).
ROWS = {
    "pretrain_a": ("pretrain", "(a) seed article: eager, Adafactor, 4 x 32, no compile"),
    "pretrain_b": ("pretrain", "(b) project defaults: sdpa, fused AdamW, bf16, compile, 64 x 2"),
    "learn": ("pretrain", "loss curve, 300 steps, bf16 + compile, repeating tokens"),
    "slots_as_shipped": ("engine", "slots as shipped on this transformers"),
    "slots_eq_fp32": ("engine", "greedy = generate, fp32 (exact)"),
    "slots_eq_bf16": ("engine", "greedy = generate, bf16 (near-argmax rule)"),
    "slots_abort_fp32": ("engine", "rows leave in 8 orders, fp32 (exact)"),
    "slots_abort_bf16": ("engine", "rows leave in 8 orders, bf16 (near-argmax rule)"),
    "slots_load_bf16": ("engine", "cancel + stop under load, bf16"),
    "hf_generate_1": ("throughput", "HF generate, one stream"),
    "hf_static_64": ("throughput", "HF generate, static batch 64"),
    "slots_c1": ("throughput", "slots, 1 request"),
    "slots_c64": ("throughput", "slots, 64 concurrent"),
    "slots_c256": ("throughput", "slots, 256 concurrent"),
}
SECTION_ROWS = {
    "pretrain_a": ["pretrain_a"],
    "pretrain_b": ["pretrain_b"],
    "learn": ["learn"],
    "engine": [r for r, (s, _) in ROWS.items() if s == "engine"],
    "throughput": [r for r, (s, _) in ROWS.items() if s == "throughput"],
}
#: Rows whose FAIL means something is broken (the rest are figures, with or without goals).
CORRECTNESS_ROWS = ["learn", *SECTION_ROWS["engine"]]
#: Seed-article figures on one H200 (README): (a) 19.6k tokens/s, (b) 137k tokens/s.
PRETRAIN_REFERENCES = {
    "pretrain_a": "article H200: 19.6k tok/s",
    "pretrain_b": "H200 ref 137k tok/s",
}
LEARN_STEPS = 300
#: Smoke mode: enough steps for the tiny model to pass the same test, at a higher learning rate.
SMOKE_LEARN_STEPS = 40


# ------------------------------------------------------------------ child side
class Budget:
    def __init__(self, deadline: float) -> None:
        self.deadline = deadline

    def left(self) -> float:
        return self.deadline - time.time()


class Recorder:
    """Writes each row as one JSON line the moment it is known, so a child killed later still
    leaves the rows it finished."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: set[str] = set()
        self.start = time.time()

    def write(self, record: dict) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")

    def add(self, row_id: str, *, figure="", goal="", result="info", note="", value=None) -> None:
        section, check = ROWS[row_id]
        self.done.add(row_id)
        # the child's log shows when each row was done: where the time of a section went
        print(
            f"[gpu-check] {time.time() - self.start:6.1f} s  {row_id}: {result} {figure}",
            flush=True,
        )
        self.write(
            {
                "id": row_id,
                "section": section,
                "check": check,
                "figure": figure,
                "goal": goal,
                "result": result,
                "note": note,
                "value": value,
            }
        )

    @contextlib.contextmanager
    def guard(self, *row_ids: str):
        """Rows of a sub-check that raised read ERROR (SKIP for a TimeoutError: out of time)."""
        try:
            yield
        except Exception as exc:
            skipped = isinstance(exc, TimeoutError)
            message = str(exc) if skipped else f"{type(exc).__name__}: {str(exc)[:300]}"
            if not skipped:
                import traceback

                trace = traceback.format_exc()
                print(trace, flush=True)
                # the driver prints the tail of each error's traceback above the table
                self.write({"trace": row_ids[0], "text": "\n".join(trace.splitlines()[-16:])})
            for row_id in row_ids:
                if row_id not in self.done:
                    self.add(row_id, result="SKIP" if skipped else "ERROR", note=message)


def environment(device: str) -> dict:
    import torch
    import transformers

    env = {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda if device == "cuda" else None,
    }
    with contextlib.suppress(ImportError):
        import accelerate

        env["accelerate"] = accelerate.__version__
    return env


def section_pretrain(rec: Recorder, budget: Budget, name: str, smoke: bool, workdir: Path) -> None:
    from bench.gpu_pretrain_bench import SETTINGS, run_setting

    setting = "a_seed_article" if name == "pretrain_a" else "b_project_defaults"
    with rec.guard(name):
        r = run_setting(
            setting,
            SETTINGS[setting],
            steps=2 if smoke else 12,
            smoke=smoke,
            workdir=workdir,
            deadline=budget.deadline,
        )
        if not smoke and r["steps"] < 3:
            # the first step holds compilation; with fewer than two more the rate means nothing
            raise TimeoutError(
                f"only {r['steps']} step(s) within the time budget ({r['wall_time_s']} s of "
                "training; the first step holds compilation)"
            )
        mfu = f"MFU {100 * r['mfu']:.1f}%" if r["mfu"] is not None else "MFU n/a"
        mem = f"peak {r['peak_gpu_mem_gib']} GiB" if r["peak_gpu_mem_gib"] is not None else ""
        stopped = " (stopped by the time budget)" if r["stopped_by_deadline"] else ""
        rec.add(
            name,
            figure=f"{r['tokens_per_s']:,} tok/s",
            goal=PRETRAIN_REFERENCES[name],
            note=", ".join(
                x
                for x in (
                    f"{r['steps']} steps{stopped} x {r['tokens_per_step']:,} tokens",
                    f"{r['tflops']} TFLOP/s",
                    mfu,
                    mem,
                    f"warm-up/compile {r['warmup_s']} s",
                    f"{r['parameters'] / 1e6:.1f}M params",
                )
                if x
            ),
            value=r["tokens_per_s"],
        )


def pattern_blocks(vocab: int, period: int, seq_len: int, n_blocks: int, seed: int = 0):
    """Windows of one fixed token cycle (period distinct tokens) at random offsets: each token
    determines the next, so a model that learns anything drives the loss towards zero."""
    import numpy as np

    from bench.gpu_pretrain_bench import TokenBlocks

    rng = np.random.default_rng(seed)
    cycle = rng.permutation(vocab)[:period]
    stream = np.tile(cycle, seq_len // period + 2)
    starts = rng.integers(0, period, size=n_blocks)
    tokens = np.concatenate([stream[s : s + seq_len] for s in starts]).astype(np.int64)
    return TokenBlocks(tokens, seq_len)


def learning_run(smoke: bool, compile_: bool, workdir: Path, deadline: float) -> dict:
    """300 steps of the pretrain Trainer path (bf16 on CUDA) on `pattern_blocks`; the loss log."""
    import torch

    from bench.gpu_pretrain_bench import make_trainer
    from training.config import load_recipe
    from training.model_factory import build_model
    from training.tokenizer import train_tokenizer

    recipe = load_recipe("seed")
    # the seed model's widths with 4 of its 24 layers: compiles in well under a minute
    model_cfg = recipe.model.model_copy(update=dict(num_layers=4))
    vocab, seq_len, micro_batch = recipe.tokenizer.vocab_size, 256, 16
    steps, lr = LEARN_STEPS, 1e-3
    if smoke:
        model_cfg = model_cfg.model_copy(
            update=dict(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128)
        )
        vocab, seq_len, micro_batch = 512, 32, 4
        steps, lr = SMOKE_LEARN_STEPS, 1e-2
    cfg = recipe.pretrain.model_copy(
        update=dict(
            max_steps=steps,
            micro_batch=micro_batch,
            grad_accum=1,
            seq_len=seq_len,
            lr=lr,
            warmup_steps=steps // 10,
            logging_steps=steps // 30 or 1,
            save_steps=10**9,
            eval_steps=0,
            torch_compile=compile_,
        )
    )
    tokenizer = train_tokenizer(["小Phi 学习检查"] * 4, vocab_size=300, min_frequency=1)
    model = build_model(model_cfg, tokenizer, seed=0, min_vocab_size=vocab)
    data = pattern_blocks(vocab, 61, seq_len, steps * micro_batch)
    trainer, _, stopper = make_trainer(
        model, cfg, data, workdir, f"learn_compile{int(compile_)}", deadline
    )
    start = time.perf_counter()
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    result = {
        "losses": losses,
        "steps": trainer.state.global_step,
        "max_steps": steps,
        "stopped": stopper.stopped,
        "wall_s": round(time.perf_counter() - start, 1),
        "bf16": bool(trainer.args.bf16),
        "compile": compile_,
    }
    del trainer, model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def loss_verdict(run: dict) -> tuple[str, str, float | None]:
    """PASS when the last logged loss is below a quarter of the first (a learnable pattern from
    ln(vocab) ~ 10 nats should end near zero); MISS otherwise."""
    losses = run["losses"]
    if len(losses) < 2:
        return "FAIL", "fewer than two losses logged", None
    first, last = losses[0], losses[-1]
    ok = math.isfinite(last) and last < 0.25 * first
    return "PASS" if ok else "FAIL", f"{first:.2f} -> {last:.3f}", last


def section_learn(rec: Recorder, budget: Budget, smoke: bool, workdir: Path) -> None:
    import torch

    with rec.guard("learn"):
        cuda = torch.cuda.is_available()
        # compile only on CUDA: on CPU (smoke) inductor needs a C++ toolchain and minutes
        compile_ = cuda
        failure = ""
        try:
            run = learning_run(smoke, compile_, workdir, budget.deadline)
        except Exception as exc:
            if not compile_:
                raise
            import traceback

            trace = traceback.format_exc()
            print(trace, flush=True)
            rec.write({"trace": "learn", "text": "\n".join(trace.splitlines()[-16:])})
            failure = f"compile run failed ({type(exc).__name__}: {str(exc)[:160]}); "
            torch._dynamo.reset()
            if budget.left() < 20:
                raise RuntimeError(failure + "no time left for the eager run") from exc
            run = learning_run(smoke, False, workdir, budget.deadline)
        result, figure, last = loss_verdict(run)
        if failure:
            result = "FAIL"  # compilation is what this row checks
        stopped = " (stopped by the time budget)" if run["stopped"] else ""
        rec.add(
            "learn",
            figure=figure,
            goal="end < 1/4 of start",
            result=result,
            note=f"{failure}{run['steps']}/{run['max_steps']} steps{stopped}, bf16={run['bf16']}, "
            f"compile={run['compile']}, {run['wall_s']} s",
            value=last,
        )


def run_child(sections: list[str], results: Path, deadlines: dict, smoke: bool) -> None:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    rec = Recorder(results)
    rec.write({"env": environment(device)})
    with tempfile.TemporaryDirectory() as tmp:
        for name in sections:
            budget = Budget(deadlines[name])
            if name in ("pretrain_a", "pretrain_b"):
                section_pretrain(rec, budget, name, smoke, Path(tmp))
            elif name == "learn":
                section_learn(rec, budget, smoke, Path(tmp))
            else:
                from bench import gpu_engine_check

                check = (
                    gpu_engine_check.check_engine
                    if name == "engine"
                    else gpu_engine_check.check_throughput
                )
                with rec.guard(*SECTION_ROWS[name]):
                    check(rec, budget, device, smoke)
            print(f"[gpu-check] {name} done", flush=True)


# ------------------------------------------------------------------ driver side
def read_results(path: Path) -> tuple[dict, dict, list[dict]]:
    """Rows by id, the first child's environment, and the traces of errors."""
    rows, env, traces = {}, {}, []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # a line cut short by a kill
                record = json.loads(line)
                if "env" in record:
                    env = env or record["env"]
                elif "trace" in record:
                    traces.append(record)
                elif record.get("id") in ROWS:
                    rows[record["id"]] = record
    return rows, env, traces


def missing_row(row_id: str, result: str, note: str) -> dict:
    section, check = ROWS[row_id]
    return dict(
        id=row_id, section=section, check=check, figure="", goal="", result=result, note=note
    )


def run_group(group, results: Path, log: Path, timeout: float, smoke: bool) -> tuple[str, float]:
    """One child for `group`; returns (outcome, seconds). Killed with its process group (inductor
    compile workers included) when it passes `timeout`."""
    deadline = time.time() + timeout
    # each section's own deadline inside the group: its share of the group's time (smoke mode
    # gives every section the whole group's time: it is there to run every path, not to race)
    shares = [BUDGETS[s] for s in group]
    deadlines, t = {}, time.time()
    for name, share in zip(group, shares, strict=True):
        t += timeout * share / sum(shares)
        deadlines[name] = (deadline if smoke else t) - MARGIN_S
    command = [
        sys.executable,
        "-m",
        "bench.gpu_check",
        "--child",
        ",".join(group),
        "--results",
        str(results),
        "--deadlines",
        json.dumps(deadlines),
    ] + (["--smoke"] if smoke else [])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.setdefault("HF_HUB_OFFLINE", "1")  # nothing here needs the hub; a GPU box may lack network
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    start = time.time()
    with log.open("a", encoding="utf-8") as out:
        child = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code = child.wait(timeout=max(deadline - time.time(), 1))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            return f"timed out after {time.time() - start:.0f} s", time.time() - start
    return ("ok" if code == 0 else f"exited with status {code}"), time.time() - start


def log_tail(log: Path, lines: int = 12) -> str:
    if not log.exists():
        return ""
    return "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


def format_table(rows: list[dict], env: dict, wall: float, smoke: bool) -> str:
    mode = "smoke (tiny sizes)" if smoke else "full"
    head = (
        f"gpu-check on {env.get('device', 'unknown device')}: torch {env.get('torch', '?')}, "
        f"transformers {env.get('transformers', '?')}, accelerate {env.get('accelerate', '-')}, "
        f"CUDA {env.get('cuda') or '-'}; {mode} mode, {wall:.0f} s"
    )
    lines = [
        head,
        "",
        "| section | check | figure | goal / reference | result | note |",
        "|---|---|---:|---|---|---|",
    ]
    for r in rows:
        cells = [r["section"], r["check"], r["figure"], r["goal"], r["result"], r["note"]]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def drive_sections(sections: list[str], out: Path, smoke: bool) -> tuple[list[dict], dict, float]:
    start = time.time()
    total = SMOKE_BUDGET_S if smoke else TOTAL_BUDGET_S
    groups = (
        [[s for s in g if s in sections] for g in SMOKE_GROUPS]
        if smoke
        else [[s] for s in sections]
    )
    groups = [g for g in groups if g]
    logs = out.parent / f"{out.stem}_logs"
    logs.mkdir(parents=True, exist_ok=True)
    results = logs / "rows.jsonl"
    results.unlink(missing_ok=True)
    outcomes = {}
    for k, group in enumerate(groups):
        left = start + total - time.time()
        # a section may use its own budget plus whatever the earlier ones left unused, but never
        # the budgets of the sections still to come (smoke mode: no budgets, just the total)
        reserve = 0 if smoke else sum(BUDGETS[s] for g in groups[k + 1 :] for s in g)
        timeout = left - reserve
        label = ",".join(group)
        log = logs / f"{label.replace(',', '+')}.log"
        log.unlink(missing_ok=True)
        if timeout < 15:
            outcomes[label] = "skipped: no time left of the run's budget"
            print(f"[gpu-check] {label}: {outcomes[label]}", flush=True)
            continue
        print(f"[gpu-check] {label}: up to {timeout:.0f} s ...", flush=True)
        outcome, seconds = run_group(group, results, log, timeout, smoke)
        outcomes[label] = outcome
        print(f"[gpu-check] {label}: {outcome} ({seconds:.0f} s)", flush=True)
        if outcome != "ok":
            print(f"---- last lines of {log}:\n{log_tail(log)}\n----", flush=True)
    rows, env, traces = read_results(results)
    for trace in traces:
        print(f"---- error in {trace['trace']}:\n{trace['text']}\n----", flush=True)
    table = []
    for section in sections:
        label = next(",".join(g) for g in groups if section in g)
        outcome = outcomes.get(label, "not run")
        for row_id in SECTION_ROWS[section]:
            if row_id in rows:
                table.append(rows[row_id])
            elif outcome.startswith(("timed out", "skipped")):
                table.append(missing_row(row_id, "SKIP", f"section {outcome}"))
            else:
                table.append(missing_row(row_id, "ERROR", f"section {outcome}; see {logs}"))
    return table, env, time.time() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="Tiny sizes; CPU is fine.")
    parser.add_argument("--sections", nargs="+", default=list(BUDGETS), choices=list(BUDGETS))
    parser.add_argument("--out", default="bench_out/gpu_check.json", help="Rows and environment.")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--results", help=argparse.SUPPRESS)
    parser.add_argument("--deadlines", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        run_child(args.child.split(","), Path(args.results), json.loads(args.deadlines), args.smoke)
        return 0

    import importlib.util

    if importlib.util.find_spec("pydantic") is None:
        parser.error(
            "pydantic is missing (the recipe's models need it): run `make gpu-wheels` on a machine "
            "with network, copy the .whl/ folder here, and run `make gpu-check` again."
        )
    if not args.smoke:
        import torch  # only to ask; the children do the CUDA work

        if not torch.cuda.is_available():
            parser.error("no CUDA device: the full check needs a GPU (--smoke checks the script)")
    out = Path(args.out)
    table, env, wall = drive_sections(args.sections, out, args.smoke)
    text = format_table(table, env, wall, args.smoke)
    print(text, flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {"env": env, "smoke": args.smoke, "wall_s": round(wall, 1), "rows": table}, indent=2
        )
    )
    broken = [r["id"] for r in table if r["result"] in ("FAIL", "ERROR")]
    if broken:
        print(f"gpu-check: FAIL/ERROR in {', '.join(broken)}", flush=True)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
