"""Dependencies of the routes: settings, metrics, the generation and knowledge-base services.

API keys are not a dependency: `serving/api/auth.py` checks them for every route at once."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from rag.service import KnowledgeBaseService
from serving.config import Settings
from serving.engine.base import EngineNotReadyError
from serving.metrics import ServingMetrics
from serving.service import GenerationService


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_metrics(request: Request) -> ServingMetrics:
    return request.app.state.metrics


async def get_service(request: Request) -> GenerationService:
    service: GenerationService | None = request.app.state.service
    if service is None:
        raise EngineNotReadyError(request.app.state.load_error or "no model is loaded")
    if not service.engine.is_ready:
        raise service.engine.not_ready_error()
    return service


async def get_kb_service(request: Request) -> KnowledgeBaseService:
    return request.app.state.knowledge_bases.get()


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[ServingMetrics, Depends(get_metrics)]
ServiceDep = Annotated[GenerationService, Depends(get_service)]
KBServiceDep = Annotated[KnowledgeBaseService, Depends(get_kb_service)]
