"""Nothing outlives a process that attached programs: links die with their fds
(even on SIGKILL), and legacy attachments are undone by pybpf.cleanup on exit,
SIGTERM and SIGINT. A child attaches, prints what it made, and is ended."""
import errno
import itertools
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from pybpf import attach, cleanup
from pybpf import syscall as bsys
from pybpf.errors import SyscallError
from pybpf.uapi import AttachType, Cmd
from tests.conftest import require, slow_factor

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_serial = itertools.count()

# argv: legacy(0/1) netns cgroup_dir ending(wait|exit|chain)
CHILD = r"""
import json, os, signal, sys, time
from pyroute2 import netns as pr_netns
from pybpf import attach, cleanup
from pybpf.insn import Insn
from pybpf.prog import load
from pybpf.uapi import ProgType

legacy, ns, cgroup_dir, ending = sys.argv[1] == "1", sys.argv[2], sys.argv[3], sys.argv[4]
if ending == "chain":  # a program with a handler of its own: it stops in its order, atexit undoes
    signal.signal(signal.SIGTERM, lambda *a: (print("chained", flush=True), sys.exit(7)))
ret = lambda value: [Insn("mov", dst=0, imm=value), Insn("exit")]
progs = [load(ret(0), ProgType.SCHED_CLS), load(ret(1), ProgType.CGROUP_SKB),
         load(ret(0), ProgType.TRACEPOINT), load(ret(2), ProgType.XDP)]
pr_netns.pushns(ns)
held = [attach.tc(progs[0], "lo", "ingress", mode="cls_bpf" if legacy else "tcx"),
        attach.xdp(progs[3], "lo", mode="skb", via="netlink" if legacy else "link")]
pr_netns.popns()
held += [attach.cgroup(progs[1], "egress", cgroup_dir, mode="attach" if legacy else "link"),
         attach.tracepoint(progs[2], "syscalls:sys_enter_getpid")]
print(json.dumps({"progs": [p.id for p in progs],
                  "links": [a.id for a in held if isinstance(a, attach.Link)],
                  "pending": cleanup.pending()}), flush=True)
if ending != "exit":
    time.sleep(30)
"""


@pytest.fixture
def netns_and_cgroup():
    from pyroute2 import IPRoute
    from pyroute2 import netns as pr_netns

    tag = f"{os.getpid()}-{next(_serial)}"
    ns = f"pybpf-clean-{tag}"
    cgroup_dir = os.path.join(attach.cgroup2_root(), f"pybpf-clean-{tag}")
    pr_netns.create(ns)
    os.mkdir(cgroup_dir)
    try:
        with IPRoute(netns=ns) as ipr:
            ipr.link("set", index=1, state="up")
        yield ns, cgroup_dir
    finally:
        os.rmdir(cgroup_dir)
        pr_netns.remove(ns)


def _default_signals():
    # A shell without job control starts background commands with SIGINT ignored, and children
    # inherit that: pybpf rightly leaves an ignored SIGINT alone, so the child must start from the defaults.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)


def start(legacy, ns, cgroup_dir, ending="wait"):
    child = subprocess.Popen([sys.executable, "-c", CHILD, "1" if legacy else "0", ns, cgroup_dir, ending],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                             preexec_fn=_default_signals)
    line = child.stdout.readline()
    if not line:
        child.wait(10 * slow_factor())
        pytest.fail(f"child failed before attaching: {child.stderr.read()}")
    return child, json.loads(line)


def alive(kind, ids):
    """Which of these prog/link ids still exist."""
    found = []
    for id in ids:
        try:
            os.close(bsys.get_fd_by_id(kind, id))
            found.append(id)
        except SyscallError as e:
            assert e.errno == errno.ENOENT
    return found


