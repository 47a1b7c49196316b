"""Dependencies declared = dependencies imported: every third-party module the packages import
comes from a distribution pyproject.toml declares — a runtime one, or one of a user-facing extra
(`pip install 'xiaophi[quantize]'`: an optional feature that says what to install when it is
missing), never the dev extra, since what ships must run without it — and every declared runtime
dependency is imported by the packages (or is listed below with the reason it is needed without
an import). Benchmarks, tools and tests may import the dev extra too."""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import re
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["training", "serving", "rag", "ui", "demo"]  # what the distribution ships
DEV_ONLY_DIRS = ["bench", "tools", "tests"]

#: declared runtime dependencies that the packages need without importing them
USED_WITHOUT_IMPORT = {
    "tensorboard": "transformers' Trainer writes its logs through it (report_to)",
    "python-multipart": "FastAPI/Starlette parse the multipart uploads with it",
    "accelerate": "transformers' Trainer refuses to run without it (the training stages)",
    "faiss-cpu": "LangChain's FAISS vector store imports it (rag/backends/kb_index.py builds one)",
}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> tuple[set[str], set[str]]:
    """(runtime, every extra's) distributions."""
    extras = declared_extras()
    return runtime_dependencies(), set().union(*extras.values())


def _names(specs: list[str]) -> set[str]:
    return {normalise(re.match(r"[A-Za-z0-9_.\-]+", s).group(0)) for s in specs}


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def runtime_dependencies() -> set[str]:
    return _names(_project()["dependencies"])


def declared_extras() -> dict[str, set[str]]:
    return {k: _names(v) for k, v in _project().get("optional-dependencies", {}).items()}


def imported_modules(folders: list[str] = PACKAGES) -> dict[str, set[str]]:
    """Top-level third-party module → the files in `folders` importing it (function-level
    imports too)."""
    ours = set(PACKAGES) | set(DEV_ONLY_DIRS)
    found: dict[str, set[str]] = {}
    for package in folders:
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


def undeclared(modules: dict[str, set[str]], allowed: set[str]) -> dict[str, list[str]]:
    providers = metadata.packages_distributions()
    return {
        module: sorted(files)
        for module, files in modules.items()
        if not {normalise(d) for d in providers.get(module, [])} & allowed
    }


def test_what_ships_imports_runtime_dependencies_only():
    user_extras = set().union(*(v for k, v in declared_extras().items() if k != "dev"))
    missing = undeclared(imported_modules(), runtime_dependencies() | user_extras)
    assert missing == {}, f"shipped modules import what no runtime dependency provides: {missing}"


def test_benchmarks_tools_and_tests_import_declared_packages():
    runtime, dev = declared()
    missing = undeclared(imported_modules(DEV_ONLY_DIRS), runtime | dev)
    assert missing == {}, f"imported but not declared in pyproject.toml: {missing}"


def test_every_declared_runtime_dependency_is_imported():
    runtime, _ = declared()
    providers = metadata.packages_distributions()
    imported = {normalise(d) for m in imported_modules() for d in providers.get(m, [])}
    unused = runtime - imported - set(USED_WITHOUT_IMPORT)
    assert unused == set(), f"declared in pyproject.toml but never imported: {sorted(unused)}"
