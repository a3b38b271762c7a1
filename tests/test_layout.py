"""The package's layering: a lower layer never imports a higher one, and no import cycle exists."""

from __future__ import annotations

import ast
import os

import mli_theory

ROOT = os.path.dirname(mli_theory.__file__)

# layers from the bottom up; a module may import only from its own layer or lower ones
LAYERS = [
    {"errors", "results"},
    {"inputs"},
    {"path"},
    {"geometry", "exact"},
    {"theory"},
    {"certify"},
    {"curvature", "kernels", "connectivity"},
    {"check", "plot"},
    {"runs", "testing"},
    {"cli"},
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def _modules() -> dict[str, str]:
    out = {}
    for folder, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                name = "mli_theory" + ("" if rel == "__init__" else "." + rel.removesuffix(".__init__"))
                out[name] = path
    return out


def _imports(name: str, path: str) -> set[str]:
    """Absolute names of the mli_theory modules imported by a module (at any depth of its code)."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("mli_theory"):
                found.add(mod)
                found.update(f"{mod}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("mli_theory"))
    return found


def _subject(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_subject_has_a_layer():
    subjects = {_subject(m) for m in _modules()} - {None, "__main__"}
    assert subjects <= set(RANK), subjects - set(RANK)


def test_lower_layers_never_import_higher_ones():
    bad = []
    for name, path in _modules().items():
        src = _subject(name)
        if src in (None, "__main__"):
            continue
        for imp in _imports(name, path):
            dst = _subject(imp)
            if dst in RANK and RANK[dst] > RANK[src]:
                bad.append(f"{name} imports {imp}")
    assert not bad, bad


def test_no_import_cycle_between_modules():
    mods = _modules()
    graph = {m: {i for i in _imports(m, p) if i in mods and i != m} for m, p in mods.items()}
    # a package's __init__ re-exports its own modules: edges into one's own package are not cycles
    for m in graph:
        graph[m] = {d for d in graph[m] if not m.startswith(d + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in graph[m]:
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d) :] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m)


def test_public_surface_is_explicit_and_importable():
    import importlib

    for name in ["mli_theory", *(f"mli_theory.{s}" for s in ["inputs", "path", "geometry", "exact", "theory", "certify", "curvature", "kernels", "connectivity", "runs", "testing", "cli"])]:
        mod = importlib.import_module(name)
        assert mod.__all__, name
        for attr in mod.__all__:
            assert getattr(mod, attr) is not None, (name, attr)
