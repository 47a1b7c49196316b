"""Datasets and scoring for xiaophi's local lm-eval tasks (the YAML files beside this one).

lm-eval calls `custom_dataset` functions with the task's metadata: `heldout` (the demo's
held-out file), `eval_text` (held-out pretraining text), `tokenizer` (the evaluated checkpoint,
for chat prompts), `split` (dev or test) and `limit` (items per task). `xiaophi-train eval`
passes them; the item logic lives in `training.eval.items`.
"""

from __future__ import annotations

import json

import datasets

from training.eval import items as eval_items
from training.eval.metrics import call_is_valid, char_f1, is_loop, tool_calls_in

#: `xiaophi-train eval`'s model class ends every generated answer with one of these marks, so
#: the scorer knows whether the model stopped on its own or ran into the token limit.
STOPPED_MARK = "\ue000"
LIMIT_MARK = "\ue001"


def _dataset(rows: list[dict]) -> datasets.DatasetDict:
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def _rows(family: str, **meta) -> datasets.DatasetDict:
    limit = meta.get("limit")
    return _dataset(
        eval_items.build(
            family,
            meta["heldout"],
            split=meta.get("split", "test"),
            tokenizer=meta.get("tokenizer"),
            limit=int(limit) if limit else None,
        )
    )


def idiom_mc(**meta):
    return _rows("mc:idiom", **meta)


def word_mc(**meta):
    return _rows("mc:word", **meta)


def xiehouyu_mc(**meta):
    return _rows("mc:xiehouyu", **meta)


def idiom_cloze(**meta):
    return _rows("cloze:idiom", **meta)


def word_cloze(**meta):
    return _rows("cloze:word", **meta)


def xiehouyu_cloze(**meta):
    return _rows("cloze:xiehouyu", **meta)


def idiom_chat_cloze(**meta):
    return _rows("chat_cloze:idiom", **meta)


def idiom_grounded_cloze(**meta):
    return _rows("grounded_cloze:idiom", **meta)


def idiom_gen(**meta):
    return _rows("gen:idiom", **meta)


def idiom_grounded_gen(**meta):
    return _rows("grounded_gen:idiom", **meta)


def idiom_tool_call(**meta):
    return _rows("tool_call:idiom", **meta)


def idiom_no_tool(**meta):
    return _rows("no_tool:idiom", **meta)


def idiom_tool_answer_gen(**meta):
    return _rows("tool_answer:idiom", **meta)


def heldout_text(**meta):
    max_chars = meta.get("bpc_max_chars")
    texts = eval_items.bpc_texts(
        meta["eval_text"], meta.get("split", "test"), int(max_chars) if max_chars else None
    )
    return _dataset([{"text": t} for t in texts])


def bpc_results(doc: dict, results: list) -> dict:
    """Rolling log-likelihood (nats) against the document's characters: bits per character."""
    (loglikelihood,) = results
    return {"bits_per_char": (loglikelihood, len(doc["text"]))}


def generation_results(doc: dict, results: list[str]) -> dict:
    """Character F1 of the answer, and whether it stopped or looped at the token limit."""
    (text,) = results
    if text.endswith(STOPPED_MARK):
        stopped = True
    elif text.endswith(LIMIT_MARK):
        stopped = False
    else:
        raise ValueError(
            "the xiaophi generation tasks need to know whether an answer stopped on its own: "
            "run them through `xiaophi-train eval` (lm-eval model class `xiaophi-hf`)"
        )
    answer = text[:-1].strip()
    return {
        "char_f1": char_f1(answer, doc["answer"]),
        "loop_rate": float(is_loop(answer, stopped)),
        "stop_rate": float(stopped),
    }


def _answer_text(text: str) -> str:
    """A generated answer without the stop mark `xiaophi-train eval` appends."""
    return text[:-1] if text.endswith((STOPPED_MARK, LIMIT_MARK)) else text


def tool_call_results(doc: dict, results: list[str]) -> dict:
    """`valid_call`: the answer's first tool call parses, names an offered tool and follows its
    schema; `exact_args`: it is the expected call with the term copied exactly."""
    (text,) = results
    calls = tool_calls_in(_answer_text(text))
    first = calls[0] if calls else None
    tools = json.loads(doc["tools"])
    valid = call_is_valid(first, tools)
    exact = valid and first == {"name": doc["expected_call"], "arguments": {"term": doc["subject"]}}
    return {"valid_call": float(valid), "exact_args": float(exact)}


def no_tool_results(doc: dict, results: list[str]) -> dict:
    """`no_call`: no tool call where the offered tool cannot answer the question."""
    (text,) = results
    return {"no_call": float(not tool_calls_in(_answer_text(text)) and "<tool_call>" not in text)}
