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


def request_grammar(request: SamplingFields) -> GrammarSpec | None:
    """The grammar a request asks for, checked: `response_format`'s, or the forced tool calls of
    `tool_choice` "required" or a named function (not both)."""
    tools = getattr(request, "tools", None)
    choice = getattr(request, "tool_choice", None)
    forced = bool(tools) and choice not in (None, "none", "auto")
    shapes = [
        name
        for name, given in (
            ("tool_choice", forced),
            ("response_format", request.response_format is not None),
            ("structured_outputs", request.structured_outputs is not None),
        )
        if given
    ]
    if len(shapes) > 1:
        raise InvalidRequestError(
            f"{' and '.join(f'`{n}`' for n in shapes)} cannot both shape the answer; send one",
            param=shapes[-1],
        )
    try:
        if request.structured_outputs is not None:
            grammar = request.structured_outputs.get("grammar")
            if not isinstance(grammar, str) or set(request.structured_outputs) != {"grammar"}:
                raise InvalidGrammarError(
                    'structured_outputs takes {"grammar": "<EBNF text>"} here; use '
                    "response_format for JSON",
                    "structured_outputs",
                )
            spec = GrammarSpec.ebnf(grammar)
        elif forced:
            spec = GrammarSpec.from_tool_choice(
                [t.model_dump(exclude_none=True) for t in tools],
                choice if isinstance(choice, str) else choice.model_dump(),
                parallel_tool_calls=request.parallel_tool_calls,
            )
        elif request.response_format is not None:
            spec = GrammarSpec.from_response_format(request.response_format)
        else:
            return None
        if spec is not None:
            check_grammar(spec)
    except InvalidGrammarError as exc:
        raise InvalidRequestError(exc.message, param=exc.param) from None
    return spec
