"""pybpf.attach on the real kernel: every test proves the program ran, by a map
counter it bumps, or by what it did (a denied connect)."""
import errno
import itertools
import os
import socket
import subprocess
import sys

import pytest

from pybpf import attach, cleanup, isa
from pybpf.errors import BpfError, FeatureUnavailable, NotPermitted, SyscallError
from pybpf.insn import Insn
from pybpf.maps import Map
from pybpf.prog import load
from pybpf.uapi import AttachType, MapType, ProgType
from tests.conftest import eventually, require

_serial = itertools.count()
# getpid() -> task_tgid_vnr() -> __task_pid_nr_ns(): an out-of-line function on every arch, in BTF too.
GETPID_FUNC = "__task_pid_nr_ns"


def reg(name, **fields):
    """The register-source form of an ALU/jump op."""
    return Insn(isa.lookup(name, "reg"), **fields)


def counter_insns(counter, ret, slot=0):
    """counter[slot] += 1 (atomically); return ret."""
    return [
        Insn("stw", dst=10, off=-4, imm=slot),
        Insn("ld_map_fd", dst=1, ref=counter),
        reg("mov", dst=2, src=10),
        Insn("add", dst=2, imm=-4),
        Insn("call", imm=1),                       # map_lookup_elem
        Insn("jeq", dst=0, imm=0, ref="out"),
        Insn("mov", dst=1, imm=1),
        Insn("lock_add", dst=0, src=1),
        Insn("mov", dst=0, imm=ret, label="out"),
        Insn("exit"),
    ]


@pytest.fixture
def counter():
    with Map(MapType.ARRAY, key=4, value=8, max_entries=1, name="count") as m:
        yield m


def run(code, timeout=20, **kwargs):
    """Run Python code in a child; returns its stdout."""
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                          timeout=timeout, **kwargs).stdout


def open_fds():
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
def nothing_left():
    yield
    assert cleanup.pending() == []


# -- tracepoints ---------------------------------------------------------------
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to see events from each")
def test_tracepoint_sees_every_cpu():
    """One perf event on CPU 0 with pid -1, yet hits on every CPU run the program."""
    with Map(MapType.PERCPU_ARRAY, key=4, value=8, max_entries=1, name="percpu") as percpu:
        insns = counter_insns(percpu, 0)
        with load(insns, ProgType.TRACEPOINT, name="tp_count") as prog, \
                attach.tracepoint(prog, "syscalls:sys_enter_getpid") as tp:
            assert isinstance(tp, attach.PerfEventLink) and tp.link_fd is not None
            cpus = sorted(os.sched_getaffinity(0))[:2]
            for cpu in cpus:
                before = percpu[0][cpu]
                run(f"import os; os.sched_setaffinity(0, {{{cpu}}}); [os.getpid() for _ in range(1000)]")
                assert percpu[0][cpu] - before >= 1000, f"CPU {cpu} hits missed"
        # Detached: getpid no longer counts.
        total = sum(percpu[0])
        run("import os; [os.getpid() for _ in range(1000)]")
        assert sum(percpu[0]) == total


def test_tracepoint_ioctl_path(counter):
    """The pre-5.15 path: PERF_EVENT_IOC_SET_BPF on the perf fd, no link."""
    with load(counter_insns(counter, 0), ProgType.TRACEPOINT) as prog:
        with attach.tracepoint(prog, "syscalls:sys_enter_getpid", mode="ioctl") as tp:
            assert tp.link_fd is None and tp.fd == tp.perf_fd
            run("import os; [os.getpid() for _ in range(100)]")
        seen = counter[0]
        assert seen >= 100
        run("import os; [os.getpid() for _ in range(100)]")
        assert counter[0] == seen
        with pytest.raises(BpfError, match="cookie needs a BPF_PERF_EVENT link"):
            attach.tracepoint(prog, "syscalls:sys_enter_getpid", mode="ioctl", cookie=1)


