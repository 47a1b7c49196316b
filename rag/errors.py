"""Typed errors of the knowledge-base service; each says what to fix and knows nothing of HTTP.

A web layer maps them to statuses: NotFound → 404, InvalidInput → 400, TooLarge → 413,
Conflict → 409, EmbedderUnavailable and StoreUnavailable → 503.
"""

from __future__ import annotations


class KBError(Exception):
    """Base of every error the knowledge-base service raises on purpose."""

    kind = "kb_error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class NotFound(KBError):
    """An unknown knowledge base or document."""

    kind = "not_found"


class InvalidInput(KBError):
    """A bad name, an unreadable or unsupported file, an empty query."""

    kind = "invalid_input"


class TooLarge(KBError):
    """A file over the configured size limit."""

    kind = "too_large"


class Conflict(KBError):
    """The request clashes with the KB's state (it exists already, another embedder built it)."""

    kind = "conflict"


class EmbedderUnavailable(KBError):
    """The configured embedding model cannot be loaded (a server-side setting, not the request)."""

    kind = "embedder_unavailable"


class StoreUnavailable(KBError):
    """The knowledge-base database does not answer (down, restarting, out of connections)."""

    kind = "kb_unavailable"
