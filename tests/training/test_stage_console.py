"""What a person sees while the pipeline runs: one line per stage (a bar while it runs, its
figures when it ends), and everything the stages print in `<run>/logs/<stage>.log`."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.training.conftest import IDIOMS, tiny_overrides
from training import progress
from training.stage_console import StageConsole, captured, stage_log
from training.stage_figures import done_line
from training.trainer_args import ProgressCallback

ROOT = Path(__file__).resolve().parents[2]
TQDM = re.compile(r"\d+%\||it/s|examples/s")


def fd_identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def test_captured_sends_everything_on_fds_1_and_2_to_the_log_and_puts_them_back_on_error(
    tmp_path,
):
    log = tmp_path / "logs" / "stage.log"
    before = fd_identity(1), fd_identity(2), sys.stdout, sys.stderr
    with pytest.raises(RuntimeError, match="boom"), captured(log, "== header ==\n"):
        print("python stdout")
        print("python stderr", file=sys.stderr)
        os.write(1, b"raw fd 1\n")
        subprocess.run(["sh", "-c", "echo child stdout; echo child stderr >&2"], check=True)
        raise RuntimeError("boom")
    assert (fd_identity(1), fd_identity(2), sys.stdout, sys.stderr) == before
    text = log.read_text()
    assert text.startswith("== header ==\n")
    for seen in ("python stdout", "python stderr", "raw fd 1", "child stdout", "child stderr"):
        assert seen in text
    assert "Traceback" in text and "RuntimeError: boom" in text


def trainer_events(steps: int, pause: float = 0.0) -> None:
    """What the Trainer tells ProgressCallback during `steps` steps, with a loss every 5."""
    callback = ProgressCallback()
    state = SimpleNamespace(global_step=0, max_steps=steps)
    callback.on_train_begin(None, state, None)
    for step in range(1, steps + 1):
        state.global_step = step
        callback.on_step_end(None, state, None)
        if step % 5 == 0:
            callback.on_log(None, state, None, logs={"loss": 5.0 - step / 100})
        time.sleep(pause)
    callback.on_train_end(None, state, None)


def test_on_a_terminal_the_stage_line_is_redrawn_in_place_with_steps_and_time():
    out = io.StringIO()
    line = progress.StageLine("pretrain", out, tty=True, tail="log x.log", redraw_s=0.01)
    line.start()
    with progress.showing(line):
        trainer_events(60, pause=0.002)
        time.sleep(0.05)
    line.finish("pretrain   done in 1.0 s — loss 5.00 → 4.40")
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("done in 1.0 s — loss 5.00 → 4.40\n")
    frames = [f for f in text.split("\r") if "steps" in f]
    assert frames, text
    assert "60/60 steps" in frames[-1] and "loss 4.400" in frames[-1]
    assert re.search(r"\d+/60 steps  0:0\d", frames[0])
    assert progress.active() is None  # only while the stage runs


def test_elsewhere_the_stage_line_is_a_plain_line_now_and_then_never_one_per_step():
    out = io.StringIO()
    line = progress.StageLine("sft", out, tty=False, heartbeat_s=0.1)
    line.start()
    with progress.showing(line):
        trainer_events(200, pause=0.003)
    line.finish("sft        done in 0.6 s")
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert 2 <= len(lines) <= 12, text  # a heartbeat every 0.1 s over ~0.6 s, and the end
    assert re.fullmatch(r"sft +\d+/200 steps, 0:0\d elapsed.*", lines[0])
    assert lines[-1] == "sft        done in 0.6 s"


def test_each_stage_ends_with_its_figures_from_its_report():
    pretrain = {
        "steps": 1000,
        "train_loss_first": 9.12,
        "train_loss_last": 4.21,
        "perplexity": 61.3,
        "perplexity_untrained": 8123.4,
        "tokens_per_s": 11234.0,
        "resumed": False,
    }
    assert done_line("pretrain", pretrain, 112.4) == (
        "pretrain   done in 112 s — 1,000 steps, loss 9.12 → 4.21, held-out perplexity 61 "
        "(untrained 8,123), 11.2k tokens/s"
    )
    budget = {**pretrain, "steps": 900, "max_steps": 1000, "stopped_by": "time budget"}
    assert "— 900 of 1,000 steps (stopped by the time budget), loss" in done_line(
        "pretrain", budget, 100
    )
    embedder = {
        "steps": 800,
        "loss_first": 3.2,
        "loss_last": 1.1,
        "heldout_before": {"mrr": 0.05},
        "heldout": {"mrr": 0.63, "recall@5": 0.8},
    }
    assert "held-out MRR 0.05 → 0.63, recall@5 80%" in done_line("embedder", embedder, 50)
    # a report without some figures (an older run, other options) gives a shorter line
    assert done_line("pretrain", {"steps": 3, "perplexity": None}, 1.25) == (
        "pretrain   done in 1.2 s — 3 steps"
    )
    assert done_line("a-new-stage", {}, 2) == "a-new-stage done in 2.0 s"


def test_a_failing_stage_shows_its_error_and_log_on_the_console_and_restores_the_streams(
    tmp_path,
):
    out = io.StringIO()
    console = StageConsole(out, tty=False, main=True)
    before = fd_identity(1), fd_identity(2), sys.stdout, sys.stderr

    def stage():
        print("{'loss': 1.0}")  # what the stage prints goes to its log
        raise ValueError("the data ran out")

    with pytest.raises(ValueError, match="the data ran out"):
        console.run("sft", tmp_path, stage)
    assert (fd_identity(1), fd_identity(2), sys.stdout, sys.stderr) == before
    log = stage_log(tmp_path, "sft")
    shown = out.getvalue()
    assert "sft        failed after" in shown and "ValueError: the data ran out" in shown
    assert str(log) in shown.splitlines()[-1]
    assert "'loss'" not in shown
    text = log.read_text()
    assert "{'loss': 1.0}" in text and "Traceback" in text and "the data ran out" in text


def test_an_interrupted_stage_says_so_without_calling_it_a_failure(tmp_path):
    out = io.StringIO()
    console = StageConsole(out, tty=True, main=True)

    def stage():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        console.run("pretrain", tmp_path, stage)
    shown = out.getvalue().split("\r\x1b[K")[-1]
    assert shown.startswith("pretrain   interrupted after") and "failed" not in shown
    assert "KeyboardInterrupt" in stage_log(tmp_path, "pretrain").read_text()


WARNING_STAGE = """
import io, sys, warnings
from pathlib import Path
from training.stage_console import StageConsole

