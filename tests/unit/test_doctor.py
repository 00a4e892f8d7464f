"""bpfhook doctor's table: which capability costs which tool what, and the refusal line a tool
prints when the kernel says EPERM (no kernel needed: the held capabilities are given)."""
import errno

from bpfhook import doctor
from pybpf.errors import SyscallError

ALL = set(doctor.CAPABILITIES)


def test_cap_sys_admin_stands_in_for_bpf_perfmon_and_net_admin_only():
    assert doctor.missing_capabilities(ALL) == []
    missing = dict(doctor.missing_capabilities({"CAP_SYS_ADMIN"}))
    assert set(missing) == {"CAP_SYS_PTRACE", "CAP_IPC_LOCK"}  # (perf_mmap asks for CAP_IPC_LOCK only)
    missing = dict(doctor.missing_capabilities({"CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"}, among=doctor.MONITOR))
    assert set(missing) == {"CAP_SYS_ADMIN", "CAP_SYS_PTRACE"}
    assert "other network namespaces" in missing["CAP_SYS_ADMIN"] and "monitor" in missing["CAP_SYS_PTRACE"]


def test_a_refusal_names_the_missing_capability_the_tool_needs():
    e = SyscallError("BPF_MAP_CREATE", errno.EPERM, "LRU_HASH map 'conns'")
    line = doctor.refusal("monitor", e, ALL - {"CAP_BPF", "CAP_SYS_ADMIN"})
    assert line.startswith("monitor needs CAP_BPF (missing here; see bpfhook doctor): BPF_MAP_CREATE") and "\n" not in line
    # every capability held, or another error: the kernel's own words
    assert doctor.refusal("monitor", e, ALL) == str(e)
    assert doctor.refusal("monitor", SyscallError("BPF_MAP_CREATE", errno.E2BIG), set()) .startswith("BPF_MAP_CREATE")
    # a capability the tool does not need is not blamed
    assert doctor.refusal("mirror", e, ALL - {"CAP_BPF", "CAP_SYS_ADMIN"}) == str(e)
    mmap = PermissionError(errno.EPERM, "Operation not permitted")
    assert doctor.refusal("capture", mmap, ALL - {"CAP_IPC_LOCK"}).startswith("capture needs CAP_IPC_LOCK (missing")


def test_capabilities_read_the_effective_set(tmp_path):
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapEff:\t%016x\n" % ((1 << 39) | (1 << 12)))
    assert doctor.capabilities(str(status)) == {"CAP_BPF", "CAP_NET_ADMIN"}


def test_every_line_names_a_tool_and_what_it_loses():
    for _name, (_bit, lost) in doctor.CAPABILITIES.items():
        assert any(tool in lost for tool in ("monitor", "capture", "mirror"))
    for _name, lost in doctor.FEATURES + doctor.MOUNTS:
        assert any(tool in lost for tool in ("monitor", "capture", "mirror"))
