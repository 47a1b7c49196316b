"""The request-body limit: a 413 in the API's error schema for bodies over the limit.

An ASGI middleware, so it holds before any route reads the body; some routes (file uploads)
get a limit of their own (`PathLimit`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.errors import error_response


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
