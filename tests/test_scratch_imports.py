"""scratch_layers' imports run one way: no module imports itself back through others, and
no layer module reaches up into the registry, the engine, training or saving."""
import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.scratch

PACKAGE = Path(__file__).resolve().parent.parent / "scratch_layers"


def _module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package=PACKAGE):
    """module -> the package modules it imports (at module level or inside functions)."""
    paths = {_module_name(p): p for p in package.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        is_package = path.name == "__init__.py"
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".")[:len(name.split(".")) - node.level + (1 if is_package else 0)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module
                for alias in node.names:  # `from pkg import module` imports the module
                    sub = f"{module}.{alias.name}"
                    targets.add(sub if sub in paths else module)
        graph[name] = sorted(t for t in targets if t in paths and t != name)
    return graph


def cycles(graph):
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]
    assert cycles({"a": ["b"], "b": [], "c": ["a", "b"]}) == []


def test_scratch_layers_has_no_import_cycle():
    graph = import_graph()
    assert "scratch_layers.engine.model" in graph and graph["scratch_layers.saving.loading"]
    assert cycles(graph) == []


def test_layers_never_import_the_registry_engine_training_or_saving():
    above = ("scratch_layers.layers.registry", "scratch_layers.engine", "scratch_layers.training",
             "scratch_layers.saving", "scratch_layers.verify")
    graph = import_graph()
    wrong = {m: [t for t in targets if t.startswith(above)] for m, targets in graph.items()
             if m.startswith("scratch_layers.layers.") and m != "scratch_layers.layers.registry"}
    assert {m: t for m, t in wrong.items() if t} == {}


def test_training_never_imports_the_model():
    graph = import_graph()
    assert not [m for m, targets in graph.items()
                if m.startswith("scratch_layers.training") and "scratch_layers.engine.model" in targets]