def test_link_update_swaps_program(cgroup_dir):
    with Map(MapType.ARRAY, key=4, value=8, max_entries=2, name="two") as counts, \
            load(counter_insns(counts, 1, slot=0), ProgType.CGROUP_SKB) as first, \
            load(counter_insns(counts, 1, slot=1), ProgType.CGROUP_SKB) as second, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        send = in_cgroup(cgroup_dir, UDP_SEND.format(port=sink.getsockname()[1]))
        with attach.cgroup(first, "egress", cgroup_dir, mode="link") as link:
            run(send)
            link.update(second)
            assert link.info().prog_id == second.id
            run(send)
            with pytest.raises(SyscallError, match="cgroup"):  # first is no longer the current one
                link.update(first, old_prog=first)
        assert (counts[0], counts[1]) == (5, 5)


def test_tracepoint_two_args_and_bad_names(counter):
    with load(counter_insns(counter, 0), ProgType.TRACEPOINT) as prog:
        with attach.tracepoint(prog, "sched", "sched_process_exec"):
            run("import subprocess; [subprocess.run(['true']) for _ in range(3)]")
        assert counter[0] >= 3
        fds = open_fds()
        with pytest.raises(FeatureUnavailable, match="tracepoint sched:no_such_event does not exist"):
            attach.tracepoint(prog, "sched:no_such_event")
        with pytest.raises(BpfError, match="expected 'category:name'"):
            attach.tracepoint(prog, "sched_process_exec")
        assert open_fds() == fds


def test_tracepoint_rejects_wrong_program_type(counter):
    with load(counter_insns(counter, 0), ProgType.SOCKET_FILTER) as prog:
        fds = open_fds()
        with pytest.raises(SyscallError, match="tracepoint syscalls:sys_enter_getpid"):
            attach.tracepoint(prog, "syscalls:sys_enter_getpid")
        assert open_fds() == fds


# -- raw tracepoints -------------------------------------------------------------
def test_raw_tracepoint_exec(counter):
    with load(counter_insns(counter, 0), ProgType.RAW_TRACEPOINT) as prog:
        with attach.raw_tracepoint(prog, "sched_process_exec") as link:
            assert link.info().prog_id == prog.id
            run("import subprocess; [subprocess.run(['true']) for _ in range(3)]")
        seen = counter[0]
        assert seen >= 3
        run("import subprocess; subprocess.run(['true'])")
        assert counter[0] == seen


def test_raw_tracepoint_takes_regular_tracepoint_name(counter):
    """sock:inet_sock_set_state is a regular tracepoint; its raw name drops the category."""
    with load(counter_insns(counter, 0), ProgType.RAW_TRACEPOINT) as prog, \
            attach.raw_tracepoint(prog, "sock:inet_sock_set_state"):
        with socket.create_server(("127.0.0.1", 0)) as server:
            with socket.create_connection(server.getsockname(), timeout=5):
                server.accept()[0].close()
    assert counter[0] >= 2  # at least CLOSE->SYN_SENT and SYN_SENT->ESTABLISHED


def test_raw_tracepoint_missing(counter):
    with load(counter_insns(counter, 0), ProgType.RAW_TRACEPOINT) as prog:
        with pytest.raises(FeatureUnavailable, match="no_such_tp: no such raw tracepoint"):
            attach.raw_tracepoint(prog, "no_such_tp")


# -- kprobes and fentry: absent here, exercised by the kernel-matrix runner ---------------------
def _load_or_skip(*args, **kwargs):
    try:
        return load(*args, **kwargs)
    except NotPermitted as e:
        pytest.skip(f"this kernel refuses to load the program: {e}")


@pytest.mark.parametrize("retprobe", [False, True], ids=["kprobe", "kretprobe"])
def test_kprobe(counter, retprobe):
    if not os.path.exists(attach.KPROBE_PMU):
        with pytest.raises(FeatureUnavailable, match="no kprobe PMU"):
            attach.kprobe(0, GETPID_FUNC, retprobe=retprobe)
        pytest.skip(f"no kprobe PMU ({attach.KPROBE_PMU} absent)")
    with _load_or_skip(counter_insns(counter, 0), ProgType.KPROBE) as prog, \
            attach.kprobe(prog, GETPID_FUNC, retprobe=retprobe):
        run("import os; [os.getpid() for _ in range(100)]")
    assert counter[0] >= 100


