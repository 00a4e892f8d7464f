"""pybpf uprobes on the real kernel: attach.uprobe through the uprobe PMU (entry and return, every
process or one pid, by symbol, versioned symbol or offset), attach.uprobe_multi links with
cookies, pybpf.procmaps finding a file through a process's own mount namespace, the feature
probes, and nothing left behind after close() or SIGKILL (bpftool perf and link, tracefs's
uprobe_events, the kernel's object lists)."""
import ctypes.util
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from pybpf import attach, features, pmu, procmaps
from pybpf.asm import Program
from pybpf.elf import ElfFile
from pybpf.errors import BpfError
from pybpf.maps import Map
from pybpf.prog import load
from pybpf.uapi import MapType
from tests import kernel_state
from tests.conftest import eventually, require

HERE = os.path.dirname(os.path.abspath(__file__))
MAIN = os.path.dirname(os.path.dirname(HERE))

# A process that maps a library and calls two of its functions on demand: "N" on stdin -> N calls
# of zlibVersion and 2N of zlibCompileFlags, then it prints the address zlibVersion returned.
OURS = ("count_calls",)  # the programs these tests load
CALLER = r"""
import ctypes, sys
z = ctypes.CDLL(sys.argv[1])
z.zlibVersion.restype = ctypes.c_void_p
print("ready", flush=True)
for line in sys.stdin:
    n = int(line)
    for _ in range(n):
        v = z.zlibVersion()
    for _ in range(2 * n):
        z.zlibCompileFlags()
    print(v, flush=True)
"""


def libz_path():
    name = ctypes.util.find_library("z")
    for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/lib64", "/usr/lib64", "/usr/lib"):
        if name and os.path.exists(os.path.join(d, name)):
            return os.path.realpath(os.path.join(d, name))
    pytest.skip("no libz here to probe")


@pytest.fixture
def private_libz(tmp_path):
    """A copy of libz no other process maps: a probe on it only ever fires in our caller."""
    require("uprobe_pmu")
    path = tmp_path / "libz-private.so.1"
    shutil.copy(libz_path(), path)
    return str(path)


