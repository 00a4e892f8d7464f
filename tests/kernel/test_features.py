"""pybpf.features: probe results checked against facts found another way."""
import json
import os
import socket
import subprocess
import sys

import pytest

from pybpf import features
from pybpf import syscall as _sys
from pybpf.errors import BpfError
from pybpf.insn import Insn
from pybpf.maps import Map
from pybpf.prog import load
from pybpf.uapi import AttachType, Cmd, MapType
from tests.conftest import require

# Features older kernels of the matrix lack, with the release that brought them: there the
# probe must answer no, not only elsewhere yes.
SINCE = {"isa.v4": (6, 6), "link.tcx": (6, 6), "tp_btf": (5, 5), "atomics": (5, 12)}
RELEASE = tuple(int(n) for n in os.uname().release.split("-")[0].split(".")[:2])


def expect(feature):
    """Whether this kernel should have `feature` (True for everything outside SINCE)."""
    return RELEASE >= SINCE.get(feature, (0, 0))

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def fresh_cache():
    saved = dict(features._cache)
    features._cache.clear()
    yield features._cache
    features._cache.clear()
    features._cache.update(saved)


def _mount_types():
    with open("/proc/self/mountinfo") as f:
        return {line.split(" - ")[1].split()[0] for line in f}


def test_report_shape():
    report = features.report()
    assert list(report) == features.names()
    for name, row in report.items():
        assert set(row) == {"available", "detail"}, name
        assert row["available"] in (True, False, None), name
        assert isinstance(row["detail"], str) and row["detail"], name


def test_has_probes_only_what_it_needs(fresh_cache):
    assert features.has("map_type.hash")
    assert list(fresh_cache) == ["map_type.hash"]
    first = features.probe("map_type.hash")
    assert features.probe("map_type.hash") is first


def test_unknown_feature():
    with pytest.raises(BpfError, match="unknown feature 'map_type.nope'"):
        features.probe("map_type.nope")
    with pytest.raises(BpfError, match="unknown feature"):
        features.has("helper.xdp.no_such_helper")


@pytest.mark.parametrize("mtype", [t for t in MapType if t and t != MapType.STRUCT_OPS], ids=lambda t: t.name)
def test_map_type_agrees_with_pybpf_maps(mtype):
    """A map type the probe calls available can be created by pybpf.maps too (and vice versa where simple)."""
    result = features.probe(f"map_type.{mtype.name.lower()}")
    assert result.available in (True, False)
    if mtype in (MapType.HASH, MapType.ARRAY, MapType.RINGBUF, MapType.PERCPU_ARRAY, MapType.LRU_HASH):
        assert result.available is True
        with Map(mtype, max_entries=4096 if mtype == MapType.RINGBUF else 1):
            pass


@pytest.mark.parametrize("ptype", ["socket_filter", "xdp", "sched_cls", "tracepoint", "raw_tracepoint",
                                   "cgroup_skb", "sk_lookup"])
def test_prog_type_agrees_with_load(ptype):
    assert features.has(f"prog_type.{ptype}")


@pytest.mark.parametrize("name, expected", [
    ("helper.xdp.redirect", True),
    ("helper.xdp.map_lookup_elem", True),
    ("helper.xdp.skb_load_bytes", False),  # an skb helper: XDP has no skb
    ("helper.socket_filter.xdp_adjust_head", False),
    ("helper.sched_cls.skb_load_bytes", True),
    ("helper.cgroup_sysctl.sysctl_get_name", True),
    ("helper.xdp.sysctl_get_name", False),
])
def test_helpers(name, expected):
    assert features.probe(name).available is expected, features.probe(name).detail


def test_helper_of_unloadable_type_is_not_available():
    if features.has("prog_type.lsm"):
        pytest.skip("lsm programs load here")
    result = features.probe("helper.lsm.map_lookup_elem")
    assert result.available is False and result.detail == "program type lsm unavailable"


@pytest.mark.parametrize("version", ["isa.v1", "isa.v2", "isa.v3", "isa.v4", "bounded_loops", "atomics"])
def test_isa_versions_of_this_kernel(version):
    assert features.has(version) == expect(version), features.probe(version).detail


def test_isa_v4_really_means_v4_loads():
    require("isa.v4")
    program = [Insn("mov", 0, 0, 0, -7), Insn("sdiv", 0, 0, 0, 2), Insn("exit")]
    with load(program, "socket_filter") as p:
        assert p.test_run(bytes(64)).retval == (-3) & 0xFFFFFFFF


def test_kprobe_pmu_matches_sysfs():
    present = os.path.exists("/sys/bus/event_source/devices/kprobe/type")
    result = features.probe("kprobe_pmu")
    if not present:
        assert result.available is False and "absent" in result.detail
    else:
        assert result.available in (True, False)


def test_fentry_fexit_lsm_are_refused_here():
    """This VM refuses tracing/LSM program loads (EPERM); the probes must say so, not guess from BTF."""
    for name in ("fentry", "fexit", "lsm"):
        result = features.probe(name)
        if result.available:
            pytest.skip(f"{name} loads on this kernel")
        assert result.available is False and "EPERM" in result.detail, (name, result)


def test_tp_btf_loads_where_the_kernel_has_it():
    """tp_btf is a tracing program like fentry, but needs no trampoline: it loads on this VM
    although fentry does not."""
    result = features.probe("tp_btf")
    assert result.available == expect("tp_btf"), result.detail
    assert result.detail.startswith("trace_raw_tp on sys_enter")


def test_btf():
    assert features.has("btf")
    assert features.has("btf_vmlinux") == os.path.exists("/sys/kernel/btf/vmlinux")


def test_mounts_agree_with_mountinfo():
    kinds = _mount_types()
    assert features.has("cgroup2") == ("cgroup2" in kinds)
    assert features.has("debugfs") == ("debugfs" in kinds)


def test_links():
    assert features.has("link.tcx") == expect("link.tcx"), features.probe("link.tcx").detail
    assert features.has("link.cgroup")
    assert features.has("link.xdp")
    netkit = features.probe("link.netkit")
    assert netkit.available in (True, False)


def _attached_on_lo(attach_type):
    """How many programs BPF_PROG_QUERY reports on lo for attach_type."""
    attr = _sys.new_attr()
    attr.query.target_ifindex = socket.if_nametoindex("lo")
    attr.query.attach_type = int(attach_type)
    _sys.bpf(Cmd.PROG_QUERY, attr)
    return attr.query.prog_cnt


def test_tcx_probe_leaves_nothing_attached(fresh_cache):
    require("link.tcx")  # BPF_PROG_QUERY knows no tcx attach type before it
    before = _attached_on_lo(AttachType.TCX_INGRESS)
    assert features.has("link.tcx")
    assert _attached_on_lo(AttachType.TCX_INGRESS) == before
    assert features.has("link.xdp")
    assert "xdp" not in subprocess.run(["ip", "link", "show", "lo"], capture_output=True, text=True).stdout


def test_tracepoints():
    assert features.has("raw_tracepoint")
    assert features.has("perf_event_tracepoint")


def test_cli_json():
    out = subprocess.run([sys.executable, "-m", "pybpf.features", "--json"], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert list(data) == features.names()
    assert data["map_type.hash"] == {"available": True, "detail": "created"}


def test_cli_table_and_selection():
    out = subprocess.run([sys.executable, "-m", "pybpf.features", "ringbuf", "kprobe_pmu"], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:2] == ["ringbuf", "yes"]
    assert lines[1].startswith("kprobe_pmu")
    bad = subprocess.run([sys.executable, "-m", "pybpf.features", "nope"], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1
