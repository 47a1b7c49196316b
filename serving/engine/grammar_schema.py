"""The JSON Schemas a grammar is built from, checked before xgrammar sees them.

xgrammar (0.2.9) refuses many broken schemas itself, but it compiles some valid and invalid ones
while silently ignoring a keyword, so the output could break the schema it was promised to follow.
Here a schema must (1) be a valid JSON Schema (its metaschema, by `$schema`, default draft
2020-12) and (2) use no keyword the grammar would drop. Each refusal is an `InvalidGrammarError`
(a ValueError: the API answers 400) that names the place in the schema and what to change.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

import jsonschema


class InvalidGrammarError(ValueError):
    """A response format or tool list no grammar can be built from. `param`: the request field
    at fault (``response_format``, ``tools`` or ``tool_choice``), for the API's error body."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


#: Keywords xgrammar compiles without enforcing them (checked by hand against 0.2.9).
IGNORED_KEYWORDS = {
    "not": "remove `not`; list the allowed values or types instead",
    "if": "remove if/then/else; use anyOf with one branch per case",
    "then": "remove if/then/else; use anyOf with one branch per case",
    "else": "remove if/then/else; use anyOf with one branch per case",
    "dependentRequired": "remove it; put the properties in `required`, or use anyOf",
    "dependentSchemas": "remove it; use anyOf with one branch per case",
    "dependencies": "remove it; put the properties in `required`, or use anyOf",
    "contains": "remove contains/minContains/maxContains; constrain `items` instead",
    "minContains": "remove contains/minContains/maxContains; constrain `items` instead",
    "maxContains": "remove contains/minContains/maxContains; constrain `items` instead",
    "$dynamicRef": "use a plain `$ref` into `$defs`",
    "$recursiveRef": "use a plain `$ref` into `$defs`",
}
#: Keywords whose value is one subschema, a map of them, or a list of them.
ONE_SCHEMA = (
    "items", "additionalProperties", "unevaluatedProperties", "unevaluatedItems",
    "propertyNames", "additionalItems", "contains", "not", "if", "then", "else",
)  # fmt: skip
MAP_OF_SCHEMAS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
LIST_OF_SCHEMAS = ("anyOf", "oneOf", "allOf", "prefixItems", "items")


def canonical_json(value: Any) -> str:
    """Compact JSON that keeps key order (the order of `properties` is the order generated)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def load_schema(schema: Any, what: str, param: str) -> Any:
    """`schema` as a JSON value: a dict or bool as given, a str parsed as JSON text."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as e:
            raise InvalidGrammarError(f"{what} is not valid JSON text: {e}", param) from e
    if isinstance(schema, Mapping):
        schema = dict(schema)
    if not isinstance(schema, dict | bool):
        raise InvalidGrammarError(
            f"{what} must be a JSON Schema object (or true/false), got {type(schema).__name__}",
            param,
        )
    try:
        canonical_json(schema)
    except (TypeError, ValueError) as e:
        raise InvalidGrammarError(f"{what} is not plain JSON: {e}", param) from e
    return schema


def check_schema(schema: Any, what: str, param: str) -> None:
    """Raise `InvalidGrammarError` unless `schema` is a valid JSON Schema that the grammar can
    enforce whole. `what` names it in messages ("the response_format JSON schema")."""
    if schema is False:
        raise InvalidGrammarError(f"{what} is `false`, which no value satisfies", param)
    if schema is True:
        return
    validator = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        validator.check_schema(schema)
    except jsonschema.SchemaError as e:
        where = _pointer(e.path)
        raise InvalidGrammarError(
            f"{what} is not a valid JSON Schema ({validator.__name__.removesuffix('Validator')}): "
            f"at {where}: {e.message}",
            param,
        ) from None
    for path, sub in _subschemas(schema, ()):
        problem = _unenforced(sub)
        if problem:
            raise InvalidGrammarError(
                f"{what} uses what structured output cannot enforce, at {_pointer(path)}: "
                f"{problem}",
                param,
            )


def _pointer(path) -> str:
    return "#/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in path)


def _subschemas(schema: Any, path: tuple) -> Iterator[tuple[tuple, dict]]:
    """Every subschema object in `schema` with its path (data under const/enum/default skipped)."""
    if not isinstance(schema, dict):
        return
    yield path, schema
    for key in ONE_SCHEMA:
        if isinstance(schema.get(key), dict):
            yield from _subschemas(schema[key], (*path, key))
    for key in MAP_OF_SCHEMAS:
        if isinstance(schema.get(key), dict):
            for name, sub in schema[key].items():
                yield from _subschemas(sub, (*path, key, name))
    for key in LIST_OF_SCHEMAS:
        if isinstance(schema.get(key), list):
            for i, sub in enumerate(schema[key]):
                yield from _subschemas(sub, (*path, key, i))


def _unenforced(schema: dict) -> str | None:
    """What in this one subschema the grammar would not enforce, and the fix; None if nothing."""
    for key, fix in IGNORED_KEYWORDS.items():
        if key in schema:
            return f"`{key}` is not supported: {fix}"
    if schema.get("uniqueItems") is True:
        return "`uniqueItems: true` is not supported: remove it (duplicates cannot be ruled out)"
    if "multipleOf" in schema and schema.get("type") != "integer":
        return "`multipleOf` is supported only with `type: integer`: use an integer, or remove it"
    if len(schema.get("allOf", [])) > 1:
        return "`allOf` with several schemas is not supported: merge them into one schema"
    if "pattern" in schema and ("minLength" in schema or "maxLength" in schema):
        return "`pattern` with minLength/maxLength is not supported: put the length in the pattern"
    missing = [
        name for name in schema.get("required", []) if name not in schema.get("properties", {})
    ]
    if missing:
        return (
            f"required {missing} not declared in `properties`: declare each required property "
            "there (only declared properties are generated)"
        )
    return None
