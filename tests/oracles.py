"""The outside tools some tests check our work against (bpftool, tshark, llvm-mc, ...).

Each is looked up on PATH (LLVM also under its versioned names and /usr/lib/llvm-N), its
version read from the tool itself, and a test that needs one skips with one line when it is
missing or too old: `sudo bash .ci/run` installs them all. Never a fixed path, never a traceback.
"""
import dataclasses
import functools
import os
import re
import shutil
import subprocess

import pytest

from tests.conftest import slow_factor

INSTALL_HINT = "sudo bash .ci/run installs the test oracles"
LLVM_NEWEST = 30  # versioned LLVM names looked for, newest first, down to the tool's minimum
LLVM_BIN = "/usr/lib/llvm-{major}/bin"  # where Debian's llvm-N packages keep the plain names
DEBIAN_PYTHON = "/usr/bin/python3"  # the python3 that Debian's python3-* packages install for


@dataclasses.dataclass(frozen=True)
class Tool:
    name: str
    version_flag: str
    version_re: str  # its first group: the version, dotted numbers
    minimum: tuple = ()
    package: str = ""  # the Debian package .ci/run installs it from
    llvm: bool = False  # also llvm-NAME-N and /usr/lib/llvm-N/bin/NAME
    python_module: str = ""  # a module of Debian's python3 (the path found is that python3)

    def candidates(self):
        if self.python_module:
            yield DEBIAN_PYTHON
            return
        if self.llvm:
            for major in range(LLVM_NEWEST, (self.minimum or (0,))[0] - 1, -1):
                yield f"{self.name}-{major}"
                yield os.path.join(LLVM_BIN.format(major=major), self.name)
        yield self.name


TOOLS = {t.name: t for t in (
    Tool("bpftool", "--version", r"bpftool v?(\d+(?:\.\d+)*)", (7, 0), "bpftool"),
    Tool("bpftrace", "--version", r"bpftrace v?(\d+(?:\.\d+)*)", (0, 16), "bpftrace"),
    Tool("tshark", "--version", r"TShark \(Wireshark\) (\d+(?:\.\d+)*)", (3, 6), "tshark"),
    Tool("capinfos", "--version", r"Capinfos \(Wireshark\) (\d+(?:\.\d+)*)", (3, 6), "tshark"),
    Tool("ping", "-V", r"iputils[- ]s?(\d+)", (), "iputils-ping"),
    Tool("tcpreplay", "-V", r"tcpreplay version: (\d+(?:\.\d+)*)", (4, 3), "tcpreplay"),
    Tool("nghttpd", "--version", r"nghttp2/(\d+(?:\.\d+)*)", (1, 40), "nghttp2-server"),
    Tool("nghttp", "--version", r"nghttp2/(\d+(?:\.\d+)*)", (1, 40), "nghttp2-client"),
    Tool("grpcio", "", r"(\d+(?:\.\d+)*)", (1, 30), "python3-grpcio", python_module="grpc"),
    Tool("hpack", "", r"(\d+(?:\.\d+)*)", (4, 0), "python3-hpack", python_module="hpack"),
    Tool("ip", "-V", r"iproute2-(?:ss)?v?(\d+(?:\.\d+)*)", (), "iproute2"),
    Tool("tc", "-V", r"iproute2-(?:ss)?v?(\d+(?:\.\d+)*)", (), "iproute2"),
    Tool("unshare", "--version", r"util-linux (\d+(?:\.\d+)*)", (), "util-linux"),
    Tool("nsenter", "--version", r"util-linux (\d+(?:\.\d+)*)", (), "util-linux"),
    Tool("iptables", "-V", r"iptables v(\d+(?:\.\d+)*)", (), "iptables"),
    # container engines, started by tests/runtimes.py when not running
    Tool("dockerd", "--version", r"Docker version (\d+(?:\.\d+)*)", (), "docker.io"),
    Tool("containerd", "--version", r"containerd \S+ v?(\d+(?:\.\d+)*)", (), "containerd"),
    Tool("ctr", "--version", r"ctr \S+ v?(\d+(?:\.\d+)*)", (), "containerd"),
    Tool("podman", "--version", r"podman version (\d+(?:\.\d+)*)", (), "podman"),
    Tool("runc", "--version", r"runc version (\d+(?:\.\d+)*)", (), "runc"),
    # a base image without a registry: a minimal Debian made from the apt mirrors
    Tool("debootstrap", "--version", r"debootstrap (\d+(?:\.\d+)*)", (), "debootstrap"),
    # a real Prometheus scraping the monitor, and its exposition linter
    Tool("prometheus", "--version", r"prometheus, version (\d+(?:\.\d+)*)", (2, 42), "prometheus"),
    Tool("promtool", "--version", r"promtool, version (\d+(?:\.\d+)*)", (2, 42), "prometheus"),
    # cpu v4, gotol and may_goto: LLVM 19
    Tool("llvm-mc", "--version", r"LLVM version (\d+(?:\.\d+)*)", (19,), "llvm-19", llvm=True),
    Tool("llvm-objdump", "--version", r"LLVM version (\d+(?:\.\d+)*)", (19,), "llvm-19", llvm=True),
    Tool("llvm-readelf", "--version", r"LLVM version (\d+(?:\.\d+)*)", (19,), "llvm-19", llvm=True),
    Tool("llvm-objcopy", "--version", r"LLVM version (\d+(?:\.\d+)*)", (19,), "llvm-19", llvm=True),
    # nm -D prints symbol versions from binutils 2.35
    Tool("nm", "--version", r"GNU nm .*? (\d+(?:\.\d+)+)", (2, 35), "binutils"),
    Tool("strip", "--version", r"GNU strip .*? (\d+(?:\.\d+)+)", (), "binutils"),
    Tool("ld", "--version", r"GNU ld .*? (\d+(?:\.\d+)+)", (), "binutils"),
    Tool("openssl", "version", r"OpenSSL (\d+(?:\.\d+)*)", (1, 1), "openssl"),
    Tool("curl", "--version", r"curl (\d+(?:\.\d+)*)", (), "curl"),
    Tool("wget", "--version", r"GNU Wget (\d+(?:\.\d+)*)", (), "wget"),
)}


