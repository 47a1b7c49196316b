"""The API-key guard: with `Settings.api_keys` set, nothing but `/health` answers without a key.

`ApiKeyGuard` is a middleware, so it covers every route, mounted apps (the page, the docs)
included: `Authorization: Bearer <key>`, or for the page at /ui the session of a browser that
logged in with a key (see serving/api/page_login.py). It is the only key check; `key_is_valid` is its
comparison. The paths it leaves open are those /openapi.json documents so (serving/api/openapi.py).
"""

from __future__ import annotations

import secrets
from collections.abc import Collection, Sequence
from typing import Protocol

from starlette.types import ASGIApp, Receive, Scope, Send

from serving.api.openapi import OPEN_PATHS
from serving.errors import error_response

# Where the guard leaves the key a request was let in with, for the page's own API calls.
SCOPE_KEY = "xiaophi.api_key"


def key_is_valid(keys: Sequence[str], presented: str | None) -> bool:
    """Whether `presented` is one of `keys`, compared in constant time (every key is tried)."""
    if not presented:
        return False
    given = presented.encode()
    found = False
    for key in keys:
        found |= secrets.compare_digest(given, key.encode())
    return found


def route_path(scope: Scope) -> str:
    """The request's path without the server's root path (as the routes see it)."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def bearer_token(scope: Scope) -> str | None:
    """The credentials of `Authorization: Bearer <key>`; "" for another or a malformed header."""
    for name, value in scope.get("headers") or ():
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return None


def request_api_key(scope: Scope) -> str | None:
    """The key the guard let this request in with (None when the server wants no key)."""
    return (scope.get("state") or {}).get(SCOPE_KEY)


class BrowserLogin(Protocol):
    """The page's logins: a browser there presents a session cookie instead of a header."""

    def covers(self, path: str) -> bool:
        """Whether a logged-in browser may reach `path` with its session."""
        ...

    def session_key(self, scope: Scope) -> str | None:
        """The key the request's session was opened with, if it has one."""
        ...

    def is_login(self, scope: Scope) -> bool:
        """The login request itself: it lets itself in with the key it carries."""
        ...

    def login_page(self, scope: Scope) -> ASGIApp | None:
        """What a browser that is not logged in sees (a 401 with a form), or None."""
        ...


class ApiKeyGuard:
    """ASGI middleware: no request but to `open_paths` reaches `app` without a valid key.

    A key comes from `Authorization: Bearer <key>` or, on the paths `browser` covers, from a
    logged-in browser's session; a wrong key is refused on every path, the login included.
    """

    def __init__(
        self,
        app: ASGIApp,
        keys: Sequence[str],
        browser: BrowserLogin | None = None,
        open_paths: Collection[str] = OPEN_PATHS,
    ) -> None:
        self.app = app
        self.keys = keys
        self.browser = browser
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or not self.keys:
            await self.app(scope, receive, send)
            return
        path = route_path(scope)
        if path in self.open_paths:
            await self.app(scope, receive, send)
            return
        browser = self.browser if self.browser is not None and self.browser.covers(path) else None
        presented = bearer_token(scope)
        if presented is None and browser is not None:
            if browser.is_login(scope):  # it checks the key it is sent (an old session's too)
                await self.app(scope, receive, send)
                return
            presented = browser.session_key(scope)
        if key_is_valid(self.keys, presented):
            scope.setdefault("state", {})[SCOPE_KEY] = presented
            await self.app(scope, receive, send)
            return
        if presented is None:
            message = "Missing API key: send `Authorization: Bearer <key>`."
            code = "missing_api_key"
        else:
            message, code = "Incorrect API key provided.", "invalid_api_key"
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": message})
            return
        response = browser.login_page(scope) if browser is not None else None
        if response is None:
            headers = {"WWW-Authenticate": "Bearer"}
            response = error_response(401, message, code=code, headers=headers)
        await response(scope, receive, send)
