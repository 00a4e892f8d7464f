"""pybpf.prog against the real kernel: every loadable type, verifier errors, test runs, info, pins, fds."""
import errno
import os
import re
import struct
import subprocess
import sys
import textwrap

import pytest

from pybpf import features, isa
from pybpf.errors import BpfError, NotPermitted, SyscallError, VerifierError
from pybpf.insn import Insn
from pybpf.maps import Map
from pybpf.prog import LoadedProgram, iter_ids, load, prog_info
from pybpf.uapi import AttachType, MapType, ProgFlags, ProgType

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MOV_REG = isa.lookup("mov", "reg")
PACKET = bytes(range(64))


def ret(value):
    return [Insn("mov", 0, 0, 0, value), Insn("exit")]


# (type, expected_attach_type, prog_flags, return value the type's verifier accepts)
MINIMAL = [
    ("socket_filter", None, 0, 0),
    ("kprobe", None, 0, 0),
    ("sched_cls", None, 0, 0),
    ("sched_act", None, 0, 0),
    ("tracepoint", None, 0, 0),
    ("xdp", None, 0, 2),
    ("perf_event", None, 0, 0),
    ("cgroup_skb", AttachType.CGROUP_INET_EGRESS, 0, 1),
    ("cgroup_sock", AttachType.CGROUP_INET_SOCK_CREATE, 0, 1),
    ("lwt_in", None, 0, 0),
    ("lwt_out", None, 0, 0),
    ("lwt_xmit", None, 0, 0),
    ("lwt_seg6local", None, 0, 0),
    ("sock_ops", None, 0, 0),
    ("sk_skb", AttachType.SK_SKB_STREAM_VERDICT, 0, 0),
    ("cgroup_device", None, 0, 1),
    ("sk_msg", None, 0, 1),
    ("raw_tracepoint", None, 0, 0),
    ("raw_tracepoint_writable", None, 0, 0),
    ("sk_reuseport", None, 0, 0),
    ("flow_dissector", None, 0, 0),
    ("cgroup_sysctl", None, 0, 1),
    ("cgroup_sockopt", AttachType.CGROUP_SETSOCKOPT, 0, 1),
    ("sk_lookup", AttachType.SK_LOOKUP, 0, 1),
    ("syscall", None, ProgFlags.SLEEPABLE, 0),
    ("netfilter", AttachType.NETFILTER, 0, 1),
    ("lirc_mode2", None, 0, 0),
] + [("cgroup_sock_addr", attach, 0, 1) for attach in (
    AttachType.CGROUP_INET4_BIND, AttachType.CGROUP_INET6_BIND, AttachType.CGROUP_INET4_CONNECT,
    AttachType.CGROUP_INET6_CONNECT, AttachType.CGROUP_UDP4_SENDMSG, AttachType.CGROUP_UDP6_SENDMSG,
    AttachType.CGROUP_UDP4_RECVMSG, AttachType.CGROUP_UDP6_RECVMSG, AttachType.CGROUP_INET4_GETPEERNAME,
    AttachType.CGROUP_INET4_GETSOCKNAME)]


@pytest.mark.parametrize("ptype, attach, flags, retval", MINIMAL,
                         ids=[f"{t}-{a.name.lower() if a else ''}" for t, a, _, _ in MINIMAL])
def test_minimal_program_of_every_type(ptype, attach, flags, retval):
    probe = features.probe(f"prog_type.{ptype}")
    if probe.available is not True:
        pytest.skip(f"{ptype} does not load here: {probe.detail}")
    with load(ret(retval), ptype, name=f"min_{ptype}"[:15], expected_attach_type=attach, prog_flags=flags) as p:
        assert p.type == ProgType[ptype.upper()]
        assert p.name == f"min_{ptype}"[:15]
        assert len(p.tag) == 16 and p.id > 0
        assert p.info().verified_insns == 2


def test_cgroup_sock_addr_needs_its_attach_type():
    with pytest.raises(SyscallError) as e:
        load(ret(1), "cgroup_sock_addr")
    assert e.value.errno == errno.EINVAL
    assert "expected_attach_type" in str(e.value)