@dataclasses.dataclass(frozen=True)
class Found:
    path: str = None
    version: tuple = ()
    problem: str = None  # why it cannot be used: one line

    def __bool__(self):
        return self.problem is None


def _version(tool, path):
    argv = ([path, "-c", f"import {tool.python_module} as m; print(m.__version__)"] if tool.python_module
            else [path, tool.version_flag])
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30 * slow_factor())  # tshark takes >30 s under TCG
    except OSError:
        return None
    match = re.search(tool.version_re, r.stdout + r.stderr)
    return tuple(int(part) for part in match.group(1).split(".")) if match else None


_asked = set()  # the tools tests looked for in this run: the run's summary names those missing


def find(name):
    """The newest usable `name` on this machine, or a Found saying why there is none."""
    _asked.add(name)
    return _lookup(name)


@functools.cache
def _lookup(name):
    tool = TOOLS[name]
    too_old = []
    for candidate in tool.candidates():
        path = shutil.which(candidate) if os.sep not in candidate else (
            candidate if os.access(candidate, os.X_OK) else None)
        if path is None:
            continue
        version = _version(tool, path)
        if version is None:
            too_old.append(f"{path} (version unreadable)")
        elif version < tool.minimum:
            too_old.append(f"{path} is {'.'.join(map(str, version))}")
        else:
            return Found(path, version)
    need = f", need {'.'.join(map(str, tool.minimum))} or newer" if tool.minimum else ""
    if too_old:
        return Found(problem=f"{name} too old: {'; '.join(too_old)}{need} ({INSTALL_HINT})")
    return Found(problem=f"{name} not installed ({INSTALL_HINT})")


def require(name):
    """The path of tool `name`; skips the calling test with one line when it cannot be used."""
    found = find(name)
    if not found:
        pytest.skip(found.problem)
    return found.path


def skip_unless(name):
    """A mark for a whole test: skipped with the same line as require()."""
    found = find(name)
    return pytest.mark.skipif(not found, reason=found.problem or "")


def missing():
    """{name: problem} of the tools tests asked for and this machine lacks."""
    return {name: _lookup(name).problem for name in sorted(_asked) if not _lookup(name)}
