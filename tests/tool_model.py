"""A model xiaophi trains to use a tool, for the tests of the tool loop (API, agents, page).

Its own tokenizer, pretrain and SFT stages (the tiny recipe, shrunk) on conversations in the
demo's format: each idiom of `IDIOMS` asked, looked up with `lookup_idiom` and answered from the
result, and greetings answered without a call while the tool is offered; each with and without
the page's system prompt. It learns them by heart
in ~15 s, so its calls and answers are known: what the tests check is everything around it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.training.conftest import IDIOMS, tiny_overrides, write_jsonl, write_tiny_data
from training.data.demo_tools import NOT_FOUND, TOOLS, call, lookup_result, tool_chat

QUESTION = "“{w}”是什么意思？"
LOOKUP = TOOLS["lookup_idiom"]
GREETINGS = {"你好": "你好！有什么可以帮你？", "谢谢": "不客气。"}


def lookup_idiom(term: str) -> str:
    """The tool: the tests' dictionary, answering as the demo's tools file does."""
    return lookup_result(term, IDIOMS[term]) if term in IDIOMS else NOT_FOUND.format(term=term)


def training_rows() -> list[dict]:
    """Each conversation as it is, and after the page's default system prompt (the page sends it)."""
    from ui.app import DEFAULT_SYSTEM_PROMPT

    rows = [
        tool_chat(
            [LOOKUP], QUESTION.format(w=w), [call("lookup_idiom", term=w)], [lookup_idiom(w)], text
        )
        for w, text in IDIOMS.items()
    ]
    rows += [
        {
            "tools": [LOOKUP],
            "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
        }
        for q, a in GREETINGS.items()
    ]
    system = {"role": "system", "content": DEFAULT_SYSTEM_PROMPT}
    return rows + [{**row, "messages": [system, *row["messages"]]} for row in rows]


def write_tools_file(path: Path) -> Path:
    """The same dictionary as a tools file for `xiaophi-serve --tools-file`."""
    entries = {w: lookup_idiom(w) for w in IDIOMS}
    body = {"not_found": NOT_FOUND, "tools": [{"tool": LOOKUP, "entries": entries}]}
    path.write_text(json.dumps(body, ensure_ascii=False), encoding="utf-8")
    return path


def train_tool_model(folder: Path) -> Path:
    """Train it into `folder`/run; its SFT checkpoint. On two torch threads throughout: the
    stages otherwise follow the machine's free cores (tests/servers running beside it), and a
    different thread count sums floats in another order — enough, at this size, to change which
    idiom a question's call names (seen: one of six wrong after a run whose threads moved)."""
    import torch

    from training.config import load_recipe
    from training.pipeline import run_single_stage

    data = write_tiny_data(folder)
    tools_file = write_jsonl(folder / "sft_tools.jsonl", training_rows())
    overrides = {
        "data.sft": [tools_file],
        "data.sft_repeat": [16],
        "tokenizer.chat_files": [tools_file],
        "tokenizer.vocab_size": 1000,
        "model.hidden_size": 64,
        "model.num_heads": 4,
        "model.max_position_embeddings": 512,
        "sft.seq_len": 512,
        "sft.max_steps": 800,
        "sft.micro_batch": 8,
        "sft.lr": 3e-3,
        "sft.warmup_steps": 10,
        "decoding.tune": False,
    }
    recipe = load_recipe("tiny", tiny_overrides(data, **overrides))
    run = folder / "run"
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "2")  # training/cpu_share.py: threads left as set
        torch.set_num_threads(2)
        try:
            for stage in ("tokenizer", "pretrain", "sft"):
                run_single_stage(recipe, run, stage)
        finally:
            torch.set_num_threads(threads)
    return run / "sft"


def reliable_terms(checkpoint: Path) -> list[str]:
    """The idioms whose whole loop the trained model gets right, greedily, in transformers: asked
    (with and without the page's system prompt), it calls `lookup_idiom` with that idiom, and
    given the result it answers with the entry's text. Usually all six; a term the model
    confuses (picking the idiom out of the question is the one thing this tiny model finds
    hard) is left out of the tests of what happens around the model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ui.app import DEFAULT_SYSTEM_PROMPT

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()

    def greedy(messages: list[dict]) -> str:
        ids = tokenizer.apply_chat_template(
            messages, tools=[LOOKUP], add_generation_prompt=True, return_dict=False
        )
        out = model.generate(torch.tensor([ids]), max_new_tokens=64, do_sample=False)
        return tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True)

    terms = []
    for term, text in IDIOMS.items():
        good = True
        for system in ([], [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}]):
            asked = [*system, {"role": "user", "content": QUESTION.format(w=term)}]
            made = [call("lookup_idiom", term=term)]
            good &= f'"arguments": {{"term": "{term}"}}' in greedy(asked)
            answered = [
                *asked,
                {"role": "assistant", "content": None, "tool_calls": made},
                {"role": "tool", "content": lookup_idiom(term)},
            ]
            good &= greedy(answered).strip() == text
        if good:
            terms.append(term)
    return terms
