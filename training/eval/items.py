"""The items of xiaophi's local lm-eval tasks, built from the demo's held-out data only.

`heldout.jsonl` (written by `xiaophi-train data demo`) lists every held-out idiom, word and 歇后语
with its gold answer and split (`dev` for choices, `test` for reports). Multiple-choice items take
their distractors from other held-out items of the same kind and place the gold answer at a
position drawn per item, all from fixed seeds: the same file gives the same items everywhere.
Chat-format items are rendered with the evaluated checkpoint's own chat template (documents
included), so the prompt is what that model sees when served.
"""

from __future__ import annotations

import hashlib
import json
import random
from functools import lru_cache
from pathlib import Path

KINDS = ("idiom", "word", "xiehouyu")
SPLITS = ("dev", "test")
LETTERS = ("A", "B", "C", "D")
N_DOCUMENTS = 3

#: C-Eval's prompt style, in Chinese: the subject's question, four options, "答案：".
MC_HEADER = {
    "idiom": "以下是关于成语的单项选择题，请直接给出正确答案的选项。",
    "word": "以下是关于词语释义的单项选择题，请直接给出正确答案的选项。",
    "xiehouyu": "以下是关于歇后语的单项选择题，请直接给出正确答案的选项。",
}
MC_QUESTION = {
    "idiom": "成语“{s}”的意思是：",
    "word": "词语“{s}”的意思是：",
    "xiehouyu": "歇后语“{s}——”的下一句是：",
}
#: Cloze prompts in the shape the pretraining prose uses (see training/data/demo.py), so a base
#: model that learnt the entries can score them without knowing any answer format.
CLOZE_PROMPT = {"idiom": "【{s}】", "word": "{s}：", "xiehouyu": "{s}——"}
CHAT_QUESTION = "“{s}”是什么意思？"


#: Tool use: the demo's lookup tool for each kind (training/data/demo_tools.py), the question
#: asked, and the tool offered when no tool should be called (it cannot answer the question).
LOOKUP_TOOL = {"idiom": "lookup_idiom", "word": "lookup_word", "xiehouyu": "lookup_xiehouyu"}
TOOL_QUESTION = {
    "idiom": "“{s}”是什么意思？",
    "word": "“{s}”是什么意思？",
    "xiehouyu": "“{s}”，后半句是什么？",
}
UNRELATED_TOOL = "calculate"


class EvalDataError(FileNotFoundError):
    """The held-out file is missing or unusable; the message says how to get it."""