@pytest.mark.parametrize("kind", ["fentry", "fexit"])
def test_fentry_fexit(counter, kind):
    from pybpf.btf import Btf

    type = {"fentry": AttachType.TRACE_FENTRY, "fexit": AttachType.TRACE_FEXIT}[kind]
    btf_id = Btf.vmlinux().func_id(GETPID_FUNC)
    with _load_or_skip(counter_insns(counter, 0), ProgType.TRACING, expected_attach_type=type,
                       attach_btf_id=btf_id) as prog, getattr(attach, kind)(prog):
        run("import os; [os.getpid() for _ in range(100)]")
    assert counter[0] >= 100


# -- iterators ------------------------------------------------------------------
def _tcp_port_iterator():
    """A bpf_iter_tcp program writing each socket's local port (2 bytes), loaded (or a skip)."""
    from pybpf.asm import Program
    from pybpf.btf import Btf

    btf = Btf.vmlinux()
    try:
        func = btf.find("bpf_iter_tcp", "func")
    except FeatureUnavailable:
        pytest.skip("no TCP socket iterator (bpf_iter_tcp) in this kernel's BTF")
    skc_num = btf.field("sock_common", "skc_num").byte_offset
    p = Program("iter_ports", prog_type="tracing")
    port = p.stack.alloc(8)
    p.r6 = p.r1  # struct bpf_iter__tcp { struct bpf_iter_meta *meta; struct sock_common *sk_common; ... }
    p.r2 = p.r6.u64[8]
    with p.If(p.r2 != 0):  # NULL: the walk is over
        p.r3 = p.r2.u16[skc_num]
        port.u64[0] = p.r3
        p.r1 = p.r6.u64[0]
        p.r1 = p.r1.u64[0]  # meta->seq
        p.call("seq_write", p.r1, port, 2)
    p.r0 = 0
    p.exit()
    return _load_or_skip(p, ProgType.TRACING, expected_attach_type=AttachType.TRACE_ITER, attach_btf_id=func.id)


def test_tcp_iterator_runs_over_every_socket_and_returns_what_it_wrote():
    fds = open_fds()
    with socket.socket() as a, socket.socket(socket.AF_INET6) as b:
        a.bind(("127.0.0.1", 0))
        b.bind(("::1", 0))
        for s in (a, b):
            s.listen()
        mine = {a.getsockname()[1], b.getsockname()[1]}
        with _tcp_port_iterator() as prog, attach.iterator(prog) as link:
            first = attach.run_iterator(link)
            again = attach.run_iterator(link)  # each run walks the sockets anew
        ports = [int.from_bytes(first[i:i + 2], sys.byteorder) for i in range(0, len(first), 2)]
        assert mine <= set(ports) and len(first) % 2 == 0
        assert mine <= {int.from_bytes(again[i:i + 2], sys.byteorder) for i in range(0, len(again), 2)}
    assert open_fds() == fds


def test_iterator_output_past_the_limit_is_an_error_and_leaks_nothing():
    fds = open_fds()
    with socket.socket() as a:
        a.bind(("127.0.0.1", 0))
        a.listen()
        with _tcp_port_iterator() as prog, attach.iterator(prog) as link:
            with pytest.raises(BpfError, match="iterator output passed 1 bytes"):
                attach.run_iterator(link, max_bytes=1)
    assert open_fds() == fds


# -- cgroups -------------------------------------------------------------------
@pytest.fixture
def cgroup_dir():
    path = os.path.join(attach.cgroup2_root(), f"pybpf-test-{os.getpid()}-{next(_serial)}")
    os.mkdir(path)
    yield path
    os.rmdir(path)  # every child that joined it has exited


