"""`xiaophi-kb migrate --to postgresql://…`: local KBs copied into the postgres backend as they are.

Documents, originals, chunks and their vectors are copied, not recomputed (no embedder is
loaded); each KB lands in one transaction and is then verified: documents, chunks, vectors and
lexical rows counted on both sides must agree, else the copy is deleted again and the error
says so. A KB that already exists in the database is refused, never merged or overwritten.
"""

from __future__ import annotations

from dataclasses import dataclass

from rag.backends.base import NewDocument
from rag.backends.local import LocalBackend
from rag.backends.postgres import PostgresBackend
from rag.config import KBSettings
from rag.errors import Conflict, KBError
from rag.models import Layout, Manifest
from rag.names import validate_kb_name


@dataclass
class Migrated:
    name: str
    counts: dict[str, int]


def local_documents(local: LocalBackend, name: str) -> tuple[Manifest, list[NewDocument]]:
    """A local KB's manifest and its documents with their stored chunks and vectors."""
    index = local.search_index(name)
    originals = {d.id: data for d, data in local.originals(name)}
    docs = []
    for doc in index.documents:
        ids = doc.chunk_ids
        found = index.chunks(ids)
        if len(found) != len(ids):
            raise KBError(
                f"knowledge base {name!r}: document {doc.id} lists {len(ids)} chunks but "
                f"{len(found)} are stored; run `xiaophi-kb reindex {name}` before migrating."
            )
        vectors = index.stored_vectors(ids).tolist() if ids else []
        docs.append(NewDocument(doc, originals[doc.id], [found[i] for i in ids], vectors))
    return index.manifest, docs


def migrate_to_postgres(
    settings: KBSettings, database_url: str, names: list[str] | None = None
) -> list[Migrated]:
    local = LocalBackend(settings)
    wanted = [validate_kb_name(n) for n in names] if names else [k.name for k in local.list()]
    checked = KBSettings(backend="postgres", database_url=database_url, kb_dir=settings.kb_dir)
    target = PostgresBackend(
        settings.model_copy(update={"backend": "postgres", "database_url": checked.database_url})
    )
    done: list[Migrated] = []
    try:
        for name in wanted:
            manifest, docs = local_documents(local, name)
            try:
                target.create(name, Layout.model_validate(manifest, from_attributes=True))
            except Conflict:
                before = f" (migrated before it: {', '.join(m.name for m in done)})" if done else ""
                raise Conflict(
                    f"knowledge base {name!r} already exists in the database{before}; delete it "
                    "there first, or name the knowledge bases still to migrate."
                ) from None
            try:
                if docs:
                    target.add(name, docs, manifest.embedding_model, lambda *_: None)
                target.set_times(name, manifest.created_at, manifest.updated_at)
                want, got = local.counts(name), target.counts(name)
                if want != got:
                    raise KBError(
                        f"knowledge base {name!r}: the copy holds {got} but the local KB {want}; "
                        "the copy was removed again."
                    )
            except BaseException:
                target.delete(name)
                raise
            done.append(Migrated(name, got))
    finally:
        target.close()
    return done
