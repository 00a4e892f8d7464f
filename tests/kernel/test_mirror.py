"""bpfhook mirror in the real kernel: three lab containers, AF_PACKET on both ends.

client -> host -> server traffic; the server's host-side veth is mirrored to the
observer's. What the server's veth shows (AF_PACKET in the host netns: egress
frames as PACKET_OUTGOING, ingress ones otherwise) must arrive, byte for byte,
on the observer's eth0.
"""
import collections
import dataclasses
import errno
import os
import select
import signal
import subprocess
import sys
import time

import pytest

from bpfhook import demo, mirror
from bpfhook.mirror import MirrorError, PacketFilter
from pybpf.errors import BpfError, FeatureUnavailable

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
METHODS = ["mirred", "bpf"]
CLI_SECONDS = 120  # a bound, not a wait: python's start-up takes tens of seconds in the kernel matrix's emulated VMs


@pytest.fixture
def trio(lab):
    containers = lab(ipv6=False), lab(ipv6=False), lab(ipv6=False)
    yield containers
    # Pass or fail: what a test kept (--keep pins tcx links, which outlive the veth) goes before the lab does.
    for c in containers:
        if mirror.read_state(c.host_if) is not None:
            mirror.remove(c.host_if)


def tc_dump(ifindex):
    """What tc shows on an interface: qdiscs and clsact filters, as comparable tuples."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        qdiscs = sorted((q.get_attr("TCA_KIND"), q["handle"], q["parent"]) for q in ipr.get_qdiscs(index=ifindex))
        filters = sorted((d, f.get_attr("TCA_KIND"), f["handle"], f["info"])
                         for d, parent in mirror.CLSACT_PARENT.items()
                         for f in ipr.get_filters(index=ifindex, parent=parent))
    return qdiscs, filters


def mirrored(source_if, observer, address, traffic):
    """Run traffic(); return (frames to or from address on source_if, by direction; those frames
    arriving on the observer's eth0)."""
    at_source = demo.packet_socket(source_if)
    at_observer = demo.packet_socket("eth0", observer.netns_path)
    try:
        traffic()
        time.sleep(0.3)  # the last clones cross the observer's veth
        seen = demo.drain(at_source, demo.ipv4_between(address))
        copies = demo.drain(at_observer, demo.ipv4_between(address, incoming_only=True))
        assert demo.drops(at_source) == 0 and demo.drops(at_observer) == 0
    finally:
        at_source.close()
        at_observer.close()
    by_direction = {"egress": [f for t, f in seen if t == demo.PACKET_OUTGOING],
                    "ingress": [f for t, f in seen if t != demo.PACKET_OUTGOING]}
    return by_direction, [f for _t, f in copies]


def exchange(trio, datagrams=20, nbytes=256 << 10):
    """Run client -> server traffic; return mirrored()'s frames of the server's veth."""
    client, server, observer = trio

    def traffic():
        with demo.server(server):
            demo.client(client, server.ipv4, datagrams=datagrams, nbytes=nbytes)

    return mirrored(server.host_if, observer, server.ipv4, traffic)


@pytest.mark.parametrize("method", METHODS)
def test_every_packet_in_both_directions_arrives(trio, method):
    _client, server, observer = trio
    with mirror.mirror(server, observer, method=method):
        seen, copies = exchange(trio)
    assert len(seen["ingress"]) >= 20 and len(seen["egress"]) >= 20
    expected = collections.Counter(seen["ingress"] + seen["egress"])
    got = collections.Counter(copies)
    assert got == expected, f"missing {sum((expected - got).values())}, extra {sum((got - expected).values())}"


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("direction", ["ingress", "egress"])
def test_one_direction(trio, method, direction):
    _client, server, observer = trio
    with mirror.mirror(server, observer, directions=(direction,), method=method):
        seen, copies = exchange(trio, nbytes=64 << 10)
    assert seen[direction] and collections.Counter(copies) == collections.Counter(seen[direction])


def _is_udp(frame):
    return frame[23] == 17


def _port(frame, port):
    l4 = 14 + (frame[14] & 0x0F) * 4
    return port in (int.from_bytes(frame[l4:l4 + 2], "big"), int.from_bytes(frame[l4 + 2:l4 + 4], "big"))


@pytest.mark.parametrize("text, match, leaves_out", [
    ("udp", _is_udp, True),
    ("tcp/5201", lambda f: f[23] == 6 and _port(f, 5201), True),
    ("5201", lambda f: f[23] in (6, 17) and _port(f, 5201), False),  # all the traffic uses port 5201
    ("tcp/9", lambda f: False, True),
])
def test_bpf_filter_mirrors_only_matching_packets(trio, text, match, leaves_out):
    _client, server, observer = trio
    with mirror.mirror(server, observer, method="bpf", packet_filter=PacketFilter.parse(text)):
        seen, copies = exchange(trio, nbytes=64 << 10)
    everything = seen["ingress"] + seen["egress"]
    expected = collections.Counter(f for f in everything if match(f))
    assert collections.Counter(copies) == expected
    assert (sum(expected.values()) < len(everything)) == leaves_out


def _foreign_filter(ifindex, direction="ingress", prio=100):
    """Someone else's u32 filter (no action) on a clsact they made."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        if not any(q.get_attr("TCA_KIND") == "clsact" for q in ipr.get_qdiscs(index=ifindex)):
            ipr.tc("add", "clsact", ifindex)
        ipr.tc("add-filter", "u32", ifindex, parent=mirror.CLSACT_PARENT[direction], prio=prio,
               protocol=0x0003, target=0x10001, keys=["0x0/0x0+0"])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("foreign", [False, True])
def test_removal_leaves_the_interface_as_found(trio, method, foreign):
    _client, server, observer = trio
    if foreign:
        _foreign_filter(server.ifindex)
    before, before_obs = tc_dump(server.ifindex), tc_dump(observer.ifindex)
    m = mirror.mirror(server, observer, method=method)
    during = tc_dump(server.ifindex)
    if method == "mirred":
        assert during != before
        if foreign:  # ours runs first and says "continue": the foreign filter still sees everything
            assert {f[3] >> 16 for f in during[1] if f[0] == "ingress"} == {99, 100}
    assert os.path.exists(mirror._state_path(server.host_if))
    m.close()
    assert tc_dump(server.ifindex) == before and tc_dump(observer.ifindex) == before_obs
    assert not os.path.exists(mirror._state_path(server.host_if))


@pytest.mark.parametrize("method", METHODS)
def test_running_twice_is_harmless(trio, method):
    _client, server, observer = trio
    with mirror.mirror(server, observer, method=method):
        once = tc_dump(server.ifindex)
        assert mirror.mirror(server, observer, method=method) is None
        assert tc_dump(server.ifindex) == once
        with pytest.raises(MirrorError, match="already mirrored"):
            mirror.mirror(server, observer, directions=("ingress",), method=method)
        seen, copies = exchange(trio, nbytes=0)
        assert collections.Counter(copies) == collections.Counter(seen["ingress"] + seen["egress"])


def test_refusals_change_nothing(trio):
    client, server, observer = trio
    before = tc_dump(server.ifindex)
    with pytest.raises(MirrorError, match="is the source itself"):
        mirror.mirror(server, server.host_if)
    with pytest.raises(MirrorError, match="no interface, pid or container"):
        mirror.mirror(server, "bh-no-such-if")
    with pytest.raises(MirrorError, match="--filter needs --method bpf"):
        mirror.mirror(server, observer, packet_filter=PacketFilter.parse("udp"))
    with pytest.raises(MirrorError, match="--qdisc needs --method mirred"):
        mirror.mirror(server, observer, method="bpf", qdisc="prio")
    assert tc_dump(server.ifindex) == before
    assert not os.path.exists(mirror._state_path(server.host_if))


def test_rollback_when_the_second_direction_fails(trio):
    """Ingress goes in, egress is refused (pref 1 taken): the ingress filter and our clsact go again."""
    _client, server, observer = trio
    _foreign_filter(server.ifindex, "egress", prio=1)
    before = tc_dump(server.ifindex)
    with pytest.raises(MirrorError, match="pref 1"):
        mirror.mirror(server, observer)
    assert tc_dump(server.ifindex) == before
    assert not os.path.exists(mirror._state_path(server.host_if))


def test_ingress_qdisc_is_refused(trio):
    _client, server, observer = trio
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        ipr.tc("add", "ingress", server.ifindex, 0xFFFF0000)
    before = tc_dump(server.ifindex)
    with pytest.raises(MirrorError, match="ingress qdisc"):
        mirror.mirror(server, observer)
    assert tc_dump(server.ifindex) == before


def test_container_by_pid_resolves_to_its_host_veth(trio):
    _client, server, _observer = trio
    p = server.spawn(["sleep", "10"])
    try:
        assert mirror.resolve(str(p.pid)).ifindex == server.ifindex
    finally:
        p.kill()
        p.wait()
    assert mirror.resolve(server.name).ifname == server.host_if
    with pytest.raises(MirrorError, match="shares this network namespace"):
        mirror.resolve(str(os.getpid()))


def _cli(*args, **popen):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.Popen([sys.executable, "-m", "bpfhook", "mirror", *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


@pytest.mark.parametrize("method", METHODS)
def test_cli_sigterm_removes_everything(trio, method):
    _client, server, observer = trio
    before = tc_dump(server.ifindex)
    p = _cli("--from", server.name, "--to", observer.name, "--method", method)
    try:
        ready, _, _ = select.select([p.stdout], [], [], CLI_SECONDS)
        assert ready and p.stdout.readline().startswith("mirroring"), p.stderr.read()
        assert os.path.exists(mirror._state_path(server.host_if))
        seen, copies = exchange(trio, nbytes=0)
        assert copies and collections.Counter(copies) == collections.Counter(seen["ingress"] + seen["egress"])
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=CLI_SECONDS)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 0, err
    assert "mirror removed" in out
    assert tc_dump(server.ifindex) == before
    assert not os.path.exists(mirror._state_path(server.host_if))


@pytest.mark.parametrize("method", METHODS)
def test_cli_keep_then_remove(trio, method):
    _client, server, observer = trio
    before = tc_dump(server.ifindex)
    p = _cli("--from", server.name, "--to", observer.name, "--method", method, "--keep")
    out, err = p.communicate(timeout=CLI_SECONDS)
    assert p.returncode == 0, err
    assert "bpfhook mirror --remove" in out
    seen, copies = exchange(trio, nbytes=0)  # the process is gone, the mirror is not
    assert copies and collections.Counter(copies) == collections.Counter(seen["ingress"] + seen["egress"])
    p = _cli("--remove", "--from", server.name, "--to", observer.name)
    out, err = p.communicate(timeout=CLI_SECONDS)
    assert p.returncode == 0, err
    assert tc_dump(server.ifindex) == before
    if os.path.isdir(mirror.PIN_DIR):  # other runs may pin theirs meanwhile: look at ours only
        assert not [p for p in os.listdir(mirror.PIN_DIR) if p.startswith(server.host_if + "-")]
    else:  # nobody else pins: the directories --keep made went with the last pin
        assert not os.path.exists(os.path.dirname(mirror.PIN_DIR))
    seen, copies = exchange(trio, nbytes=0)
    assert seen["ingress"] and not copies
    p = _cli("--remove", "--from", server.name)
    out, err = p.communicate(timeout=CLI_SECONDS)
    assert p.returncode == 1 and err.count("\n") == 1 and "no mirror of" in err


def test_cli_errors_are_one_line(trio):
    _client, server, _observer = trio
    for args, text in [(("--from", server.name, "--to", server.host_if), "is the source itself"),
                       (("--from", "bh-nope-nope", "--to", server.name), "no interface"),
                       (("--from", server.name, "--to", "lo", "--filter", "tcp/99999", "--method", "bpf"),
                        "port must be")]:
        p = _cli(*args)
        out, err = p.communicate(timeout=CLI_SECONDS)
        assert p.returncode == 1 and err.count("\n") == 1 and text in err, err
    assert not os.path.exists(mirror._state_path(server.host_if))


# -- --qdisc prio: egress on a root prio qdisc (kernels with sch_prio; this VM has none) ---------------------

@pytest.fixture
def prio_kernel():
    if not mirror.kernel_has_qdisc("prio"):
        pytest.skip("kernel has no prio qdisc")


def _root(ifindex):
    return next((kind, handle) for kind, handle, parent in tc_dump(ifindex)[0] if parent == mirror.TC_H_ROOT)


@pytest.mark.parametrize("directions", [("egress",), ("ingress", "egress")])
def test_prio_every_packet_arrives(trio, prio_kernel, directions):
    _client, server, observer = trio
    before = tc_dump(server.ifindex)
    with mirror.mirror(server, observer, directions=directions, qdisc="prio") as m:
        assert _root(server.ifindex) == ("prio", m.state["root_qdisc"]["handle"])
        assert [f["parent"] for f in m.state["filters"]][-1] == m.state["root_qdisc"]["handle"]
        seen, copies = exchange(trio, nbytes=64 << 10)
    expected = collections.Counter(f for d in directions for f in seen[d])
    assert seen["egress"] and collections.Counter(copies) == expected
    assert tc_dump(server.ifindex) == before  # the kernel's default root qdisc is back


def test_prio_cli_keep_then_remove(trio, prio_kernel):
    _client, server, observer = trio
    before = tc_dump(server.ifindex)
    p = _cli("--from", server.name, "--to", observer.name, "--qdisc", "prio", "--direction", "egress", "--keep")
    out, err = p.communicate(timeout=CLI_SECONDS)
    assert p.returncode == 0 and "root prio" in out, err
    assert _root(server.ifindex)[0] == "prio"
    seen, copies = exchange(trio, nbytes=0)
    assert copies and collections.Counter(copies) == collections.Counter(seen["egress"])
    p = _cli("--remove", "--from", server.name)
    out, err = p.communicate(timeout=CLI_SECONDS)
    assert p.returncode == 0, err
    assert tc_dump(server.ifindex) == before


def test_prio_refuses_a_root_qdisc_of_its_own(trio):
    """Checked before anything is added, so it runs on kernels without prio too: the clsact made for
    ingress goes again and the user's pfifo stays."""
    _client, server, observer = trio
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        ipr.tc("add", "pfifo", server.ifindex, 0x50000)
    before = tc_dump(server.ifindex)
    with pytest.raises(MirrorError, match=r"root qdisc of its own \(pfifo 5:\)"):
        mirror.mirror(server, observer, qdisc="prio")
    assert tc_dump(server.ifindex) == before
    assert not os.path.exists(mirror._state_path(server.host_if))


def test_prio_missing_is_one_clear_error(trio):
    if mirror.kernel_has_qdisc("prio"):
        pytest.skip("kernel has the prio qdisc")
    _client, server, observer = trio
    before = tc_dump(server.ifindex)
    with pytest.raises(FeatureUnavailable, match="no prio qdisc"):
        mirror.mirror(server, observer, qdisc="prio")
    assert tc_dump(server.ifindex) == before
    assert not os.path.exists(mirror._state_path(server.host_if))


@pytest.mark.parametrize("kind", ["clsact", "prio"])
def test_qdisc_probe_agrees_with_a_real_interface_and_touches_none(trio, kind):
    """The probe (uncached) against adding the qdisc to a lab veth ourselves."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    _client, server, _observer = trio
    before, lo_before = tc_dump(server.ifindex), tc_dump(1)
    probed = mirror.kernel_has_qdisc.__wrapped__(kind)
    assert tc_dump(server.ifindex) == before and tc_dump(1) == lo_before
    with IPRoute() as ipr:
        try:
            mirror._add_qdisc(ipr, kind, server.ifindex, 0x10000)
            works = True
        except NetlinkError as e:
            assert e.code == errno.ENOENT
            works = False
    assert probed == works
    if kind == "clsact":
        assert probed  # the clsact tests above run on this kernel


# -- cls_bpf filters that outlive the process (--keep with --method bpf where there is no tcx) ---------------

def _tc_filters(ifindex):
    """Our cls_bpf filters (a dump also lists each chain's head, handle 0)."""
    return [f for f in tc_dump(ifindex)[1] if f[1] == "bpf" and f[2]]


def test_tc_filter_keep_find_remove(trio):
    from bpfhook.programs.mirror import build
    from pybpf import cleanup, prog, tc

    _client, server, observer = trio
    before = tc_dump(server.ifindex)
    with prog.load(build(observer.ifindex), "sched_cls", name="bh_kept") as p:
        f = tc.attach(p, server.ifindex, "egress", mode="cls_bpf", name="bh_kept")
        pending = len(cleanup.pending())
        ref = f.keep()
    assert len(cleanup.pending()) == pending - 1 and f.closed
    f.close()  # no longer ours: nothing happens
    with pytest.raises(BpfError, match="already detached"):
        f.keep()
    assert ref == tc.TcFilterRef(server.ifindex, "egress", f.prio, tc.FILTER_HANDLE, "bh_kept", True)
    assert tc.find_filter(server.host_if, "egress", ref.prio, name="bh_kept")
    seen, copies = exchange(trio, nbytes=0)  # program fd closed: the filter keeps it running
    assert copies and collections.Counter(copies) == collections.Counter(seen["egress"])
    assert not tc.find_filter(server.ifindex, "egress", ref.prio, name="someone_else")
    assert not tc.find_filter(server.ifindex, "ingress", ref.prio)
    assert not tc.remove_filter(server.ifindex, "egress", ref.prio, name="someone_else")
    assert _tc_filters(server.ifindex)
    assert tc.TcFilterRef(**dataclasses.asdict(ref)).remove()
    assert tc_dump(server.ifindex) == before  # filter and our clsact gone
    assert not ref.remove()


@pytest.mark.parametrize("foreign", [False, True])
def test_bpf_cls_bpf_keep_outlives_the_process(trio, foreign):
    _client, server, observer = trio
    if foreign:
        _foreign_filter(server.ifindex)
    before = tc_dump(server.ifindex)
    code = ("import sys; from bpfhook import mirror; "
            "mirror.mirror(sys.argv[1], sys.argv[2], method='bpf', keep=True, bpf_attach='cls_bpf')")
    subprocess.run([sys.executable, "-c", code, server.host_if, observer.host_if], cwd=ROOT, check=True,
                   env=dict(os.environ, PYTHONPATH=ROOT), timeout=CLI_SECONDS)
    state = mirror.read_state(server.host_if)
    assert state["attach"] == "cls_bpf" and len(state["tc_filters"]) == 2 and state["keep"]
    assert len(_tc_filters(server.ifindex)) == 2
    seen, copies = exchange(trio, nbytes=0)
    assert copies and collections.Counter(copies) == collections.Counter(seen["ingress"] + seen["egress"])
    mirror.remove(server.host_if, observer.host_if)
    assert tc_dump(server.ifindex) == before  # with foreign: their clsact and filter stay
    seen, copies = exchange(trio, nbytes=0)
    assert seen["ingress"] and not copies


def test_bpf_cls_bpf_after_sigkill_remove_takes_it_down(trio):
    """A killed process cannot remove its cls_bpf filters; the state file says where they are."""
    _client, server, observer = trio
    before = tc_dump(server.ifindex)
    code = ("import sys, time; from bpfhook import mirror; "
            "mirror.mirror(sys.argv[1], sys.argv[2], method='bpf', bpf_attach='cls_bpf'); "
            "print('ready', flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code, server.host_if, observer.host_if], cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([p.stdout], [], [], CLI_SECONDS)
        assert ready and p.stdout.readline() == "ready\n"
    finally:
        p.kill()
        p.wait()
    assert len(_tc_filters(server.ifindex)) == 2
    mirror.remove(server.host_if)
    assert tc_dump(server.ifindex) == before
