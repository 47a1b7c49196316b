"""Structured output: a grammar applied as a mask on each decoding step's logits — OpenAI's
`response_format` (``json_object``, ``json_schema``) and forced tool calls (``tool_choice``
"required" or a named function), the way vLLM does them with xgrammar.

Per model: `GrammarCompiler(tokenizer, vocab_size=, stop_token_ids=)`, which compiles a
`GrammarSpec` (grammar_spec.py: picklable, read from the request fields) against the tokenizer and
keeps the result in an LRU keyed by the spec. Per request: `compiler.matcher(spec)` → a
`GrammarMatcher`: `mask(row)` before choosing, `accept(token)` after, end once `is_finished()`.
Per batch: `GrammarBatch.mask(logits, matchers)` masks the grammar rows in one pass.

Tokens never allowed: ids past the tokenizer (a model's vocabulary is often padded: the logits
are wider than len(tokenizer)), the tokenizer's special tokens (they would be text inside a JSON
string, then vanish on decoding), and the stop tokens until the grammar is complete — after that,
only stop tokens (and, where the grammar allows, more of the value: a number can grow).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence

import torch
import xgrammar as xgr

from serving.engine.grammar_schema import InvalidGrammarError
from serving.engine.grammar_spec import GrammarSpec, build_grammar, check

__all__ = [
    "GrammarBatch",
    "GrammarCompiler",
    "GrammarMatcher",
    "GrammarSpec",
    "InvalidGrammarError",
    "check",
]


class GrammarCompiler:
    """Compiles specs against one model's tokenizer. `vocab_size`: the model's logits width
    (config.vocab_size; may exceed len(tokenizer)); `stop_token_ids`: the ids that end a request
    (the model's generation_config eos ids; default: the tokenizer's eos). Thread-safe."""

    def __init__(
        self,
        tokenizer,
        *,
        vocab_size: int | None = None,
        stop_token_ids: Iterable[int] | None = None,
        cache_size: int = 128,
    ) -> None:
        stops = sorted(
            set(stop_token_ids if stop_token_ids is not None else [tokenizer.eos_token_id]) - {None}
        )
        if not stops:
            raise ValueError("GrammarCompiler needs stop_token_ids: the tokenizer has no eos token")
        vocab = tokenizer.get_vocab()
        size = vocab_size or max(len(vocab), max(vocab.values()) + 1)
        detected = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=size, stop_token_ids=stops
        )
        never = never_allowed(tokenizer, detected.decoded_vocab)
        encoded = [""] * size  # an empty token is one xgrammar never allows
        for token, i in vocab.items():
            if i < size and i not in never:
                encoded[i] = token
        self.info = xgr.TokenizerInfo(
            encoded,
            detected.vocab_type,
            vocab_size=size,
            stop_token_ids=stops,
            add_prefix_space=detected.add_prefix_space,
        )
        self.vocab_size = size
        self.stop_token_ids = tuple(stops)
        self._compiler = xgr.GrammarCompiler(self.info, max_threads=1, cache_enabled=False)
        self._cache: OrderedDict[GrammarSpec, xgr.CompiledGrammar] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def compile(self, spec: GrammarSpec) -> xgr.CompiledGrammar:
        """The compiled grammar for `spec`, from the LRU when it has been compiled before."""
        with self._lock:
            if spec in self._cache:
                self._cache.move_to_end(spec)
                return self._cache[spec]
        compiled = self._compiler.compile_grammar(build_grammar(spec))
        with self._lock:
            self._cache[spec] = compiled
            self._cache.move_to_end(spec)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return compiled

    def check(self, spec: GrammarSpec) -> None:
        """Compile `spec` (and keep it cached) or raise `InvalidGrammarError`."""
        self.compile(spec)

    def matcher(self, spec: GrammarSpec) -> GrammarMatcher:
        """A fresh matcher for one request."""
        return GrammarMatcher(self.compile(spec), self.vocab_size, self.stop_token_ids)

    def cache_len(self) -> int:
        return len(self._cache)


def never_allowed(tokenizer, decoded_vocab: Sequence[bytes]) -> set[int]:
    """Token ids no grammar of ours may produce: the special tokens (as text inside a JSON string
    they would vanish on decoding) and tokens holding a control character other than a newline —
    JSON never has one raw, but xgrammar 0.2.9 lets them into strings with minLength/maxLength
    (and a pattern), which json.loads then refuses. Newlines stay: the tool-call tags need them."""
    special = set(tokenizer.all_special_ids) | {
        i for i, added in tokenizer.added_tokens_decoder.items() if added.special
    }
    control = {
        i for i, text in enumerate(decoded_vocab) if any(b < 0x20 and b != 0x0A for b in text)
    }
    return special | control


class GrammarMatcher:
    """One request's place in its grammar. Per step: `mask(logits_row)`, choose a token from the
    masked row, `accept(token)`; end the request once `is_finished()` (or on a stop token)."""

    def __init__(
        self, compiled: xgr.CompiledGrammar, vocab_size: int, stop_token_ids: Sequence[int]
    ):
        self._matcher = xgr.GrammarMatcher(compiled)
        self.vocab_size = vocab_size
        self.stop_token_ids = frozenset(stop_token_ids)
        self._bitmask = xgr.allocate_token_bitmask(1, vocab_size)
        self._finished: tuple[int, bool] | None = None  # (accepted count, answer)
        self.accepted = 0

    def fill(self, bitmask: torch.Tensor, index: int = 0) -> None:
        """Write the allowed-next-token bits into `bitmask[index]` (int32, ceil(vocab/32) wide)."""
        self._matcher.fill_next_token_bitmask(bitmask, index)

    def mask(self, logits_row: torch.Tensor) -> None:
        """Set every token the grammar does not allow next to -inf, in place (one row)."""
        self.fill(self._bitmask)
        apply_bitmask(logits_row, self._bitmask, self.vocab_size)

    def allowed_token_ids(self) -> list[int]:
        self.fill(self._bitmask)
        return allowed_ids(self._bitmask[0], self.vocab_size)

    def accept(self, token_id: int) -> bool:
        """Advance by one token; False (state unchanged) if the grammar does not allow it —
        a masked sampler never picks such a token, so the engine should fail the request."""
        ok = self._matcher.accept_token(int(token_id))
        self.accepted += ok
        return ok

    def accepts_end(self) -> bool:
        """The output so far is complete: a stop token is allowed now."""
        return self._matcher.is_terminated() or self._matcher.is_completed()

    def is_finished(self) -> bool:
        """End the request: a stop token was accepted, or the grammar is complete and nothing but
        a stop token may follow (an engine that ignores EOS must still stop here)."""
        if self._matcher.is_terminated():
            return True
        if not self._matcher.is_completed():
            return False
        if self._finished is None or self._finished[0] != self.accepted:
            self._finished = (self.accepted, set(self.allowed_token_ids()) <= self.stop_token_ids)
        return self._finished[1]


class GrammarBatch:
    """Masks the grammar rows of a batch's [rows, vocab] logits in one pass, reusing one bitmask.
    `max_threads` > 1 fills the rows' bitmasks in parallel (worth it for big batches only)."""

    def __init__(self, vocab_size: int, max_threads: int = 1) -> None:
        self.vocab_size = vocab_size
        self._bitmask = xgr.allocate_token_bitmask(8, vocab_size)
        self._filler = xgr.BatchGrammarMatcher(max_threads) if max_threads > 1 else None

    def mask(self, logits: torch.Tensor, matchers: Sequence[GrammarMatcher | None]) -> None:
        """In place: row i masked by matchers[i]; rows whose matcher is None left as they are."""
        rows = [i for i, m in enumerate(matchers) if m is not None]
        if not rows:
            return
        if self._bitmask.shape[0] < len(matchers):
            self._bitmask = xgr.allocate_token_bitmask(2 * len(matchers), self.vocab_size)
        if self._filler is not None:
            self._filler.batch_fill_next_token_bitmask(
                [matchers[i]._matcher for i in rows], self._bitmask, rows
            )
        else:
            for i in rows:
                matchers[i].fill(self._bitmask, i)
        apply_bitmask(logits, self._bitmask[: len(matchers)], self.vocab_size, rows)


