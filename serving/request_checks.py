"""Checks of a generation request that need the model's tokenizer or the grammar layer (the
schemas check everything else): each refusal is a 400 naming the field and what to fix."""

from __future__ import annotations

from serving.engine.grammar_schema import InvalidGrammarError
from serving.engine.grammar_spec import GrammarSpec
from serving.engine.grammar_spec import check as check_grammar
from serving.errors import InvalidRequestError
from serving.schemas import SamplingFields


def check_token_ids(request: SamplingFields, vocab: int) -> None:
    """`logit_bias` keys and `stop_token_ids` must be token ids of this model."""
    for key in request.logit_bias or {}:
        if not key.isdigit() or int(key) >= vocab:
            raise InvalidRequestError(
                f"`logit_bias` key {key!r} is not a token id of this model (0 to {vocab - 1})",
                param="logit_bias",
            )
    outside = [t for t in request.stop_token_ids or [] if not 0 <= t < vocab]
    if outside:
        raise InvalidRequestError(
            f"`stop_token_ids` {outside} are not token ids of this model (0 to {vocab - 1})",
            param="stop_token_ids",
        )


def response_grammar(request: SamplingFields) -> GrammarSpec | None:
    """The grammar `response_format` asks for, checked."""
    if request.response_format is None:
        return None
    try:
        spec = GrammarSpec.from_response_format(request.response_format)
        if spec is not None:
            check_grammar(spec)
    except InvalidGrammarError as exc:
        raise InvalidRequestError(exc.message, param=exc.param) from None
    return spec
