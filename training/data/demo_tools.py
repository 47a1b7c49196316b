"""Tool-use conversations for SFT from the demo dictionaries (`sft_tools.jsonl`).

The tools are backed by the packaged data: `lookup_idiom`, `lookup_word`, `lookup_xiehouyu` look
an entry up in the dictionaries the demo reads, and `calculate` evaluates generated arithmetic
(a tool with no data behind it, so the model learns the call format and not a lookup table).
Each conversation offers the tool it needs and, half the time, one more (the model must pick by
name); it goes question → call with the term copied from the question (varied phrasings) →
the tool's result → an answer taken from that result. Also: a term no dictionary holds, whose
result says so and whose answer says so; and questions that need no tool, answered without one
while tools are offered.

Only entries that are not held out are used (`held_keys`); `training.data.demo` checks the
finished rows for held-out strings like every other training file.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from training.data.demo_chats import (
    IDIOM_QUESTIONS,
    WORD_QUESTIONS,
    XIEHOUYU_QUESTIONS,
    Record,
    character_chat,
    idiom_answer,
    word_answer,
    xiehouyu_answer,
)
from training.data.demo_sources import Raw
from training.data.tool_format import tool_call


def _tool(name: str, description: str, parameter: str, what: str) -> dict:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": {parameter: {"type": "string", "description": what}},
                "required": [parameter],
            },
        },
    }


TOOLS = {
    "lookup_idiom": _tool("lookup_idiom", "查成语词典，得到成语的解释", "term", "成语"),
    "lookup_word": _tool("lookup_word", "查现代汉语词典，得到词语的解释", "term", "词语"),
    "lookup_xiehouyu": _tool(
        "lookup_xiehouyu", "查歇后语词典，由前半句得到后半句", "term", "歇后语的前半句"
    ),
    "calculate": _tool("calculate", "计算一个四则运算算式", "expression", "算式，如 12*(3+4)"),
}
NOT_FOUND = "没有找到“{term}”。"
ANSWER_NOT_FOUND = "词典里没有“{w}”这一条。"
ARITHMETIC_QUESTIONS = ("{e}等于多少？", "帮我算一下{e}。", "{e}=?", "计算：{e}")
#: conversations per kind (at most; fewer when a dictionary is smaller)
N_LOOKUPS = {"lookup_idiom": 1500, "lookup_word": 600, "lookup_xiehouyu": 400}
N_NOT_FOUND = 200
N_ARITHMETIC = 400
N_NO_TOOL = 400


def lookup_result(term: str, text: str) -> str:
    """What a lookup tool returns: the entry's head word and its text."""
    return f"{term}：{text}"


def call(name: str, **arguments: str) -> dict:
    return tool_call(name, arguments)


def offered(needed: str | None, rng: random.Random) -> list[dict]:
    """The tool a conversation needs, and half the time one other, in random order."""
    names = [needed] if needed else [rng.choice(sorted(TOOLS))]
    if rng.random() < 0.5:
        names.append(rng.choice([n for n in sorted(TOOLS) if n not in names]))
    rng.shuffle(names)
    return [TOOLS[n] for n in names]


def tool_chat(
    tools: list[dict], question: str, calls: list[dict], results: list[str], answer: str
) -> dict:
    messages = [
        {"role": "user", "content": question},
        {"role": "assistant", "content": None, "tool_calls": calls},
        *({"role": "tool", "content": r} for r in results),
        {"role": "assistant", "content": answer},
    ]
    return {"tools": tools, "messages": messages}


def arithmetic(rng: random.Random) -> tuple[str, str, str]:
    """(the question's form, the tool's expression, the result) of a small sum or product."""
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    op, shown = rng.choice([("+", "+"), ("-", "-"), ("*", "×")])
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    return f"{a}{shown}{b}", f"{a}{op}{b}", str(value)


QUESTIONS = {
    "lookup_idiom": IDIOM_QUESTIONS,
    "lookup_word": WORD_QUESTIONS,
    "lookup_xiehouyu": XIEHOUYU_QUESTIONS,
}


def dictionary_entries(raw: Raw) -> dict[str, list[tuple[str, str]]]:
    """Each lookup tool's (term, text) entries, in the packages' order."""
    return {
        "lookup_idiom": [(i.word, idiom_answer(i)) for i in raw.idioms],
        "lookup_word": [(w.word, word_answer(w)) for w in raw.words],
        "lookup_xiehouyu": [(x.riddle, xiehouyu_answer(x)) for x in raw.xiehouyu],
    }


def tools_file(raw: Raw) -> dict:
    """The dictionaries behind the lookup tools as xiaophi-serve's tools file
    (serving/dictionary_tools.py): whole, held-out terms included — looking up what it does not
    know is what the model is trained to do. A term listed twice keeps its first entry, and each
    result reads as in the training conversations."""
    tools = []
    for name, entries in dictionary_entries(raw).items():
        results: dict[str, str] = {}
        for term, text in entries:
            results.setdefault(term, lookup_result(term, text))
        tools.append({"tool": TOOLS[name], "entries": results})
    return {"not_found": NOT_FOUND, "tools": tools}


def tool_chats(raw: Raw, held_keys: set[str], seed: int) -> Iterator[Record]:
    """Every tool-use conversation of the demo (its own random stream: the other files do not
    change when this one does)."""
    rng = random.Random(seed + 7)
    for name, all_entries in dictionary_entries(raw).items():
        entries = [(term, text) for term, text in all_entries if term not in held_keys]
        questions = QUESTIONS[name]
        for term, text in rng.sample(entries, min(N_LOOKUPS[name], len(entries))):
            question = rng.choice(questions).format(w=term, q=term)
            row = tool_chat(
                offered(name, rng),
                question,
                [call(name, term=term)],
                [lookup_result(term, text)],
                text,
            )
            yield row, "tools"
    known = {i.word for i in raw.idioms}
    idioms = [i.word for i in raw.idioms if i.word not in held_keys and len(i.word) == 4]
    for term in rng.sample(idioms, min(N_NOT_FOUND, len(idioms))):
        missing = "".join(rng.sample(term, len(term)))  # the same characters, not an idiom
        if missing in known or missing == term:
            continue
        question = rng.choice(IDIOM_QUESTIONS).format(w=missing)
        row = tool_chat(
            offered("lookup_idiom", rng),
            question,
            [call("lookup_idiom", term=missing)],
            [NOT_FOUND.format(term=missing)],
            ANSWER_NOT_FOUND.format(w=missing),
        )
        yield row, "tools"
    for _ in range(N_ARITHMETIC):
        shown, expression, value = arithmetic(rng)
        question = rng.choice(ARITHMETIC_QUESTIONS).format(e=shown)
        row = tool_chat(
            offered("calculate", rng),
            question,
            [call("calculate", expression=expression)],
            [value],
            f"{shown}={value}。",
        )
        yield row, "tools"
    characters = [c for c in raw.characters if c.char not in held_keys]
    for c in rng.sample(characters, min(N_NO_TOOL, len(characters))):
        messages = character_chat(c, rng)  # a question no offered tool answers
        yield {"tools": offered(None, rng), "messages": messages}, "tools"
