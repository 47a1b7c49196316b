"""The layout as DESIGN.md draws it, read off the source: which package may import which, no
import circle between modules, and no long module without the reason in its docstring.

Allowed between packages: `serving → rag` (knowledge bases) and `serving → ui` (to mount the
page). `rag`, `ui` and `training` import no other package of ours — `ui` speaks HTTP to the
server — and nothing that ships imports the demo driver, the benchmarks or the dev tools.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["training", "serving", "rag", "ui"]
SPANNING = ["demo"]  # ships, and may import every package
DEV_ONLY = ["bench", "tools", "tests"]
ALLOWED = {("serving", "rag"), ("serving", "ui")}
MAX_LINES = 450
#: how a long module gives its reason, in its docstring
LONG_REASON = "Kept as one module:"


def module_files(folders: list[str]) -> dict[str, Path]:
    files = {}
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            files[name] = path
    return files


def imported_names(name: str, path: Path) -> set[tuple[str, ...]]:
    """What each import in `path` can mean (function-level imports too): the dotted names to try,
    most specific first — `from a import b` is module `a.b` when there is one, else `a`."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update((alias.name,) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join(here[: len(here) - node.level + 1] + [node.module or ""])
            else:
                base = node.module or ""
            base = base.rstrip(".")
            names.update((f"{base}.{alias.name}", base) for alias in node.names)
    return names


def import_graph(folders: list[str]) -> dict[str, set[str]]:
    """Module → the modules of ours it imports (the longest module an imported name names)."""
    files = module_files(folders)
    ours = set(PACKAGES) | set(SPANNING) | set(DEV_ONLY)
    graph = {}
    for name, path in files.items():
        targets = set()
        for choices in imported_names(name, path):
            if choices[0].split(".")[0] not in ours:
                continue
            targets.add(next((c for c in choices if c in files), choices[-1]))
        graph[name] = targets - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iteratively)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_packages_import_only_downward():
    graph = import_graph(PACKAGES + SPANNING)
    wrong = sorted(
        f"{module} → {target}"
        for module, targets in graph.items()
        for target in targets
        if module.split(".")[0] in PACKAGES
        and target.split(".")[0] != module.split(".")[0]
        and (module.split(".")[0], target.split(".")[0]) not in ALLOWED
    )
    assert wrong == [], "imports between packages that the layout does not allow:\n" + "\n".join(
        wrong
    )


def test_no_import_circle_between_modules():
    assert cycles(import_graph(PACKAGES + SPANNING)) == []


def test_the_cycle_finder_finds_a_circle():
    """The check above can fail: a planted circle and a self-contained chain."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_function_level_and_relative_imports(tmp_path, monkeypatch):
    (tmp_path / "rag").mkdir()
    (tmp_path / "ui").mkdir()
    (tmp_path / "rag" / "__init__.py").write_text("")
    (tmp_path / "rag" / "a.py").write_text("def f():\n    from . import b\n")
    (tmp_path / "rag" / "b.py").write_text("from ui.c import x\n")
    (tmp_path / "ui" / "__init__.py").write_text("")
    (tmp_path / "ui" / "c.py").write_text("import rag.a\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["ROOT"]), "ROOT", tmp_path)
    graph = import_graph(["rag", "ui"])
    assert graph["rag.a"] == {"rag.b"} and graph["rag.b"] == {"ui.c"}
    assert cycles(graph) == [["rag.a", "rag.b", "ui.c"]]


def test_long_modules_say_why_they_are_one_module():
    too_long = []
    for path in module_files(PACKAGES + SPANNING).values():
        lines = path.read_text(encoding="utf-8").count("\n")
        if lines > MAX_LINES:
            docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
            if LONG_REASON not in docstring:
                too_long.append(f"{path.relative_to(ROOT)} ({lines} lines)")
    assert too_long == [], (
        f"modules over {MAX_LINES} lines without '{LONG_REASON} <why>' in their docstring: "
        + ", ".join(too_long)
    )
