"""Tool use in SFT data, as OpenAI's API writes it: `tools` on a row (function schemas), assistant
turns with `tool_calls`, and `tool` turns holding what a call returned.

Checked here (a problem names the field, e.g. ``messages[1].tool_calls[0].function.arguments``)
and normalised to what the chat template renders and trl reads: every call as
``{"type": "function", "function": {"name", "arguments"}}`` with the arguments as compact JSON
text (json.dumps, as the template's `tojson` would write the object), `tools` as one JSON string
per row (trl parses a string `tools` column itself; Arrow cannot hold arbitrary JSON schemas).
"""

from __future__ import annotations

import json
from typing import Any

#: (field, problem-and-fix), or None when fine — the shape every row check in formats.py returns
RowProblem = tuple[str, str] | None


def describe(value: Any) -> str:
    """A value as a problem message quotes it: its type and the start of its JSON."""
    if value is None:
        return "null"
    text = json.dumps(value, ensure_ascii=False)
    return f"{type(value).__name__} {text[:40]}{'…' if len(text) > 40 else ''}"


def _function_of(item: dict) -> Any:
    """A tool or a call is either OpenAI's `{"type": "function", "function": {...}}` or the bare
    function object."""
    return item.get("function") if "function" in item else item


def tools_problem(value: Any) -> RowProblem:
    if not isinstance(value, list) or not value:
        return "tools", (
            'must be a non-empty list of {"type": "function", "function": {"name": ..., '
            f'"parameters": {{...}}}}}}; got {describe(value)}'
        )
    for i, tool in enumerate(value):
        where = f"tools[{i}]"
        fn = _function_of(tool) if isinstance(tool, dict) else None
        if not isinstance(fn, dict):
            return where, f'must be an object with a "function" object; got {describe(tool)}'
        if not isinstance(fn.get("name"), str) or not fn["name"].strip():
            return (
                f"{where}.function.name",
                f"must be a non-empty string; got {describe(fn.get('name'))}",
            )
        if "parameters" in fn and not isinstance(fn["parameters"], dict):
            return (
                f"{where}.function.parameters",
                f"must be a JSON Schema object; got {describe(fn['parameters'])}",
            )
    return None


def tool_names(tools: Any) -> set[str]:
    """The function names a row's (checked) `tools` declare; empty without tools."""
    if not isinstance(tools, list):
        return set()
    return {_function_of(t)["name"] for t in tools}


def tool_calls_problem(calls: Any, where: str, declared: set[str]) -> RowProblem:
    """One assistant turn's `tool_calls`; `declared` are the row's tool names (empty: any name,
    for rows that give no `tools`)."""
    field = f"{where}.tool_calls"
    if not isinstance(calls, list) or not calls:
        return field, f"must be a non-empty list of tool calls; got {describe(calls)}"
    for i, call in enumerate(calls):
        at = f"{field}[{i}]"
        fn = _function_of(call) if isinstance(call, dict) else None
        if not isinstance(fn, dict):
            return at, (
                'must be {"type": "function", "function": {"name": ..., "arguments": ...}}; '
                f"got {describe(call)}"
            )
        name = fn.get("name")
        if not isinstance(name, str) or not name.strip():
            return f"{at}.function.name", f"must be a non-empty string; got {describe(name)}"
        if declared and name not in declared:
            return f"{at}.function.name", (
                f"calls `{name}`, which the row's `tools` do not declare "
                f"({', '.join(sorted(declared))}); add it to `tools` or fix the name"
            )
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError as err:
                return f"{at}.function.arguments", (
                    f"is not valid JSON ({err.msg} at column {err.colno}); give the arguments "
                    "as a JSON object or as its JSON text"
                )
        if not isinstance(args, dict):
            return f"{at}.function.arguments", f"must be a JSON object; got {describe(args)}"
    return None


def tool_call(name: str, arguments: dict) -> dict:
    """A call as SFT data holds it: OpenAI's shape, the arguments as compact JSON text."""
    return {
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)},
    }


def normal_tool_call(call: dict) -> dict:
    """A checked call as the template renders it and the server's parser reads it back."""
    fn = _function_of(call)
    args = fn.get("arguments", {})
    return tool_call(fn["name"], json.loads(args) if isinstance(args, str) else args)


def tools_json(tools: Any) -> str | None:
    """A row's checked `tools` as one JSON string in OpenAI's shape (None without tools)."""
    if not tools:
        return None
    normal = [{"type": "function", "function": _function_of(t)} for t in tools]
    return json.dumps(normal, ensure_ascii=False)
