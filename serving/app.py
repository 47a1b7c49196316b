"""The FastAPI app: `create_app(settings)`; the model and its engine load in `lifespan`.

The knowledge-base routes do not need the model: they work while it loads, or without one.
Their service is created on first use (see serving/knowledge.py).

An engine lost for good (its process cannot be kept running: serving/engine/supervision.py)
sets `app.state.exit_code` and calls `app.state.request_exit`, which `xiaophi-serve` points at
uvicorn's graceful shutdown; the process then exits with that code.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace

from fastapi import FastAPI

from rag.config import KBSettings
from serving.api.auth import ApiKeyGuard, key_is_valid
from serving.api.body_limit import BodySizeLimit
from serving.api.openapi import document_api
from serving.api.routes import (
    chat,
    completions,
    embeddings,
    health,
    knowledge_bases,
    metrics,
    models,
    tools,
)
from serving.config import Settings
from serving.dictionary_tools import DictionaryTools
from serving.engine.factory import LoadedModel, build_engine
from serving.engine.supervision import ENGINE_LOST_EXIT_CODE
from serving.errors import install_error_handlers
from serving.generation_defaults import read_sampling_defaults
from serving.knowledge import KnowledgeBases, server_kb_settings
from serving.metrics import ServingMetrics
from serving.service import GenerationService

logger = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    load: Callable[[Settings], LoadedModel] = build_engine,
    kb_settings: KBSettings | None = None,
    dictionary_tools: DictionaryTools | None = None,
) -> FastAPI:
    """Build the app. `load` turns settings into an engine (tests and new engines swap it).

    `kb_settings` defaults to the `XIAOPHI_KB_*` variables, with `settings.kb_dir` when given
    and the run's own embedder beside the served checkpoint when none is configured.
    `dictionary_tools` defaults to `settings.tools_file`'s (a bad file raises ToolsFileError).
    """
    settings = settings or Settings()
    if kb_settings is None:
        kb_settings = server_kb_settings(settings.model, settings.kb_dir)
    kbs = KnowledgeBases(kb_settings)
    if dictionary_tools is None:
        dictionary_tools = DictionaryTools.from_settings(settings.tools_file)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded = None
        if settings.model is None:
            app.state.load_error = "no model configured: start with --model or XIAOPHI_MODEL"
        else:
            loaded = load(settings)
            loaded.engine.on_lost = lambda _reason: _engine_lost(app)
            await loaded.engine.start()
            app.state.service = GenerationService(
                loaded.engine,
                loaded.tokenizer,
                loaded.name,
                app.state.metrics,
                max_n=settings.max_n,
                knowledge=kbs.get,
                defaults=read_sampling_defaults(settings.model),
            )
        try:
            yield
        finally:
            app.state.service = None
            if loaded is not None:
                await loaded.engine.stop()
            kbs.close()  # the postgres backend's connection pool

    app = FastAPI(title="xiaophi", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.service = None
    app.state.load_error = None
    app.state.knowledge_bases = kbs
    app.state.dictionary_tools = dictionary_tools
    app.state.exit_code = 0
    app.state.request_exit = None  # set by whoever runs the server (serving/cli.py)
    app.state.metrics = ServingMetrics(
        lambda: app.state.service.engine.stats() if app.state.service is not None else None
    )
    install_error_handlers(app)
    kb_upload_limit = kbs.upload_limit(settings.max_upload_files, settings.max_body_bytes)
    path_limits = [kb_upload_limit]
    if settings.ui:
        # files the page receives are on their way to a knowledge base: the same room
        path_limits.append(replace(kb_upload_limit, path=re.compile(r"/ui/gradio_api/upload/?")))
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes, path_limits=path_limits)

    # With API keys configured, nothing but /health answers without one: the guard is the
    # outermost middleware, so it covers every route, the page and the docs included. A browser
    # logs in to the page once (serving/api/page_login.py); its session stands for the key it typed.
    logins = None
    if settings.ui and settings.api_keys:
        from serving.api.page_login import PageLogins

        logins = PageLogins(lambda key: key_is_valid(settings.api_keys, key))
    app.add_middleware(ApiKeyGuard, keys=settings.api_keys, browser=logins)
    document_api(app, settings.api_keys)

    # Every router in one place.
    for router in (
        health.router,
        metrics.router,
        models.router,
        chat.router,
        completions.router,
        knowledge_bases.router,
        embeddings.router,
        tools.router,
    ):
        app.include_router(router)
    if settings.ui:
        # Imported here so gradio loads only when the page is served; the page calls this
        # server over HTTP like any other client, with the key its user logged in with.
        from serving.api.page import local_api_url, mount

        mount(
            app,
            local_api_url(settings.host, settings.port),
            default_kb=settings.ui_default_kb,
            logins=logins,
        )
    return app


def _engine_lost(app: FastAPI) -> None:
    """The engine stopped for good on its own (it logged why): end the server."""
    app.state.exit_code = ENGINE_LOST_EXIT_CODE
    if app.state.request_exit is None:  # run in-process (tests): stays up, answering 503
        return
    logger.critical(
        "stopping the server (exit code %d) so that its supervisor restarts it",
        ENGINE_LOST_EXIT_CODE,
    )
    app.state.request_exit()
