"""OpenAI-style error bodies (`{"error": {message, type, param, code}}`) with the right status."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rag.errors import (
    Conflict,
    EmbedderUnavailable,
    InvalidInput,
    KBError,
    NotFound,
    StoreUnavailable,
    TooLarge,
)
from serving.exceptions import (
    ContextLengthError,
    EngineNotReadyError,
    InvalidRequestError,
    ModelNotFoundError,
    QueueFullError,
    ServiceError,
)
from serving.schemas import ErrorDetail, ErrorResponse
from serving.service import GenerationFailedError

logger = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "internal_error",
    503: "service_unavailable_error",
}


def error_body(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> dict:
    detail = ErrorDetail(
        message=message, type=_TYPES.get(status, "api_error"), param=param, code=code
    )
    return ErrorResponse(error=detail).model_dump()


def error_response(
    status: int,
    message: str,
    param: str | None = None,
    code: str | None = None,
    headers: dict | None = None,
) -> JSONResponse:
    return JSONResponse(
        error_body(status, message, param, code), status_code=status, headers=headers
    )


def status_of(exc: BaseException) -> int:
    """The HTTP status a service exception stands for."""
    if isinstance(exc, GenerationFailedError) and exc.status is not None:
        return exc.status
    for cls, status in (
        (ModelNotFoundError, 404),
        (ContextLengthError, 400),
        (InvalidRequestError, 400),
        (QueueFullError, 429),
        (EngineNotReadyError, 503),
        # knowledge-base errors (rag/errors.py)
        (NotFound, 404),
        (InvalidInput, 400),
        (TooLarge, 413),
        (Conflict, 409),
        (EmbedderUnavailable, 503),
        (StoreUnavailable, 503),
    ):
        if isinstance(exc, cls):
            return status
    return 500


def body_for(exc: BaseException) -> tuple[int, dict]:
    """Status and OpenAI error body for any exception (used in-stream too)."""
    status = status_of(exc)
    if isinstance(exc, ServiceError):
        return status, error_body(status, exc.message, exc.param, exc.code)
    if isinstance(exc, KBError):
        return status, error_body(status, exc.message, code=exc.kind)
    if isinstance(exc, QueueFullError):
        return status, error_body(status, f"The server is busy: {exc}", code="queue_full")
    if isinstance(exc, EngineNotReadyError):
        return status, error_body(
            status, f"The model is not loaded: {exc}", code="model_not_loaded"
        )
    if isinstance(exc, GenerationFailedError):
        code = "upstream_error" if exc.status is not None else "generation_failed"
        return status, error_body(status, f"Generation failed: {exc}", code=code)
    return status, error_body(status, "Internal server error", code="internal_error")


def install_error_handlers(app: FastAPI) -> None:
    async def on_service_error(request: Request, exc: Exception) -> JSONResponse:
        status, body = body_for(exc)
        if isinstance(exc, EmbedderUnavailable):
            # a setting to fix, not a moment to wait out: no Retry-After
            logger.warning("knowledge-base request refused: %s", exc.message)
            return JSONResponse(body, status_code=status)
        if status >= 500 and not isinstance(exc, EngineNotReadyError):
            logger.exception("request failed", exc_info=exc)
        headers = {"Retry-After": "1"} if status in (429, 503) else None
        return JSONResponse(body, status_code=status, headers=headers)

    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(part) for part in first.get("loc", ()) if part != "body"]
        param = ".".join(loc) or None
        message = f"{param}: {first['msg']}" if param else str(first["msg"])
        return error_response(400, message, param=param, code="invalid_value")

    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            # Starlette names the methods of the first route that matched the path only; a
            # path served by several routes (GET and DELETE /v1/knowledge_bases/{kb}) takes all
            allowed = allowed_methods(request)
            message = f"{request.method} is not allowed here; use {', '.join(allowed)}."
            return error_response(405, message, headers={"Allow": ", ".join(allowed)})
        return error_response(exc.status_code, str(exc.detail), headers=headers)

    for cls in (
        ServiceError,
        QueueFullError,
        EngineNotReadyError,
        GenerationFailedError,
        KBError,
        Exception,
    ):
        app.add_exception_handler(cls, on_service_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app answers on this request's path (routers nest, so
    each method is asked of the routes the way Starlette matches them)."""
    routes = request.app.router.routes
    allowed = []
    for method in _METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] is Match.FULL for route in routes):
            allowed.append(method)
    return allowed


@dataclass(frozen=True)
class PathLimit:
    """A body limit of its own for one route (e.g. file uploads), instead of the global one."""

    method: str
    path: re.Pattern[str]
    max_bytes: int
    hint: str = ""

    def matches(self, scope: Scope) -> bool:
        return scope.get("method") == self.method and bool(self.path.fullmatch(scope["path"]))


class BodySizeLimit:
    """Answers 413 to bodies over the limit, declared (Content-Length) or streamed (chunked).

    The limit is `max_bytes`, or that of the first of `path_limits` matching the request.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, path_limits: Sequence[PathLimit] = ()) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.path_limits = tuple(path_limits)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rule = next((r for r in self.path_limits if r.matches(scope)), None)
        max_bytes = rule.max_bytes if rule else self.max_bytes
        hint = rule.hint if rule else ""
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            await self._too_large(scope, receive, send, max_bytes, hint)
            return
        if declared is not None:
            await self.app(scope, receive, send)
            return
        # No declared length: read the body up to the limit, then replay it.
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > max_bytes:
                await self._too_large(scope, receive, send, max_bytes, hint)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _too_large(
        self, scope: Scope, receive: Receive, send: Send, max_bytes: int, hint: str
    ) -> None:
        message = f"The request body is larger than {max_bytes} bytes."
        response = error_response(
            413, f"{message} {hint}" if hint else message, code="request_too_large"
        )
        await response(scope, receive, send)
