"""Logging in to the page with an API key, once per browser session.

With API keys configured, a browser that opens the page without a session is answered 401 with
a small login form. Posting a valid key there opens a session: a random token in an HttpOnly
cookie scoped to the page, which this process maps to the key. The guard (serving/api/auth.py,
`ApiKeyGuard`) lets the session's requests in with that key, and the page sends that same key
on its calls to the API (`deps.request_api_key`): each browser its own key, none kept in it.
"""

from __future__ import annotations

import html
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.requests import cookie_parser
from starlette.types import Scope

from serving.api.auth import request_api_key, route_path
from serving.errors import error_response

SESSION_COOKIE = "xiaophi_session"
MAX_SESSIONS = 10_000  # the oldest is forgotten beyond it (its browser logs in again)
MAX_FORM_BYTES = 4096  # the login form is one field; nothing bigger is read, nothing is stored

NOTES = {
    "login": "",
    "wrong": "API key 不正确，请重新输入。",
    "expired": "登录已失效，请重新输入 API key。",
}

LOGIN_PAGE = """<!doctype html>
<html lang="zh-CN">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>登录 · 小Phi · xiaophi</title>
<style>
body {{ font-family: system-ui, sans-serif; background: #f6f7f9; margin: 0; }}
main {{ max-width: 22rem; margin: 12vh auto; background: #fff; padding: 2rem;
        border-radius: 12px; box-shadow: 0 2px 12px rgba(0, 0, 0, .08); }}
h1 {{ font-size: 1.3rem; margin: 0 0 1rem; }}
label {{ display: block; margin-bottom: .4rem; }}
input {{ width: 100%; box-sizing: border-box; padding: .55rem; font-size: 1rem; }}
button {{ margin-top: 1rem; width: 100%; padding: .6rem; font-size: 1rem; cursor: pointer;
          background: #f97316; color: #fff; border: 0; border-radius: 8px; }}
.note {{ color: #b91c1c; }}
</style>
</head>
<body>
<main>
<h1>小Phi · xiaophi</h1>
<p>这个服务器需要 API key。输入一次即可，本次浏览器会话内页面都会用它访问 API。</p>
<p class="note" id="login-note">{note}</p>
<form method="post" action="{action}">
<label for="login-key">API key</label>
<input id="login-key" name="key" type="password" autocomplete="current-password" required autofocus>
<button id="login" type="submit">登录</button>
</form>
</main>
</body>
</html>
"""


class PageLogins:
    """The page's browser sessions (token -> key), the login form and its routes.

    It is what `ApiKeyGuard` calls its `BrowserLogin`: the paths under `path` accept a session,
    and `POST {path}/login` (checking the key itself with `check`) opens one.
    """

    def __init__(
        self,
        check: Callable[[str | None], bool],
        path: str = "/ui",
        max_sessions: int = MAX_SESSIONS,
    ) -> None:
        self.check = check
        self.path = path.rstrip("/")
        self.login_path = f"{self.path}/login"
        self.logout_path = f"{self.path}/logout"
        self.max_sessions = max_sessions
        self._keys: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ sessions

    def open(self, key: str) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._keys[token] = key
            while len(self._keys) > self.max_sessions:
                self._keys.popitem(last=False)
        return token

    def close(self, token: str | None) -> None:
        with self._lock:
            self._keys.pop(token or "", None)

    def _token(self, scope: Scope) -> str | None:
        for name, value in scope.get("headers") or ():
            if name == b"cookie":
                return cookie_parser(value.decode("latin-1")).get(SESSION_COOKIE)
        return None

    # ------------------------------------------------------------------ BrowserLogin

    def covers(self, path: str) -> bool:
        return path == self.path or path.startswith(self.path + "/")

    def session_key(self, scope: Scope) -> str | None:
        token = self._token(scope)
        if not token:
            return None
        with self._lock:
            return self._keys.get(token)

    def is_login(self, scope: Scope) -> bool:
        return scope.get("method") == "POST" and route_path(scope) == self.login_path

    def login_page(self, scope: Scope) -> Response | None:
        """The form, for a browser asking for a page (GET, HTML); None for anything else."""
        if scope.get("method") not in ("GET", "HEAD") or not _wants_html(scope):
            return None
        return self.page(scope, "expired" if self._token(scope) else "login")

    def page(self, scope: Scope, note: str) -> HTMLResponse:
        action = html.escape(scope.get("root_path", "") + self.login_path)
        body = LOGIN_PAGE.format(note=html.escape(NOTES[note]), action=action)
        return HTMLResponse(
            body,
            status_code=401,
            headers={"WWW-Authenticate": "Bearer", "Cache-Control": "no-store"},
        )

    # ------------------------------------------------------------------ routes

    def install(self, app: FastAPI) -> None:
        """Add the login and logout routes (before the page is mounted, so they come first)."""

        @app.post(self.login_path, include_in_schema=False)
        async def login(request: Request) -> Response:
            # the key typed into the form, else the one the request was let in with
            key = await _form_key(request) or request_api_key(request.scope) or ""
            if not self.check(key):
                if _wants_html(request.scope):
                    return self.page(request.scope, "wrong" if key else "login")
                return error_response(
                    401,
                    "Incorrect API key provided." if key else "Missing API key: post `key`.",
                    code="invalid_api_key" if key else "missing_api_key",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            root = request.scope.get("root_path", "")
            response = RedirectResponse(f"{root}{self.path}/", status_code=303)
            response.set_cookie(
                SESSION_COOKIE,
                self.open(key),
                path=f"{root}{self.path}",
                httponly=True,
                samesite="lax",
                secure=request.url.scheme == "https",
            )
            return response

        @app.get(self.logout_path, include_in_schema=False)
        async def logout(request: Request) -> Response:
            self.close(request.cookies.get(SESSION_COOKIE))
            root = request.scope.get("root_path", "")
            response = RedirectResponse(f"{root}{self.path}/", status_code=303)
            response.delete_cookie(SESSION_COOKIE, path=f"{root}{self.path}")
            return response


def _wants_html(scope: Scope) -> bool:
    """A browser asking for a page (API clients get the JSON error body instead)."""
    return scope.get("type") == "http" and b"text/html" in dict(scope.get("headers") or ()).get(
        b"accept", b""
    )


async def _form_key(request: Request) -> str:
    """The form's `key` field (urlencoded, as the form posts it; anything else is no key)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return ""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return ""
    fields = parse_qs(body.decode("utf-8", "replace"))
    return (fields.get("key") or [""])[0].strip()