def in_cgroup(path, code):
    """Python code that first moves its own process into the cgroup."""
    return f"import os, socket\nopen({path + '/cgroup.procs'!r}, 'w').write(str(os.getpid()))\n{code}"


UDP_SEND = "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n[s.sendto(b'x', ('127.0.0.1', {port})) for _ in range(5)]"


@pytest.mark.parametrize("mode", ["link", "attach"])
def test_cgroup_egress_counts_udp(counter, cgroup_dir, mode):
    with load(counter_insns(counter, 1), ProgType.CGROUP_SKB) as prog, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        port = sink.getsockname()[1]
        with attach.cgroup(prog, "egress", cgroup_dir, mode=mode) as att:
            assert isinstance(att, attach.Link if mode == "link" else attach.ProgAttachment)
            run(in_cgroup(cgroup_dir, UDP_SEND.format(port=port)))
            assert counter[0] == 5  # only the cgroup's packets; return 1 let them through
            sink.settimeout(5)
            assert [sink.recv(10) for _ in range(5)] == [b"x"] * 5
        # Our own (root cgroup) traffic never counted; after detach the cgroup's stops counting.
        run(in_cgroup(cgroup_dir, UDP_SEND.format(port=port)))
        assert counter[0] == 5


def test_cgroup_relative_path(counter, cgroup_dir):
    with load(counter_insns(counter, 1), ProgType.CGROUP_SKB) as prog, \
            attach.cgroup(prog, AttachType.CGROUP_INET_EGRESS, os.path.basename(cgroup_dir)) as link:
        assert link.what.startswith(f"cgroup {cgroup_dir} ")
        assert link.info().cgroup.attach_type == AttachType.CGROUP_INET_EGRESS


def test_cgroup_connect4_denies_then_allows(counter, cgroup_dir):
    connect = ("c = socket.socket()\n"
               "try:\n    c.connect(('127.0.0.1', {port})); print('connected')\n"
               "except PermissionError: print('denied')")
    with load(counter_insns(counter, 0), ProgType.CGROUP_SOCK_ADDR,
              expected_attach_type=AttachType.CGROUP_INET4_CONNECT) as prog, \
            socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with attach.cgroup(prog, "connect4", cgroup_dir):
            assert run(in_cgroup(cgroup_dir, connect.format(port=port))).strip() == "denied"
            assert counter[0] == 1
        assert run(in_cgroup(cgroup_dir, connect.format(port=port))).strip() == "connected"
        assert counter[0] == 1


def test_cgroup_sock_create(counter, cgroup_dir):
    with load(counter_insns(counter, 1), ProgType.CGROUP_SOCK,
              expected_attach_type=AttachType.CGROUP_INET_SOCK_CREATE) as prog, \
            attach.cgroup(prog, "sock_create", cgroup_dir):
        run(in_cgroup(cgroup_dir, "[socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close() for _ in range(4)]"))
    assert counter[0] == 4


def test_cgroup_sock_ops(counter, cgroup_dir):
    connect = "socket.create_connection(('127.0.0.1', {port}), timeout=5).close()"
    with load(counter_insns(counter, 1), ProgType.SOCK_OPS) as prog, \
            socket.create_server(("127.0.0.1", 0)) as server, \
            attach.cgroup(prog, "sock_ops", cgroup_dir):
        run(in_cgroup(cgroup_dir, connect.format(port=server.getsockname()[1])))
        server.accept()[0].close()
    assert counter[0] >= 1  # TCP_CONNECT_CB, ACTIVE_ESTABLISHED_CB, ...


def test_cgroup_sysctl_denies_read(counter, cgroup_dir):
    read = ("try:\n    open('/proc/sys/net/ipv4/ip_forward').read(); print('read')\n"
            "except PermissionError: print('denied')")
    with load(counter_insns(counter, 0), ProgType.CGROUP_SYSCTL,
              expected_attach_type=AttachType.CGROUP_SYSCTL) as prog:
        with attach.cgroup(prog, "sysctl", cgroup_dir):
            assert run(in_cgroup(cgroup_dir, read)).strip() == "denied"
        assert run(in_cgroup(cgroup_dir, read)).strip() == "read"
    assert counter[0] == 1


