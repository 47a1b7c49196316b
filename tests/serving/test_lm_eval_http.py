"""lm-evaluation-harness over HTTP: a served checkpoint scores what it scores in process.

The packaged likelihood tasks (multiple choice, cloze, bits/char) run three ways on vLLM's
reference checkpoint: in process (`xiaophi-train eval`), through xiaophi-serve, and through vLLM —
both with `xiaophi-train eval --server` (context and answer encoded apart, as in process) and
with lm-eval's own `lm_eval run --model local-completions` (which encodes them together, so it
is held to lm-eval's own `hf` model in process). Every figure equal within 0.001.

Over HTTP each scored text plus the one token the API generates must fit the context, so the
in-process runs here see 2 tokens fewer (`max_length`): the same bits/char windows.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from training.cli import main as train_main
from training.eval.harness import LIKELIHOOD_TASKS, TASKS_DIR, evaluate

pytestmark = pytest.mark.slow

SERVED_LENGTH = 64  # short windows: the bits/char text spans several
LIMIT = 6
SUBJECTS = {
    "idiom": ["画蛇添足", "守株待兔", "亡羊补牢", "对牛弹琴", "井底之蛙", "掩耳盗铃", "刻舟求剑"],
    "word": ["天气", "公园", "散步", "学习", "名著", "春天", "河流"],
    "xiehouyu": ["外甥打灯笼", "孔夫子搬家", "竹篮打水", "泥菩萨过江", "肉包子打狗", "小葱拌豆腐"],
}


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("lm_eval_http")
    rows = [
        {"kind": kind, "subject": s, "answer": f"{s}的解释，第{i}条。", "split": "test"}
        for kind, subjects in SUBJECTS.items()
        for i, s in enumerate(subjects)
    ]
    heldout = folder / "heldout.jsonl"
    heldout.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    texts = [f"第{i}段：今天天气很好，我们去公园散步，看见河流和春天的花。" * 3 for i in range(5)]
    eval_text = folder / "eval_text.jsonl"
    eval_text.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts))
    return {"heldout": str(heldout), "eval_text": str(eval_text), "folder": folder}


def figures(scores: dict) -> dict:
    return {
        (task, metric): value
        for task, row in scores.items()
        if isinstance(row, dict)
        for metric, value in row.items()
        if metric != "n" and not metric.endswith("_ci95")
    }


def assert_equal_figures(got: dict, expected: dict, what: str) -> None:
    assert got.keys() == expected.keys(), what
    far = {k: (got[k], expected[k]) for k in got if abs(got[k] - expected[k]) > 1e-3}
    assert not far, f"{what}: {far}"


def test_a_served_checkpoint_scores_what_it_scores_in_process(
    vllm_server, xiaophi_beside_vllm, eval_data, tmp_path
):
    data = dict(heldout=eval_data["heldout"], eval_text=eval_data["eval_text"], limit=LIMIT)
    checkpoint = vllm_server.checkpoint
    in_process = figures(
        evaluate(checkpoint, checkpoint, LIKELIHOOD_TASKS, max_length=SERVED_LENGTH - 2, **data)
    )
    assert len({k[0] for k in in_process}) == len(LIKELIHOOD_TASKS)
    assert in_process[("xiaophi_heldout_bpc", "bits_per_char")] > 0

    servers = {
        "xiaophi": (xiaophi_beside_vllm["slots"].base_url, "tiny"),
        "vllm": (vllm_server.base_url, vllm_server.model),
    }
    for name, (base_url, model) in servers.items():
        out = tmp_path / f"{name}.json"
        train_main(
            [
                "eval",
                "--server", base_url,
                "--served-model", model,
                "--model", str(checkpoint),
                "--tasks", "xiaophi",  # over HTTP: every likelihood task
                "--heldout", data["heldout"],
                "--eval-text", data["eval_text"],
                "--limit", str(LIMIT),
                "--max-length", str(SERVED_LENGTH),
                "--out", str(out),
            ]
        )  # fmt: skip
        served = figures(json.loads(out.read_text()))
        assert_equal_figures(served, in_process, f"xiaophi-train eval --server ({name})")


def lm_eval_cli(model: str, model_args: dict, data: dict, out: Path) -> dict:
    """`lm_eval run` as a user types it, on the packaged tasks; the figures it wrote."""
    metadata = {
        "heldout": data["heldout"],
        "eval_text": data["eval_text"],
        "tokenizer": model_args.get("tokenizer") or model_args["pretrained"],
        "split": "test",
        "limit": LIMIT,
        "bpc_max_chars": 0,
    }
    command = [
        str(Path(sys.executable).parent / "lm_eval"),
        "run",
        "--model", model,
        "--model_args", *[f"{k}={v}" for k, v in model_args.items()],
        "--tasks", *LIKELIHOOD_TASKS,
        "--include_path", str(TASKS_DIR),
        "--metadata", json.dumps(metadata, ensure_ascii=False),
        "--output_path", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (results,) = out.rglob("results_*.json")
    raw = json.loads(results.read_text())["results"]
    return {
        (task, key.partition(",")[0]): value
        for task, row in raw.items()
        for key, value in row.items()
        if "," in key and "_stderr" not in key and isinstance(value, (int, float))
    }


def test_lm_evals_own_local_completions_model_agrees_with_its_hf_model(
    vllm_server, xiaophi_beside_vllm, eval_data, tmp_path
):
    checkpoint = str(vllm_server.checkpoint)
    hf = lm_eval_cli(
        "hf",
        {"pretrained": checkpoint, "max_length": SERVED_LENGTH - 2},
        eval_data,
        tmp_path / "hf",
    )
    assert ("xiaophi_idiom_mc", "acc") in hf and ("xiaophi_heldout_bpc", "bits_per_char") in hf
    servers = {
        "xiaophi": (xiaophi_beside_vllm["slots"].base_url, "tiny"),
        "vllm": (vllm_server.base_url, vllm_server.model),
    }
    for name, (base_url, model) in servers.items():
        served = lm_eval_cli(
            "local-completions",
            {
                "base_url": f"{base_url}/completions",
                "model": model,
                "tokenizer": checkpoint,
                "tokenizer_backend": "huggingface",
                "max_length": SERVED_LENGTH,
            },
            eval_data,
            tmp_path / name,
        )
        assert_equal_figures(served, hf, f"lm_eval local-completions ({name})")


def test_bad_server_evaluations_say_what_to_fix(vllm_server, xiaophi_beside_vllm, capsys):
    base_url = xiaophi_beside_vllm["slots"].base_url
    folder = str(vllm_server.checkpoint)
    cases = [
        (["--server", base_url, "--model", folder, "--tasks", "xiaophi_idiom_gen"], "over HTTP"),
        (
            ["--server", "http://127.0.0.1:9/v1", "--model", folder, "--tasks", "xiaophi"],
            "could not list the models",
        ),
        (["--server", base_url, "--model", "/nonexistent", "--tasks", "xiaophi"], "tokenizer"),
        (
            ["--server", base_url, "--served-model", "nope", "--model", folder],
            "no max_model_len for `nope`",
        ),
    ]
    for args, said in cases:
        with pytest.raises(SystemExit) as exit_info:
            train_main(["eval", *args])
        assert exit_info.value.code != 0
        assert said in capsys.readouterr().err, args
