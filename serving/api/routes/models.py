"""`/v1/models`: every model this server answers for — the chat model, and the embedder that
`/v1/embeddings` (and the knowledge bases) use."""

from __future__ import annotations

from fastapi import APIRouter, Request

from serving.api.deps import ServiceDep
from serving.api.openapi import error_responses
from serving.errors import ModelNotFoundError
from serving.schemas import ModelCard, ModelList

router = APIRouter(prefix="/v1", tags=["models"], responses=error_responses(503))


def _cards(request: Request, service) -> list[ModelCard]:
    cards = [ModelCard(id=service.model_name, max_model_len=service.engine.context_length)]
    kbs = getattr(request.app.state, "knowledge_bases", None)
    if kbs is not None and kbs.embedder_name != service.model_name:
        cards.append(ModelCard(id=kbs.embedder_name))
    return cards


@router.get("/models")
async def list_models(request: Request, service: ServiceDep) -> ModelList:
    return ModelList(data=_cards(request, service))


@router.get("/models/{model_id:path}", responses=error_responses(404))
async def get_model(model_id: str, request: Request, service: ServiceDep) -> ModelCard:
    for card in _cards(request, service):
        if card.id == model_id:
            return card
    raise ModelNotFoundError(
        f"The model `{model_id}` does not exist.", param="model", code="model_not_found"
    )
