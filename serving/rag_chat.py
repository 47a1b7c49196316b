"""RAG chat: retrieved passages go into a system message, trimmed to fit the model's context.

The prompt is still rendered by the tokenizer's chat template; this module only decides which
messages it renders. Knows nothing of HTTP.
"""

from __future__ import annotations

from collections.abc import Callable

from rag.models import SearchHit
from rag.service import MAX_QUERY_CHARS
from serving.exceptions import InvalidRequestError
from serving.schemas import Source

#: What the model is told before the passages: short, because every token of it is taken
#: from the passages on a small model's context (the demo models are Chinese).
INSTRUCTION = "请根据以下资料回答问题。"
#: Tokens kept free for the answer when `max_tokens` is not given (capped at a quarter of the context).
DEFAULT_ANSWER_TOKENS = 256
SNIPPET_CHARS = 200
#: A passage cut shorter than this to fit the context is left out instead.
MIN_PASSAGE_CHARS = 20

Messages = list[dict[str, str]]
Render = Callable[[Messages], list[int]]


def retrieval_query(messages: Messages) -> str:
    """The last user message: what the knowledge base is searched for."""
    for message in reversed(messages):
        if message["role"] == "user" and message["content"].strip():
            # the question is usually at the end of a long message
            return message["content"][-MAX_QUERY_CHARS:]
    raise InvalidRequestError(
        "`knowledge_base` needs a non-empty user message to search for.", param="messages"
    )


def context_text(passages: list[tuple[SearchHit, str]]) -> str:
    """The instruction and the numbered passages, each under its file name (and page)."""
    parts = [INSTRUCTION]
    for number, (hit, text) in enumerate(passages, start=1):
        where = f"{hit.filename}（第{hit.page}页）" if hit.page is not None else hit.filename
        parts.append(f"[{number}] {where}\n{text}")
    return "\n\n".join(parts)


def with_context(messages: Messages, context: str) -> Messages:
    """`messages` with `context` prepended to the first system message, or in a new one."""
    out = [dict(m) for m in messages]
    for message in out:
        if message["role"] == "system":
            message["content"] = f"{context}\n\n{message['content']}"
            return out
    return [{"role": "system", "content": context}, *out]


def answer_reserve(context_length: int, max_tokens: int | None) -> int:
    """Tokens the passages must leave for the answer."""
    return max(1, min(max_tokens or DEFAULT_ANSWER_TOKENS, context_length // 4))


def fit_passages(
    render: Render, messages: Messages, hits: list[SearchHit], max_prompt_tokens: int
) -> tuple[list[int], list[SearchHit]]:
    """The prompt with as many of the best passages as fit in `max_prompt_tokens`, and those hits.

    Whole passages are dropped from the lowest-ranked up; if not even the best one fits whole,
    its text is cut to fit (keeping at least MIN_PASSAGE_CHARS). When still nothing fits, the
    oldest turns of the conversation go first (system messages and the last question stay),
    one turn at a time, until a passage fits. When not even that helps, the prompt is the
    user's messages alone and no source is returned (a prompt that is too long by itself is
    refused later, as without a knowledge base).
    """
    candidate: Messages | None = messages
    while hits and candidate is not None:
        fitted = _fit_in(render, candidate, hits, max_prompt_tokens)
        if fitted is not None:
            return fitted
        candidate = without_oldest_turn(candidate)
    return render(messages), []


def _fit_in(
    render: Render, messages: Messages, hits: list[SearchHit], max_prompt_tokens: int
) -> tuple[list[int], list[SearchHit]] | None:
    for keep in range(len(hits), 0, -1):
        ids = render(with_context(messages, context_text([(h, h.text) for h in hits[:keep]])))
        if len(ids) <= max_prompt_tokens:
            return ids, hits[:keep]
    best = hits[0]
    lo, hi, fitted = MIN_PASSAGE_CHARS, len(best.text) - 1, None
    while lo <= hi:  # longest prefix of the best passage that fits
        mid = (lo + hi) // 2
        ids = render(with_context(messages, context_text([(best, best.text[:mid])])))
        if len(ids) <= max_prompt_tokens:
            fitted, lo = ids, mid + 1
        else:
            hi = mid - 1
    return (fitted, [best]) if fitted is not None else None


def without_oldest_turn(messages: Messages) -> Messages | None:
    """`messages` less the oldest turn (a user message and the replies after it); system
    messages and the last user message always stay. None when there is nothing left to drop."""
    turns = [i for i, m in enumerate(messages) if m["role"] == "user"]
    if len(turns) < 2:
        return None
    # everything but system messages before the second question (replies before the first too)
    return [m for i, m in enumerate(messages) if i >= turns[1] or m["role"] == "system"]


def source_of(hit: SearchHit) -> Source:
    return Source(
        document_id=hit.document_id,
        filename=hit.filename,
        chunk_index=hit.chunk_index,
        page=hit.page,
        score=hit.score,
        snippet=hit.text[:SNIPPET_CHARS],
    )