def test_cgroup_errors(counter):
    with load(counter_insns(counter, 1), ProgType.CGROUP_SKB) as prog:
        fds = open_fds()
        with pytest.raises(BpfError, match="cannot open cgroup"):
            attach.cgroup(prog, "egress", "pybpf-no-such-cgroup")
        with pytest.raises(BpfError, match="unknown attach type 'egres'"):
            attach.cgroup(prog, "egres")
        with pytest.raises(SyscallError, match=r"BPF_PROG_ATTACH \(cgroup .* cgroup_inet4_connect\)"):
            attach.cgroup(prog, "connect4", mode="attach")
        assert open_fds() == fds


# -- tc and xdp in namespaces of our own --------------------------------------
@pytest.fixture
def veth_pair():
    """Two fresh netns joined by a veth pair: (ns_a, ns_b, 'va', 'vb', '10.251.0.1', '10.251.0.2')."""
    from pyroute2 import IPRoute
    from pyroute2 import netns as pr_netns

    tag = f"{os.getpid()}-{next(_serial)}"
    ns_a, ns_b = f"pybpf-a-{tag}", f"pybpf-b-{tag}"
    pr_netns.create(ns_a)
    pr_netns.create(ns_b)
    try:
        with IPRoute(netns=ns_a) as ipr:
            ipr.link("add", ifname="va", kind="veth", peer={"ifname": "vb", "net_ns_fd": ns_b})
            ipr.addr("add", index=ipr.link_lookup(ifname="va")[0], address="10.251.0.1", prefixlen=24)
            ipr.link("set", index=ipr.link_lookup(ifname="va")[0], state="up")
        with IPRoute(netns=ns_b) as ipr:
            ipr.addr("add", index=ipr.link_lookup(ifname="vb")[0], address="10.251.0.2", prefixlen=24)
            ipr.link("set", index=ipr.link_lookup(ifname="vb")[0], state="up")
        yield ns_a, ns_b, "va", "vb", "10.251.0.1", "10.251.0.2"
    finally:
        pr_netns.remove(ns_a)
        pr_netns.remove(ns_b)


