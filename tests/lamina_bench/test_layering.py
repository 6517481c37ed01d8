"""The harness's packages import one way, along the data flow, and nothing imports in a cycle.

Every import counts, also one inside a function: errors, catalog <- results <- model <- measure <- sweep
<- compare <- report <- gpucheck, cli (a package may import its own modules and any lower package), and
only measure, sweep, gpucheck and cli import reference_impl.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "lamina_bench"
LAYERS = (
    "errors",
    "catalog",
    "results",
    "model",
    "validate",
    "measure",
    "sweep",
    "compare",
    "report",
    "gpucheck",
    "cli",
)
USES_REFERENCE_IMPL = {"measure", "sweep", "gpucheck", "cli"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Modules `path` imports: `from a.b import c` counts as a.b.c when that is a module, else as a.b."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                names.add(sub if sub in modules else node.module)
    return names


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_package_has_a_layer():
    assert {_layer(m) for m in _modules() if _layer(m)} == set(LAYERS)


def test_imports_follow_the_data_flow():
    modules = _modules()
    wrong = []
    for module, path in modules.items():
        layer = _layer(module)
        for name in _imports(path, modules):
            if name.startswith("reference_impl") and layer not in USES_REFERENCE_IMPL:
                wrong.append(f"{module} imports {name}")
            if name.startswith("lamina_bench.") and name in modules:
                target = _layer(name)
                if target != layer and LAYERS.index(target) > LAYERS.index(layer):
                    wrong.append(f"{module} ({layer}) imports {name} ({target}), a later layer")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycle():
    modules = _modules()
    graph = {m: {n for n in _imports(p, modules) if n in modules and n != m} for m, p in modules.items()}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt] if nxt in stack else [node, nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for module in sorted(modules):
        if module not in state:
            visit(module, [module])
