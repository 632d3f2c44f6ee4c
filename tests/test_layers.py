"""The layers of docs/architecture.md, held by an ``ast`` walk over every module.

A module may import only from its own layer or the layers below it, and the
lower layers stay free of the heavy frameworks (no Beam, Keras or Prefect in
a store module). Function-level imports count too.

``python -m tests.test_layers`` prints the package import graph as a Mermaid
diagram (docs/architecture.md embeds it).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# repository folder -> the package it installs as (pyproject's package-dir)
FOLDERS = {"nowcast": "nowcast", "pipelines": "nowcast.pipelines", "model": "nowcast.model",
           "flows": "nowcast.flows"}
# layer -> the layers it may import from (itself included), bottom to top
ALLOWED = {
    "root": {"root"},
    "stores": {"root", "stores"},
    "sources": {"root", "stores", "sources"},
    "plans": {"root", "stores", "sources", "plans"},
    "model": {"root", "stores", "model"},
    "jobs": {"root", "stores", "sources", "plans", "model", "jobs"},
    "flows": {"root", "stores", "sources", "plans", "model", "jobs", "flows"},
}
FORBIDDEN_THIRD_PARTY = {
    "root": {"apache_beam", "keras", "tensorflow", "prefect", "zarr", "xarray"},
    "stores": {"apache_beam", "keras", "tensorflow", "prefect"},
    "sources": {"apache_beam", "keras", "tensorflow", "prefect"},
    "plans": {"apache_beam", "keras", "tensorflow", "prefect"},
    "model": {"apache_beam", "prefect"},
    "jobs": {"prefect"},
    "flows": set(),
}


def layer_of(module: str) -> str | None:
    """The layer of a ``nowcast`` module name, None for modules outside the package."""
    parts = module.split(".")
    if parts[0] != "nowcast":
        return None
    if len(parts) == 1 or parts[1] not in ("pipelines", "model", "flows"):
        return "root"
    if parts[1] == "pipelines":
        return parts[2] if len(parts) > 2 and parts[2] in ("stores", "sources", "plans", "jobs") else "root"
    return parts[1]


def modules() -> Iterator[tuple[str, Path]]:
    """Every installed module: (dotted name, file)."""
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            relative = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in relative.parts if p != "__init__"]
            yield ".".join([package, *parts]), path


def imports(source: str) -> Iterator[tuple[int, str]]:
    """(line, imported module) of every import statement, at any depth."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.lineno, node.module


# the package's front door may hand readers a store helper (nowcast.open_forecasts), imported inside the
# function so that `import nowcast` stays as light as the root layer; nothing else above the root
FRONT_DOOR = {"nowcast": {"nowcast.pipelines.stores.forecasts"}}


def violations(module: str, source: str) -> list[str]:
    """How ``source`` (the text of ``module``) breaks the layering; empty when it holds."""
    layer = layer_of(module)
    problems = []
    for line, imported in imports(source):
        top = imported.split(".")[0]
        if top in ("model", "pipelines", "flows", "bench"):
            problems.append(f"{module}:{line} imports {imported!r}: use the nowcast.{top} namespace")
        target = layer_of(imported)
        if imported in FRONT_DOOR.get(module, ()):
            continue
        if target is not None and layer is not None and target not in ALLOWED[layer]:
            problems.append(f"{module}:{line} ({layer}) imports {imported} ({target})")
        if layer is not None and top in FORBIDDEN_THIRD_PARTY[layer]:
            problems.append(f"{module}:{line} ({layer}) imports {top}")
    return problems


def test_every_module_imports_only_its_own_layer_or_below():
    problems = [p for module, path in modules() for p in violations(module, path.read_text())]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(("module", "source"), [
    ("nowcast.pipelines.stores.archive", "from nowcast.pipelines.jobs.ingest import run\n"),
    ("nowcast.pipelines.stores.archive", "def f():\n    import keras\n"),
    ("nowcast.pipelines.plans.windows", "import apache_beam as beam\n"),
    ("nowcast.model.data", "from nowcast.pipelines.jobs.runners import RunnerOptions\n"),
    ("nowcast.model.data", "from model.registry import load_model\n"),
    ("nowcast.pipelines.jobs.scoring", "from nowcast.flows.params import Runner\n"),
])
def test_the_checker_refuses_an_upward_import(module, source):
    assert violations(module, source)


def test_the_package_map_covers_every_layer():
    assert {layer_of(module) for module, _ in modules()} == set(ALLOWED)


def mermaid() -> str:
    """The layer-to-layer imports found in the tree, as a Mermaid flowchart."""
    edges = set()
    for module, path in modules():
        for _, imported in imports(path.read_text()):
            source, target = layer_of(module), layer_of(imported)
            if source and target and source != target:
                edges.add((source, target))
    lines = ["flowchart BT"] + [f"    {a} --> {b}" for a, b in sorted(edges)]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(mermaid() + "\n")
