"""What can go wrong while serving a request, and the HTTP answer each stands for.

Service code raises these types (it knows nothing of HTTP); the handlers installed by
`install_error_handlers` turn them, and FastAPI's own errors, into OpenAI-style bodies
(`{"error": {message, type, param, code}}`) with the right status.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from rag.errors import (
    Conflict,
    EmbedderUnavailable,
    InvalidInput,
    KBError,
    NotFound,
    StoreUnavailable,
    TooLarge,
)
from serving.engine.base import (
    ENGINE_RESTARTING,
    EngineNotReadyError,
    EngineRestartingError,
    QueueFullError,
)
from serving.schemas import ErrorDetail, ErrorResponse

logger = logging.getLogger(__name__)


class ServiceError(Exception):
    """A request the service refuses; `param` names the offending field when there is one."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class InvalidRequestError(ServiceError):
    pass


class ContextLengthError(InvalidRequestError):
    pass


class ModelNotFoundError(ServiceError):
    pass


class ToolNotFoundError(ServiceError):
    pass


class GenerationFailedError(RuntimeError):
    """The engine failed a request after it started (reported to the client, in-stream if streaming).

    `status`: the HTTP status it stands for when the engine knows one (an upstream server's
    refusal, or its being unreachable; 503 when its process died and is restarting); else it
    is a 500. `code`: the OpenAI error code, when the engine knows a more telling one."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


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
        (ToolNotFoundError, 404),
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
    if isinstance(exc, EngineRestartingError):
        return status, error_body(status, f"{exc}; retry shortly", code=ENGINE_RESTARTING)
    if isinstance(exc, EngineNotReadyError):
        return status, error_body(
            status, f"The model is not loaded: {exc}", code="model_not_loaded"
        )
    if isinstance(exc, GenerationFailedError):
        code = exc.code or ("upstream_error" if exc.status is not None else "generation_failed")
        return status, error_body(status, f"Generation failed: {exc}", code=code)
    return status, error_body(status, "Internal server error", code="internal_error")


def install_error_handlers(app: FastAPI) -> None:
    async def on_service_error(request: Request, exc: Exception) -> JSONResponse:
        status, body = body_for(exc)
        if isinstance(exc, EmbedderUnavailable):
            # a setting to fix, not a moment to wait out: no Retry-After
            logger.warning("knowledge-base request refused: %s", exc.message)
            return JSONResponse(body, status_code=status)
        # Outages a client waits out are no bugs: no traceback. The engine logged its process's
        # death once already; the KB database being down gets a line per request.
        if isinstance(exc, StoreUnavailable):
            logger.warning("knowledge-base request refused: %s", exc.message)
        elif status >= 500 and not (
            isinstance(exc, EngineNotReadyError) or body["error"]["code"] == ENGINE_RESTARTING
        ):
            logger.exception("request failed", exc_info=exc)
        headers = None
        if status in (429, 503):
            headers = {"Retry-After": str(getattr(exc, "retry_after_s", 1))}
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
