"""`xiaophi-kb`: manage knowledge bases from the shell, through the same service the API uses."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from rag.config import KBSettings
from rag.errors import KBError
from rag.models import Upload


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xiaophi-kb", description="Knowledge bases: create, add documents, search."
    )
    parser.add_argument(
        "--kb-dir", help="Folder of knowledge bases (default: XIAOPHI_KB_DIR or ./kb)."
    )
    parser.add_argument(
        "--embedding-model",
        help="sentence-transformers model name or folder, or `hashing` (default: XIAOPHI_KB_EMBEDDING_MODEL "
        "or runs/tiny/embedder).",
    )
    parser.add_argument(
        "--backend",
        choices=["local", "postgres"],
        help="Where KBs are kept (default: XIAOPHI_KB_BACKEND or local).",
    )
    parser.add_argument(
        "--database-url",
        help="PostgreSQL URL of the postgres backend (default: XIAOPHI_KB_DATABASE_URL).",
    )
    parser.add_argument("--json", action="store_true", help="Print results as JSON.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("create", help="Create a knowledge base.").add_argument("name")
    p = sub.add_parser("list", help="List knowledge bases, or the documents of one.")
    p.add_argument("name", nargs="?")
    sub.add_parser("delete", help="Delete a knowledge base and everything in it.").add_argument(
        "name"
    )
    p = sub.add_parser("add", help="Add files to a knowledge base.")
    p.add_argument("name")
    p.add_argument("files", nargs="+", type=Path)
    p = sub.add_parser(
        "remove", help="Remove one document (and its vectors) from a knowledge base."
    )
    p.add_argument("name")
    p.add_argument("doc_id")
    sub.add_parser(
        "reindex", help="Rebuild a knowledge base with the current embedder and splitter."
    ).add_argument("name")
    p = sub.add_parser("search", help="Search a knowledge base.")
    p.add_argument("name")
    p.add_argument("query")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--mode", choices=["hybrid", "bm25", "dense"], default="hybrid")
    p = sub.add_parser(
        "migrate",
        help="Copy local KBs (documents, chunks, vectors) into a PostgreSQL database and verify "
        "the counts.",
    )
    p.add_argument("--to", required=True, metavar="URL", help="postgresql://user:pw@host/db")
    p.add_argument("names", nargs="*", help="KBs to copy (default: every KB under --kb-dir).")
    return parser


def _read_upload(path: Path, limit: int) -> Upload:
    """Read at most limit+1 bytes: enough for the service to see the file is too large."""
    try:
        with path.open("rb") as fh:
            return Upload(filename=path.name, data=fh.read(limit + 1))
    except OSError as exc:
        raise KBError(f"{path}: cannot read it ({exc.strerror}).") from None


def _print(value, as_json: bool) -> None:
    if as_json:
        if isinstance(value, list):
            value = [v.model_dump() for v in value]
        elif hasattr(value, "model_dump"):
            value = value.model_dump()
        print(json.dumps(value, ensure_ascii=False, indent=2))
    else:
        print(value)


@contextlib.contextmanager
def progress_bars_off():
    """No download or weight-loading bars on the CLI's terminal, for this call only: main() also
    runs in-process (tests, scripts), and a variable left in os.environ would silence the bars of
    every child process the caller starts afterwards."""
    name = "HF_HUB_DISABLE_PROGRESS_BARS"
    before = os.environ.get(name)
    os.environ.setdefault(name, "1")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)


def run(args: argparse.Namespace) -> int:
    from rag.service import KnowledgeBaseService

    overrides = {}
    if args.kb_dir:
        overrides["kb_dir"] = Path(args.kb_dir)
    if args.embedding_model:
        overrides["embedding_model"] = args.embedding_model
    if args.backend:
        overrides["backend"] = args.backend
    if args.database_url:
        overrides["database_url"] = args.database_url
    cmd = args.command
    if cmd == "migrate":
        return migrate(args, KBSettings(**{**overrides, "backend": "local"}))
    service = KnowledgeBaseService(KBSettings(**overrides))
    if cmd == "create":
        info = service.create_kb(args.name)
        _print(info if args.json else f"created knowledge base {info.name!r}", args.json)
    elif cmd == "list" and args.name is None:
        kbs = service.list_kbs()
        _print(
            kbs
            if args.json
            else "\n".join(f"{k.name}\t{k.documents} documents\t{k.chunks} chunks" for k in kbs)
            or "(no knowledge bases)",
            args.json,
        )
    elif cmd == "list":
        docs = service.list_documents(args.name)
        lines = [f"{d.id}\t{d.filename}\t{d.chunks} chunks\t{d.encoding}" for d in docs]
        _print(docs if args.json else "\n".join(lines) or "(no documents)", args.json)
    elif cmd == "delete":
        service.delete_kb(args.name)
        _print(
            {"deleted": args.name} if args.json else f"deleted knowledge base {args.name!r}",
            args.json,
        )
    elif cmd == "add":
        service.get_kb(args.name)  # unknown KB: say so before reading any file
        uploads = [_read_upload(p, service.settings.max_upload_bytes) for p in args.files]
        result = service.add_documents(args.name, uploads)
        if args.json:
            _print(result, True)
        for r in result.results if not args.json else []:
            if r.status == "added":
                print(
                    f"added     {r.filename}: {r.document.chunks} chunks, {r.document.encoding} (id {r.document.id})"
                )
            else:
                print(f"{r.status:<9} {r.filename}: {r.reason}")
        return 0 if all(r.status != "rejected" for r in result.results) else 1
    elif cmd == "remove":
        doc = service.delete_document(args.name, args.doc_id)
        _print(
            doc if args.json else f"removed {doc.filename} ({doc.id}) from {args.name!r}", args.json
        )
    elif cmd == "reindex":
        result = service.reindex(args.name)
        _print(
            result
            if args.json
            else f"reindexed {result.documents} documents into {result.chunks} chunks "
            f"with {result.embedding_model} in {result.seconds:.1f} s",
            args.json,
        )
    elif cmd == "search":
        hits = service.search(args.name, args.query, args.top_k, args.mode)
        if args.json:
            _print(hits, True)
        elif not hits:
            print("(no results)")
        for rank, h in enumerate(hits if not args.json else [], start=1):
            where = f"{h.filename}" + (f" p.{h.page}" if h.page else "") + f" #{h.chunk_index}"
            snippet = h.text.replace("\n", " ")
            print(f"{rank}. [{h.score:.4f}] {where}: {snippet[:120]}")
    return 0


def migrate(args: argparse.Namespace, settings: KBSettings) -> int:
    from rag.migrate import migrate_to_postgres

    done = migrate_to_postgres(settings, args.to, args.names or None)
    if args.json:
        print(json.dumps([{"name": m.name, **m.counts} for m in done], ensure_ascii=False))
    for m in done if not args.json else []:
        c = m.counts
        print(
            f"migrated  {m.name}: {c['documents']} documents, {c['chunks']} chunks, "
            f"{c['vectors']} vectors (counts verified)"
        )
    if not done and not args.json:
        print("(no knowledge bases to migrate)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with progress_bars_off():
            return run(args)
    except KBError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except ValueError as exc:  # bad settings (pydantic) name the variable to fix
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