def test_dsl_program_supplies_type_name_and_license():
    from pybpf.asm import Program as Dsl

    p = Dsl("dsl_defaults", prog_type="cgroup_skb", license="Dual BSD/GPL")
    p.r0 = 1
    p.exit()
    with load(p) as prog:
        assert (prog.type, prog.name, prog.expected_attach_type) == (ProgType.CGROUP_SKB, "dsl_defaults", None)
        assert prog.info().gpl_compatible
    with load(p, "socket_filter", name="given") as prog:  # arguments win over the program's own
        assert (prog.type, prog.name) == (ProgType.SOCKET_FILTER, "given")
    with pytest.raises(VerifierError, match="GPL"):  # the program's license reached the kernel
        q = Dsl("proprietary", prog_type="socket_filter", license="Proprietary")
        q.call("trace_printk", q.stack.alloc(8), 8)  # a GPL-only helper
        q.exit(0)
        load(q)


def test_expected_attach_type_stays_on_the_program():
    class Sockaddr(list):  # any program object may carry its own defaults
        prog_type, name, expected_attach_type = "cgroup_sock_addr", "connect4", "cgroup_inet4_connect"

    with load(Sockaddr(ret(1))) as prog:
        assert prog.expected_attach_type is AttachType.CGROUP_INET4_CONNECT
        assert (prog.type, prog.name) == (ProgType.CGROUP_SOCK_ADDR, "connect4")
    with load(ret(1), "cgroup_sock_addr", expected_attach_type=AttachType.CGROUP_INET6_BIND) as prog:
        assert prog.expected_attach_type is AttachType.CGROUP_INET6_BIND
    with load(ret(0), "xdp") as prog:
        assert prog.expected_attach_type is None


def _load_fentry_on_a_non_function():
    """An fentry program aimed at BTF type 1 (never a function): refused either way, how depends on the kernel."""
    return load(ret(0), "tracing", expected_attach_type="trace_fentry", attach_btf_id=1)


def _fentry_refusal():
    """The error _load_fentry_on_a_non_function raises here: NotPermitted where the kernel refuses
    tracing programs outright (this host), else the verifier's word on the bad target."""
    fentry = features.probe("fentry")
    if fentry.available is None:
        pytest.skip(f"fentry undecided here: {fentry.detail}")
    if fentry:
        return VerifierError, "attach_btf_id 1 is not a function"
    if "EPERM" not in fentry.detail:
        pytest.skip(f"fentry is unavailable here for another reason than permission: {fentry.detail}")
    return NotPermitted, "Operation not permitted"


def test_btf_types_without_permission_say_so():
    error, says = _fentry_refusal()
    with pytest.raises(error, match=says) as e:
        _load_fentry_on_a_non_function()
    assert "\n" not in str(e.value)


# -- verifier errors -----------------------------------------------------------------------------

def test_verifier_error_names_insn_and_source():
    program = [
        Insn("mov", 0, 0, 0, 2),
        Insn("mov", 1, 0, 0, 2),
        Insn(MOV_REG, 0, 3, source="test_prog.py:93"),  # r3 was never written
        Insn("exit"),
    ]
    with pytest.raises(VerifierError) as e:
        load(program, "xdp", name="bad_read")
    err = e.value
    assert err.errno == errno.EACCES
    assert "R3 !read_ok" in err.log
    assert err.insn_idx == 2
    assert "r0 = r3" in err.insn
    assert err.source == "test_prog.py:93"
    assert "test_prog.py:93" in str(err) and "bad_read" in str(err)


def test_verifier_error_counts_ld_imm64_slots():
    program = [Insn("lddw", 1, imm=1 << 40), Insn("mov", 0, 0, 0, 0), Insn(MOV_REG, 0, 4, source="x.py:9"),
               Insn("exit")]
    with pytest.raises(VerifierError) as e:
        load(program, "socket_filter")
    assert e.value.insn_idx == 3  # slot index: lddw is 0-1
    assert e.value.source == "x.py:9"


def test_helper_not_allowed_for_type():
    program = [Insn("call", imm=26), Insn("mov", 0, 0, 0, 0), Insn("exit")]  # skb_load_bytes in XDP
    with pytest.raises(VerifierError) as e:
        load(program, "xdp")
    # 6.1 says "unknown func", later kernels "cannot use helper"
    assert re.search(r"(cannot use helper|unknown func) bpf_skb_load_bytes#26", e.value.log)
    assert e.value.insn_idx == 0


