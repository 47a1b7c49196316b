"""Scores for generated answers: character F1 against the gold text, loops and stops.

Shared by the lm-eval generation tasks (training/eval/tasks) and the decoding-defaults search
(training/decoding.py), so both count a loop the same way.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter

#: Characters that carry no content for F1 (punctuation and spaces, Chinese and ASCII).
_IGNORED = re.compile(
    r"[\s\u3000-\u303f\uff00-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65!-/:-@\[-`{-~“”‘’…—·]"
)
#: An answer loops when some character n-gram of this length occurs this often in its last
#: LOOP_TAIL_CHARS characters (characters, not tokens: comparable across tokenizers).
LOOP_NGRAM = 3
LOOP_REPEATS = 3
LOOP_TAIL_CHARS = 32


def content_chars(text: str) -> list[str]:
    return [c for c in text if not _IGNORED.match(c)]


def char_f1(prediction: str, reference: str) -> float:
    """F1 over the multiset of content characters (SQuAD-style, one character = one token)."""
    pred, ref = Counter(content_chars(prediction)), Counter(content_chars(reference))
    overlap = sum((pred & ref).values())
    if overlap == 0:
        return 0.0
    precision = overlap / sum(pred.values())
    recall = overlap / sum(ref.values())
    return 2 * precision * recall / (precision + recall)


def repeats_ngram(text: str, n: int = LOOP_NGRAM, times: int = LOOP_REPEATS) -> bool:
    """Whether some n-gram occurs at least `times` times in the last LOOP_TAIL_CHARS characters."""
    tail = text[-LOOP_TAIL_CHARS:]
    counts = Counter(tuple(tail[i : i + n]) for i in range(len(tail) - n + 1))
    return bool(counts) and max(counts.values()) >= times


def is_loop(text: str, stopped: bool) -> bool:
    """A loop: the answer ran to the token limit while repeating an n-gram."""
    return not stopped and repeats_ngram(text)


def mean_interval(values: list[float], z: float = 1.96) -> tuple[float, float]:
    """The mean and the half-width of its normal-approximation 95% interval."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    mean = sum(values) / n
    if n == 1:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, z * math.sqrt(var / n)


#: A Hermes tool call as the chat template writes it (an unclosed last block still counts).
_TOOL_CALL = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)


def tool_calls_in(text: str) -> list[dict | None]:
    """Each `<tool_call>` block of an answer as {"name", "arguments"}, or None where a block is
    not a JSON object with a string name and object arguments."""
    calls: list[dict | None] = []
    for block in _TOOL_CALL.findall(text):
        try:
            value = json.loads(block)
        except json.JSONDecodeError:
            calls.append(None)
            continue
        ok = (
            isinstance(value, dict)
            and isinstance(value.get("name"), str)
            and isinstance(value.get("arguments", {}), dict)
        )
        calls.append(
            {"name": value["name"], "arguments": value.get("arguments", {})} if ok else None
        )
    return calls


def call_is_valid(found: dict | None, tools: list[dict]) -> bool:
    """Parses, names an offered tool, and its arguments follow that tool's schema (the demo
    tools take required string properties and nothing else)."""
    if found is None:
        return False
    schemas = {t["function"]["name"]: t["function"].get("parameters", {}) for t in tools}
    if found["name"] not in schemas:
        return False
    schema, args = schemas[found["name"]], found["arguments"]
    properties = schema.get("properties", {})
    if set(schema.get("required", [])) - set(args) or set(args) - set(properties):
        return False
    types = {"string": str, "integer": int, "number": (int, float), "boolean": bool}
    return all(isinstance(args[k], types.get(properties[k].get("type"), object)) for k in args)
