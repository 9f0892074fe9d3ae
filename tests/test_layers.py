"""The layering of docs/design.md, checked against the source: every module in a layer, every import (at the top of
a module or inside a function: a local import must not hide what the top would show) pointing down the list or
within its line, and no cycle, in penguins/, benchmarks/, service.py and train.py."""

from __future__ import annotations

import ast
import fnmatch
import re

from tests.harness import ROOT

SOURCES = ["penguins", "benchmarks", "service.py", "train.py"]


def _modules() -> dict[str, ast.Module]:
    found = {}
    for source in SOURCES:
        path = ROOT / source
        for file in [path] if path.is_file() else sorted(path.rglob("*.py")):
            parts = list(file.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = ast.parse(file.read_text(), str(file))
    return found


def _layers() -> list[list[str]]:
    """The numbered list under docs/design.md's `## Layers`, top (service) first: each line's `module` patterns."""
    text = (ROOT / "docs" / "design.md").read_text().split("\n## Layers\n", 1)[1].split("\n## ", 1)[0]
    items = re.split(r"^\d+\. ", text, flags=re.M)[1:]  # an item runs on over its indented lines
    return [re.findall(r"`([\w.*]+)`", item.split("\n\n")[0].split(" — ")[0]) for item in items]


def _imports(name: str, tree: ast.Module, modules: set[str]) -> set[str]:
    package = name if any(m.startswith(name + ".") for m in modules) else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:  # `from penguins import scan` imports the module penguins.scan
                targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {t for t in targets if t in modules and t != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, tree, set(modules)) for name, tree in modules.items()}


def _layer_of(name: str, layers: list[list[str]]) -> int | None:
    for index, patterns in enumerate(layers):
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
            return index
    return None


def test_every_module_is_in_a_layer():
    layers = _layers()
    assert len(layers) >= 5, "docs/design.md lists the layers"
    assert [name for name in _graph() if _layer_of(name, layers) is None] == []


def test_no_import_runs_up_the_layers():
    layers = _layers()
    upward = [
        f"{name} (layer {_layer_of(name, layers) + 1}) imports {target} (layer {_layer_of(target, layers) + 1})"
        for name, targets in _graph().items()
        for target in sorted(targets)
        if _layer_of(target, layers) < _layer_of(name, layers)
    ]
    assert upward == []


def test_no_import_cycle():
    graph = _graph()
    cycles = []
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_the_checker_sees_a_cycle_and_an_upward_import(tmp_path):
    # The graph is read from source: a function-local import counts like one at the top.
    tree = ast.parse("import a.low\nfrom a import thing\n\ndef f():\n    from a import high\n")
    assert _imports("a.mid", tree, {"a", "a.low", "a.mid", "a.high"}) == {"a", "a.low", "a.high"}
    assert _layer_of("penguins.adapter.guard", [["service"], ["penguins.adapter.*"]]) == 1