def test_unreachable_insn_index_from_message():
    with pytest.raises(VerifierError) as e:
        load(ret(0) + ret(1), "socket_filter")
    assert "unreachable insn 2" in e.value.log
    assert e.value.insn_idx == 2


def test_log_grows_past_first_buffer_on_failure():
    # 3000 logged instructions (~40 bytes each) overflow the first 64 KiB buffer; the last reads r3.
    program = [Insn("mov", 0, 0, 0, i) for i in range(3000)] + [Insn(MOV_REG, 0, 3, source="big.py:1"),
                                                                  Insn("exit")]
    with pytest.raises(VerifierError) as e:
        load(program, "socket_filter")
    log = e.value.log
    assert len(log) > 64 << 10
    assert "0: (b7) r0 = 0" in log  # the start survived: nothing was rotated out
    assert e.value.insn_idx == 3000 and e.value.source == "big.py:1"


def test_requested_log_and_stats():
    program = [Insn("mov", 0, 0, 0, i) for i in range(2000)] + [Insn("exit")]
    with load(program, "socket_filter", log_level=2, stats=True) as p:
        assert len(p.log) > 64 << 10
        assert p.stats.startswith("processed 2001 insns")
    with load(ret(0), "socket_filter") as p:
        assert p.log is None and p.stats is None


def test_unknown_type_number_hint():
    with pytest.raises(SyscallError) as e:
        load(ret(0), 250)
    assert e.value.errno == errno.EINVAL
    assert "type 250" in str(e.value) and "\n" not in str(e.value)


def test_program_too_large():
    code = Insn("mov", 0, 0, 0, 0).encode() * 1_000_001 + Insn("exit").encode()
    with pytest.raises(SyscallError) as e:
        load(code, "socket_filter")
    assert e.value.errno == errno.E2BIG
    assert "program too large: 1000002 instructions" in str(e.value)


# -- running and reading back ----------------------------------------------------------------------

def test_test_run_retval_data_and_duration():
    with load(ret(2), "xdp") as p:
        r = p.test_run(PACKET, repeat=100)
    assert r.retval == 2
    assert r.data_out == PACKET
    assert r.duration_ns >= 0


def test_test_run_sees_packet_writes():
    # XDP: write 0xab at data[0] after a bounds check, return XDP_TX (3).
    program = [
        Insn("ldxw", 2, 1, 0), Insn("ldxw", 3, 1, 4),
        Insn(MOV_REG, 4, 2), Insn("add", 4, 0, 0, 1),
        Insn(isa.lookup("jgt", "reg"), 4, 3, 1),
        Insn("stb", 2, 0, 0, 0xAB),
        Insn("mov", 0, 0, 0, 3), Insn("exit"),
    ]
    with load(program, "xdp") as p:
        r = p.test_run(PACKET)
    assert r.retval == 3
    assert r.data_out == b"\xab" + PACKET[1:]


def test_test_run_of_syscall_program_with_ctx():
    # syscall programs read their ctx: return its first u32.
    # syscall programs read their ctx and may write it: return its first u32, store 7 in the second.
    # stxw, not stw: kernels before 6.3 refuse BPF_ST into ctx
    program = [Insn("ldxw", 0, 1, 0), Insn("mov", 2, 0, 0, 7), Insn("stxw", 1, 2, 4), Insn("exit")]
    ctx = struct.pack("<II", 0xC0FFEE, 0)
    with load(program, "syscall", prog_flags=ProgFlags.SLEEPABLE) as p:
        r = p.test_run(ctx_in=ctx)
    assert r.retval == 0xC0FFEE
    assert r.ctx_out == struct.pack("<II", 0xC0FFEE, 7)
    assert ctx == struct.pack("<II", 0xC0FFEE, 0)  # the caller's bytes are untouched


def test_test_run_bad_input_is_one_line():
    with load(ret(2), "xdp") as p, pytest.raises(SyscallError) as e:
        p.test_run(b"")  # XDP needs at least an Ethernet header
    assert e.value.errno == errno.EINVAL and "\n" not in str(e.value)


