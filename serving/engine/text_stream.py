"""Token ids in, clean text deltas out: whole characters only, stop strings held back and cut.

Shared by every engine that produces token ids itself (a remote engine gets text instead).
"""

from __future__ import annotations

from dataclasses import dataclass


class IncrementalDetokenizer:
    """Decodes a growing list of token ids without ever splitting a multi-byte character.

    Byte-level BPE tokens can end in the middle of a UTF-8 character, and some decoders change
    the text of a token depending on its neighbours. So each step decodes a short window that
    starts a few tokens back and emits only what the window adds beyond the text already
    emitted, holding everything while the window ends in an incomplete character (U+FFFD).
    """

    def __init__(self, tokenizer, skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip_special = skip_special_tokens
        self._ids: list[int] = []
        self._prefix_offset = 0  # window start
        self._read_offset = 0  # ids before this are already emitted as text

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip_special)

    def push(self, token_ids: list[int]) -> str:
        """Add new token ids; return the text they complete (possibly empty)."""
        self._ids.extend(token_ids)
        emitted = self._decode(self._ids[self._prefix_offset : self._read_offset])
        window = self._decode(self._ids[self._prefix_offset :])
        if window.endswith("\ufffd") or len(window) <= len(emitted):
            return ""
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        return window[len(emitted) :]

    def flush(self) -> str:
        """Whatever is still held at the end (an incomplete character decodes as U+FFFD)."""
        emitted = self._decode(self._ids[self._prefix_offset : self._read_offset])
        window = self._decode(self._ids[self._prefix_offset :])
        self._prefix_offset = self._read_offset = len(self._ids)
        return window[len(emitted) :] if len(window) > len(emitted) else ""


@dataclass
class StopResult:
    text: str  # safe to emit now
    stopped: bool  # a stop string was found; `text` ends right before it


class StopStringMatcher:
    """Holds back any tail that could still grow into a stop string; cuts at the first match."""

    def __init__(self, stop: list[str], include_stop: bool = False) -> None:
        self._stop = [s for s in stop if s]
        self._include_stop = include_stop  # vLLM's include_stop_str_in_output
        self._held = ""

    def push(self, text: str) -> StopResult:
        if not self._stop:
            return StopResult(text, False)
        buffer = self._held + text
        found = [(i, -len(s)) for s in self._stop if (i := buffer.find(s)) >= 0]
        if found:
            cut, minus_length = min(found)  # the first match; the longest one at that place
            self._held = ""
            return StopResult(buffer[: cut - minus_length if self._include_stop else cut], True)
        keep = self._longest_partial_suffix(buffer)
        self._held = buffer[len(buffer) - keep :] if keep else ""
        return StopResult(buffer[: len(buffer) - keep], False)

    def flush(self) -> str:
        """At the end of generation a held partial match is ordinary text."""
        held, self._held = self._held, ""
        return held

    def _longest_partial_suffix(self, buffer: str) -> int:
        best = 0
        for stop in self._stop:
            for n in range(min(len(stop) - 1, len(buffer)), best, -1):
                if buffer.endswith(stop[:n]):
                    best = n
                    break
        return best


class TextStream:
    """Detokenizer + stop strings for one request."""

    def __init__(self, tokenizer, stop: list[str], include_stop: bool = False) -> None:
        self._detok = IncrementalDetokenizer(tokenizer)
        self._stops = StopStringMatcher(stop, include_stop)

    def push(self, token_ids: list[int]) -> StopResult:
        return self._stops.push(self._detok.push(token_ids))

    def push_text(self, text: str) -> StopResult:
        """Text that arrives decoded already (an upstream server's deltas): stop strings only."""
        return self._stops.push(text)

    def finish(self) -> StopResult:
        """Flush at the natural end; a stop string can still complete in the last characters."""
        result = self._stops.push(self._detok.flush())
        if result.stopped:
            return result
        return StopResult(result.text + self._stops.flush(), False)
