"""Engines behind the serving seam (`serving.engine.base.Engine`)."""

from serving.engine.base import (
    Engine,
    EngineNotReadyError,
    EngineRequest,
    EngineStats,
    GenerationDelta,
    QueueFullError,
    SamplingParams,
)

__all__ = [
    "Engine",
    "EngineNotReadyError",
    "EngineRequest",
    "EngineStats",
    "GenerationDelta",
    "QueueFullError",
    "SamplingParams",
]
