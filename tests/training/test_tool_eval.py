"""The tool-use eval tasks: items offer the right tools from held-out terms, the scorer tells a
valid, exact call from a wrong one on planted answers, and the tasks run through lm-eval."""

from __future__ import annotations

import json
import shutil

import pytest
from transformers import AutoTokenizer

from tests.training.conftest import SUBJECTS, planted, run
from training.data.demo_tools import TOOLS
from training.eval import items as eval_items
from training.eval.harness import LOCAL_TASKS, TOOL_TASKS, _local_tasks
from training.eval.tasks.tasks import STOPPED_MARK, no_tool_results, tool_call_results

OFFERED = json.dumps([TOOLS["lookup_idiom"], TOOLS["calculate"]], ensure_ascii=False)
DOC = {"subject": "守株待兔", "tools": OFFERED, "expected_call": "lookup_idiom"}


def answer(name: str, arguments) -> str:
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"<tool_call>\n{body}\n</tool_call>{STOPPED_MARK}"


@pytest.mark.parametrize(
    "text, valid, exact",
    [
        (answer("lookup_idiom", {"term": "守株待兔"}), 1.0, 1.0),
        (answer("lookup_idiom", {"term": "守株"}), 1.0, 0.0),  # valid, the term not copied whole
        (answer("calculate", {"expression": "守株待兔"}), 1.0, 0.0),  # an offered tool, not the one
        (answer("lookup_word", {"term": "守株待兔"}), 0.0, 0.0),  # not offered
        (answer("lookup_idiom", {"term": "守株待兔", "x": 1}), 0.0, 0.0),  # an extra argument
        (answer("lookup_idiom", {"term": 7}), 0.0, 0.0),  # the wrong type
        (answer("lookup_idiom", {}), 0.0, 0.0),  # the required argument missing
        ('<tool_call>\n{"name": "lookup_idiom", "arguments": {"term": "守株', 0.0, 0.0),  # cut
        ("比喻死守狭隘经验。" + STOPPED_MARK, 0.0, 0.0),  # no call
    ],
)
def test_the_scorer_tells_valid_and_exact_calls_apart(text, valid, exact):
    assert tool_call_results(DOC, [text]) == {"valid_call": valid, "exact_args": exact}


def test_no_call_counts_answers_without_a_tool_call():
    assert no_tool_results(DOC, ["比喻死守狭隘经验。" + STOPPED_MARK]) == {"no_call": 1.0}
    assert no_tool_results(DOC, [answer("calculate", {"expression": "1+1"})]) == {"no_call": 0.0}
    assert no_tool_results(DOC, ["<tool_call>\n{oops"]) == {"no_call": 0.0}


def test_items_offer_the_lookup_tool_or_only_one_that_cannot_answer(tiny_checkpoint, eval_files):
    tok = str(tiny_checkpoint)
    calls = eval_items.build("tool_call:idiom", eval_files["heldout"], tokenizer=tok)
    assert [r["subject"] for r in calls] == [s for s, _ in SUBJECTS["idiom"][2:]]  # test split
    for row in calls:
        names = [t["function"]["name"] for t in json.loads(row["tools"])]
        assert (
            "lookup_idiom" in names and len(names) == 2 and row["expected_call"] == "lookup_idiom"
        )
        assert "<tools>" in row["prompt"] and row["subject"] in row["prompt"]
        assert row["prompt"].endswith("<|im_start|>assistant\n")
    for row in eval_items.build("no_tool:idiom", eval_files["heldout"], tokenizer=tok):
        assert [t["function"]["name"] for t in json.loads(row["tools"])] == ["calculate"]
        assert row["expected_call"] == ""
    for row in eval_items.build("tool_answer:idiom", eval_files["heldout"], tokenizer=tok):
        # the gold call and the tool's result are in the prompt; the answer is to come
        assert f'"arguments": {{"term": "{row["subject"]}"}}' in row["prompt"]
        assert (
            f"<tool_response>\n{row['subject']}：{row['answer']}\n</tool_response>" in row["prompt"]
        )
    assert calls == eval_items.build("tool_call:idiom", eval_files["heldout"], tokenizer=tok)


def test_a_template_without_tools_is_refused(tiny_checkpoint, eval_files, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(tiny_checkpoint, old)
    tokenizer = AutoTokenizer.from_pretrained(str(old))
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    tokenizer.save_pretrained(str(old))
    with pytest.raises(ValueError, match="does not render `tools`"):
        eval_items.build("tool_call:idiom", eval_files["heldout"], tokenizer=str(old))


def test_the_tool_tasks_are_their_own_group():
    assert _local_tasks(["xiaophi"])[0] == list(LOCAL_TASKS)
    assert _local_tasks(["xiaophi_tools"])[0] == list(TOOL_TASKS)
    assert _local_tasks(["xiaophi_idiom_no_tool", "xiaophi_idiom_mc"])[0] == [
        "xiaophi_idiom_no_tool",
        "xiaophi_idiom_mc",
    ]
    with pytest.raises(ValueError, match="xiaophi_tools"):
        _local_tasks(["xiaophi_idiom_tool"])


@pytest.mark.slow
def test_a_model_that_always_ends_its_turn_calls_nothing(tiny_checkpoint, tmp_path, eval_files):
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_checkpoint))
    ends = planted(
        tiny_checkpoint, tmp_path / "ends", tokenizer.convert_tokens_to_ids("<|im_end|>")
    )
    scores = run(ends, ["xiaophi_tools"], eval_files)
    n = len(SUBJECTS["idiom"]) - 2
    assert scores["xiaophi_idiom_tool_call"] == {
        "n": n, "valid_call": 0.0, "valid_call_ci95": 0.0, "exact_args": 0.0, "exact_args_ci95": 0.0
    }  # fmt: skip
    assert scores["xiaophi_idiom_no_tool"]["no_call"] == 1.0
    assert scores["xiaophi_idiom_tool_answer_gen"]["stop_rate"] == 1.0
