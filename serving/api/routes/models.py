"""`/v1/models`: the one model this server serves."""

from __future__ import annotations

from fastapi import APIRouter

from serving.api.deps import ServiceDep
from serving.api.openapi import error_responses
from serving.errors import ModelNotFoundError
from serving.schemas import ModelCard, ModelList

router = APIRouter(prefix="/v1", tags=["models"], responses=error_responses(503))


@router.get("/models")
async def list_models(service: ServiceDep) -> ModelList:
    return ModelList(
        data=[ModelCard(id=service.model_name, max_model_len=service.engine.context_length)]
    )


@router.get("/models/{model_id:path}", responses=error_responses(404))
async def get_model(model_id: str, service: ServiceDep) -> ModelCard:
    if model_id != service.model_name:
        raise ModelNotFoundError(
            f"The model `{model_id}` does not exist.", param="model", code="model_not_found"
        )
    return ModelCard(id=service.model_name, max_model_len=service.engine.context_length)
