"""The layering, checked on the source: no import cycles, ``schemas`` depends on pydantic only,
``runtime`` does not import ``functions`` at module level, only ``runtime`` imports ``nats``.

Module-level imports are read with ``ast`` (no code runs): statements at the top of a module,
including inside module-level ``if``/``try``/``with`` blocks, but not inside functions or classes
(a deferred import cannot form a cycle at import time) and not under ``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("schemas", "runtime", "functions", "gpu_runner")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            out[module_name(path)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_level(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    out: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                out += _module_level(node.body)
            out += _module_level(node.orelse)
        elif isinstance(node, ast.Try):
            out += _module_level(node.body)
            for h in node.handlers:
                out += _module_level(h.body)
            out += _module_level(node.orelse) + _module_level(node.finalbody)
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            out += _module_level(node.body)
    return out


def imported_names(path: Path, module: str) -> list[str]:
    """Absolute dotted names a module imports at module level (``from a import b`` gives ``a.b``)."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    out: list[str] = []
    for node in _module_level(tree.body):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
            continue
        if node.level:
            base = module.split(".") if is_pkg else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        out.append(prefix)
        out += [f"{prefix}.{a.name}" for a in node.names if a.name != "*"]
    return out


def graph() -> dict[str, set[str]]:
    """module => the project modules it imports at module level (and their parent packages)."""
    mods = all_modules()
    edges: dict[str, set[str]] = {}
    for mod, path in mods.items():
        deps: set[str] = set()
        for name in imported_names(path, mod):
            # ``from a.b import c``: a.b.c when it is a module, else a.b (c is an attribute)
            parts = name.split(".")
            while parts and ".".join(parts) not in mods:
                parts.pop()
            if not parts:
                continue
            target = ".".join(parts)
            # importing a.b.c runs a/__init__ and a/b/__init__ first
            for i in range(1, len(parts) + 1):
                dep = ".".join(parts[:i])
                if dep in mods and dep != mod and not mod.startswith(dep + "."):
                    deps.add(dep)
            if target != mod:
                deps.add(target)
        edges[mod] = deps
    return edges


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in edges.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def external_imports(prefixes: tuple[str, ...], *, module_level_only: bool = True) -> dict[str, set[str]]:
    """module => top-level names of the distributions it imports (project packages excluded)."""
    out: dict[str, set[str]] = {}
    for mod, path in all_modules().items():
        if not mod.startswith(prefixes):
            continue
        if module_level_only:
            names = imported_names(path, mod)
        else:
            names = []
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names += [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    names.append(node.module)
        tops = {n.split(".")[0] for n in names if n} - set(PACKAGES)
        if tops:
            out[mod] = tops
    return out


# ---- the checks themselves ----------------------------------------------------------------
def test_the_graph_sees_known_edges() -> None:
    """Guard against a parser that silently finds nothing (the cycle check would then pass vacuously)."""
    edges = graph()
    assert len(edges) > 50
    assert "runtime.bus" in edges["runtime.service"]
    assert "schemas.names" in edges["schemas.stages"]
    assert "runtime.console" in edges["runtime.cli"]
    # a deferred import is not an import-time edge
    assert not any(d.startswith("functions") for d in edges["runtime.demo"])


def test_find_cycles_reports_a_cycle() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    cycles = find_cycles(graph())
    assert not cycles, "import cycles (module-level imports): " + "; ".join(" <-> ".join(c) for c in cycles)


def test_schemas_depends_on_pydantic_and_the_standard_library_only() -> None:
    allowed = set(sys.stdlib_module_names) | {"pydantic", "pydantic_core", "annotated_types", "typing_extensions"}
    bad = {m: sorted(t - allowed) for m, t in external_imports(("schemas",), module_level_only=False).items()
           if t - allowed}
    assert not bad, f"schemas/ may import pydantic and the standard library only: {bad}"
    edges = graph()
    leaks = {m: sorted(d for d in deps if not d.startswith("schemas")) for m, deps in edges.items()
             if m.startswith("schemas") and any(not d.startswith("schemas") for d in deps)}
    assert not leaks, f"schemas/ imports other project packages: {leaks}"


def test_runtime_does_not_import_functions_at_module_level() -> None:
    edges = graph()
    bad = {m: sorted(d for d in deps if d.startswith("functions")) for m, deps in edges.items()
           if m.startswith("runtime") and any(d.startswith("functions") for d in deps)}
    assert not bad, f"runtime/ imports functions/ at module level (load handlers by path instead): {bad}"


def test_only_runtime_imports_nats() -> None:
    bad = {m: "nats" for m, tops in external_imports(("schemas", "functions", "gpu_runner"),
                                                    module_level_only=False).items() if "nats" in tops}
    assert not bad, f"modules outside runtime/ import nats: {sorted(bad)}"


def test_infra_tools_do_not_load_the_broker_client() -> None:
    """The infra generator learns stage names from schemas/stages.py, not from the NATS runtime. The only
    runtime modules it may load are the pure NATS-permission generator (runtime/accounts.py, which writes
    accounts.gen.tf) and what that needs (settings, trust: file helpers), none of which imports nats."""
    allowed = "('runtime', 'runtime.settings', 'runtime.accounts', 'runtime.trust')"
    code = ("import sys; sys.path[:0] = ['infra/tools', '.']; import gen_infra, tfcheck; "
            "gen_infra.render_all(); "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('nats', 'runtime', 'functions') "
            f"and m not in {allowed}); print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
