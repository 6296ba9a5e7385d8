"""The package's shape: imports run one way, and no module reaches into another's
private attributes (DESIGN.md, "Imports run one way").

Read from the source with `ast`, so a new circle or a new cross-module private
access fails here, in `make test`, the day it is written.

- Imports: every import of a geamqp module by a geamqp module, at any depth of
  the file except under ``if TYPE_CHECKING:`` (annotations only, never run), must
  go down the layer order below. A module not listed fails the test: place it.
- Private access: ``obj._name`` where ``obj`` is not ``self``/``cls`` is allowed
  only when ``_name`` is defined in the same module (a module's own classes may
  cooperate); a private name that only another geamqp module defines is a reach
  across modules, which must go through a named interface instead.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "geamqp"

# Lowest first: a module may import only modules of earlier layers (or its own).
LAYERS: list[set[str]] = [
    {"geamqp.exceptions"},
    {"geamqp.protocol", "geamqp.protocol._codegen", "geamqp.protocol.fields",
     "geamqp.protocol.spec", "geamqp.protocol.properties", "geamqp.protocol.frames",
     "geamqp.protocol.sasl", "geamqp.protocol.events", "geamqp.protocol.state",
     "geamqp.protocol.channel", "geamqp.protocol.settings", "geamqp.protocol.connection"},
    # the package itself: a facade that imports the client lazily, on first use
    {"geamqp.parameters", "geamqp.metrics", "geamqp.metrics.prometheus", "geamqp",
     "geamqp._perf_stats"},
    {"geamqp._hub", "geamqp._telemetry"},
    {"geamqp._transport"},
    {"geamqp._link"},
    {"geamqp._channel_state", "geamqp._topology", "geamqp._channel_recovery",
     "geamqp._credentials", "geamqp._ack_guard"},
    {"geamqp.consumer"},
    {"geamqp._reconsume"},
    {"geamqp.channel"},
    {"geamqp.recovery"},
    {"geamqp.connection"},
    {"geamqp.publisher", "geamqp.fleet", "geamqp.otel"},
    {"geamqp._perf_proxy"},
    {"geamqp.perf", "geamqp.kombu", "geamqp.pika"},
    {"geamqp.__main__"},
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, ast.Module]:
    return {_module_name(p): ast.parse(p.read_text(), str(p))
            for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node except those under `if TYPE_CHECKING:`."""
    found: list[ast.AST] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        found.append(node)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                stack.extend(child.orelse)
                continue
            stack.append(child)
    return found


def _imports(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    package = name if tree is not None and _is_package(name) else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            targets.update(a.name for a in node.names if a.name.startswith("geamqp"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            if not base.startswith("geamqp"):
                continue
            for alias in node.names:  # `from . import channel` imports a module
                sub = f"{base}.{alias.name}"
                targets.add(sub if sub in known else base)
    return {t for t in targets if t != name}


def _is_package(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.is_dir()


def _layer_of(name: str) -> int:
    for index, layer in enumerate(LAYERS):
        if name in layer or any(name.startswith(m + ".") for m in layer if m != "geamqp"):
            return index
    raise AssertionError(f"{name} is in no layer of tests/test_layering.py: place it")


def test_imports_run_one_way() -> None:
    modules = _modules()
    known = set(modules)
    wrong = []
    for name, tree in modules.items():
        mine = _layer_of(name)
        for target in _imports(name, tree, known):
            if target in known and _layer_of(target) > mine:
                wrong.append(f"{name} (layer {mine}) imports {target} "
                             f"(layer {_layer_of(target)})")
    assert not wrong, "imports against the layer order:\n" + "\n".join(sorted(wrong))


def _defined_private_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value)  # __slots__ entries
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def test_no_module_reaches_into_another_modules_private_attributes() -> None:
    modules = _modules()
    defined = {name: _defined_private_names(tree) for name, tree in modules.items()}
    everywhere = set().union(*defined.values())
    reaches = []
    for name, tree in modules.items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or not node.attr.startswith("_"):
                continue
            if node.attr.startswith("__"):
                continue
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            if node.attr in defined[name] or node.attr not in everywhere:
                continue  # this module's own name, or not a geamqp private at all
            reaches.append(f"{name}:{node.lineno}: .{node.attr}")
    assert not reaches, "private attributes of other modules used:\n" + "\n".join(reaches)


@pytest.mark.parametrize("module", sorted(_modules()))
def test_every_module_has_a_layer(module: str) -> None:
    _layer_of(module)