def eventually_gone(kind, ids, timeout=None):
    """Programs are freed after an RCU grace period; poll (bounded) until they are."""
    deadline = time.monotonic() + (timeout or 10 * slow_factor())
    while alive(kind, ids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive(kind, ids)


def cgroup_prog_ids(cgroup_dir, type=AttachType.CGROUP_INET_EGRESS):
    ids = bsys.ffi.new("uint32_t[]", 64)
    attr = bsys.new_attr()
    fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        attr.query.target_fd = fd
        attr.query.attach_type = type
        attr.query.prog_ids = bsys.address(ids)
        attr.query.prog_cnt = 64
        bsys.bpf(Cmd.PROG_QUERY, attr)
    finally:
        os.close(fd)
    return list(ids[0:attr.query.prog_cnt])


def lo_state(ns):
    """(tc filters on lo ingress, has clsact, XDP prog id or None) in the netns."""
    from pyroute2 import IPRoute

    with IPRoute(netns=ns) as ipr:
        filters = [f for f in ipr.get_filters(index=1, parent=0xFFFFFFF2) if f.get_attr("TCA_OPTIONS")]
        clsact = any(q.get_attr("TCA_KIND") == "clsact" for q in ipr.get_qdiscs(index=1))
        xdp = ipr.get_links(1)[0].get_attr("IFLA_XDP")
        return len(filters), clsact, xdp.get_attr("IFLA_XDP_PROG_ID") if xdp else None


def assert_all_gone(made, ns, cgroup_dir):
    assert eventually_gone("link", made["links"]) == []
    assert eventually_gone("prog", made["progs"]) == []
    assert cgroup_prog_ids(cgroup_dir) == []
    assert lo_state(ns) == (0, False, None)


def test_sigkill_leaves_nothing_with_links(netns_and_cgroup):
    require("link.tcx")  # the child's tc attachment is a tcx link
    ns, cgroup_dir = netns_and_cgroup
    child, made = start(False, ns, cgroup_dir)
    try:
        assert made["pending"] == []  # links only: nothing needed undoing by hand
        assert len(made["links"]) == 3  # tcx, xdp, cgroup (the tracepoint is a perf link)
        assert alive("link", made["links"]) == made["links"]
        assert cgroup_prog_ids(cgroup_dir) == [made["progs"][1]]
        assert lo_state(ns)[2] == made["progs"][3]
    finally:
        child.kill()
        child.wait(10 * slow_factor())
    assert child.returncode == -signal.SIGKILL
    assert_all_gone(made, ns, cgroup_dir)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_undoes_legacy_attachments(netns_and_cgroup, signum):
    ns, cgroup_dir = netns_and_cgroup
    child, made = start(True, ns, cgroup_dir)
    try:
        assert len(made["pending"]) == 3  # cls_bpf filter (+ its clsact), netlink XDP, PROG_ATTACH
        assert lo_state(ns) == (1, True, made["progs"][3])
        assert cgroup_prog_ids(cgroup_dir) == [made["progs"][1]]
        child.send_signal(signum)
        child.wait(10 * slow_factor())
    finally:
        child.kill()
    # Our handler hands the signal on: SIGTERM's default kills, SIGINT's raises KeyboardInterrupt,
    # which Python ends by dying of SIGINT too.
    assert child.returncode == -signum, child.stderr.read()
    assert_all_gone(made, ns, cgroup_dir)


def test_normal_exit_undoes_legacy_attachments(netns_and_cgroup):
    ns, cgroup_dir = netns_and_cgroup
    child, made = start(True, ns, cgroup_dir, ending="exit")
    child.wait(10 * slow_factor())
    assert child.returncode == 0, child.stderr.read()
    assert_all_gone(made, ns, cgroup_dir)


def test_two_signals_at_once_still_undo_everything(netns_and_cgroup):
    """A second signal 1 ms after the first (a double Ctrl-C; timeout signalling the process,
    then its group) must not cut the undo short."""
    ns, cgroup_dir = netns_and_cgroup
    child, made = start(True, ns, cgroup_dir)
    try:
        child.send_signal(signal.SIGTERM)
        time.sleep(0.001)
        child.send_signal(signal.SIGINT)
        child.wait(10 * slow_factor())
    finally:
        child.kill()
    assert child.returncode in (-signal.SIGTERM, -signal.SIGINT), child.stderr.read()
    assert_all_gone(made, ns, cgroup_dir)


def test_a_programs_own_handler_stops_it_and_atexit_undoes(netns_and_cgroup):
    ns, cgroup_dir = netns_and_cgroup
    child, made = start(True, ns, cgroup_dir, ending="chain")
    try:
        child.send_signal(signal.SIGTERM)
        child.wait(10 * slow_factor())
    finally:
        child.kill()
    assert child.stdout.read().strip() == "chained"
    assert child.returncode == 7
    assert_all_gone(made, ns, cgroup_dir)


def test_registry_order_errors_and_fork():
    registry = cleanup.Registry()
    done = []
    registry.register(lambda: done.append("first"), "first")
    token = registry.register(lambda: done.append("second"), "second")
    registry.register(lambda: 1 / 0, "broken")
    registry.register(lambda: done.append("last"), "last")
    registry.run(token)
    registry.run(token)
    assert done == ["second"]
    registry.run_all()  # newest first; the broken entry is reported, the rest still run
    assert done == ["second", "last", "first"]
    assert registry.pending() == []

    # A forked child starts with an empty process-wide registry: it never undoes its parent's work.
    token = cleanup.register(lambda: None, "parent's")
    try:
        pid = os.fork()
        if pid == 0:
            os._exit(0 if cleanup.pending() == [] else 1)
        assert os.waitpid(pid, 0)[1] == 0
    finally:
        cleanup.unregister(token)
