"""An engine's grammars, made when first needed: xgrammar (and its compiler for the model's
tokenizer) loads only once a request asks for structured output."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from serving.engine.grammar import GrammarBatch, GrammarCompiler, GrammarMatcher
    from serving.engine.grammar_spec import GrammarSpec


class LazyGrammars:
    """`matcher(spec)` for a new request, `mask(logits, matchers)` for a step's rows."""

    def __init__(self, tokenizer, model) -> None:
        self._tokenizer = tokenizer
        self._model = model
        self._compiler: GrammarCompiler | None = None
        self._batch: GrammarBatch | None = None
        self._lock = threading.Lock()

    def _ready(self) -> GrammarCompiler:
        with self._lock:
            if self._compiler is None:
                if self._tokenizer is None:
                    raise RuntimeError("structured output needs the engine's tokenizer")
                from serving.engine.grammar import GrammarBatch, GrammarCompiler
                from serving.engine.queued import model_eos_token_ids

                self._compiler = GrammarCompiler(
                    self._tokenizer,
                    vocab_size=int(self._model.config.vocab_size),
                    stop_token_ids=sorted(model_eos_token_ids(self._model)) or None,
                )
                self._batch = GrammarBatch(self._compiler.vocab_size)
            return self._compiler

    def matcher(self, spec: GrammarSpec) -> GrammarMatcher:
        return self._ready().matcher(spec)

    def mask(self, logits: torch.Tensor, matchers: list[GrammarMatcher | None]) -> None:
        """Every grammar row of `logits` [rows, vocab] masked in place (others untouched)."""
        self._ready()
        self._batch.mask(logits, matchers)
