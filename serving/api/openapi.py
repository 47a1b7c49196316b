"""What `/openapi.json` says beyond each route's own models, so that it describes the server.

- One error model (`ErrorResponse`, OpenAI's `{"error": {...}}`) on every status a route can
  answer with; routes name their statuses with `error_responses(...)`.
- Invalid requests are 400 with that body (serving/errors.py), so FastAPI's generated 422
  `HTTPValidationError` is replaced; every POST can meet the body-size limit (413).
- With API keys configured, every operation but `/health` needs the bearer key and may answer
  401; without keys, no operation asks for one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI

from serving.schemas import ErrorResponse

BEARER_SCHEME = "HTTPBearer"
#: Paths that answer without an API key.
OPEN_PATHS = frozenset({"/health"})

ERROR_DESCRIPTIONS = {
    400: "Invalid request: a field, the JSON itself, or a value this model cannot take "
    "(`error.param` names the field).",
    401: "Missing or wrong API key (`Authorization: Bearer <key>`).",
    404: "Unknown model, tool, knowledge base or document.",
    409: "The knowledge base already exists, or another writer kept it busy too long.",
    413: "The request body, or an uploaded file, is larger than the server accepts.",
    429: "The server is busy (too many requests running and waiting): retry later.",
    503: "The model, its engine or the knowledge-base embedder is not available.",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route or router: these statuses, each with the OpenAI error body."""
    return {
        status: {"model": ErrorResponse, "description": ERROR_DESCRIPTIONS[status]}
        for status in statuses
    }


#: `responses=` for the 200 of a route that streams server-sent events when `stream` is true.
STREAMED_OK = {
    200: {
        "description": "The answer; with `stream: true` server-sent events (`data: {chunk}` "
        "lines, ending with `data: [DONE]`).",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


def document_api(app: FastAPI, api_keys: Sequence[str]) -> None:
    """Make `app.openapi()` describe errors, limits and keys as the server applies them."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _describe(generate(), bool(api_keys))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _describe(schema: dict[str, Any], keys: bool) -> dict[str, Any]:
    error_ref = {"$ref": "#/components/schemas/ErrorResponse"}

    def error(status: int) -> dict[str, Any]:
        return {
            "description": ERROR_DESCRIPTIONS[status],
            "content": {"application/json": {"schema": error_ref}},
        }

    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            if responses.pop("422", None) is not None:
                responses.setdefault("400", error(400))
            if method == "post":
                responses.setdefault("413", error(413))
            if keys and path not in OPEN_PATHS:
                operation["security"] = [{BEARER_SCHEME: []}]
                responses.setdefault("401", error(401))
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    if keys:
        components.setdefault("securitySchemes", {})[BEARER_SCHEME] = {
            "type": "http",
            "scheme": "bearer",
        }
    return schema
