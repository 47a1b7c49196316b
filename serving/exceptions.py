"""What can go wrong while serving a request, in service terms (errors.py maps these to HTTP)."""

from __future__ import annotations

from serving.engine.base import EngineNotReadyError, QueueFullError


class ServiceError(Exception):
    """A request the service refuses; `param` names the offending field when there is one."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class InvalidRequestError(ServiceError):
    pass


class ContextLengthError(InvalidRequestError):
    pass


class ModelNotFoundError(ServiceError):
    pass


__all__ = [
    "ContextLengthError",
    "EngineNotReadyError",
    "InvalidRequestError",
    "ModelNotFoundError",
    "QueueFullError",
    "ServiceError",
]
