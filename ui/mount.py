"""Mount the page into a FastAPI app (xiaophi-serve does this at `/ui`)."""

from __future__ import annotations

from fastapi import FastAPI


def local_api_url(host: str, port: int) -> str:
    """How a process on this machine reaches a server bound to `host:port`."""
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def mount(app: FastAPI, api_url: str, api_key: str | None = None, path: str = "/ui") -> FastAPI:
    """Serve the page at `path` of `app`; the page calls the API at `api_url` over HTTP."""
    import gradio as gr

    from ui.app import build_ui

    return gr.mount_gradio_app(
        app, build_ui(api_url, api_key), path=path, run_history=False, ssr_mode=False
    )
