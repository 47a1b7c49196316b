"""Liveness and readiness: 200 when the model is loaded and its engine runs, else 503.

While the engine's process restarts (it died: see serving/engine/engine_process.py) the 503
says so — `status: restarting`, the restart count, `Retry-After` — so that a load balancer
waits it out; a server whose engine is lost for good exits rather than answer 503 forever.

The knowledge bases' state is reported beside it but does not decide the status: with the KB
database down, chat without a knowledge base still works, so a load balancer keeps the server.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from serving.api.openapi import error_responses
from serving.errors import body_for, error_response

router = APIRouter(tags=["health"])


@router.get(
    "/health",
    responses={
        200: {
            "description": "The model is loaded and its engine runs.",
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "status": {"const": "ok"},
                            "model": {"type": "string"},
                            "running": {"type": "integer"},
                            "waiting": {"type": "integer"},
                            "restarts": {
                                "type": "integer",
                                "description": "Times the engine process died and restarted.",
                            },
                            "knowledge_bases": {
                                "type": "object",
                                "description": (
                                    "The KB backend; `unavailable` (with `error`) while a "
                                    "postgres backend's database does not answer. Chat "
                                    "without a knowledge base still works then."
                                ),
                                "properties": {
                                    "backend": {"enum": ["local", "postgres"]},
                                    "status": {"enum": ["ok", "unavailable"]},
                                    "error": {"type": "string"},
                                },
                                "required": ["backend", "status"],
                            },
                        },
                        "required": ["status", "model", "running", "waiting"],
                    }
                }
            },
        },
        **error_responses(503),
    },
)
async def health(request: Request) -> JSONResponse:
    service = request.app.state.service
    if service is None:
        reason = request.app.state.load_error or "the model is not loaded"
        return error_response(503, reason, code="model_not_loaded")
    engine = service.engine
    if not engine.is_ready:
        error = engine.not_ready_error()
        status, body = body_for(error)
        # beside the error: what a probe or an operator wants to see at a glance
        body.update(status=engine.status, restarts=engine.stats().restarts)
        retry = getattr(error, "retry_after_s", None)
        headers = {"Retry-After": str(retry)} if retry is not None else None
        return JSONResponse(body, status_code=status, headers=headers)
    stats = engine.stats()
    kbs = await run_in_threadpool(request.app.state.knowledge_bases.health)
    return JSONResponse(
        {
            "status": "ok",
            "model": service.model_name,
            "running": stats.running,
            "waiting": stats.waiting,
            "restarts": stats.restarts,
            "knowledge_bases": kbs,
        }
    )
