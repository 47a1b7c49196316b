"""Mount the page into a FastAPI app (xiaophi-serve does this at `/ui`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import FastAPI

if TYPE_CHECKING:
    from serving.api.page_login import PageLogins


def local_api_url(host: str, port: int) -> str:
    """How a process on this machine reaches a server bound to `host:port`."""
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def request_key(request: Any) -> str | None:
    """The API key the server's guard let this page request in with (the user's login)."""
    from serving.api.auth import request_api_key

    http_request = getattr(request, "request", None) if request is not None else None
    return request_api_key(http_request.scope) if http_request is not None else None


def mount(
    app: FastAPI,
    api_url: str,
    path: str = "/ui",
    default_kb: str | None = None,
    logins: PageLogins | None = None,
) -> FastAPI:
    """Serve the page at `path` of `app`; the page calls the API at `api_url` over HTTP.

    Each call sends the key its request came in with (the key its user logged in with through
    `logins`, when the server wants keys); the page has no key of its own.
    """
    import gradio as gr

    from ui.app import build_ui

    if logins is not None:
        logins.install(app)  # before the page: these routes come first
    demo = build_ui(
        api_url,
        default_kb=default_kb,
        request_key=request_key,
        logout_url="logout" if logins is not None else None,
    )
    return gr.mount_gradio_app(app, demo, path=path, run_history=False, ssr_mode=False)
