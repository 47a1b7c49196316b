"""`make gpu-check` on CPU: the smoke run in a fresh interpreter where the web, RAG, UI and trl /
datasets packages cannot be imported (as on a bare CUDA machine), plus its small parts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from bench import gpu_check

REPO = Path(__file__).resolve().parents[2]
#: What a bare CUDA machine lacks (or what the check must not need); `langchain` blocks every
#: installed module whose name starts with it.
BLOCKED = [
    "fastapi",
    "starlette",
    "uvicorn",
    "sse_starlette",
    "pydantic_settings",
    "trl",
    "datasets",
    "pyarrow",
    "gradio",
    "langchain",
    "sentence_transformers",
    "faiss",
    "rank_bm25",
    "jieba",
    "openai",
    "tensorboard",
]


def blocking_env(tmp_path: Path, blocked: list[str] = BLOCKED) -> dict:
    """Environment whose interpreters (children included) see `BLOCKED` as absent: a
    sitecustomize on PYTHONPATH sets `sys.modules[name] = None` before any user code runs."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        textwrap.dedent(
            f"""
            import pkgutil
            import sys

            blocked = {blocked!r}
            names = set(blocked) | {{
                m.name for m in pkgutil.iter_modules() if m.name.startswith(tuple(blocked))
            }}
            for name in names:
                sys.modules[name] = None
            """
        )
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(REPO)])
    return env


def test_a_machine_without_pydantic_is_told_how_to_bring_it(tmp_path):
    env = blocking_env(tmp_path, [*BLOCKED, "pydantic"])
    run = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "--smoke"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert "pydantic is missing" in run.stderr and "make gpu-wheels" in run.stderr


@pytest.mark.slow
def test_smoke_run_has_every_row_and_passes_without_the_web_stack(tmp_path):
    env = blocking_env(tmp_path)
    for name in ["fastapi", "trl", "datasets", "langchain_core", "gradio", "pydantic_settings"]:
        probe = subprocess.run(
            [sys.executable, "-c", f"import {name}"], env=env, capture_output=True
        )
        assert probe.returncode != 0, f"{name} is not blocked"

    out = tmp_path / "out" / "gpu_check.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "--smoke", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    logs = "\n".join(p.read_text() for p in sorted((out.parent / "gpu_check_logs").glob("*.log")))
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:] + logs[-6000:]

    table = run.stdout[run.stdout.index("| section | check |") :]
    for section, check in gpu_check.ROWS.values():
        assert f"| {section} | {check} |" in table
    report = json.loads(out.read_text())
    assert report["env"]["device"] == "cpu" and report["smoke"] is True
    rows = {r["id"]: r for r in report["rows"]}
    assert list(rows) == list(gpu_check.ROWS)
    assert not [r for r in rows.values() if r["result"] in ("ERROR", "SKIP", "FAIL")], rows
    assert all(rows[r]["result"] == "PASS" for r in gpu_check.CORRECTNESS_ROWS)
    for row_id in ("pretrain_a", "pretrain_b", "hf_generate_1", "hf_static_64", "slots_c256"):
        assert rows[row_id]["value"] > 0


def test_recorder_turns_exceptions_into_error_and_skip_rows(tmp_path, capsys):
    rec = gpu_check.Recorder(tmp_path / "rows.jsonl")
    with rec.guard("slots_c1", "slots_c64"):
        rec.add("slots_c1", figure="1 tok/s", value=1.0)
        raise ValueError("boom")
    with rec.guard("slots_c256"):
        raise TimeoutError("skipped: time budget")
    (tmp_path / "rows.jsonl").open("a").write('{"id": "cut sho')  # a child killed mid-line
    rows, _, traces = gpu_check.read_results(tmp_path / "rows.jsonl")
    assert [t["trace"] for t in traces] == ["slots_c1"] and "boom" in traces[0]["text"]
    assert rows["slots_c1"]["result"] == "info"
    assert rows["slots_c64"]["result"] == "ERROR" and "boom" in rows["slots_c64"]["note"]
    assert rows["slots_c256"]["result"] == "SKIP"


def test_loss_verdict_needs_a_clear_drop():
    assert gpu_check.loss_verdict({"losses": [10.4, 3.0, 0.2]})[0] == "PASS"
    assert gpu_check.loss_verdict({"losses": [10.4, 9.0, 5.0]})[0] == "FAIL"
    assert gpu_check.loss_verdict({"losses": [10.4, float("nan")]})[0] == "FAIL"


def test_compile_failure_is_reported_and_the_run_repeated_without_it(tmp_path, monkeypatch):
    calls = []

    def fake_run(smoke, compile_, workdir, deadline):
        calls.append(compile_)
        if compile_:
            raise RuntimeError("inductor: no C compiler")
        return dict(
            losses=[10.0, 0.5],
            steps=300,
            max_steps=300,
            stopped=False,
            wall_s=1,
            bf16=True,
            compile=False,
        )

    monkeypatch.setattr(gpu_check, "learning_run", fake_run)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    rec = gpu_check.Recorder(tmp_path / "rows.jsonl")
    gpu_check.section_learn(rec, gpu_check.Budget(float("inf")), smoke=True, workdir=tmp_path)
    row = gpu_check.read_results(tmp_path / "rows.jsonl")[0]["learn"]
    assert calls == [True, False]
    assert (
        row["result"] == "FAIL"
        and "no C compiler" in row["note"]
        and "10.00 -> 0.500" in row["figure"]
    )


def test_a_child_past_its_time_is_killed_and_its_rows_read_skip(tmp_path):
    log = tmp_path / "engine.log"
    outcome, seconds = gpu_check.run_group(
        ["engine"], tmp_path / "rows.jsonl", log, timeout=3, smoke=True
    )
    assert outcome.startswith("timed out") and seconds < 30
    rows, _, _ = gpu_check.read_results(tmp_path / "rows.jsonl")
    assert "slots_load_bf16" not in rows  # killed long before the last engine row