def stage():
    warnings.warn_explicit("our seq_len is odd", UserWarning, sys.argv[2], 7)
    warnings.warn_explicit("a library's remark", UserWarning, warnings.__file__, 9)
    return {}

out = io.StringIO()
StageConsole(out, tty=False, main=True).run("pretrain", Path(sys.argv[1]), stage)
print(out.getvalue(), end="")
"""


def test_warnings_from_our_code_reach_the_console_and_library_ones_only_the_log(tmp_path):
    # In a process of its own: pytest records warnings instead of letting them be written.
    ours = ROOT / "training" / "pretrain.py"
    proc = subprocess.run(
        [sys.executable, "-c", WARNING_STAGE, str(tmp_path), str(ours)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "pretrain   warning: our seq_len is odd (pretrain.py:7)" in proc.stdout
    assert "a library's remark" not in proc.stdout + proc.stderr
    text = stage_log(tmp_path, "pretrain").read_text()
    assert "our seq_len is odd" in text and "a library's remark" in text


def test_other_processes_of_a_launch_print_nothing_and_log_to_their_own_file(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    out = io.StringIO()
    console = StageConsole(out, tty=False)  # rank 1: not the main process
    console.run("pretrain", tmp_path, lambda: print("rank one was here") or {})
    assert out.getvalue() == ""
    assert "rank one was here" in (tmp_path / "logs" / "pretrain.rank1.log").read_text()
    assert not (tmp_path / "logs" / "pretrain.log").exists()


def pipeline_flags(tiny_data: dict, tmp_path: Path) -> list[str]:
    heldout = tmp_path / "heldout.jsonl"
    rows = [
        {"kind": kind, "subject": f"{k}{n}", "answer": v, "split": "test" if n else "dev"}
        for kind in ("idiom", "word", "xiehouyu")
        for n, (k, v) in enumerate(IDIOMS.items())
    ]
    heldout.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    overrides = tiny_overrides(
        tiny_data,
        **{"eval.enabled": True, "eval.heldout": str(heldout), "eval.limit": 3},
        **{"eval.max_new_tokens": 8},
    )
    return [f"--{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in overrides.items()]


@pytest.mark.slow
def test_the_pipeline_console_shows_a_line_per_stage_and_the_logs_hold_the_rest(
    tiny_data, tmp_path
):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "training", "pipeline", "--out", str(run)]
    command += pipeline_flags(tiny_data, tmp_path)
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    shown = proc.stdout
    stages = ["tokenizer", "pretrain", "sft", "dpo-data", "dpo", "eval"]
    for stage in stages:
        done = [line for line in shown.splitlines() if line.startswith(f"{stage:<10} done in ")]
        assert len(done) == 1, shown
        assert str(run / "logs" / f"{stage}.log") in shown  # said where its output went
    done = {line.split()[0]: line for line in shown.splitlines() if " done in " in line}
    assert re.search(r"loss [\d.]+ → [\d.]+, held-out perplexity \d+", done["pretrain"])
    assert "tokens/s" in done["pretrain"] and "held-out loss" in done["sft"]
    assert "preference pairs" in done["dpo-data"] and "reward accuracy" in done["dpo"]
    assert "vocabulary 400" in done["tokenizer"] and "3 models × 11 tasks" in done["eval"]
    assert "idiom_mc (n=3)" in shown  # the eval table at the end
    # nothing of what the stages printed themselves: no Trainer dicts, bars, lm-eval remarks
    assert "'loss'" not in shown and "\r" not in shown and not TQDM.search(shown)
    assert "Custom kwargs" not in shown + proc.stderr
    assert "'loss'" not in proc.stderr and not TQDM.search(proc.stderr)
    logs = {stage: (run / "logs" / f"{stage}.log").read_text() for stage in stages}
    assert "{'loss':" in logs["pretrain"] and "{'loss':" in logs["sft"] and "'loss'" in logs["dpo"]
    assert "Writing model shards" in logs["pretrain"]
    assert "Running loglikelihood requests" in logs["eval"]  # lm-eval's own bars
    assert "Custom kwargs can be passed to `--metadata`" in logs["eval"]

    again = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert again.returncode == 0, again.stderr[-4000:]
    for stage in stages:
        assert f"{stage:<10} finished earlier in {run / stage}, skipping" in again.stdout
    assert not [line for line in again.stdout.splitlines() if " done in " in line]
    assert "nothing to run" in again.stdout and "idiom_mc (n=3)" in again.stdout
