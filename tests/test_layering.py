"""The package's layering, read from its source: every import, inner imports of functions too
(imports under ``if TYPE_CHECKING:`` do not run and are left out)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import fmcache

PACKAGE = Path(fmcache.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            # `from fmcache import runs` imports the module fmcache.runs
            found.update(f"{base}.{alias.name}" for alias in node.names if _exists(f"{base}.{alias.name}"))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _exists(module: str) -> bool:
    if not module.startswith("fmcache"):
        return False
    rel = Path(*module.split(".")[1:])
    return (PACKAGE / rel).with_suffix(".py").is_file() or (PACKAGE / rel / "__init__.py").is_file()


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        graph[module] = _imports(ast.parse(path.read_text()), module, path.name == "__init__.py")
    return graph


GRAPH = _graph()


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _violations(package: str, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(f"{m} imports {i}" for m, imports in GRAPH.items() if _in(m, package)
                  for i in imports if any(_in(i, f) for f in forbidden))


@pytest.mark.parametrize("package, forbidden", [
    # the JAX engine knows nothing of the workflow around it, nor of torch
    ("fmcache.heads", ("fmcache.probe", "fmcache.runs", "fmcache.report", "fmcache.fairness", "fmcache.cache",
                       "fmcache.embed", "torch")),
    # the report reads runs and computes with fairness, nothing else of the package
    ("fmcache.report", ("fmcache.heads", "fmcache.probe", "fmcache.embed", "fmcache.cache", "fmcache.datasets",
                        "jax", "torch")),
    # anyone may read a run: no JAX, no torch
    ("fmcache.runs", ("jax", "torch", "fmcache.heads", "fmcache.probe", "fmcache.embed", "fmcache.report")),
    ("fmcache.fairness", ("jax", "torch", "fmcache.heads", "fmcache.embed", "fmcache.runs", "fmcache.report")),
    ("fmcache.embed", ("jax", "fmcache.heads", "fmcache.probe")),
    ("fmcache.cache", ("jax", "torch", "fmcache.heads", "fmcache.embed")),
    # the protocols are a table every stage reads: data only
    ("fmcache.protocols", ("jax", "torch", "fmcache.heads", "fmcache.embed", "fmcache.probe", "fmcache.cache",
                           "fmcache.runs", "fmcache.report", "fmcache.datasets")),
    # the mitigations are a table both training stages read: data only, below every layer
    ("fmcache.mitigations", ("jax", "torch", "optax", "flax", "fmcache")),
    # fine-tuning is torch; it shares the mitigations' facts, not the JAX heads' code
    ("fmcache.finetune", ("jax", "optax", "flax", "fmcache.heads", "fmcache.probe")),
    # segmentation decodes in torch; its prompts need neither framework
    ("fmcache.segment", ("jax", "fmcache.heads", "fmcache.probe")),
    ("fmcache.segment.prompts", ("torch", "jax")),
])
def test_layers_import_only_what_lies_below(package, forbidden):
    assert any(_in(m, package) for m in GRAPH), f"no modules found for {package}"
    assert _violations(package, forbidden) == []


def test_nothing_imports_the_cli():
    # the console script (pyproject's [project.scripts]) and `python -m fmcache` (as torchrun runs it) are its entries
    entries = ("fmcache.cli", "fmcache.__main__")
    assert sorted(m for m, imports in GRAPH.items()
                  if "fmcache.cli" in imports and not any(_in(m, e) for e in entries)) == []


def test_no_import_circle_among_datasets():
    inner = {m: {i for i in imports if _in(i, "fmcache.datasets") and i != m}
             for m, imports in GRAPH.items() if _in(m, "fmcache.datasets")}
    # a package's __init__ re-exporting its modules is not a circle of the modules themselves
    inner = {m: {i for i in deps if not (m.startswith(i + ".") and i in inner)} for m, deps in inner.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def walk(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(inner.get(m, ())):
            if state.get(d) == 1:
                cycles.append(path[path.index(d):] + [d] if d in path else [m, d])
            elif d not in state:
                walk(d, [*path, d])
        state[m] = 2

    for m in sorted(inner):
        if m not in state:
            walk(m, [m])
    assert cycles == []
