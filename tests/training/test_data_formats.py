"""User data files: the documented formats load, and every bad input names file, row and field."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from training.data.formats import (
    DataError,
    check_files,
    iter_texts,
    load_dpo_dataset,
    load_sft_dataset,
    load_text_dataset,
)

GOOD_MESSAGES = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}]


def write_jsonl(path: Path, rows: list) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


def assert_error(err: DataError, path: Path, row: int | None, field: str | None) -> None:
    message = str(err)
    assert str(path) in message
    assert err.path == str(path)
    assert err.row == row
    assert err.field == field
    if row is not None:
        assert f"row {row}" in message
    if field is not None:
        assert f"`{field}`" in message


# --- file-level problems ------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match="file not found") as info:
        check_files([path], "text")
    assert_error(info.value, path, None, None)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(DataError, match="is empty") as info:
        check_files(path, "sft")
    assert_error(info.value, path, None, None)


def test_blank_lines_only(tmp_path):
    path = tmp_path / "blank.txt"
    path.write_text("\n  \n\n")
    with pytest.raises(DataError, match="no records"):
        check_files(path, "text")


@pytest.mark.parametrize("name", ["data.csv", "data", "data.md"])
def test_unsupported_extension(tmp_path, name):
    path = tmp_path / name
    path.write_text("text\nhello\n")
    with pytest.raises(DataError, match="unsupported extension") as info:
        check_files(path, "text")
    assert ".jsonl" in str(info.value)


def test_txt_is_text_only(tmp_path):
    path = tmp_path / "chat.txt"
    path.write_text("你好\n")
    with pytest.raises(DataError, match="jsonl"):
        check_files(path, "sft")


def test_all_files_checked_before_rows(tmp_path):
    good = write_jsonl(tmp_path / "bad_row.jsonl", [{"txt": "x"}])
    missing = tmp_path / "missing.jsonl"
    with pytest.raises(DataError, match="file not found"):
        check_files([good, missing], "text")


def test_unknown_kind(tmp_path):
    with pytest.raises(ValueError, match="unknown data kind"):
        check_files(tmp_path / "x.jsonl", "rlhf")


def test_no_files():
    with pytest.raises(DataError, match="no text data files"):
        check_files([], "text")


# --- row-level problems -------------------------------------------------------------------


def test_invalid_json_names_line(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "a"}, "", '{"text": "b"', {"text": "c"}])
    with pytest.raises(DataError, match="invalid JSON") as info:
        check_files(path, "text")
    assert_error(info.value, path, 3, None)


def test_row_not_an_object(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "a"}, "[1, 2]"])
    with pytest.raises(DataError, match="JSON object") as info:
        check_files(path, "text")
    assert_error(info.value, path, 2, None)


@pytest.mark.parametrize(
    ("row", "field", "hint"),
    [
        ({"content": "x"}, "text", "missing"),
        ({"text": 3}, "text", "string"),
        ({"text": "   "}, "text", "empty"),
        ({"text": None}, "text", "string"),
    ],
)
def test_text_schema(tmp_path, row, field, hint):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "ok"}, row])
    with pytest.raises(DataError, match=hint) as info:
        check_files(path, "text")
    assert_error(info.value, path, 2, field)


@pytest.mark.parametrize(
    ("row", "field", "hint"),
    [
        ({"text": "x"}, "messages", "prompt"),
        ({"messages": []}, "messages", "non-empty list"),
        ({"messages": "hi"}, "messages", "non-empty list"),
        ({"messages": ["hi"]}, "messages[0]", "object"),
        (
            {"messages": [{"role": "bot", "content": "x"}]},
            "messages[0].role",
            "system, user, assistant",
        ),
        ({"messages": [{"role": "user"}]}, "messages[0].content", "string"),
        ({"messages": [{"role": "user", "content": "x"}]}, "messages", "assistant"),
        ({"prompt": "q"}, "completion", "missing"),
        ({"completion": "a"}, "prompt", "missing"),
        ({"prompt": "q", "completion": 1}, "completion", "string"),
        ({"prompt": "q", "completion": " "}, "completion", "empty"),
    ],
)
def test_sft_schema(tmp_path, row, field, hint):
    path = write_jsonl(tmp_path / "s.jsonl", [{"messages": GOOD_MESSAGES}, row])
    with pytest.raises(DataError, match=hint) as info:
        check_files(path, "sft")
    assert_error(info.value, path, 2, field)


@pytest.mark.parametrize(
    ("row", "field", "hint"),
    [
        ({"chosen": "a", "rejected": "b"}, "prompt", "missing"),
        ({"prompt": "q", "rejected": "b"}, "chosen", "missing"),
        ({"prompt": "q", "chosen": "a"}, "rejected", "missing"),
        ({"prompt": "q", "chosen": 1, "rejected": "b"}, "chosen", "string or a list"),
        ({"prompt": "q", "chosen": "", "rejected": "b"}, "chosen", "empty"),
        (
            {"prompt": [{"role": "assistant", "content": "q"}], "chosen": "a", "rejected": "b"},
            "prompt[0].role",
            "`user`",
        ),
        (
            {"prompt": "q", "chosen": "a", "rejected": [{"role": "user", "content": "b"}]},
            "rejected[0].role",
            "`assistant`",
        ),
        (
            {"prompt": "q", "chosen": [{"role": "x", "content": "a"}], "rejected": "b"},
            "chosen[0].role",
            "one of",
        ),
    ],
)
def test_dpo_schema(tmp_path, row, field, hint):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}, row])
    with pytest.raises(DataError, match=hint) as info:
        check_files(path, "dpo")
    assert_error(info.value, path, 2, field)


def test_row_number_is_line_number_with_blank_lines(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "a"}, "", "", {"nope": 1}])
    with pytest.raises(DataError) as info:
        check_files(path, "text")
    assert info.value.row == 4


def test_json_array_rows(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps([{"text": "a"}, {"text": ""}]), encoding="utf-8")
    with pytest.raises(DataError) as info:
        check_files(path, "text")
    assert_error(info.value, path, 2, "text")


def test_parquet_rows(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"body": ["a", "b"]}), path)
    with pytest.raises(DataError, match="missing") as info:
        check_files(path, "text")
    assert_error(info.value, path, 1, "text")


def test_txt_invalid_utf8(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes("第一行\n".encode() + b"\xff\xfe bad\n")
    with pytest.raises(DataError, match="UTF-8") as info:
        check_files(path, "text")
    assert info.value.row == 2


def test_check_counts_records(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"text": "x"}, "", {"text": "y"}])
    b = tmp_path / "b.txt"
    b.write_text("one\n\ntwo\nthree\n", encoding="utf-8")
    assert check_files([a, b], "text") == {str(a): 2, str(b): 3}


# --- loading -------------------------------------------------------------------------------


def test_texts_from_txt_jsonl_parquet(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("第一篇\n\n   \n第二篇\r\n", encoding="utf-8")
    jsonl = write_jsonl(tmp_path / "b.jsonl", [{"text": "第三篇", "source": "x"}])
    parquet = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": ["第四篇", "第五篇"], "id": [1, 2]}), parquet)
    expected = ["第一篇", "第二篇", "第三篇", "第四篇", "第五篇"]
    assert list(iter_texts([txt, jsonl, parquet])) == expected
    ds = load_text_dataset([txt, jsonl, parquet], num_proc=1)
    assert ds.column_names == ["text"]
    assert ds["text"] == expected


def test_iter_texts_checks_first(tmp_path):
    bad = write_jsonl(tmp_path / "b.jsonl", [{"text": "ok"}, {"text": ""}])
    with pytest.raises(DataError):
        next(iter_texts(bad))


def test_sft_prompt_completion_converted_exactly(tmp_path):
    path = write_jsonl(
        tmp_path / "s.jsonl",
        [
            {"prompt": " 问题\n", "completion": "答案 "},
            {"messages": [{"role": "system", "content": "s"}, *GOOD_MESSAGES], "source": "x"},
        ],
    )
    ds = load_sft_dataset(path)
    assert ds.column_names == ["messages"]
    assert ds[0]["messages"] == [
        {"role": "user", "content": " 问题\n"},
        {"role": "assistant", "content": "答案 "},
    ]
    assert ds[1]["messages"] == [{"role": "system", "content": "s"}, *GOOD_MESSAGES]


def test_sft_from_parquet_and_several_files(tmp_path):
    parquet = tmp_path / "s.parquet"
    pq.write_table(pa.table({"prompt": ["p"], "completion": ["c"]}), parquet)
    jsonl = write_jsonl(tmp_path / "s.jsonl", [{"messages": GOOD_MESSAGES}])
    ds = load_sft_dataset([parquet, jsonl])
    assert ds["messages"] == [
        [{"role": "user", "content": "p"}, {"role": "assistant", "content": "c"}],
        GOOD_MESSAGES,
    ]


def test_dpo_strings_and_messages(tmp_path):
    conversation = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"prompt": "问", "chosen": "好", "rejected": "坏"},
            {
                "prompt": conversation,
                "chosen": [{"role": "assistant", "content": "c"}],
                "rejected": "r",
            },
        ],
    )
    ds = load_dpo_dataset(path)
    assert sorted(ds.column_names) == ["chosen", "prompt", "rejected"]
    assert ds[0] == {
        "prompt": [{"role": "user", "content": "问"}],
        "chosen": [{"role": "assistant", "content": "好"}],
        "rejected": [{"role": "assistant", "content": "坏"}],
    }
    assert ds[1]["prompt"] == conversation
    assert ds[1]["chosen"] == [{"role": "assistant", "content": "c"}]
    assert ds[1]["rejected"] == [{"role": "assistant", "content": "r"}]


def test_loader_refuses_bad_file(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [{"messages": GOOD_MESSAGES}, {"prompt": "q"}])
    with pytest.raises(DataError, match="row 2"):
        load_sft_dataset(path)


# --- reading a sample of many conversations -------------------------------------------------


def chats(n: int, tag: str) -> list[dict]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"{tag}问题{i}"},
                {"role": "assistant", "content": f"{tag}回答{i}"},
            ]
        }
        for i in range(n)
    ]


def test_a_sample_is_the_rows_a_shuffled_select_keeps(tmp_path):
    """sample=n converts only n conversations, and exactly those (in that order) that shuffling
    the whole dataset and taking the first n would give: the same training data as before."""
    one = write_jsonl(tmp_path / "one.jsonl", chats(40, "甲"))
    whole = load_sft_dataset([one])
    expected = whole.shuffle(seed=7).select(range(9))["messages"]
    assert load_sft_dataset([one], sample=9, seed=7)["messages"] == expected
    assert len(load_sft_dataset([one], sample=100, seed=7)) == 40  # more than there are: all


def test_a_sample_across_files_keeps_the_draw_order(tmp_path):
    plain = write_jsonl(tmp_path / "plain.jsonl", chats(25, "甲"))
    rows = chats(30, "乙")
    rows[3]["documents"] = [{"title": "资料", "text": "乙的资料"}]
    grounded = write_jsonl(tmp_path / "grounded.jsonl", rows)
    whole = load_sft_dataset([plain, grounded])
    expected = whole.shuffle(seed=3).select(range(20))
    sample = load_sft_dataset([plain, grounded], sample=20, seed=3)
    assert sample["messages"] == expected["messages"]
    assert sample["chat_template_kwargs"] == expected["chat_template_kwargs"]
    assert {m[0]["content"][0] for m in sample["messages"]} == {"甲", "乙"}  # both files drawn


def test_a_file_changed_after_its_check_is_checked_again(tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", chats(3, "甲"))
    assert check_files([path], "sft") == {str(path): 3}
    write_jsonl(path, [*chats(3, "甲"), {"messages": []}])
    with pytest.raises(DataError) as info:
        check_files([path], "sft")
    assert info.value.row == 4


def test_a_repeated_file_counts_as_listed_that_often_in_the_draw(tmp_path):
    """repeats=[1, 4]: the draw is the one a dataset holding the second file four times gives."""
    big = write_jsonl(tmp_path / "big.jsonl", chats(30, "甲"))
    small = write_jsonl(tmp_path / "small.jsonl", chats(3, "乙"))
    listed = datasets.concatenate_datasets(
        [load_sft_dataset([big])] + [load_sft_dataset([small])] * 4
    )
    expected = listed.shuffle(seed=5).select(range(14))["messages"]
    assert load_sft_dataset([big, small], sample=14, seed=5, repeats=[1, 4])["messages"] == expected
    everything = load_sft_dataset([big, small], repeats=[1, 4])["messages"]
    assert everything == listed["messages"] and len(everything) == 42
    # repeats of 1 are the plain draw
    assert (
        load_sft_dataset([big, small], sample=14, seed=5, repeats=[1, 1])["messages"]
        == load_sft_dataset([big, small], sample=14, seed=5)["messages"]
    )
    with pytest.raises(ValueError, match="one whole number"):
        load_sft_dataset([big, small], repeats=[2])


def test_the_recipe_wants_one_repeat_per_sft_file():
    from training.config import load_recipe

    with pytest.raises(ValueError, match=r"data.sft_repeat=\[2\] needs one whole number"):
        load_recipe("tiny", {"data.sft": ["a.jsonl", "b.jsonl"], "data.sft_repeat": [2]})
    recipe = load_recipe("tiny", {"data.sft": ["a.jsonl", "b.jsonl"], "data.sft_repeat": [1, 3]})
    assert recipe.data.sft_repeat == [1, 3]
