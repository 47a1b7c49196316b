"""Dependencies declared = dependencies imported: every third-party module the packages import
comes from a distribution pyproject.toml declares, and every declared runtime dependency is
imported by the packages (or is listed below with the reason it is needed without an import)."""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import re
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["training", "serving", "rag", "ui"]

#: declared runtime dependencies that the packages need without importing them
USED_WITHOUT_IMPORT = {
    "tensorboard": "transformers' Trainer writes its logs through it (report_to)",
    "python-multipart": "FastAPI/Starlette parse the multipart uploads with it",
    "faiss-cpu": "LangChain's FAISS vector store imports it (rag/kb_index.py builds one)",
}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> tuple[set[str], set[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]

    def names(specs: list[str]) -> set[str]:
        return {normalise(re.match(r"[A-Za-z0-9_.\-]+", s).group(0)) for s in specs}

    dev = set().union(*(names(v) for v in project.get("optional-dependencies", {}).values()))
    return names(project["dependencies"]), dev


def imported_modules() -> dict[str, set[str]]:
    """Top-level third-party module → the files importing it (function-level imports too)."""
    ours = set(PACKAGES) | {"scripts", "tests"}
    found: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    modules = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                for module in modules:
                    top = module.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in ours:
                        found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_imported_module_is_declared():
    runtime, dev = declared()
    providers = metadata.packages_distributions()
    missing = {
        module: sorted(files)
        for module, files in imported_modules().items()
        if not {normalise(d) for d in providers.get(module, [])} & (runtime | dev)
    }
    assert missing == {}, f"imported but not declared in pyproject.toml: {missing}"


def test_every_declared_runtime_dependency_is_imported():
    runtime, _ = declared()
    providers = metadata.packages_distributions()
    imported = {normalise(d) for m in imported_modules() for d in providers.get(m, [])}
    unused = runtime - imported - set(USED_WITHOUT_IMPORT)
    assert unused == set(), f"declared in pyproject.toml but never imported: {sorted(unused)}"
