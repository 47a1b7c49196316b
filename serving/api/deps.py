"""Dependencies of the routes: the generation and knowledge-base services, the API-key check."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from rag.service import KnowledgeBaseService
from serving.config import Settings
from serving.errors import AuthenticationError
from serving.exceptions import EngineNotReadyError
from serving.metrics import ServingMetrics
from serving.service import GenerationService

_bearer = HTTPBearer(auto_error=False)


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_metrics(request: Request) -> ServingMetrics:
    return request.app.state.metrics


async def get_service(request: Request) -> GenerationService:
    service: GenerationService | None = request.app.state.service
    if service is None:
        raise EngineNotReadyError(request.app.state.load_error or "no model is loaded")
    if not service.engine.is_ready:
        raise EngineNotReadyError("the model engine stopped")
    return service


async def get_kb_service(request: Request) -> KnowledgeBaseService:
    return request.app.state.knowledge_bases.get()


async def require_api_key(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    keys: list[str] = request.app.state.settings.api_keys
    if not keys:
        return
    if credentials is None:
        raise AuthenticationError(
            "Missing API key: send `Authorization: Bearer <key>`.", code="missing_api_key"
        )
    if not any(secrets.compare_digest(credentials.credentials, key) for key in keys):
        raise AuthenticationError("Incorrect API key provided.", code="invalid_api_key")


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[ServingMetrics, Depends(get_metrics)]
ServiceDep = Annotated[GenerationService, Depends(get_service)]
KBServiceDep = Annotated[KnowledgeBaseService, Depends(get_kb_service)]
ApiKey = Depends(require_api_key)
