"""How the demo corpora say things: dictionary entries as prose for pretraining, and the SFT
conversations — questions about an idiom, word, character or 歇后语 answered with the dictionary's
own text, review sentiment, dialogues, and questions answered from given documents.

Every builder takes the entry and a seeded `random.Random`; `training.data.demo` decides which
entries (never a held-out one) and writes the files.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from training.data.demo_sources import Character, Idiom, Word, Xiehouyu, trim_answer

Record = tuple[dict, str]  # (json row without `source` for pairs/probe, source name)

SYSTEM_FRACTION = 0.1

SYSTEM_PROMPTS = (
    "你是小Phi，一个乐于助人的中文助手。",
    "你是一位耐心的语文老师，回答简明扼要。",
    "请用简洁的中文回答用户的问题。",
)
IDIOM_QUESTIONS = (
    "“{w}”是什么意思？",
    "成语“{w}”怎么解释？",
    "请解释一下“{w}”这个成语。",
    "{w}是什么意思",
    "“{w}”这个成语是什么意思？",
    "你知道“{w}”的意思吗？",
)
WORD_QUESTIONS = (
    "“{w}”是什么意思？",
    "解释词语“{w}”。",
    "“{w}”这个词怎么解释？",
    "{w}的意思是什么？",
)
XIEHOUYU_QUESTIONS = (
    "歇后语“{q}”的下一句是什么？",
    "{q}——下一句是什么？",
    "“{q}”，后半句是什么？",
    "请补全歇后语：{q}——",
)
SENTIMENT_QUESTION = "判断这条评论的情感是正面还是负面：\n{t}"
#: Grounded SFT: dictionary entries given as documents (short ones, to fit a small context).
N_GROUNDED = 3000
N_GROUNDED_UNANSWERABLE = 600
GROUNDED_DOCUMENTS = 3
GROUNDED_MAX_CHARS = 28
NO_MATCHING_DOCUMENT = "资料中没有关于“{w}”的内容。"


# --------------------------------------------------------------------------------------------
# Rendering: entries as prose (pretraining), questions with gold answers (SFT), pairs
# --------------------------------------------------------------------------------------------


def idiom_answer(idiom: Idiom) -> str:
    return trim_answer(idiom.explanation)


def word_answer(word: Word) -> str:
    return trim_answer(word.definition)


def xiehouyu_answer(x: Xiehouyu) -> str:
    first, *others = x.answers
    also = "、".join(f"“{a}”" for a in others)
    return f"{x.riddle}——{first}" + (f"（也说{also}）" if also else "")


def idiom_prose(idiom: Idiom, rng: random.Random) -> str:
    parts = [
        rng.choice(
            (
                f"{idiom.word}（{idiom.pinyin}）：{idiom.explanation}",
                f"成语“{idiom.word}”，读作{idiom.pinyin}，意思是：{idiom.explanation}",
                f"【{idiom.word}】{idiom.explanation}",
            )
        )
    ]
    if idiom.derivation:
        parts.append(f"出处：{idiom.derivation}")
    if idiom.example:
        parts.append(f"例句：{idiom.example}")
    return "\n".join(parts)


def word_prose(word: Word, rng: random.Random) -> str:
    return rng.choice(
        (
            f"{word.word}：{word.definition}",
            f"“{word.word}”的意思是：{word.definition}",
            f"词语“{word.word}”，释义：{word.definition}",
        )
    )


def character_prose(c: Character) -> str:
    radical = f"，部首是{c.radical}" if c.radical else ""
    strokes = f"，共{c.strokes}画" if c.strokes.isdigit() else ""
    return f"“{c.char}”字读作{c.pinyin}{radical}{strokes}。"


def xiehouyu_prose(x: Xiehouyu, rng: random.Random) -> str:
    text = xiehouyu_answer(x)
    return text + "。" if rng.random() < 0.5 else f"歇后语：{text}。"


def chat(question: str, answer: str, rng: random.Random, system: str | None = None) -> list[dict]:
    messages = []
    if system is None and rng.random() < SYSTEM_FRACTION:
        system = rng.choice(SYSTEM_PROMPTS)
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": question})
    messages.append({"role": "assistant", "content": answer})
    return messages


def idiom_meaning_chat(idiom: Idiom, rng: random.Random) -> list[dict]:
    return chat(rng.choice(IDIOM_QUESTIONS).format(w=idiom.word), idiom_answer(idiom), rng)


def idiom_extra_chat(idiom: Idiom, rng: random.Random) -> list[dict] | None:
    """One more honest question about the idiom: its pinyin, origin or an example."""
    options = []
    if idiom.pinyin:
        options.append((f"“{idiom.word}”怎么读？", f"“{idiom.word}”读作{idiom.pinyin}。"))
    if idiom.derivation:
        options.append((f"成语“{idiom.word}”出自哪里？", trim_answer(idiom.derivation)))
    if idiom.example:
        options.append((f"用“{idiom.word}”造个句子。", trim_answer(idiom.example)))
    if not options:
        return None
    question, answer = rng.choice(options)
    return chat(question, answer, rng)


def grounded_chats(entries: list[tuple[str, str]], rng: random.Random) -> Iterator[Record]:
    """Questions answered from documents: the right entry among distractors, the answer taken
    from it; and questions no document answers, answered so."""
    short = [(w, a) for w, a in entries if len(a) <= GROUNDED_MAX_CHARS]
    if len(short) <= GROUNDED_DOCUMENTS:
        return
    for n in range(min(N_GROUNDED + N_GROUNDED_UNANSWERABLE, len(short))):
        subject, answer = rng.choice(short)
        others = [e for e in rng.sample(short, GROUNDED_DOCUMENTS + 1) if e[0] != subject]
        if n < N_GROUNDED:
            docs = [(subject, answer), *others[: GROUNDED_DOCUMENTS - 1]]
            rng.shuffle(docs)
        else:
            docs, answer = others[:GROUNDED_DOCUMENTS], NO_MATCHING_DOCUMENT.format(w=subject)
        question = rng.choice(IDIOM_QUESTIONS[:1] + WORD_QUESTIONS[:1]).format(w=subject)
        yield (
            {
                "messages": [
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": answer},
                ],
                "documents": [{"title": w, "text": a} for w, a in docs],
                "source": "grounded",
            },
            "grounded",
        )


def word_chat(word: Word, rng: random.Random) -> list[dict]:
    return chat(rng.choice(WORD_QUESTIONS).format(w=word.word), word_answer(word), rng)


def xiehouyu_chat(x: Xiehouyu, rng: random.Random) -> list[dict]:
    return chat(rng.choice(XIEHOUYU_QUESTIONS).format(q=x.riddle), xiehouyu_answer(x), rng)


def character_chat(c: Character, rng: random.Random) -> list[dict]:
    if c.radical and rng.random() < 0.3:
        return chat(f"“{c.char}”字的部首是什么？", f"“{c.char}”字的部首是{c.radical}。", rng)
    return chat(f"“{c.char}”字怎么读？", f"“{c.char}”读作{c.pinyin}。", rng)


def review_chat(text: str, label: str, rng: random.Random) -> list[dict]:
    return chat(SENTIMENT_QUESTION.format(t=text), f"{label}。", rng)


def dialogue_chat(turns: list[str], rng: random.Random) -> list[dict]:
    """Alternating user/assistant turns; a trailing user turn is dropped."""
    turns = turns[: len(turns) // 2 * 2]
    messages = []
    if rng.random() < 0.3:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    for i, turn in enumerate(turns):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": turn})
    return messages
