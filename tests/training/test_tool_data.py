"""Tool use in SFT data: OpenAI-style `tools`, assistant `tool_calls` and `tool` turns load for
trl, train exactly the assistant's calls and answers (never a tool's result), render as the
server's parser reads them back, and bad rows are refused naming the file, row and field."""

from __future__ import annotations

import copy
import json

import pytest
from transformers import AutoTokenizer

from serving.tool_calls import parse_tool_calls
from tests.training.conftest import tiny_overrides
from training.config import load_recipe
from training.data.formats import DataError, check_files, load_sft_dataset
from training.tokenizer import train_tokenizer

LOOKUP = {
    "type": "function",
    "function": {
        "name": "lookup_idiom",
        "description": "查成语词典",
        "parameters": {
            "type": "object",
            "properties": {"term": {"type": "string"}},
            "required": ["term"],
        },
    },
}
RESULT = "守株待兔：比喻死守狭隘经验，不知变通。"
ANSWER = "比喻死守狭隘经验，不知变通。"


def tool_row(arguments) -> dict:
    return {
        "tools": [copy.deepcopy(LOOKUP)],
        "messages": [
            {"role": "user", "content": "“守株待兔”是什么意思？"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "lookup_idiom", "arguments": arguments},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": RESULT},
            {"role": "assistant", "content": ANSWER},
        ],
    }


def write(path, rows) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return str(path)


@pytest.fixture
def tokenizer():
    texts = [RESULT, ANSWER, "“守株待兔”是什么意思？", "你好", "lookup_idiom term"] * 10
    return train_tokenizer(texts, vocab_size=400, min_frequency=1)


def test_tool_rows_load_normalised_and_train_only_the_assistants_turns(tmp_path, tokenizer):
    rows = [
        tool_row({"term": "守株待兔"}),
        tool_row('{"term":"守株待兔"}'),  # arguments as JSON text: the same call
        {
            "messages": [
                {"role": "user", "content": "你好"},
                {"role": "assistant", "content": "你好"},
            ]
        },
    ]
    ds = load_sft_dataset(write(tmp_path / "sft.jsonl", rows))
    assert ds[0]["messages"] == ds[1]["messages"] and ds[0]["tools"] == ds[1]["tools"]
    call = ds[0]["messages"][1]["tool_calls"][0]
    assert call == {
        "type": "function",
        "function": {"name": "lookup_idiom", "arguments": '{"term": "守株待兔"}'},
    }
    assert json.loads(ds[0]["tools"]) == [LOOKUP] and ds[2]["tools"] is None
    assert ds[2]["messages"][1] == {"role": "assistant", "content": "你好", "tool_calls": None}

    out = tokenizer.apply_chat_template(
        ds[0]["messages"],
        tools=json.loads(ds[0]["tools"]),
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    ids, mask = out["input_ids"], out["assistant_masks"]
    trained = tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m])
    call_text = (
        '<tool_call>\n{"name": "lookup_idiom", "arguments": {"term": "守株待兔"}}\n</tool_call>'
    )
    assert trained == f"{call_text}<|im_end|>{ANSWER}<|im_end|>"
    whole = tokenizer.decode(ids)
    assert RESULT in whole and RESULT not in trained  # the tool's result is read, not learned
    assert '"name": "lookup_idiom"' in whole.split("<|im_end|>")[0]  # tools in the system turn
    # what the model learns to write is what the server parses back into the same call
    parsed = parse_tool_calls(call_text)
    assert [(c.name, json.loads(c.arguments)) for c in parsed.calls] == [
        ("lookup_idiom", {"term": "守株待兔"})
    ]


def test_trl_renders_the_rows_tools_when_it_tokenizes(tiny_data, tmp_path, tokenizer):
    from training.model_factory import build_model
    from training.sft import SFTTrainerCPU, build_sft_config

    # the tool list makes a long system turn: room for the whole conversation
    long = {"sft.seq_len": 2048, "model.max_position_embeddings": 2048}
    recipe = load_recipe("tiny", tiny_overrides(tiny_data, **long))
    trainer = SFTTrainerCPU(
        model=build_model(recipe.model, tokenizer, seed=0),
        args=build_sft_config(recipe, tmp_path / "out"),
        train_dataset=load_sft_dataset(write(tmp_path / "sft.jsonl", [tool_row({"term": "x"})])),
        processing_class=tokenizer,
    )
    row = trainer.train_dataset[0]
    text = tokenizer.decode(row["input_ids"])
    assert "<tools>" in text and '"lookup_idiom"' in text and RESULT in text
    trained = tokenizer.decode([label for label in row["labels"] if label != -100])
    assert RESULT not in trained and trained.endswith(f"{ANSWER}<|im_end|>")


