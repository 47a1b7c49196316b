"""Dictionary tools the server runs for its clients (`XIAOPHI_TOOLS_FILE`, `/v1/tools`).

A model trained to look things up (the demo's `lookup_idiom`, `lookup_word`, `lookup_xiehouyu`)
needs someone to run its calls; the page asks the server, which holds the dictionaries. The file
is JSON (`make demo` writes `data/demo/tools.json`; anyone can write their own):

    {"not_found": "没有找到“{term}”。",
     "tools": [{"tool": {"type": "function", "function": {"name": "lookup_idiom", ...,
                          "parameters": {"type": "object",
                                         "properties": {"term": {"type": "string"}},
                                         "required": ["term"]}}},
                "entries": {"守株待兔": "守株待兔：比喻……"}}]}

Each tool takes one required string argument, the key it looks up; its result is the entry's text
as stored, or `not_found` with `{term}` filled in — the texts the model saw in training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema


class ToolsFileError(ValueError):
    """The tools file cannot be used; the message names the file and what to fix."""


class UnknownTool(KeyError):
    pass


class BadArguments(ValueError):
    pass


@dataclass(frozen=True)
class DictionaryTool:
    schema: dict  # the OpenAI function tool, as clients pass it in `tools`
    key: str  # its one argument
    entries: dict[str, str]

    @property
    def name(self) -> str:
        return self.schema["function"]["name"]


@dataclass(frozen=True)
class DictionaryTools:
    tools: dict[str, DictionaryTool]
    not_found: str

    @classmethod
    def from_settings(cls, path: str | Path | None) -> DictionaryTools:
        """The tools of `path`, or none without one."""
        return cls.load(path) if path else cls({}, "")

    @classmethod
    def load(cls, path: str | Path) -> DictionaryTools:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ToolsFileError(f"tools file {path} does not exist") from exc
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ToolsFileError(f"tools file {path} is not readable JSON: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("tools"), list):
            raise ToolsFileError(f'tools file {path}: expected an object with a "tools" list')
        not_found = data.get("not_found", "没有找到“{term}”。")
        if not isinstance(not_found, str) or "{term}" not in not_found:
            raise ToolsFileError(
                f'tools file {path}: "not_found" must be a text with {{term}} in it'
            )
        tools: dict[str, DictionaryTool] = {}
        for i, item in enumerate(data["tools"]):
            tool = _tool(item, f"tools file {path}, tools[{i}]")
            if tool.name in tools:
                raise ToolsFileError(f"tools file {path}: the tool {tool.name!r} is listed twice")
            tools[tool.name] = tool
        return cls(tools, not_found)

    def schemas(self) -> list[dict]:
        return [tool.schema for tool in self.tools.values()]

    def run(self, name: str, arguments: Any) -> str:
        """The result of calling `name` with `arguments` (an object, or its JSON text as a
        model writes it)."""
        tool = self.tools.get(name)
        if tool is None:
            offered = ", ".join(sorted(self.tools)) or "none (start the server with a tools file)"
            raise UnknownTool(f"no tool named {name!r}; this server runs: {offered}")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError as exc:
                raise BadArguments(f"the arguments of {name} are not valid JSON: {exc}") from exc
        try:
            jsonschema.validate(arguments, tool.schema["function"]["parameters"])
        except jsonschema.ValidationError as exc:
            raise BadArguments(
                f"the arguments of {name} do not fit its schema: {exc.message}"
            ) from exc
        term = arguments[tool.key]
        return tool.entries.get(term) or self.not_found.replace("{term}", term)


def _tool(item: Any, where: str) -> DictionaryTool:
    if not isinstance(item, dict) or not isinstance(item.get("entries"), dict):
        raise ToolsFileError(f'{where}: expected {{"tool": {{...}}, "entries": {{...}}}}')
    schema = item.get("tool")
    function = schema.get("function") if isinstance(schema, dict) else None
    if not isinstance(function, dict) or schema.get("type") != "function":
        raise ToolsFileError(f'{where}: "tool" must be an OpenAI function tool (type "function")')
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise ToolsFileError(f'{where}: the tool has no "name"')
    parameters = function.get("parameters")
    try:
        jsonschema.Draft202012Validator.check_schema(parameters)
    except jsonschema.SchemaError as exc:
        raise ToolsFileError(
            f"{where} ({name}): parameters is not a JSON Schema: {exc.message}"
        ) from exc
    required = parameters.get("required") if isinstance(parameters, dict) else None
    properties = parameters.get("properties", {}) if isinstance(parameters, dict) else {}
    if not (isinstance(required, list) and len(required) == 1):
        raise ToolsFileError(
            f"{where} ({name}): a dictionary tool takes exactly one required argument"
        )
    key = required[0]
    if properties.get(key, {}).get("type") != "string":
        raise ToolsFileError(f"{where} ({name}): its argument {key!r} must be a string")
    entries = item["entries"]
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in entries.items()):
        raise ToolsFileError(f"{where} ({name}): every entry must map a text to a text")
    return DictionaryTool(schema, key, entries)
