"""Engine logprobs (`TokenLogprob`) in the two shapes the API answers with, as vLLM fills them.

- Chat: `choices[].logprobs.content[]`, one entry per generated token: `token`, `logprob`,
  `bytes` (the token's text as UTF-8) and `top_logprobs`, the first `top_logprobs` of the
  position's candidates.
- Completions (OpenAI's legacy shape): parallel lists `tokens`, `token_logprobs`,
  `top_logprobs` (a {token: logprob} dict per position, the first `logprobs + 1` candidates)
  and `text_offset`; with `echo` the prompt's tokens come first, the very first without a
  logprob (`None`), as nothing comes before it.

Where vLLM differs from OpenAI's documentation, this follows vLLM:
- a position's candidates are the chosen token first, then the likeliest tokens in order
  (without repeating the chosen one): under greedy decoding that is simply the top tokens;
  for a sampled token outside the top, the list starts with it;
- a token's text is that token decoded alone, so a token holding part of a multi-byte
  character reads "\ufffd" (OpenAI's `bytes` would carry the raw bytes), and special tokens
  such as EOS appear by name;
- a logprob of -inf is written -9999.0 (JSON has no infinity).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

from serving.engine.base import TokenLogprob
from serving.schemas import (
    ChatLogprobs,
    ChatRequest,
    CompletionLogprobs,
    CompletionRequest,
    SamplingFields,
    TokenLogprobEntry,
    TopLogprob,
)

#: what an impossible token's logprob reads as (vLLM's and OpenAI's stand-in for -inf)
FLOOR = -9999.0


class TokenTexts:
    """Each token id's text, decoded alone (cached: logprobs name the same tokens again and again)."""

    def __init__(self, tokenizer) -> None:
        self._text = lru_cache(maxsize=65536)(lambda token: tokenizer.decode([token]))

    def __call__(self, token: int) -> str:
        return self._text(token)


def token_id_text(token: int) -> str:
    """A token named by its id (vLLM's `return_tokens_as_token_ids`)."""
    return f"token_id:{token}"


def candidates(entry: TokenLogprob) -> list[tuple[int, float]]:
    """The chosen token, then the likeliest others, without repeats (vLLM's order)."""
    return [(entry.token, entry.logprob)] + [(t, v) for t, v in entry.top if t != entry.token]


def _floor(value: float) -> float:
    return max(value, FLOOR)


def chat_content(
    entries: list[TokenLogprob], top_logprobs: int, texts: Callable[[int], str]
) -> list[TokenLogprobEntry]:
    """`logprobs.content` for the generated tokens in `entries`."""

    def top(token: int, value: float) -> TopLogprob:
        text = texts(token)
        return TopLogprob(token=text, logprob=_floor(value), bytes=list(text.encode()))

    return [
        TokenLogprobEntry(
            **top(entry.token, entry.logprob).model_dump(),
            top_logprobs=[top(t, v) for t, v in candidates(entry)[:top_logprobs]],
        )
        for entry in entries
    ]


class CompletionLogprobsBuilder:
    """Builds one choice's legacy logprobs as its tokens arrive. `text_offset` counts the
    characters of the token texts before each token, from 0 — in a stream (as vLLM does) each
    chunk starts again from the length of the text sent before it (`start`)."""

    def __init__(self, top: int, texts: Callable[[int], str]) -> None:
        self._top = top
        self._texts = texts
        self._offset = 0
        self.whole = CompletionLogprobs()  # everything added so far

    def add(
        self,
        tokens: list[int],
        entries: list[TokenLogprob | None] | None,
        start: int | None = None,
    ) -> CompletionLogprobs:
        if start is not None:
            self._offset = start
        out = CompletionLogprobs()
        for i, token in enumerate(tokens):
            entry = entries[i] if entries is not None else None
            text = self._texts(token)
            out.tokens.append(text)
            out.text_offset.append(self._offset)
            self._offset += len(text)
            if entry is None:
                out.token_logprobs.append(None)
                out.top_logprobs.append(None)
                continue
            out.token_logprobs.append(_floor(entry.logprob))
            top: dict[str, float] = {}
            for t, value in candidates(entry)[: self._top + 1]:
                top[self._texts(t)] = _floor(value)  # tokens with the same text: the last wins
            out.top_logprobs.append(top)
        for name in ("text_offset", "token_logprobs", "tokens", "top_logprobs"):
            getattr(self.whole, name).extend(getattr(out, name))
        return out


def token_namer(request: SamplingFields, texts: TokenTexts) -> Callable[[int], str]:
    """How a request's logprobs name tokens: by their text, or (vLLM's extra
    `return_tokens_as_token_ids`) as "token_id:N"."""
    return token_id_text if request.return_tokens_as_token_ids else texts


def chat_logprobs(
    request: ChatRequest, entries: list[TokenLogprob] | None, texts: TokenTexts
) -> ChatLogprobs | None:
    """A chat choice's (or chunk's) `logprobs`, if the request asked for them."""
    if not request.logprobs or entries is None:
        return None
    names = token_namer(request, texts)
    return ChatLogprobs(content=chat_content(entries, request.top_logprobs or 0, names))


def completion_logprobs_builder(
    request: CompletionRequest, texts: TokenTexts
) -> CompletionLogprobsBuilder | None:
    """A builder for one completion choice's logprobs, if the request asked for them."""
    if request.logprobs is None:
        return None
    return CompletionLogprobsBuilder(request.logprobs, token_namer(request, texts))
