"""tests/oracles.py: outside tools found by name and version, skipped with one line; README's
table of them says which tests use which, and stays true."""
import os
import re
import stat

import pytest

from tests import oracles

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
USE = re.compile(r"oracles\.(?:require|skip_unless|find)\(\"([\w-]+)\"\)")


@pytest.fixture
def fake_path(tmp_path, monkeypatch):
    """A PATH holding only the tools a test writes: fake(name, version output)."""
    monkeypatch.setenv("PATH", str(tmp_path))
    oracles._lookup.cache_clear()

    def fake(name, output, directory=tmp_path):
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / name
        path.write_text(f"#!/bin/sh\necho '{output}'\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
        return str(path)

    yield fake
    oracles._lookup.cache_clear()


def test_missing_too_old_and_found(fake_path):
    assert oracles.find("tshark").problem == "tshark not installed (sudo bash .ci/run installs the test oracles)"
    fake_path("tshark", "TShark (Wireshark) 3.4.10 (Git v3.4.10 packaged as 3.4.10-0+deb11u1)")
    oracles._lookup.cache_clear()
    problem = oracles.find("tshark").problem
    assert problem.startswith("tshark too old: ") and "is 3.4.10, need 3.6 or newer" in problem
    path = fake_path("tshark", "TShark (Wireshark) 4.0.17 (Git v4.0.17 packaged as 4.0.17-0+deb12u3)")
    oracles._lookup.cache_clear()
    assert oracles.find("tshark") == oracles.Found(path, (4, 0, 17))


def test_llvm_is_found_by_its_versioned_names_past_an_old_plain_one(fake_path, tmp_path, monkeypatch):
    monkeypatch.setattr(oracles, "LLVM_BIN", str(tmp_path / "llvm-{major}" / "bin"))
    fake_path("llvm-mc", "Debian LLVM version 14.0.6")
    assert "too old" in oracles.find("llvm-mc").problem
    oracles._lookup.cache_clear()
    path = fake_path("llvm-mc", "Debian LLVM version 19.1.7", tmp_path / "llvm-19" / "bin")
    assert oracles.find("llvm-mc").path == path
    oracles._lookup.cache_clear()
    path = fake_path("llvm-mc-20", "Debian LLVM version 20.1.0")
    assert oracles.find("llvm-mc") == oracles.Found(path, (20, 1, 0))  # the newest first


def test_require_skips_with_the_one_line(fake_path):
    with pytest.raises(pytest.skip.Exception, match=r"^bpftrace not installed \(sudo bash .ci/run"):
        oracles.require("bpftrace")


def _readme_table():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    table = text.split("<!-- oracles -->")[1].split("<!-- /oracles -->")[0]
    rows = {}
    for line in table.splitlines()[3:]:
        tools, minimum, users = (cell.strip() for cell in line.strip("|").split("|"))
        for name in re.findall(r"([\w-]+)(?:,| \()", tools):
            rows[name] = (minimum, users)
    return rows


def test_readme_names_every_tool_its_minimum_and_the_tests_using_it():
    rows = _readme_table()
    assert set(rows) == set(oracles.TOOLS)
    for name, tool in oracles.TOOLS.items():
        assert rows[name][0] == (".".join(map(str, tool.minimum)) if tool.minimum else "any"), name
    for directory in ("unit", "kernel"):
        for file in os.listdir(os.path.join(ROOT, "tests", directory)):
            if not file.endswith(".py") or file == "test_oracles.py":
                continue
            with open(os.path.join(ROOT, "tests", directory, file)) as f:
                used = set(USE.findall(f.read()))
            for name in used:
                assert file[:-3] in rows[name][1], f"README's oracle table: {name} is used by {file}"
    with open(os.path.join(ROOT, "tests", "kernel_state.py")) as f:
        for name in USE.findall(f.read()):
            assert "kernel-state checks" in rows[name][1], name
