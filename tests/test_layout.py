"""The layering rule of docs/architecture.md, checked on the source: who may import whom."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "workers", "bench")
# pipeline/ may reach up into workers/ only from the command line's entry point.
UPWARD_ENTRY_POINTS = {"pipeline.cli"}
# What a worker process may use of pipeline/: the wire, the settings, the text limits, its lifeline.
WORKER_MAY_USE = ("pipeline.wire", "pipeline.settings", "pipeline.text.limits", "pipeline.processes.lifeline")
HEAVY = ("torch", "TTS", "torchaudio", "transformers")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = modules()


def imports_of(name: str) -> set[str]:
    """Every module ``name`` imports, at any depth of its code (a lazy import counts)."""
    path = MODULES[name]
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES)
    return found


def project_imports(name: str) -> set[str]:
    return {m for m in imports_of(name) if m in MODULES and m != name}


def test_there_are_modules_to_check():
    assert {"pipeline.cli", "pipeline.wire.protocol", "workers.worker", "bench.run"} <= MODULES.keys()


def test_no_import_circles():
    graph = {name: project_imports(name) - {p for p in project_imports(name) if name.startswith(p + ".")}
             for name in MODULES}  # a module importing its own package's __init__ is not a circle
    state: dict[str, int] = {}
    circles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def test_pipeline_reaches_into_workers_only_from_its_entry_points():
    upward = {name: sorted(m for m in project_imports(name) if m.startswith("workers"))
              for name in MODULES if name.startswith("pipeline") and name not in UPWARD_ENTRY_POINTS}
    assert not {k: v for k, v in upward.items() if v}


def test_workers_use_only_the_bottom_layer_of_pipeline():
    used = {name: sorted(m for m in project_imports(name) if m.startswith("pipeline")
                         and not m.startswith(WORKER_MAY_USE) and m != "pipeline")
            for name in MODULES if name.startswith("workers")}
    assert not {k: v for k, v in used.items() if v}


def test_nothing_imports_the_benchmarks():
    users = {name for name in MODULES if not name.startswith("bench")
             and any(m.startswith("bench") for m in project_imports(name))}
    assert not users


def test_torch_and_coqui_are_imported_only_by_the_engines_and_the_benchmarks():
    heavy = {name: sorted(m for m in imports_of(name) if m.split(".")[0] in HEAVY)
             for name in MODULES if not name.startswith(("workers.engines", "bench"))}
    assert not {k: v for k, v in heavy.items() if v}
