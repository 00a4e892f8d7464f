"""bpfhook's import graph, read from its sources with ast: no cycle, and dependencies that point down.

A module's imports are those that run when it is imported: statements at module level (under
`if` and `try` too), not inside functions. `from P import n` imports P.n when that is a module,
else P. Importing a submodule also runs its package's __init__, so it counts as importing that.
"""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _modules(package):
    """{dotted name: path} of every module of a package in the checkout."""
    found = {}
    for folder, dirs, files in os.walk(os.path.join(ROOT, package)):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        dotted = os.path.relpath(folder, ROOT).replace(os.sep, ".")
        for name in files:
            if name.endswith(".py"):
                found[dotted if name == "__init__.py" else f"{dotted}.{name[:-3]}"] = os.path.join(folder, name)
    return found


def _top_level(body):
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for field in ("body", "orelse", "finalbody", "handlers"):
                yield from _top_level(getattr(node, field, None) or ())


def _imported(name, path, known):
    """The dotted names `name` imports when it is imported, each with its parent packages."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    out = set()
    for node in _top_level(tree.body):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            base = ".".join(part for part in (base, node.module) if part)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        for target in targets:
            while target:
                out.add(target)
                target = target.rpartition(".")[0]
    return out - {name}


def _graph():
    modules = _modules("bpfhook")
    return {name: {t for t in _imported(name, path, modules) if t in modules} for name, path in modules.items()}


def _cycle(graph):
    """One import cycle as [a, b, ..., a], or None."""
    state = {}  # name -> "open" while on the path, "done" after

    def visit(name, path):
        state[name] = "open"
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state:
                found = visit(target, path + [target])
                if found:
                    return found
        state[name] = "done"
        return None

    for name in sorted(graph):
        if name not in state:
            found = visit(name, [name])
            if found:
                return found
    return None


def test_no_import_cycle():
    graph = _graph()
    assert "bpfhook.programs.accept" in graph["bpfhook.monitor"]  # (the graph sees imports at all)
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


def test_dependencies_point_down():
    """pybpf knows nothing of bpfhook; records (the layouts) is a leaf; the programs stand on the
    layouts and each other only; the engine knows nothing of its command."""
    graph = _graph()
    pybpf = _modules("pybpf")
    assert [n for n, path in pybpf.items() if any(t.startswith("bpfhook") for t in _imported(n, path, pybpf))] == []
    assert graph["bpfhook.records"] <= {"bpfhook"}
    for name in (n for n in graph if n.startswith("bpfhook.programs.")):
        assert graph[name] <= {"bpfhook", "bpfhook.records", "bpfhook.programs"} | {
            n for n in graph if n.startswith("bpfhook.programs.")}, name
    assert "bpfhook.monitor_cli" not in graph["bpfhook.monitor"]
