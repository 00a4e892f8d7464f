"""Which hook each program takes: the accept hooks (fexit, kretprobe, getpeername,
tracepoint) and the state program's (tp_btf, raw tracepoint), chosen best first, and
inbound connections attributed to the accepting process through each."""
import dataclasses
import os
import socket
import subprocess
import sys

import pytest

from bpfhook.monitor import Monitor
from bpfhook.programs import accept
from bpfhook.programs.conn_common import KernelOffsets, Maps
from pybpf import features
from tests.conftest import require
from tests.kernel.monitor_helpers import (ACCEPT_NEEDS, ACCEPT_NOTE, CGROUP_ROOT, SERVER, STATE_NEEDS,
                                          best_accept_hook, closed, collect, host_server)


@pytest.fixture(params=list(ACCEPT_NEEDS))
def accept_monitor(request):
    """A Monitor with each accept hook in turn, skipped where the kernel lacks it."""
    hook, need = request.param, ACCEPT_NEEDS[request.param]
    if not features.has(need):
        pytest.skip(f"no {need} on this kernel: {features.probe(need).detail}")
    with Monitor(CGROUP_ROOT, accept=hook) as m:
        assert m.accept_hook == hook
        yield m


def test_auto_takes_the_best_accept_hook_and_says_so():
    with Monitor(CGROUP_ROOT) as m:
        assert m.accept_hook == best_accept_hook()
        assert m.accept_note.startswith(ACCEPT_NOTE[m.accept_hook])
        for better in list(ACCEPT_NEEDS)[:list(ACCEPT_NEEDS).index(m.accept_hook)]:
            assert f"{better}: " in m.accept_note  # why a better hook was passed over


@pytest.mark.parametrize("nargs", [4, 2])  # (sk, flags, err, kern) before 6.10, (sk, arg) since
def test_fexit_reads_the_return_value_after_the_arguments(nargs):
    kernel = dataclasses.replace(KernelOffsets.load(), funcs={"inet_csk_accept": (1, nargs)})
    with Maps() as maps:
        insns = accept.build_fexit(maps, kernel).link()
    ctx = [i for i in insns if i.op.name == "ldxdw" and i.src == 9]  # r9 holds ctx
    assert [(i.dst, i.off) for i in ctx[:1]] == [(6, 8 * nargs)]


def test_fexit_target_comes_from_this_kernels_btf():
    from pybpf.btf import Btf

    btf = Btf.vmlinux()
    func = btf.find("inet_csk_accept", "func")
    params = btf.type_by_id(func.type).params
    assert KernelOffsets.from_btf(btf).func("inet_csk_accept") == (func.id, len(params))
    assert params[0].name == "sk" and len(params) in (2, 4)


def test_unknown_accept_hook_is_refused():
    with pytest.raises(ValueError, match="kprobe"):
        Monitor(CGROUP_ROOT, accept="kprobe")
    with pytest.raises(ValueError, match="state hook 'fentry': expected auto or one of tp_btf, raw_tracepoint"):
        Monitor(CGROUP_ROOT, state="fentry")


def test_typed_state_program_reads_the_socket_without_helpers():
    """tp_btf hands the program a BTF-typed struct sock: plain loads (fault-safe, checked by the
    verifier) replace every bpf_probe_read_kernel of the raw tracepoint program."""
    from bpfhook.programs import conn_state
    from pybpf.helpers import name_of

    kernel = KernelOffsets.load()
    with Maps(stream=False) as maps:
        calls = {typed: {name_of(i.imm) for i in conn_state.build(maps, kernel, typed).link()
                         if i.op.name == "call" and i.src == 0}  # helpers (src 1: a subprogram)
                 for typed in (False, True)}
    assert "bpf_probe_read_kernel" in calls[False]
    assert "bpf_probe_read_kernel" not in calls[True] and "bpf_skc_to_tcp_sock" in calls[True]


