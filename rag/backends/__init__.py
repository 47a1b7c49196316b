"""Where knowledge bases are kept (`XIAOPHI_KB_BACKEND`): `local` (a folder per KB, local.py) or
`postgres` (one PostgreSQL + pgvector database for every KB, postgres.py); what both provide is
in base.py."""

from __future__ import annotations

from rag.backends.base import KBBackend
from rag.config import KBSettings


def backend_for(settings: KBSettings) -> KBBackend:
    if settings.backend == "postgres":
        from rag.backends.postgres import PostgresBackend

        return PostgresBackend(settings)
    from rag.backends.local import LocalBackend

    return LocalBackend(settings)
