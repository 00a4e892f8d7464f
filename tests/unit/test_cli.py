"""bpfhook command line: usage errors, the root check, python -m."""
import importlib
import os
import shutil
import subprocess
import sys

import pytest

from bpfhook import cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _bpfhook(*args, as_user=False):
    """Run `python -m bpfhook ARGS`; as_user drops root first.

    Dropping root: a fresh user namespace without uid mappings makes us the
    overflow uid (65534) with no capabilities on the host, while files stay
    readable (unlike setpriv --reuid, which cannot reach a python under /root).
    """
    argv = [sys.executable, "-m", "bpfhook", *args]
    if as_user and os.geteuid() == 0:
        assert shutil.which("unshare"), "unshare (util-linux) is needed to drop root"
        argv = ["unshare", "--user", *argv]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--bogus"], "bpfhook: error: "),
        (["nosuchtool"], "bpfhook: error: argument COMMAND: invalid choice: 'nosuchtool'"),
        (["lab"], "bpfhook lab: error: the following arguments are required: COMMAND"),
        (["lab", "up"], "bpfhook lab up: error: the following arguments are required: name"),
        (["lab", "up", "x", "--ipv5"], "bpfhook: error: unrecognized arguments: --ipv5"),
        (["lab", "down", "x", "--all"], "bpfhook lab down: error: argument --all: not allowed with argument name"),
        (["lab", "down"], "bpfhook lab down: error: one of the arguments name --all is required"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args, message):
    r = _bpfhook(*args)
    assert r.returncode == 2
    assert r.stdout == ""
    assert len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith(message)


HELP_IMPORTS = """
import contextlib, io, sys
from bpfhook import cli
with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
    cli.main(["--help"])
print(" ".join(sorted(name for name, _ in cli.COMMANDS.values() if name in sys.modules)))
"""


def test_help_lists_the_tools():
    r = _bpfhook("--help")
    assert r.returncode == 0
    for name in cli.COMMANDS:
        assert name in r.stdout
    # The list comes from the command table alone: no tool's imports
    r = subprocess.run([sys.executable, "-c", HELP_IMPORTS], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert (r.returncode, r.stdout) == (0, "\n"), r.stderr


@pytest.mark.parametrize("args", [["lab", "list"], ["lab", "up", "demo"], ["lab", "exec", "demo", "--", "true"]])
def test_lab_without_root_is_one_clear_line(args):
    r = _bpfhook(*args, as_user=True)
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == "bpfhook: error: 'lab' needs root (run it with sudo)\n"


def test_every_registered_tool_provides_the_protocol():
    for module_name, text in cli.COMMANDS.values():
        module = importlib.import_module(module_name)
        assert isinstance(text, str) and text
        assert isinstance(module.NEEDS_ROOT, bool)
        assert callable(module.add_arguments) and callable(module.run)