class inside:
    """Run the calling thread inside a named netns for the block."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        from pyroute2 import netns as pr_netns
        pr_netns.pushns(self.name)

    def __exit__(self, *exc):
        from pyroute2 import netns as pr_netns
        pr_netns.popns()


def udp_across(ns_a, dst, count=5):
    """Send count datagrams from ns_a to dst:9 (discard)."""
    with inside(ns_a):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with s:
        for _ in range(count):
            s.sendto(b"ping", (dst, 9))


def tc_filters(ns, ifname, parent):
    """(our-style filters on one clsact hook, whether the device has a clsact qdisc)"""
    from pyroute2 import IPRoute
    with IPRoute(netns=ns) as ipr:
        index = ipr.link_lookup(ifname=ifname)[0]
        return ([f for f in ipr.get_filters(index=index, parent=parent) if f.get_attr("TCA_OPTIONS")],
                any(q.get_attr("TCA_KIND") == "clsact" for q in ipr.get_qdiscs(index=index)))


@pytest.mark.parametrize("mode", ["tcx", "cls_bpf"])
def test_tc_ingress_on_veth(counter, veth_pair, mode):
    from pybpf import tc

    if mode == "tcx":
        require("link.tcx")
    ns_a, ns_b, va, vb, addr_a, addr_b = veth_pair
    with load(counter_insns(counter, 0), ProgType.SCHED_CLS, name="tc_count") as prog:
        with inside(ns_b):
            attached = attach.tc(prog, vb, "ingress", mode=mode)
        with attached:
            assert isinstance(attached, attach.Link if mode == "tcx" else tc.TcFilter)
            udp_across(ns_a, addr_b)
            assert eventually(lambda: counter[0] >= 5)  # plus the ARP exchange
            filters, qdiscs = tc_filters(ns_b, vb, tc.CLSACT_PARENT["ingress"])
            if mode == "cls_bpf":
                assert [f.get_attr("TCA_OPTIONS").get_attr("TCA_BPF_NAME") for f in filters] == ["pybpf"]
                assert qdiscs
        seen = counter[0]
        udp_across(ns_a, addr_b)
        assert not eventually(lambda: counter[0] != seen, timeout=0.2)
        assert tc_filters(ns_b, vb, tc.CLSACT_PARENT["ingress"]) == ([], False)


def test_tc_cls_bpf_keeps_foreign_qdisc(counter, veth_pair):
    """A clsact someone else made stays; two filters of ours share it and go one by one."""
    from pyroute2 import IPRoute

    from pybpf import tc

    ns_a, ns_b, va, vb, addr_a, addr_b = veth_pair
    with IPRoute(netns=ns_b) as ipr:
        ipr.tc("add", "clsact", ipr.link_lookup(ifname=vb)[0])
    with load(counter_insns(counter, 0), ProgType.SCHED_CLS) as prog:
        with inside(ns_b):
            first = attach.tc(prog, vb, "egress", mode="cls_bpf")
            second = attach.tc(prog, vb, "egress", mode="cls_bpf")
        assert (first.prio, second.prio) == (1, 2)
        first.close()
        assert len(tc_filters(ns_b, vb, tc.CLSACT_PARENT["egress"])[0]) == 1
        second.close()
    assert tc_filters(ns_b, vb, tc.CLSACT_PARENT["egress"]) == ([], True)


@pytest.mark.parametrize("mode,via", [("skb", "link"), ("drv", "link"), ("skb", "netlink"), (None, None)])
def test_xdp_on_veth(counter, veth_pair, mode, via):
    from pyroute2 import IPRoute

    ns_a, ns_b, va, vb, addr_a, addr_b = veth_pair
    with load(counter_insns(counter, 2), ProgType.XDP, name="xdp_count") as prog:  # XDP_PASS
        with inside(ns_b):
            attached = attach.xdp(prog, vb, mode=mode, via=via)
        with attached:
            assert isinstance(attached, attach.XdpNetlink if via == "netlink" else attach.Link)
            udp_across(ns_a, addr_b)
            assert eventually(lambda: counter[0] >= 5)
        with IPRoute(netns=ns_b) as ipr:
            link = ipr.get_links(ifname=vb)[0]
            assert link.get_attr("IFLA_XDP") is None or link.get_nested("IFLA_XDP", "IFLA_XDP_PROG_ID") is None
        seen = counter[0]
        udp_across(ns_a, addr_b)
        assert not eventually(lambda: counter[0] != seen, timeout=0.2)


# -- netns and sockmap -------------------------------------------------------------
def test_sk_lookup_in_a_netns(counter, veth_pair):
    ns_a, ns_b, va, vb, addr_a, addr_b = veth_pair
    with load(counter_insns(counter, 1), ProgType.SK_LOOKUP,  # SK_PASS
              expected_attach_type=AttachType.SK_LOOKUP) as prog:
        with inside(ns_b):
            link = attach.sk_lookup(prog)
            server = socket.create_server((addr_b, 0))
        with link, server:
            with inside(ns_a):
                client = socket.socket()
            with client:
                client.settimeout(5)
                client.connect(server.getsockname())
                server.accept()[0].close()
            assert counter[0] >= 1
            assert link.info().netns.attach_type == AttachType.SK_LOOKUP


def test_sockmap_sk_msg(counter):
    with Map(MapType.SOCKMAP, key=4, value=4, max_entries=1, name="socks") as socks, \
            load(counter_insns(counter, 1), ProgType.SK_MSG,  # SK_PASS
                 expected_attach_type=AttachType.SK_MSG_VERDICT) as prog, \
            attach.sockmap(prog, socks, "sk_msg_verdict"), \
            socket.create_server(("127.0.0.1", 0)) as server, \
            socket.create_connection(server.getsockname(), timeout=5) as client:
        peer, _ = server.accept()
        with peer:
            socks[0] = client.fileno()
            client.sendall(b"hello")
            peer.settimeout(5)
            assert peer.recv(5) == b"hello"
    assert counter[0] >= 1


# -- lifecycle --------------------------------------------------------------------
def test_double_detach_is_harmless(counter, cgroup_dir):
    with load(counter_insns(counter, 1), ProgType.CGROUP_SKB) as skb, \
            load(counter_insns(counter, 0), ProgType.TRACEPOINT) as tp:
        for att in (attach.cgroup(skb, "egress", cgroup_dir, mode="link"),
                    attach.cgroup(skb, "egress", cgroup_dir, mode="attach"),
                    attach.tracepoint(tp, "syscalls:sys_enter_getpid")):
            with att:
                pass
            assert att.closed
            att.close()
            att.detach()


def test_program_may_close_first(counter, cgroup_dir):
    """The attachment holds what it needs: closing the program does not detach it."""
    prog = load(counter_insns(counter, 1), ProgType.CGROUP_SKB)
    att = attach.cgroup(prog, "egress", cgroup_dir, mode="attach")
    prog.close()
    with att, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        run(in_cgroup(cgroup_dir, UDP_SEND.format(port=sink.getsockname()[1])))
        assert counter[0] == 5


def test_double_detach_netlink_kinds(counter, veth_pair):
    require("link.tcx")
    ns_a, ns_b, va, vb, addr_a, addr_b = veth_pair
    with load(counter_insns(counter, 0), ProgType.SCHED_CLS) as cls, \
            load(counter_insns(counter, 2), ProgType.XDP) as xdp:
        with inside(ns_b):
            made = [attach.tc(cls, vb, mode="cls_bpf"), attach.tc(cls, vb, mode="tcx"),
                    attach.xdp(xdp, vb, via="netlink")]
        assert len(cleanup.pending()) == 2
        for att in made:
            att.close()
            att.detach()
            assert att.closed
        assert cleanup.pending() == []


@pytest.mark.parametrize("kind", ["tc", "xdp"])
def test_missing_interface(counter, kind):
    with load(counter_insns(counter, 0), ProgType.SCHED_CLS if kind == "tc" else ProgType.XDP) as prog:
        fds = open_fds()
        with pytest.raises(BpfError) as caught:
            getattr(attach, kind)(prog, "pybpf-nope0")
        assert str(caught.value) == "no network interface 'pybpf-nope0' in this network namespace"
        assert open_fds() == fds


def test_bad_arguments(counter):
    with load(counter_insns(counter, 0), ProgType.SCHED_CLS) as prog:
        with pytest.raises(BpfError, match="tc direction 'sideways'"):
            attach.tc(prog, "lo", "sideways")
        with pytest.raises(BpfError, match="tc mode 'u32'"):
            attach.tc(prog, "lo", mode="u32")
        with pytest.raises(BpfError, match="xdp mode 'fast'"):
            attach.xdp(prog, "lo", mode="fast")
        with pytest.raises(BpfError, match="expected a loaded program"):
            attach.tc(-1, "lo")
        with pytest.raises(SyscallError) as caught:  # a SCHED_CLS program is no XDP program
            attach.xdp(prog, "lo", via="link")
        assert caught.value.errno == errno.EINVAL and "xdp lo" in str(caught.value)


def test_cgroup_paths_are_read_as_the_kernel_writes_them():
    root = attach.cgroup2_root()
    assert attach.cgroup_path("/") == root  # the root cgroup, not the filesystem root
    assert attach.cgroup_path("/a/b") == os.path.join(root, "a/b")
    assert attach.cgroup_path("a/b") == os.path.join(root, "a/b")
    assert attach.cgroup_path(os.path.join(root, "x")) == os.path.join(root, "x")
