"""The import graph of pybpf and bpfhook, read from the sources with ast: no cycles, dependencies
pointing down, and pybpf.asm is the pure half.

A module's imports are the import statements that run when it is imported: at module level,
in class bodies, under `if` and `try`, but not inside functions or `if __name__ == "__main__":`. `from P import n` counts as
an import of P.n when that is a module, else of P; importing a submodule is not counted as
an import of its parent package (Python runs the parent's __init__ first, but the parent
does not depend on the child).
"""
import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGES = ("pybpf", "bpfhook")

# The pure half may reach the kernel side only here, inside a function, when asked to.
KERNEL_SIDE_CALLS = {("pybpf.asm.dsl", "pybpf.features"),  # Program(cpu="auto") asks the running kernel
                     ("pybpf.asm.dsl", "pybpf.kernel_types")}  # p.ctx, p.kernel(reg, "task_struct"): its types


def _modules():
    """{dotted name: path} of every module in PACKAGES."""
    found = {}
    for package in PACKAGES:
        for folder, dirs, files in os.walk(os.path.join(ROOT, package)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            prefix = os.path.relpath(folder, ROOT).replace(os.sep, ".")
            for name in files:
                if name.endswith(".py"):
                    found[prefix if name == "__init__.py" else f"{prefix}.{name[:-3]}"] = os.path.join(folder, name)
    return found


def _statements(body, functions):
    """Import statements of a body; those inside functions only when `functions`."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if functions:
                yield from (n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom)))
        elif isinstance(node, ast.If) and ast.unparse(node.test) in ("__name__ == '__main__'", '__name__ == "__main__"'):
            continue  # runs as a script only
        else:
            for field in ("body", "orelse", "finalbody", "handlers"):
                yield from _statements(getattr(node, field, ()) or (), functions)


def _imports(name, path, modules, functions=False):
    """The modules of `modules` that `name` imports."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    out = set()
    for node in _statements(tree.body, functions):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            base = ".".join(part for part in (base if node.level else "", node.module or "") if part)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        for target in targets:
            while target and target not in modules:  # import a.b.c names a.b.c, else its nearest package
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def _cycles(graph):
    """Strongly connected components of more than one module (Tarjan)."""
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
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _graph(functions=False):
    modules = _modules()
    return {name: _imports(name, path, modules, functions) for name, path in modules.items()}


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_dependencies_point_down():
    """pybpf knows nothing of bpfhook; records (the layouts) is a leaf; the programs stand on the
    layouts and each other only; the engine knows nothing of its command."""
    graph = _graph()
    assert "bpfhook.programs.accept" in graph["bpfhook.monitor"]  # (the graph sees imports at all)
    assert {(n, t) for n, targets in graph.items() if n.startswith("pybpf")
            for t in targets if t.startswith("bpfhook")} == set()
    own = {n for n in graph if n.startswith("bpfhook")}
    assert graph["bpfhook.records"] & own == set()
    programs = {n for n in own if n.startswith("bpfhook.programs")}
    for name in programs:
        assert graph[name] & own <= programs | {"bpfhook.records"}, name
    assert "bpfhook.monitor_cli" not in graph["bpfhook.monitor"]


def test_the_check_finds_a_cycle(tmp_path, monkeypatch):
    """The checker itself: a two-module loop through a relative import is found."""
    package = tmp_path / "loopy"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from . import b\n")
    (package / "b.py").write_text("def f():\n    pass\n\n\nif True:\n    from .a import f as g\n")
    (package / "c.py").write_text("def f():\n    from . import a\n\n\nif __name__ == '__main__':\n    from . import b\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", str(tmp_path))
    monkeypatch.setattr(sys.modules[__name__], "PACKAGES", ("loopy",))
    assert _cycles(_graph()) == [["loopy.a", "loopy.b"]]
    assert _graph(functions=True)["loopy.c"] == {"loopy.a"} and _graph()["loopy.c"] == set()


def test_the_pure_half_imports_nothing_kernel_side():
    """pybpf.asm (its command line aside) imports only itself and pybpf.errors, even inside functions."""
    graph = _graph(functions=True)
    wrong = {(name, target) for name, targets in graph.items()
             if name.startswith("pybpf.asm") and name != "pybpf.asm.__main__"
             for target in targets if not target.startswith("pybpf.asm") and target != "pybpf.errors"}
    assert wrong == KERNEL_SIDE_CALLS


@pytest.mark.parametrize("use", [
    "from pybpf.asm import Program; p = Program(); p.r0 = 1; p.exit(); str(p)",
    "import pybpf; pybpf.disassemble(pybpf.assemble('r0 = 1\\nexit', 'llvm'), 'ubpf')",
])
def test_the_pure_half_loads_no_kernel_binding(use):
    code = f"import sys; {use}; print(sorted(m for m in ('cffi', '_cffi_backend', 'pybpf.syscall', 'construct') " \
           "if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