def apply_bitmask(
    logits: torch.Tensor, bitmask: torch.Tensor, vocab_size: int, rows: list[int] | None = None
) -> None:
    """-inf where the bit is 0, and past `vocab_size` (a wider logits row), in place."""
    width = logits.shape[-1]
    if logits.device.type != "cpu":
        bitmask = bitmask.to(logits.device, non_blocking=True)
    if logits.dtype in (torch.float32, torch.float16, torch.bfloat16):
        xgr.apply_token_bitmask_inplace(
            logits,
            bitmask if logits.dim() == 2 else bitmask[0],
            vocab_size=min(width, vocab_size),
            indices=rows,
        )
    else:  # float64: no kernel, so unpack the bits
        view = logits if logits.dim() == 2 else logits[None]
        for i in rows if rows is not None else range(view.shape[0]):
            keep = torch.zeros(width, dtype=torch.bool, device=logits.device)
            keep[allowed_ids(bitmask[i], min(width, vocab_size))] = True
            view[i].masked_fill_(~keep, float("-inf"))
    if width > vocab_size:
        if logits.dim() == 1:
            logits[vocab_size:] = float("-inf")
        else:
            logits[rows if rows is not None else slice(None), vocab_size:] = float("-inf")


_SHIFTS = torch.arange(32, dtype=torch.int32)


def allowed_ids(bitmask_row: torch.Tensor, vocab_size: int) -> list[int]:
    """The token ids whose bit is set in one bitmask row."""
    bits = (bitmask_row.cpu()[:, None] >> _SHIFTS) & 1
    return bits.flatten()[:vocab_size].nonzero().flatten().tolist()
