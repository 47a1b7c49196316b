"""RAG chat: retrieved passages go into the prompt, trimmed to fit the model's context.

The prompt is rendered by the tokenizer's chat template. A template that takes transformers'
`documents` argument (xiaophi's does) gets the passages as documents and renders them itself, so
the RAG format travels inside the checkpoint; for one that does not (someone else's model), this
module writes the same text into a system message. Knows nothing of HTTP.
"""

from __future__ import annotations

from collections.abc import Callable

from rag.models import MAX_QUERY_CHARS, SearchHit
from serving.errors import InvalidRequestError
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
Render = Callable[..., list[int]]  # (messages, documents=None) -> token ids
_PROBE_TEXT = "\u2063xiaophi-document-probe\u2063"


def template_renders_documents(tokenizer) -> bool:
    """Whether the tokenizer's chat template shows a document passed as `documents`."""
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "?"}],
            documents=[{"title": "t", "text": _PROBE_TEXT}],
            add_generation_prompt=True,
            tokenize=False,
        )
    except Exception:  # a template that chokes on documents does not support them
        return False
    return _PROBE_TEXT in text


def as_documents(passages: list[tuple[SearchHit, str]]) -> list[dict[str, str]]:
    """Passages as transformers `documents`: the file name (and page) as title."""
    return [{"title": _where(hit), "text": text} for hit, text in passages]


def _where(hit: SearchHit) -> str:
    return f"{hit.filename}（第{hit.page}页）" if hit.page is not None else hit.filename


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
        parts.append(f"[{number}] {_where(hit)}\n{text}")
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


def render_with(
    render: Render, messages: Messages, passages: list[tuple[SearchHit, str]], documents: bool
) -> list[int]:
    """The prompt with `passages`: as template documents, or in a system message."""
    if documents:
        return render(messages, as_documents(passages))
    return render(with_context(messages, context_text(passages)))


def fit_passages(
    render: Render,
    messages: Messages,
    hits: list[SearchHit],
    max_prompt_tokens: int,
    documents: bool = False,
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
        fitted = _fit_in(render, candidate, hits, max_prompt_tokens, documents)
        if fitted is not None:
            return fitted
        candidate = without_oldest_turn(candidate)
    return render(messages), []


def _fit_in(
    render: Render,
    messages: Messages,
    hits: list[SearchHit],
    max_prompt_tokens: int,
    documents: bool = False,
) -> tuple[list[int], list[SearchHit]] | None:
    for keep in range(len(hits), 0, -1):
        ids = render_with(render, messages, [(h, h.text) for h in hits[:keep]], documents)
        if len(ids) <= max_prompt_tokens:
            return ids, hits[:keep]
    best = hits[0]
    lo, hi, fitted = MIN_PASSAGE_CHARS, len(best.text) - 1, None
    while lo <= hi:  # longest prefix of the best passage that fits
        mid = (lo + hi) // 2
        ids = render_with(render, messages, [(best, best.text[:mid])], documents)
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
        knowledge_base=hit.knowledge_base,
        document_id=hit.document_id,
        filename=hit.filename,
        chunk_index=hit.chunk_index,
        page=hit.page,
        score=hit.score,
        snippet=hit.text[:SNIPPET_CHARS],
    )