@pytest.mark.parametrize(
    "change, field, hint",
    [
        (
            lambda r: r["messages"][1]["tool_calls"][0]["function"].update(arguments="{term: 1"),
            "messages[1].tool_calls[0].function.arguments",
            "not valid JSON",
        ),
        (
            lambda r: r["messages"][1]["tool_calls"][0]["function"].update(arguments="[1]"),
            "messages[1].tool_calls[0].function.arguments",
            "JSON object",
        ),
        (
            lambda r: r["messages"][1]["tool_calls"][0]["function"].update(name="lookup_word"),
            "messages[1].tool_calls[0].function.name",
            "do not declare",
        ),
        (lambda r: r["messages"].pop(1), "messages[1].role", "must follow an assistant turn"),
        (lambda r: r["messages"][1].update(tool_calls=[]), "messages[1].tool_calls", "non-empty"),
        (
            lambda r: r["messages"][0].update(tool_calls=r["messages"][1]["tool_calls"]),
            "messages[0].tool_calls",
            "only an assistant turn",
        ),
        (lambda r: r.update(tools={"name": "x"}), "tools", "non-empty list"),
        (lambda r: r["tools"][0]["function"].pop("name"), "tools[0].function.name", "non-empty"),
        (lambda r: r["messages"][2].update(content=None), "messages[2].content", "string"),
    ],
)
def test_bad_tool_rows_are_refused_naming_the_row_and_field(tmp_path, change, field, hint):
    row = tool_row({"term": "守株待兔"})
    change(row)
    path = write(tmp_path / "sft.jsonl", [tool_row({"term": "x"}), row])
    with pytest.raises(DataError) as error:
        check_files([path], "sft")
    assert error.value.row == 2 and error.value.field == field
    assert hint in str(error.value) and path in str(error.value)


def test_dpo_rows_take_no_tool_turns(tmp_path):
    row = {"prompt": "你好", "chosen": "好", "rejected": [{"role": "tool", "content": "x"}]}
    with pytest.raises(DataError, match=r"rejected\[0\]\.role"):
        check_files([write(tmp_path / "dpo.jsonl", [row])], "dpo")


def test_the_tokenizer_learns_the_tool_format_from_rendered_conversations(tiny_data, tmp_path):
    """tokenizer.chat_files: the tool-call JSON a chat model must write becomes few tokens."""
    from training.tokenizer import main as tokenizer_stage
    from training.tokenizer import rendered_conversations

    terms = ["守株待兔", "画蛇添足", "亡羊补牢", "对牛弹琴", "井底之蛙", "掩耳盗铃", "刻舟求剑"]
    chats = write(tmp_path / "tools.jsonl", [tool_row({"term": t}) for t in terms[:-1]] * 5)
    (text, *_) = rendered_conversations([chats])
    assert '<tool_call>\n{"name": "lookup_idiom"' in text and "<tools>" in text
    assert "<|im_start|>" not in text and "<|im_end|>" not in text  # tokens of their own

    held_out = tool_row({"term": terms[-1]})
    lengths = {}
    for name, files in (("without", []), ("with", [chats])):
        recipe = load_recipe(
            "tiny",
            tiny_overrides(
                tiny_data, **{"tokenizer.chat_files": files, "tokenizer.vocab_size": 1000}
            ),
        )
        work = tmp_path / name
        work.mkdir()
        tokenizer_stage(recipe, tmp_path, work)
        tok = AutoTokenizer.from_pretrained(str(work))
        lengths[name] = len(
            tok.apply_chat_template(
                held_out["messages"], tools=held_out["tools"], return_dict=False
            )
        )
    assert lengths["with"] < lengths["without"] * 0.6, lengths
