"""What a request's output must follow (`GrammarSpec`), read from the OpenAI request fields, and
the tokenizer-free grammar it stands for (`build_grammar`, `check`).

A spec holds plain strings only, so it pickles into the engine's own process; equal specs (the
same schema's canonical JSON) are one cache entry. The grammar here is xgrammar's `Grammar`
before it meets a tokenizer: building it validates everything (`check`), which lets the API
refuse a bad schema with a 400 before the request is queued. Tool calls use the Hermes format
(`<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>`, blocks separated by a newline);
JSON uses json.dumps' separators and no other whitespace.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import xgrammar as xgr
from xgrammar.structural_tag import GrammarFormat, StructuralTag, TagFormat, TagsWithSeparatorFormat

from serving.engine.grammar_schema import (
    InvalidGrammarError,
    canonical_json,
    check_schema,
    load_schema,
)

SEPARATORS = (", ", ": ")
TOOL_CALL_BEGIN = "<tool_call>\n"
TOOL_CALL_END = "\n</tool_call>"
TOOL_CALL_SEPARATOR = "\n"
NO_PARAMETERS = canonical_json({"type": "object", "properties": {}})
RESPONSE_SCHEMA = "the response_format JSON schema"


def _function(tool: Any) -> Mapping | None:
    """The function object of an OpenAI tool (`{"type": "function", "function": {...}}`) or of a
    bare `{"name", "parameters"}`."""
    function = tool.get("function", tool) if isinstance(tool, Mapping) else None
    return function if isinstance(function, Mapping) else None


@dataclass(frozen=True)
class GrammarSpec:
    """`kind`: json_object, json_schema, tool_calls or ebnf. `schema`: the schema's canonical JSON
    (json_schema), or the grammar's EBNF text (ebnf: vLLM's `structured_outputs.grammar`).
    `tools`: (name, canonical JSON of its parameters schema) pairs (tool_calls). `parallel`:
    one or more tool calls, else exactly one."""

    kind: Literal["json_object", "json_schema", "tool_calls", "ebnf"]
    schema: str = ""
    tools: tuple[tuple[str, str], ...] = ()
    parallel: bool = False

    @classmethod
    def json_object(cls) -> GrammarSpec:
        return cls("json_object")

    @classmethod
    def json_schema(cls, schema: Mapping | str | bool) -> GrammarSpec:
        """`schema`: a dict, a bool, or its JSON text."""
        return cls(
            "json_schema", canonical_json(load_schema(schema, RESPONSE_SCHEMA, "response_format"))
        )

    @classmethod
    def tool_calls(cls, tools: Sequence[Mapping], *, parallel: bool = True) -> GrammarSpec:
        """Calls to the given functions: one or more (`parallel`), else exactly one."""
        pairs = []
        for i, tool in enumerate(tools):
            function = _function(tool)
            name = function.get("name") if function is not None else None
            if not isinstance(name, str) or not name:
                raise InvalidGrammarError(f"tools[{i}] has no function name", "tools")
            parameters = function.get("parameters")
            what = f"the parameters schema of function {name!r}"
            schema = (
                NO_PARAMETERS
                if parameters is None
                else canonical_json(load_schema(parameters, what, "tools"))
            )
            pairs.append((name, schema))
        if not pairs:
            raise InvalidGrammarError("a tool call is required, but `tools` is empty", "tools")
        return cls("tool_calls", tools=tuple(pairs), parallel=parallel)

    @classmethod
    def ebnf(cls, text: str) -> GrammarSpec:
        """A grammar in xgrammar's EBNF (its root rule `root`)."""
        return cls("ebnf", schema=text)

    @classmethod
    def from_response_format(cls, response_format: Mapping | None) -> GrammarSpec | None:
        """The spec for an OpenAI `response_format`; None for ``text`` or none."""
        kind = (response_format or {}).get("type", "text")
        if kind == "text":
            return None
        if kind == "json_object":
            return cls.json_object()
        if kind == "json_schema":
            body = response_format.get("json_schema")
            if not isinstance(body, Mapping) or "schema" not in body:
                raise InvalidGrammarError(
                    "response_format.json_schema.schema is required: the JSON Schema the answer "
                    "must follow",
                    "response_format",
                )
            return cls.json_schema(body["schema"])
        raise InvalidGrammarError(
            f"response_format.type {kind!r} is not supported: use text, json_object or json_schema",
            "response_format",
        )

    @classmethod
    def from_tool_choice(
        cls, tools: Sequence[Mapping] | None, tool_choice: Any, *, parallel_tool_calls: bool = True
    ) -> GrammarSpec | None:
        """The spec for OpenAI `tools` + `tool_choice`: None for "none"/"auto" (unconstrained),
        one or more calls for "required", exactly one call for a named function."""
        if tool_choice in (None, "none", "auto"):
            return None
        tools = list(tools or [])
        if tool_choice == "required":
            return cls.tool_calls(tools, parallel=parallel_tool_calls)
        named = _function(tool_choice)
        name = named.get("name") if named is not None else None
        if not isinstance(name, str):
            raise InvalidGrammarError(
                'tool_choice must be "none", "auto", "required" or '
                '{"type": "function", "function": {"name": ...}}',
                "tool_choice",
            )
        chosen = [t for t in tools if (_function(t) or {}).get("name") == name]
        if not chosen:
            have = [(_function(t) or {}).get("name") for t in tools]
            raise InvalidGrammarError(
                f"tool_choice names function {name!r}, which is not in tools {have}", "tool_choice"
            )
        return cls.tool_calls(chosen[:1], parallel=False)


