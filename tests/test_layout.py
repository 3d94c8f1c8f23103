"""The package's shape: every import points down the layers, no import cycle (function-local imports
included), function-local imports only for optional or heavy dependencies, no file over 600 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pjax"

# bottom to top; a module may import its own layer or a lower one
LAYERS = (
    ("pjax.sharding", "pjax.logs", "pjax.distributed", "pjax.optim", "pjax.runinfo", "pjax.config_io", "pjax.metrics",
     "pjax.losses", "pjax.models", "pjax.data", "pjax.checkpoint", "pjax.generate", "pjax.rewards", "pjax.bestofn"),
    ("pjax.core",),
    ("pjax.rl",),
    ("pjax.phases",),
    ("pjax.eval", "pjax.sample_data", "pjax.plan", "pjax.convert"),
    ("pjax.api",),
    ("pjax.chain", "pjax.train", "pjax"),
)
# function-local imports: optional extras, accelerator-only, plotting/progress or heavy libraries, CLI parsers
LOCAL_OK = ("tqdm", "wandb", "matplotlib", "jax.experimental", "absl", "ml_collections", "torch", "transformers",
            "datasets", "huggingface_hub", "tensorflow_datasets", "grain", "pyarrow", "tensorboardX", "tokenizers",
            "sentencepiece")


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> list[tuple[str, bool, int]]:
    """(imported pjax module, function-local?, line) of every import statement of a module."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    local_nodes = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}

    def resolve(target: str) -> str | None:
        while target and target not in known:
            target = target.rpartition(".")[0]
        return target or None

    out = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for t in targets:
            out.append((resolve(t) if t.split(".")[0] == "pjax" else t, id(node) in local_nodes, node.lineno))
    return out


def layer(name: str) -> int:
    best = max((p for group in LAYERS for p in group if name == p or name.startswith(p + ".")), key=len)
    return next(i for i, group in enumerate(LAYERS) if best in group)


def graph() -> dict[str, set[str]]:
    known = modules()
    out = {}
    for name, path in known.items():
        deps = {t for t, _, _ in imports(name, path, known) if t and t.startswith("pjax") and t in known and t != name}
        # a package re-exporting its children, or a child importing its package's __init__, is not an edge
        out[name] = {d for d in deps if not name.startswith(d + ".")}
    return out


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in g:
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    assert cycles(graph()) == []


def test_every_import_points_down_the_layers():
    g = graph()
    upward = sorted(f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})" for a, deps in g.items() for b in deps
                    if layer(b) > layer(a))
    assert upward == []


def test_function_local_imports_only_for_optional_or_heavy_dependencies():
    known = modules()
    bad = [f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}" for name, path in known.items()
           for target, local, line in imports(name, path, known)
           if local and target and not any(target == ok or target.startswith(ok + ".") for ok in LOCAL_OK)]
    assert bad == []


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_over_600_lines(path):
    assert len(path.read_text().splitlines()) <= 600


def test_the_cli_is_only_the_cli():
    assert len((PACKAGE / "train.py").read_text().splitlines()) <= 150
