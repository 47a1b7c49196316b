"""OpenAI-style error bodies (`{"error": {message, type, param, code}}`) with the right status."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "internal_error",
    503: "service_unavailable_error",
}


class AuthenticationError(ServiceError):
    pass


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
    for cls, status in (
        (AuthenticationError, 401),
        (ModelNotFoundError, 404),
        (ContextLengthError, 400),
        (InvalidRequestError, 400),
        (QueueFullError, 429),
        (EngineNotReadyError, 503),
    ):
        if isinstance(exc, cls):
            return status
    return 500


def body_for(exc: BaseException) -> tuple[int, dict]:
    """Status and OpenAI error body for any exception (used in-stream too)."""
    status = status_of(exc)
    if isinstance(exc, ServiceError):
        return status, error_body(status, exc.message, exc.param, exc.code)
    if isinstance(exc, QueueFullError):
        return status, error_body(status, f"The server is busy: {exc}", code="queue_full")
    if isinstance(exc, EngineNotReadyError):
        return status, error_body(
            status, f"The model is not loaded: {exc}", code="model_not_loaded"
        )
    if isinstance(exc, GenerationFailedError):
        return status, error_body(status, f"Generation failed: {exc}", code="generation_failed")
    return status, error_body(status, "Internal server error", code="internal_error")


def install_error_handlers(app: FastAPI) -> None:
    async def on_service_error(request: Request, exc: Exception) -> JSONResponse:
        status, body = body_for(exc)
        if status >= 500 and not isinstance(exc, EngineNotReadyError):
            logger.exception("request failed", exc_info=exc)
        headers = {"Retry-After": "1"} if status in (429, 503) else None
        if status == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        return JSONResponse(body, status_code=status, headers=headers)

    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(part) for part in first.get("loc", ()) if part != "body"]
        param = ".".join(loc) or None
        message = f"{param}: {first['msg']}" if param else str(first["msg"])
        return error_response(400, message, param=param, code="invalid_value")

    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(
            exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None)
        )

    for cls in (
        ServiceError,
        QueueFullError,
        EngineNotReadyError,
        GenerationFailedError,
        Exception,
    ):
        app.add_exception_handler(cls, on_service_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)


class BodySizeLimit:
    """Answers 413 to bodies over `max_bytes`, declared (Content-Length) or streamed (chunked)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(scope, receive, send)
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
            if size > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            413,
            f"The request body is larger than {self.max_bytes} bytes.",
            code="request_too_large",
        )
        await response(scope, receive, send)