def _clean(error: Exception) -> str:
    """xgrammar's C++ message without its timestamp and source location."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    text = re.sub(r"^\[[\d:.]+\] \S+:\d+: ", "", text)
    return text.replace("Check failed: (error.empty()) is false: ", "")


def _json_grammar(schema_json: str, what: str, param: str) -> xgr.Grammar:
    check_schema(json.loads(schema_json), what, param)
    try:
        return xgr.Grammar.from_json_schema(
            schema_json, any_whitespace=False, separators=SEPARATORS
        )
    except (RuntimeError, ValueError) as e:
        raise InvalidGrammarError(
            f"{what} cannot be turned into a grammar: {_clean(e)}", param
        ) from None


@functools.lru_cache(maxsize=256)
def build_grammar(spec: GrammarSpec) -> xgr.Grammar:
    """The grammar `spec` stands for, before it meets a tokenizer; raises `InvalidGrammarError`."""
    if spec.kind == "json_object":
        return xgr.Grammar.from_json_schema(
            '{"type":"object"}', any_whitespace=False, separators=SEPARATORS, strict_mode=False
        )
    if spec.kind == "json_schema":
        return _json_grammar(spec.schema, RESPONSE_SCHEMA, "response_format")
    if spec.kind == "ebnf":
        try:
            return xgr.Grammar.from_ebnf(spec.schema)
        except (RuntimeError, ValueError) as e:
            raise InvalidGrammarError(
                f"structured_outputs.grammar is not a grammar: {_clean(e)}", "structured_outputs"
            ) from None
    if spec.kind != "tool_calls" or not spec.tools:
        raise InvalidGrammarError(f"unknown grammar spec {spec.kind!r} (or no tools)")
    tags = []
    for name, parameters in spec.tools:
        arguments = _json_grammar(
            parameters, f"the parameters schema of function {name!r}", "tools"
        )
        prefix = '{"name": ' + json.dumps(name, ensure_ascii=False) + ', "arguments": '
        tags.append(
            TagFormat(
                begin=TOOL_CALL_BEGIN + prefix,
                content=GrammarFormat(grammar=str(arguments)),
                end="}" + TOOL_CALL_END,
            )
        )
    calls = TagsWithSeparatorFormat(
        tags=tags,
        separator=TOOL_CALL_SEPARATOR,
        at_least_one=True,
        stop_after_first=not spec.parallel,
    )
    try:
        return xgr.Grammar.from_structural_tag(StructuralTag(format=calls))
    except (RuntimeError, ValueError) as e:
        raise InvalidGrammarError(
            f"the tool-call grammar cannot be built: {_clean(e)}", "tools"
        ) from None


def check(spec: GrammarSpec) -> None:
    """Raise `InvalidGrammarError` unless a grammar can be built for `spec` (no tokenizer needed)."""
    build_grammar(spec)