def _rng(*parts: object) -> random.Random:
    digest = hashlib.sha256("\x00".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


@lru_cache(maxsize=8)
def _read_heldout(path: str, mtime: float) -> tuple[dict, ...]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            missing = {"kind", "subject", "answer", "split"} - set(row)
            if missing:
                raise EvalDataError(
                    f"{path}, row {line_no}: missing {', '.join(sorted(missing))}; rebuild it "
                    "with `xiaophi-train data demo` or pass --eval.heldout"
                )
            rows.append(row)
    return tuple(rows)


def load_heldout(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise EvalDataError(
            f"held-out eval file {path} not found: it is written by `xiaophi-train data demo` "
            "(delete data/demo/summary.json and rebuild if your data/demo predates it), or pass "
            "--eval.heldout with a jsonl of {kind, subject, answer, split} rows."
        )
    return list(_read_heldout(str(path), path.stat().st_mtime))


def items(path: str | Path, kind: str, split: str) -> tuple[list[dict], list[dict]]:
    """(the split's items of `kind`, every held-out item of `kind` for distractors)."""
    if kind not in KINDS or split not in SPLITS:
        raise ValueError(f"kind must be one of {KINDS} and split one of {SPLITS}")
    pool = [r for r in load_heldout(path) if r["kind"] == kind]
    chosen = [r for r in pool if r["split"] == split]
    if len({r["answer"] for r in pool}) < len(LETTERS):
        raise EvalDataError(f"{path}: fewer than four distinct {kind} answers for distractors")
    return chosen, pool


def multiple_choice(item: dict, pool: list[dict], kind: str) -> tuple[list[str], int, list[dict]]:
    """Four answers (gold at a seeded position), the gold index, the distractor items."""
    rng = _rng("mc", kind, item["subject"])
    others = [r for r in pool if r["answer"] != item["answer"]]
    distractors = rng.sample(others, len(LETTERS) - 1)
    gold = rng.randrange(len(LETTERS))
    answers = [d["answer"] for d in distractors]
    answers.insert(gold, item["answer"])
    return answers, gold, distractors


def mc_prompt(kind: str, subject: str, answers: list[str]) -> str:
    options = "\n".join(f"{letter}. {text}" for letter, text in zip(LETTERS, answers, strict=True))
    return f"{MC_HEADER[kind]}\n\n{MC_QUESTION[kind].format(s=subject)}\n{options}\n答案："


@lru_cache(maxsize=4)
def _tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def chat_prompt(tokenizer_path: str, question: str, documents: list[dict] | None = None) -> str:
    """The question as the checkpoint's chat template renders it, ready for the answer.

    A template that ignores `documents` (someone else's, or an older xiaophi one) gets them
    in a system message, as xiaophi-serve's RAG fallback does."""
    tokenizer = _tokenizer(str(tokenizer_path))
    messages = [{"role": "user", "content": question}]
    plain = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if not documents:
        return plain
    rendered = tokenizer.apply_chat_template(
        messages, documents=documents, add_generation_prompt=True, tokenize=False
    )
    if rendered != plain:
        return rendered
    from training.chat_format import documents_text

    return tokenizer.apply_chat_template(
        [{"role": "system", "content": documents_text(documents)}, *messages],
        add_generation_prompt=True,
        tokenize=False,
    )


def tool_prompt(tokenizer_path: str, messages: list[dict], tools: list[dict]) -> str:
    """`messages` with `tools` as the checkpoint's chat template renders them, ready for the
    assistant's turn; a template that does not render tools cannot be scored on tool use."""
    if not _renders_tools(str(tokenizer_path)):
        raise ValueError(
            f"the chat template of {tokenizer_path} does not render `tools`: the tool tasks need "
            "a checkpoint trained with xiaophi's current template (rerun its tokenizer stage)"
        )
    return _tokenizer(str(tokenizer_path)).apply_chat_template(
        messages, tools=tools, add_generation_prompt=True, tokenize=False
    )


@lru_cache(maxsize=4)
def _renders_tools(tokenizer_path: str) -> bool:
    """Whether the template shows the model its tools (asked once per checkpoint, as
    serving/tool_calls.py asks it of the served one)."""
    probe = {"type": "function", "function": {"name": "xiaophi_probe_tool", "parameters": {}}}
    text = _tokenizer(tokenizer_path).apply_chat_template(
        [{"role": "user", "content": "hi"}], tools=[probe], tokenize=False
    )
    return "xiaophi_probe_tool" in text


def tool_row(family: str, kind: str, item: dict, tokenizer_path: str) -> dict:
    """One tool-use item: `tool_call` (the lookup tool offered beside another, the call
    expected), `no_tool` (only a tool that cannot answer offered: no call expected) or
    `tool_answer` (the gold call and the tool's result given: the answer expected)."""
    from training.data.demo_tools import TOOLS, call, lookup_result

    needed = LOOKUP_TOOL[kind]
    question = TOOL_QUESTION[kind].format(s=item["subject"])
    if family == "no_tool":
        names = [UNRELATED_TOOL]
    else:
        other = _rng("tool", kind, item["subject"]).choice(sorted(n for n in TOOLS if n != needed))
        names = sorted([needed, other], key=lambda n: _rng("order", item["subject"], n).random())
    tools = [TOOLS[n] for n in names]
    messages = [{"role": "user", "content": question}]
    if family == "tool_answer":
        messages += [
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [call(needed, term=item["subject"])],
            },
            {"role": "tool", "content": lookup_result(item["subject"], item["answer"])},
        ]
    return {
        "subject": item["subject"],
        "answer": item["answer"],
        "prompt": tool_prompt(tokenizer_path, messages, tools),
        "tools": json.dumps(tools, ensure_ascii=False),
        "expected_call": "" if family == "no_tool" else needed,
    }


def grounded_documents(item: dict, distractors: list[dict]) -> list[dict]:
    """The gold dictionary entry among two others (the first two distractors), order seeded."""
    docs = [item, *distractors[: N_DOCUMENTS - 1]]
    _rng("docs", item["subject"]).shuffle(docs)
    return [{"title": d["subject"], "text": d["answer"]} for d in docs]


def build(
    kind_of_task: str,
    heldout: str,
    split: str = "test",
    tokenizer: str | None = None,
    limit: int | None = None,
) -> list[dict]:
    """Rows for one task family: mc, cloze, chat_cloze, grounded_cloze, gen, grounded_gen,
    tool_call, no_tool, tool_answer."""
    family, _, kind = kind_of_task.partition(":")
    chosen, pool = items(heldout, kind, split)
    if limit:
        chosen = chosen[:limit]
    if family in ("tool_call", "no_tool", "tool_answer"):
        if tokenizer is None:
            raise ValueError(f"the {family} tasks render chat prompts: pass metadata `tokenizer`")
        return [tool_row(family, kind, item, tokenizer) for item in chosen]
    rows = []
    for item in chosen:
        answers, gold, distractors = multiple_choice(item, pool, kind)
        row = {
            "subject": item["subject"],
            "answer": item["answer"],
            "choices": answers,
            "gold": gold,
        }
        if family == "mc":
            row["prompt"] = mc_prompt(kind, item["subject"], answers)
        elif family == "cloze":
            row["prompt"] = CLOZE_PROMPT[kind].format(s=item["subject"])
        else:
            if tokenizer is None:
                raise ValueError(
                    f"the {family} tasks render chat prompts: pass metadata `tokenizer`"
                )
            grounded = family.startswith("grounded")
            docs = grounded_documents(item, distractors) if grounded else None
            row["prompt"] = chat_prompt(tokenizer, CHAT_QUESTION.format(s=item["subject"]), docs)
            row["documents"] = json.dumps(docs or [], ensure_ascii=False)
        rows.append(row)
    return rows


def bpc_texts(
    eval_text: str | Path, split: str = "test", max_chars: int | None = None
) -> list[str]:
    """Held-out pretraining documents of one split (a stable hash halves the file)."""
    from training.data.formats import iter_texts

    texts, total = [], 0
    for text in iter_texts([str(eval_text)]):
        digest = hashlib.blake2b(text.encode(), digest_size=2).digest()
        if ("dev" if digest[0] % 2 == 0 else "test") != split:
            continue
        if max_chars is not None and total >= max_chars:
            break
        texts.append(text)
        total += len(text)
    return texts