def test_map_refs_are_patched():
    # Direct value access (ld_map_value) works on single-element arrays; the offset rides in imm's high half.
    with Map(MapType.ARRAY, key=4, value=8, max_entries=1) as m:
        m.update(0, 0x1122334455667788)
        program = [
            Insn("ld_map_value", 1, imm=(4 << 32), ref=m),  # &value[4]: its high half
            Insn("ldxw", 0, 1, 0),
            Insn("exit"),
        ]
        with load(program, "socket_filter") as p:
            assert p.test_run(PACKET).retval == 0x11223344
            assert p.info().map_ids == (m.id,)


def test_info_fields():
    with load(ret(2), "xdp", name="info_me") as p:
        p.test_run(PACKET, repeat=3)
        info = p.info()
    assert info.id == p.id and info.name == "info_me" and info.type == ProgType.XDP and info.tag == p.tag
    assert [i.op.name for i in info.insns()] == ["mov", "exit"]
    assert info.jited and info.load_time_ns > 0 and info.created_by_uid == 0 and info.gpl_compatible
    assert info.map_ids == ()


def test_iter_ids_sees_our_program():
    with load(ret(0), "socket_filter") as p:
        assert p.id in set(iter_ids())


HOLDER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    from pybpf.insn import Insn
    from pybpf.prog import load
    p = load([Insn("mov", 0, 0, 0, 7), Insn("exit")], "socket_filter", name="from_other")
    print(p.id, flush=True)
    sys.stdin.read()
""")


def test_info_of_a_program_another_process_loaded():
    child = subprocess.Popen([sys.executable, "-c", HOLDER.format(root=ROOT)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        prog_id = int(child.stdout.readline())
        with LoadedProgram.from_id(prog_id) as other:
            info = prog_info(other.fd)
            assert other.name == info.name == "from_other"
            assert other.insns is None
            assert [(i.op.name, i.imm) for i in info.insns()] == [("mov", 7), ("exit", 0)]
            assert other.test_run(PACKET).retval == 7
            counters = prog_info(other.fd, contents=False)  # one call: no instructions, no map ids
            assert (counters.id, counters.name, counters.xlated, counters.map_ids) == (prog_id, "from_other", b"", ())
            assert counters.recursion_misses == 0
    finally:
        child.stdin.close()
        child.wait(timeout=10)


def test_pin_and_from_pinned(tmp_path):
    path = f"/sys/fs/bpf/pybpf_test_prog_{os.getpid()}"
    with load(ret(5), "socket_filter", name="pinned") as p:
        p.pin(path)
        try:
            with LoadedProgram.from_pinned(path) as again:
                assert (again.id, again.tag, again.name) == (p.id, p.tag, "pinned")
                assert again.test_run(PACKET).retval == 5
        finally:
            p.unpin()
    assert not os.path.exists(path)
    with pytest.raises(SyscallError):
        LoadedProgram.from_pinned(path)


def _open_fds():
    return len(os.listdir("/proc/self/fd"))


def test_no_fd_leaks():
    before = _open_fds()
    for _ in range(50):
        load(ret(0), "socket_filter").close()
        with pytest.raises(VerifierError):
            load([Insn(MOV_REG, 0, 3), Insn("exit")], "socket_filter")
        with pytest.raises(BpfError):  # NotPermitted or VerifierError, see _fentry_refusal
            _load_fentry_on_a_non_function()
        p = load(ret(0), "socket_filter")
        del p  # __del__ closes
    assert _open_fds() == before


def test_use_after_close_is_clear():
    p = load(ret(0), "socket_filter")
    p.close()
    p.close()  # idempotent
    with pytest.raises(BpfError, match="closed"):
        p.test_run(PACKET)


NOBODY = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {root!r})
    from pybpf.errors import BpfError
    from pybpf.insn import Insn
    from pybpf.prog import load
    import pybpf.link  # the interpreter's own files may be unreadable once we are nobody
    os.setgroups([]); os.setgid(65534); os.setuid(65534)
    try:
        load([Insn("mov", 0, 0, 0, 2), Insn("exit")], "xdp")
    except BpfError as e:
        print(type(e).__name__, e)
""")


def test_not_root_is_one_line():
    out = subprocess.run([sys.executable, "-c", NOBODY.format(root=ROOT)], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    line = out.stdout.strip()
    assert "\n" not in line
    assert line.startswith("NotPermitted BPF_PROG_LOAD xdp: Operation not permitted (EPERM): needs root")
