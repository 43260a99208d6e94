"""Imports run downhill: every rayrlhf module imports only from its own layer or below, and
no modules import each other in a circle.

Read from the source with ``ast`` (every ``import`` and ``from ... import``, at module level
or inside a function, so a lazy import counts the same), nothing is imported to run it.

The layers, lowest first (README, "Layout"):

  0  basics       rayrlhf (package), paths, types, runs, faults, fault_injection, cluster, logs: no rayrlhf imports
  1  data, algorithms   typed rows and templates; pure PPO-Lag math
  2  models, rewards    model zoo, score heads; reward/cost sources (score models or rules)
  3  rollout            generation engines
  4  workers            Ray actors of each role
  5  config             schemas with their checks (reads choices from the layers below)
  6  trainers, eval, serve
  7  stages             the stage registry and the stages that compose others
  8  submit, sweep_jobs `rayrlhf submit`, `rayrlhf sweep`
  9  cli                `rayrlhf <stage>`
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import rayrlhf

PACKAGE = Path(rayrlhf.__file__).parent

LAYERS: list[tuple[str, ...]] = [
    ("rayrlhf", "rayrlhf.paths", "rayrlhf.types", "rayrlhf.runs", "rayrlhf.faults", "rayrlhf.fault_injection",
     "rayrlhf.cluster", "rayrlhf.logs"),
    ("rayrlhf.data", "rayrlhf.algorithms"),
    ("rayrlhf.models", "rayrlhf.rewards"),
    ("rayrlhf.rollout",),
    ("rayrlhf.workers",),
    ("rayrlhf.config",),
    ("rayrlhf.trainers", "rayrlhf.eval", "rayrlhf.serve"),
    ("rayrlhf.stages",),
    ("rayrlhf.submit", "rayrlhf.sweep_jobs"),
    ("rayrlhf.cli",),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    """The layer of the longest prefix that names ``module`` or a package above it."""
    best, best_length = None, -1
    for index, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best_length:
                best, best_length = index, len(name)
    assert best is not None, f"{module} is in no layer: add it to LAYERS (and to the README's layout)"
    return best


def rayrlhf_imports(path: Path, module: str | None = None) -> set[str]:
    """The rayrlhf modules ``path`` (the module ``module``) imports, anywhere in the file,
    relative imports resolved."""
    module = module or module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.add(name)
            # ``from rayrlhf.trainers import checkpoint_dir`` imports a module, too
            found |= {f"{name}.{alias.name}" for alias in node.names
                      if (PACKAGE.parent / Path(*f"{name}.{alias.name}".split("."))).with_suffix(".py").is_file()}
    return {name for name in found if name == "rayrlhf" or name.startswith("rayrlhf.")}


def import_graph() -> dict[str, set[str]]:
    return {module_name(path): rayrlhf_imports(path) - {module_name(path)}
            for path in sorted(PACKAGE.rglob("*.py"))}


def test_every_import_runs_downhill():
    graph = import_graph()
    uphill = sorted(f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})"
                    for module, targets in graph.items() for target in targets
                    if layer_of(target) > layer_of(module))
    print(f"{len(graph)} modules, {sum(map(len, graph.values()))} imports of rayrlhf modules, "
          f"{len(LAYERS)} layers; uphill imports: {len(uphill)}")
    assert not uphill, "imports from a higher layer:\n  " + "\n  ".join(uphill)


def test_no_modules_import_each_other_in_a_circle():
    graph = import_graph()
    # A package's __init__ imports its own modules: that is how a package exposes them,
    # not a cycle between layers, so only module -> module edges outside that count.
    edges = {module: {t for t in targets if t in graph and not module_is_package_of(module, t)}
             for module, targets in graph.items()}
    cycles = strongly_connected_cycles(edges)
    print(f"cycles among {len(edges)} modules: {len(cycles)}")
    assert not cycles, "modules that import each other:\n  " + "\n  ".join(" -> ".join(c) for c in cycles)


def module_is_package_of(package: str, module: str) -> bool:
    return (PACKAGE.parent / Path(*package.split(".")) / "__init__.py").is_file() and \
        module.startswith(package + ".")


def strongly_connected_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: every group of two or more modules that reach each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return groups


def test_the_layers_cover_every_package():
    top = {module_name(p) for p in PACKAGE.iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file()}
    for module in top:
        layer_of(module)  # fails naming a module that no layer holds
    by_layer = defaultdict(list)
    for module in sorted(top):
        by_layer[layer_of(module)].append(module)
    assert set(by_layer) == set(range(len(LAYERS))), "a layer names nothing that exists"


def test_a_planted_uphill_import_and_cycle_are_found(tmp_path):
    """The checks can fail: an algorithms module importing a trainer, and two modules that
    import each other, are both reported."""
    planted = tmp_path / "planted.py"
    planted.write_text("import torch\n\ndef f():\n    from ..trainers import ppo_lag\n    import rayrlhf.serve.app\n")
    found = rayrlhf_imports(planted, "rayrlhf.algorithms.planted")
    assert found == {"rayrlhf.trainers", "rayrlhf.trainers.ppo_lag", "rayrlhf.serve.app"}
    assert all(layer_of(target) > layer_of("rayrlhf.algorithms.planted") for target in found)
    assert strongly_connected_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert strongly_connected_cycles({"a": {"b"}, "b": set()}) == []