def test_auto_takes_the_best_state_hook():
    with Monitor(CGROUP_ROOT) as m:
        assert m.state_hook == next(hook for hook, need in STATE_NEEDS.items() if features.has(need))


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_inbound_is_attributed_to_the_accepting_process(accept_monitor, lab, family):
    monitor = accept_monitor
    c = lab(ipv6=family == "ipv6")
    server_addr, client_addr = (c.ipv4, c.host_ipv4) if family == "ipv4" else (c.ipv6, c.host_ipv6)
    server = c.spawn([sys.executable, "-c", SERVER, server_addr, "500", "300"], stdout=subprocess.PIPE, text=True)
    port = int(server.stdout.readline())
    with socket.create_connection((server_addr, port), timeout=10) as s:
        s.sendall(b"h" * 500)
        got = 0
        while got < 300:
            got += len(s.recv(300 - got))
    server.wait(10)
    events = collect(monitor, lambda ev: closed(ev, sport=port))
    accepts = [e for e in events if e["event"] == "accept" and e["sport"] == port]
    assert len(accepts) == 1, accepts
    a = accepts[0]
    assert (a["pid"], a["cgroup_id"], a["owner_from_accept"]) == (server.pid, c.cgroup_id, True)
    assert (a["family"], a["saddr"], a["daddr"]) == (family, server_addr, client_addr)
    # The handshake ran in softirq: the SYN_RECV record names nobody, not some random task.
    syn_recv = [e for e in events if e["sock"] == a["sock"] and e["newstate"] == "SYN_RECV"
                and e["ts_ns"] <= a["ts_ns"]][-1:]
    assert syn_recv and syn_recv[0]["pid"] == 0 and syn_recv[0]["cgroup_id"] == c.cgroup_id
    (close,) = closed(events, sport=port)
    assert close["sock"] == a["sock"]
    assert (close["pid"], close["cgroup_id"]) == (server.pid, c.cgroup_id)
    assert (close["bytes_sent"], close["bytes_received"]) == (300, 500)
    m = monitor.cgroup_metrics()[c.cgroup_id]
    assert (m["opened"], m["closed"], m["bytes_sent"], m["bytes_received"]) == (1, 1, 300, 500)


def test_getpeername_of_a_connected_client_changes_nothing():
    """The getpeername hooks run for getpeername() too: a connection that has its owner (here
    the connecting task, from SYN_SENT) keeps it, and is not marked accepted."""
    require("attach_type.cgroup_inet4_getpeername")
    port, t = host_server("127.0.0.1", 3, 2)
    with Monitor(CGROUP_ROOT, accept="getpeername") as monitor:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            sport = s.getsockname()[1]
            assert s.getpeername() == ("127.0.0.1", port)
            s.sendall(b"abc")
            assert s.recv(2) == b"ss"
        t.join(10)
        events = collect(monitor, lambda ev: closed(ev, sport=sport) and closed(ev, dport=sport))
    (client,) = closed(events, sport=sport)
    assert (client["pid"], client["owner_from_accept"]) == (os.getpid(), False)
    assert [e for e in events if e["event"] == "accept"] and not [
        e for e in events if e["event"] == "accept" and e["sock"] == client["sock"]]  # the server's, only


# SERVER with accept(fd, NULL, NULL) (through libc): no peer address asked, so no getpeername hook runs
# settimeout() left the socket non-blocking: wait for the connection, then accept it
NULL_ACCEPT_SERVER = SERVER.replace("conn, _ = s.accept()", """import ctypes, select
    select.select([s], [], [], 30)
    fd = ctypes.CDLL(None, use_errno=True).accept(s.fileno(), None, None)
    assert fd >= 0, ctypes.get_errno()
    conn = socket.socket(fileno=fd)""")


def test_accept_without_peer_address_takes_the_closing_task(lab):
    """Under the getpeername hook an accept() that asks for no address is not seen: the
    connection's owner is the task that closes it (process context), not nobody."""
    require("attach_type.cgroup_inet4_getpeername")
    c = lab(ipv6=False)
    with Monitor(CGROUP_ROOT, accept="getpeername") as monitor:
        server = c.spawn([sys.executable, "-c", NULL_ACCEPT_SERVER, c.ipv4, "5", "3"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        port = int(server.stdout.readline())
        with socket.create_connection((c.ipv4, port), timeout=10) as s:
            s.sendall(b"h" * 5)
            assert s.recv(3) == b"sss"
        assert server.wait(10) == 0, server.stderr.read()
        events = collect(monitor, lambda ev: closed(ev, sport=port))
    assert not [e for e in events if e["event"] == "accept" and e["sport"] == port]
    (close,) = closed(events, sport=port)
    assert (close["pid"], close["cgroup_id"], close["owner_from_close"]) == (server.pid, c.cgroup_id, True)
    assert not close["owner_from_accept"] and close["comm"].startswith("python")