class Caller:
    def __init__(self, library, argv_prefix=()):
        self.proc = subprocess.Popen([*argv_prefix, sys.executable, "-c", CALLER, library], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    @property
    def pid(self):
        return self.proc.pid

    def call(self, n):
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def close(self):
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def caller(private_libz):
    c = Caller(private_libz)
    yield c
    c.close()


def counting_program(counts, name="count_calls", multi=False):
    """counts[bpf cookie] += 1; counts[1 << 32 | cookie] = the return register (a uretprobe's:
    the function's return value)."""
    p = Program(name, prog_type="kprobe")
    p.r6 = p.r1
    key = p.stack.alloc(8)
    one = p.stack.alloc(8)
    p.call("get_attach_cookie", p.r6)
    key.u64[0] = p.r0
    one.u64[0] = 1
    p.call("map_lookup_elem", counts, key)
    with p.If(p.r0 != 0):
        p.r1 = 1
        p.r0.u64[0] += p.r1
    with p.Else():
        p.call("map_update_elem", counts, key, one, 0)
    p.r1 = 1
    p.r1 <<= 32
    p.r2 = key.u64[0]
    p.r1 |= p.r2
    key.u64[0] = p.r1
    p.r1 = p.r6.u64[80 if os.uname().machine == "x86_64" else 0]  # pt_regs ax / regs[0]
    one.u64[0] = p.r1
    p.call("map_update_elem", counts, key, one, 0)
    p.exit(0)
    return load(p, expected_attach_type="trace_uprobe_multi" if multi else None)


@pytest.fixture
def counts():
    m = Map(MapType.HASH, key=8, value=8, max_entries=16, name="uprobe_counts")
    yield m
    m.close()


def test_uprobe_and_uretprobe_every_process(private_libz, caller, counts):
    with counting_program(counts) as prog:
        entry = attach.uprobe(prog, private_libz, "zlibVersion", cookie=7)
        ret = attach.uprobe(prog, private_libz, "zlibVersion", ret=True, cookie=8)
        with entry, ret:
            returned = caller.call(5)
            assert counts[7] == 5 and counts[8] == 5
            assert counts[1 << 32 | 8] == returned  # the uretprobe saw what the function returned
        caller.call(3)  # detached: nothing counts
        assert counts[7] == 5 and counts[8] == 5


def test_uprobe_by_versioned_symbol_and_by_offset(private_libz, caller, counts):
    offset = ElfFile(private_libz).offset("zlibCompileFlags")
    with counting_program(counts) as prog:
        with attach.uprobe(prog, private_libz, "zlibCompileFlags@@ZLIB_1.2.0.2", cookie=1), \
                attach.uprobe(prog, private_libz, offset, cookie=2):
            caller.call(4)
    assert counts[1] == 8 and counts[2] == 8


def test_uprobe_one_pid_only(private_libz, counts):
    one, other = Caller(private_libz), Caller(private_libz)
    try:
        with counting_program(counts) as prog, attach.uprobe(prog, private_libz, "zlibVersion", pid=one.pid,
                                                             cookie=3):
            one.call(2)
            other.call(9)
        assert counts[3] == 2
    finally:
        one.close()
        other.close()


def test_uprobe_multi_link_with_cookies(private_libz, caller, counts):
    require("link.uprobe_multi")
    with counting_program(counts, multi=True) as prog:
        with attach.uprobe_multi(prog, private_libz, ["zlibVersion", "zlibCompileFlags"], cookies=[10, 20]) as link:
            assert link.info().type == 12  # BPF_LINK_TYPE_UPROBE_MULTI
            returned = caller.call(3)
            with attach.uprobe_multi(prog, private_libz, ["zlibVersion"], ret=True, cookies=[30]):
                returned = caller.call(1)
    assert (counts[10], counts[20], counts[30]) == (4, 8, 1)
    assert counts[1 << 32 | 30] == returned


def test_bad_targets_one_line(private_libz, counts):
    with counting_program(counts) as prog:
        with pytest.raises(BpfError, match=r"libz-private\.so\.1: no symbol SSL_write$"):
            attach.uprobe(prog, private_libz, "SSL_write")
        with pytest.raises(BpfError, match="no such file"):
            attach.uprobe(prog, "/nonexistent/lib.so", 0x1000)
        with pytest.raises(BpfError, match="no such process"):
            attach.uprobe(prog, private_libz, "zlibVersion", pid=2 ** 22 + 1)


ATTACHER = textwrap.dedent(r"""
    import sys
    sys.path.insert(0, sys.argv[3])
    from tests.kernel.test_uprobe import counting_program
    from pybpf import attach
    from pybpf.maps import Map
    from pybpf.uapi import MapType
    counts = Map(MapType.HASH, key=8, value=8, max_entries=16)
    multi = sys.argv[2] == "multi"
    prog = counting_program(counts, multi=multi)
    if multi:
        keep = [attach.uprobe_multi(prog, sys.argv[1], ["zlibVersion", "zlibCompileFlags"]),
                attach.uprobe_multi(prog, sys.argv[1], ["zlibVersion"], ret=True)]
    else:
        keep = [attach.uprobe(prog, sys.argv[1], "zlibVersion"), attach.uprobe(prog, sys.argv[1], "zlibVersion", ret=True)]
    print("attached", flush=True)
    sys.stdin.read()
""")


@pytest.mark.parametrize("how", ["perf", "multi"])
def test_sigkill_leaves_no_uprobe(private_libz, caller, how):
    """The tool's probes, links and programs go with it: bpftool perf and link, the programs'
    names, tracefs's uprobe_events compared before and after (only what names our private file
    or our programs: other tests may probe other files meanwhile)."""
    if how == "multi":
        require("link.uprobe_multi")
    before = kernel_state.uprobes(private_libz, OURS)
    proc = subprocess.Popen([sys.executable, "-c", ATTACHER, private_libz, how, MAIN], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "attached"
        during = kernel_state.uprobes(private_libz, OURS)
        if how == "perf":
            assert [(pid, kind) for pid, kind, _, _ in during["perf"]] == [(proc.pid, "uprobe"),
                                                                           (proc.pid, "uretprobe")]
        else:
            assert len(during["uprobe_multi"]) == len(before["uprobe_multi"]) + 2
        assert during["programs"].count("count_calls") == before["programs"].count("count_calls") + 1
    finally:
        proc.kill()
        proc.wait()
    caller.call(2)  # the probed file is still mapped and called
    assert eventually(lambda: kernel_state.uprobes(private_libz, OURS) == before)


def test_close_detaches_and_nothing_is_left(private_libz, caller, counts):
    before = kernel_state.uprobes(private_libz, OURS)
    with counting_program(counts) as prog:
        with attach.uprobe(prog, private_libz, "zlibVersion"), attach.uprobe(prog, private_libz, "zlibVersion",
                                                                             ret=True):
            caller.call(1)
            assert len(kernel_state.uprobes(private_libz, OURS)["perf"]) == 2
    assert eventually(lambda: kernel_state.uprobes(private_libz, OURS) == before)


# -- features --------------------------------------------------------------------------------

def test_features_report_uprobes():
    r = subprocess.run([sys.executable, "-m", "pybpf.features", "uprobe_pmu", "link.uprobe_multi"], cwd=MAIN,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line.split()[1] for line in r.stdout.splitlines() if line.strip()
            and not line.startswith(("0", "1", "2"))}
    assert rows["uprobe_pmu"] == ("yes" if os.path.exists(pmu.UPROBE_PMU) else "no")
    assert rows["link.uprobe_multi"] in ("yes", "no")
    if rows["uprobe_pmu"] == "yes":
        number = open(f"{pmu.UPROBE_PMU}/type").read().strip()
        bit = open(f"{pmu.UPROBE_PMU}/format/retprobe").read().strip().split(":")[1]
        assert f"PMU type {number}, retprobe bit {bit}" in r.stdout


def test_a_missing_pmu_skips_with_one_line(monkeypatch):
    """Fake a kernel without uprobes: the probe reads a PMU directory that does not exist."""
    monkeypatch.setattr(pmu, "UPROBE_PMU", "/sys/bus/event_source/devices/no-uprobe-pmu")
    monkeypatch.setattr(features, "_cache", {})
    with pytest.raises(pytest.skip.Exception) as skipped:
        require("uprobe_pmu")
    message = str(skipped.value)
    assert "\n" not in message and "no-uprobe-pmu/type is absent" in message


def test_the_retprobe_bit_comes_from_sysfs(tmp_path, monkeypatch, private_libz, caller, counts):
    """The retprobe bit is the one format/retprobe names: a fake PMU directory (the real type)
    whose format names another bit gives a probe that fires at entry, not at return (the
    register it records is not the return value); one without the file is refused in one line."""
    real = pmu.UPROBE_PMU
    fake = tmp_path / "uprobe"
    (fake / "format").mkdir(parents=True)
    (fake / "type").write_text(open(f"{real}/type").read())
    monkeypatch.setattr(pmu, "UPROBE_PMU", str(fake))
    with counting_program(counts) as prog:
        with pytest.raises(BpfError, match=r"format/retprobe is absent: this PMU has no retprobe bit$"):
            attach.uprobe(prog, private_libz, "zlibVersion", ret=True)
        (fake / "format" / "retprobe").write_text("config:5\n")
        with attach.uprobe(prog, private_libz, "zlibVersion", ret=True, cookie=4):
            returned = caller.call(1)
        assert counts[4] == 1 and counts[1 << 32 | 4] != returned
        (fake / "format" / "retprobe").write_text(open(f"{real}/format/retprobe").read())
        with attach.uprobe(prog, private_libz, "zlibVersion", ret=True, cookie=5):
            returned = caller.call(1)
        assert counts[5] == 1 and counts[1 << 32 | 5] == returned


# -- procmaps --------------------------------------------------------------------------------

def test_mapped_files_one_key_for_two_processes(private_libz):
    a, b = Caller(private_libz), Caller(private_libz)
    try:
        found = procmaps.mapped_files([a.pid, b.pid], lambda path: path == private_libz)
        (entry,) = found.values()
        st = os.stat(private_libz)
        assert entry.key == (st.st_dev, st.st_ino) and sorted(entry.pids) == sorted([a.pid, b.pid])
        assert os.path.samefile(entry.open_path, private_libz)
    finally:
        a.close()
        b.close()


def test_a_file_seen_through_the_process_root(private_libz, tmp_path, counts):
    """A process in a mount namespace of its own where the library's path holds another file: the
    path means something else here; /proc/PID/root/<path> opens the file it maps, and the probe
    attached through that path fires in it."""
    if not shutil.which("unshare"):
        pytest.skip("unshare (util-linux) not installed")
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    seen_path = str(decoy / "libz.so.1")
    shutil.copy(libz_path(), seen_path)  # what the path holds outside
    inside = Caller(seen_path, ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                                f'mount --bind "{private_libz}" "{seen_path}" && exec "$@"', "sh"])
    try:
        found = procmaps.mapped_files([inside.pid], lambda path: path == seen_path)
        (entry,) = found.values()
        assert entry.open_path == f"/proc/{inside.pid}/root{seen_path}"
        assert os.path.samefile(entry.open_path, private_libz) and not os.path.samefile(seen_path, private_libz)
        with counting_program(counts) as prog, attach.uprobe(prog, entry.open_path, "zlibVersion", cookie=5):
            inside.call(3)
        assert counts[5] == 3
    finally:
        inside.close()


def test_a_deleted_file_is_found_by_its_mapping(tmp_path):
    require("uprobe_pmu")
    path = tmp_path / "libz-gone.so.1"
    shutil.copy(libz_path(), path)
    c = Caller(str(path))
    try:
        os.unlink(path)
        (entry,) = procmaps.mapped_files([c.pid], lambda p: p.startswith(str(path))).values()
        assert entry.open_path.startswith(f"/proc/{c.pid}/map_files/")
        assert os.stat(entry.open_path).st_ino == entry.inode
    finally:
        c.close()
