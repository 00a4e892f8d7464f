"""Packaging: the wheel's contents and metadata, bpfhook.programs from a checkout
and from an install, and the README commands that CI runs."""
import ast
import configparser
import email.parser
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile

import pytest

from bpfhook import cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "pybpf", "bpfhook")
RUNTIME_DEPS = {"pyroute2", "cffi", "construct"}
TEST_EXTRA = {'pytest; extra == "test"', 'hypothesis; extra == "test"', 'pyyaml; extra == "test"'}
PROBE = "_packaging_probe"  # a module added to the copied bpfhook/programs/ only


def _readme_command(marker):
    text = open(os.path.join(ROOT, "README.md")).read()
    block = re.search(rf"<!-- {marker} -->\n(.*?)\n<!-- /{marker} -->", text, re.S)
    assert block, f"README.md has no <!-- {marker} --> block"
    lines = [line.strip() for line in block.group(1).splitlines() if line.strip() and not line.startswith("```")]
    assert len(lines) == 1, f"README.md <!-- {marker} --> block must hold one command: {lines}"
    return lines[0]


@pytest.fixture(scope="module")
def source_copy(tmp_path_factory):
    """The package sources copied out, plus a probe module in bpfhook/programs/,
    so building leaves the checkout alone."""
    copy = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in SOURCES:
        src = os.path.join(ROOT, name)
        if os.path.isdir(src):
            shutil.copytree(src, copy / name, ignore=ignore)
        else:
            shutil.copy(src, copy / name)
    (copy / "bpfhook" / "programs" / f"{PROBE}.py").write_text("WHERE = __name__\n")
    return copy


@pytest.fixture(scope="module")
def wheel(source_copy, tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), "."],
        cwd=source_copy, capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    (path,) = out.glob("bpfhook-*.whl")
    return path


def _py_files(tree, prefix):
    return {
        prefix + os.path.relpath(os.path.join(d, f), tree)
        for d, _dirs, files in os.walk(tree)
        for f in files
        if f.endswith(".py") and "__pycache__" not in d
    }


def test_wheel_ships_every_module_and_no_top_level_programs(wheel, source_copy):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert not [n for n in names if n.startswith("programs/")]
    expected = _py_files(source_copy / "pybpf", "pybpf/") | _py_files(source_copy / "bpfhook", "bpfhook/")
    assert expected - names == set()
    assert f"bpfhook/programs/{PROBE}.py" in names
    assert not [n for n in names if n.startswith("tests/")]


def test_wheel_metadata(wheel):
    with zipfile.ZipFile(wheel) as z:
        (meta,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = email.parser.Parser().parsestr(z.read(meta).decode())
        (entry,) = [n for n in z.namelist() if n.endswith(".dist-info/entry_points.txt")]
        entry_points = configparser.ConfigParser()
        entry_points.read_string(z.read(entry).decode())
    assert metadata["Name"] == "bpfhook"
    assert metadata["Requires-Python"] == ">=3.10"
    assert set(metadata.get_all("Requires-Dist")) == RUNTIME_DEPS | TEST_EXTRA
    assert metadata.get_all("Provides-Extra") == ["test"]
    assert dict(entry_points["console_scripts"]) == {
        "bpfhook": "bpfhook.cli:main",
        "pybpf-disasm": "pybpf.cli:disasm_main",
        "pybpf-asm": "pybpf.cli:asm_main",
    }


IMPORT_PROGRAMS = f"""
import bpfhook, bpfhook.programs.{PROBE} as probe
from bpfhook import programs
print(programs.__file__)
print(probe.WHERE)
"""


def test_programs_import_from_an_installed_wheel(wheel, tmp_path):
    site = tmp_path / "site"
    r = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert not (site / "programs").exists()
    # Run away from any checkout: only the installed copy can answer.
    r = subprocess.run(
        [sys.executable, "-c", IMPORT_PROGRAMS], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True, text=True, timeout=30,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(site / "bpfhook" / "programs" / "__init__.py"), f"bpfhook.programs.{PROBE}"]


def test_programs_import_from_a_checkout(source_copy):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run(
        [sys.executable, "-c", IMPORT_PROGRAMS], cwd=source_copy, env=env, capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(source_copy / "bpfhook" / "programs" / "__init__.py"), f"bpfhook.programs.{PROBE}"]


def _imported_modules(path):
    """Every module name an import statement in `path` names, at any depth (function-local too)."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module


def test_shipped_code_imports_the_programs_as_installed():
    """The programs are bpfhook.programs: an import of a top-level `programs` would find some other
    package, or nothing, first when the line runs."""
    wrong = [
        f"{os.path.relpath(os.path.join(d, f), ROOT)}: {name}"
        for package in ("pybpf", "bpfhook")
        for d, _dirs, files in os.walk(os.path.join(ROOT, package))
        for f in files
        if f.endswith(".py")
        for name in _imported_modules(os.path.join(d, f))
        if name == "programs" or name.startswith("programs.")
    ]
    assert wrong == []


def test_ci_runs_the_readme_test_command():
    readme = _readme_command("test")
    assert "pip install" in readme and "'.[test]'" in readme and "pytest" in readme
    if os.geteuid() == 0:  # .ci/run drops the users' sudo when it already is root
        readme = re.sub(r"(^|&&\s*)sudo\s+", r"\1", readme)
    r = subprocess.run(
        ["bash", os.path.join(ROOT, ".ci", "run"), "--print-test-command"], capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == readme + "\n"


def test_readme_run_command_uses_real_bpfhook_commands():
    commands = [shlex.split(part) for part in _readme_command("install-run").split("&&")]
    invocations = [c[c.index(w) + 1 :] for c in commands for w in c if w.endswith("bin/bpfhook")]
    assert invocations, "the README's run command never calls bpfhook"
    parser = cli.build_parser()
    for args in invocations:
        parser.parse_args(args)  # exits 2 on anything the CLI does not accept
