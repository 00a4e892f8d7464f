"""bpfhook mirror: copy the packets an interface receives and/or sends to an observer's egress,
where any packet tool on the observer (for a veth, in its peer's netns) sees them. Two ways:

  mirred  a clsact qdisc and one filter per direction matching everything (matchall, else
          `u32 match u32 0 0`) with a mirred egress-mirror action whose control verdict is
          "continue", so that filters after ours still run; --qdisc prio puts egress on a
          root prio qdisc instead (refused over a root qdisc of someone else's).
  bpf     programs/mirror.py, a sched_cls program calling bpf_clone_redirect, attached
          through pybpf.tc (a tcx link, else direct-action cls_bpf), with --filter.

What was added is recorded in /run/bpfhook/mirror/SOURCE.json and removed, and nothing else,
at exit and on SIGINT/SIGTERM; with --keep it stays (tcx links pinned under PIN_DIR, or
cls_bpf filters, which hold their program) until `bpfhook mirror --remove --from SOURCE`.
Removal checks a mirred filter's shape (one egress mirror to the observer, "continue")
before deleting it. A source or observer is an interface, a pid or a container
(containers.find): for those two, the host-side peer of eth0 in its network namespace.
"""
import contextlib
import ctypes
import dataclasses
import errno
import functools
import json
import os
import socket
import threading

from pyroute2 import IPRoute
from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_DELTFILTER, RTM_NEWTFILTER
from pyroute2.netlink.rtnl.tcmsg import tcmsg

from bpfhook import cgroups, containers, lab, netns
from bpfhook.programs.mirror import PROTOCOLS, WITH_PORTS
from bpfhook.programs.mirror import build as build_program
from pybpf import cleanup, prog, tc
from pybpf.errors import BpfError, FeatureUnavailable, NotPermitted
from pybpf.syscall import ensure_bpffs, obj_pin, syscall_error
from pybpf.tc import CLSACT_PARENT, ETH_P_ALL

STATE_DIR = "/run/bpfhook/mirror"
PIN_DIR = "/sys/fs/bpf/bpfhook/mirror"
DIRECTIONS = ("ingress", "egress")
METHODS = ("mirred", "bpf")
TC_H_ROOT = 0xFFFFFFFF
QDISCS = ("clsact", "prio")  # where the mirred filters go: clsact hooks, or a root prio qdisc (egress only)
PRIO_PRIOMAP = (1, 2, 2, 2, 1, 2, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1)  # tc's default: TC_PRIO_* -> band
CLONE_NEWNET = 0x40000000
FIRST_PRIO = 0xC000  # where tc itself starts numbering filters
MIRRED_EGRESS_MIRROR = 2  # TCA_EGRESS_MIRROR
TC_ACT_UNSPEC = -1  # "continue": the next filter still runs
CLASSIFIERS = ("matchall", "u32")  # preferred first; probed by trying
BPF_PROG_NAME = "bh_mirror"


class MirrorError(BpfError):
    """A mirror cannot be set up, found or removed."""


# -- endpoints -------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Endpoint:
    spec: str  # what the user wrote
    ifname: str  # in this netns
    ifindex: int

    def __str__(self):
        return self.ifname if self.spec == self.ifname else f"{self.spec} ({self.ifname})"


def resolve(spec):
    """An Endpoint from an interface name, a pid, or a container (bpfhook.containers.find): a lab
    container's host veth, else the host-side peer of eth0 in the network namespace of one of the
    container's processes (an Endpoint or a bpfhook.lab.Container passes through)."""
    if isinstance(spec, Endpoint):
        return spec
    if hasattr(spec, "host_if"):  # a lab Container
        return _endpoint_at(spec.name, spec.ifindex)
    if not spec:
        raise MirrorError("empty interface or container name")
    with contextlib.suppress(OSError):
        return Endpoint(spec, spec, socket.if_nametoindex(spec))
    try:
        container = containers.find(spec)
    except containers.ContainerError as e:
        container, error = None, e
    if spec.isdigit() and (container is None or container.kind != "lab"):  # a pid; never an id prefix
        if not os.path.exists(f"/proc/{spec}"):
            raise MirrorError(f"no interface, container or process {spec!r}")
        return _endpoint_at(spec, _host_peer_of(f"/proc/{spec}/ns/net", spec))
    if container is None:
        if error.candidates:
            raise MirrorError(str(error)) from None
        raise MirrorError(f"no interface, pid or container {spec!r}")
    if container.kind == "lab":
        return _endpoint_at(spec, lab.Lab.get(container.name).ifindex)
    pids = cgroups.pids_below(container.cgroup_path)
    if not pids:
        raise MirrorError(f"{spec}: no process runs in {container.label}, so it has no network namespace to look in")
    return _endpoint_at(spec, _host_peer_of(f"/proc/{pids[0]}/ns/net", spec))


def _endpoint_at(spec, ifindex):
    try:
        return Endpoint(spec, socket.if_indextoname(ifindex), ifindex)
    except OSError:
        raise MirrorError(f"{spec}: its host-side interface (ifindex {ifindex}) is gone") from None


def _host_peer_of(nspath, spec):
    """ifindex, in our netns, of the veth peer of eth0 in the netns at nspath."""
    try:
        if os.stat(nspath).st_ino == os.stat("/proc/thread-self/ns/net").st_ino:
            raise MirrorError(f"{spec} shares this network namespace: name an interface instead")
        with netns.entered(nspath):
            ipr = IPRoute()
        with ipr:
            links = ipr.get_links(ifname="eth0")
    except OSError as e:
        raise MirrorError(f"{spec}: cannot read its network namespace ({e.strerror})") from None
    peer = links[0].get_attr("IFLA_LINK") if links else None
    if not peer:
        raise MirrorError(f"{spec}: no veth eth0 in its network namespace")
    return peer


# -- packet filters (bpf method) -------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PacketFilter:
    proto: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, text):
        """"tcp", "udp/53", "8080" (TCP, UDP or SCTP), "icmp", "icmpv6"."""
        proto, _, port = text.lower().partition("/")
        if proto.isdigit() and not port:
            proto, port = None, proto
        if proto is not None and proto not in PROTOCOLS:
            raise MirrorError(f"--filter {text!r}: protocol must be one of {', '.join(PROTOCOLS)}")
        if port:
            if not port.isdigit() or not 1 <= int(port) <= 65535:
                raise MirrorError(f"--filter {text!r}: port must be 1..65535")
            if proto is not None and PROTOCOLS[proto] not in WITH_PORTS:
                raise MirrorError(f"--filter {text!r}: {proto} has no ports")
        return cls(proto, int(port) if port else None)

    def __str__(self):
        return "/".join(str(x) for x in (self.proto, self.port) if x is not None)


# -- state -----------------------------------------------------------------------------------

def _state_path(ifname):
    return os.path.join(STATE_DIR, ifname + ".json")


def read_state(ifname):
    try:
        with open(_state_path(ifname)) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def _write_state(state):
    os.makedirs(STATE_DIR, exist_ok=True)
    path = _state_path(state["source"])
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(state, f, indent=1)
    os.replace(tmp, path)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- netlink ---------------------------------------------------------------------------------

def _prio(f):
    return f["info"] >> 16


def _actions(f):
    """The actions (tca_act nlas) of a u32 or matchall filter node, [] for other entries."""
    opts = f.get_attr("TCA_OPTIONS")
    attr = {"u32": "TCA_U32_ACT", "matchall": "TCA_MATCHALL_ACT"}.get(f.get_attr("TCA_KIND"))
    acts = opts.get_attr(attr) if opts and attr else None
    return [act for _name, act in acts["attrs"]] if acts else []


def _mirred_parms(f):
    """(eaction, ifindex, control) of each mirred action of a filter node; None for other actions."""
    out = []
    for act in _actions(f):
        if act.get_attr("TCA_ACT_KIND") != "mirred":
            out.append(None)
            continue
        parms = act.get_attr("TCA_ACT_OPTIONS").get_attr("TCA_MIRRED_PARMS")
        out.append((parms["eaction"], parms["ifindex"], parms["action"]))
    return out


def is_our_filter(f, observer_ifindex):
    """True for a filter of the shape this module adds: one mirred egress mirror to the observer, then continue."""
    return _mirred_parms(f) == [(MIRRED_EGRESS_MIRROR, observer_ifindex, TC_ACT_UNSPEC)]


def _filters_at(ipr, ifindex, parent):
    """Filters on one hook (a clsact hook or a qdisc), one entry per (prio, protocol) chain head and node."""
    return [f for f in ipr.get_filters(index=ifindex, parent=parent)]


def _filter_request(ipr, msg_type, flags, ifindex, parent, prio, attrs):
    """One RTM_*TFILTER request for the (prio, ETH_P_ALL) filter on a hook, through pyroute2's tcmsg."""
    msg = tcmsg()
    msg["index"] = ifindex
    msg["parent"] = parent
    msg["handle"] = 0
    msg["info"] = (prio << 16) | socket.htons(ETH_P_ALL)  # never 0: a zero prio would mean every filter
    msg["attrs"] = attrs
    msg["header"]["type"] = msg_type
    msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK | flags
    list(ipr.nlm_request_batch([msg]))


def _add_mirred(ipr, kind, ifindex, parent, prio, observer_ifindex):
    """Add our filter.

    Built here rather than with IPRoute.tc(action=mirred): pyroute2 fixes
    mirred's control verdict to "pipe", which would end classification and
    starve every filter behind ours."""
    parms = {"eaction": MIRRED_EGRESS_MIRROR, "ifindex": observer_ifindex, "action": TC_ACT_UNSPEC}
    action = {"attrs": [["TCA_ACT_PRIO_1", {"attrs": [
        ["TCA_ACT_KIND", "mirred"],
        ["TCA_ACT_OPTIONS", {"attrs": [["TCA_MIRRED_PARMS", parms]]}],
    ]}]]}
    if kind == "u32":
        options = [["TCA_U32_SEL", {"keys": ["0x0/0x0+0"]}], ["TCA_U32_ACT", action]]  # u32 match u32 0 0
    else:
        options = [["TCA_MATCHALL_ACT", action]]
    _filter_request(ipr, RTM_NEWTFILTER, NLM_F_CREATE | NLM_F_EXCL, ifindex, parent, prio,
                    [["TCA_KIND", kind], ["TCA_OPTIONS", {"attrs": options}]])


def _del_filter(ipr, ifindex, parent, prio, kind):
    """Delete our (prio, ETH_P_ALL) chain element; the kernel refuses when its kind is not `kind`."""
    try:
        _filter_request(ipr, RTM_DELTFILTER, 0, ifindex, parent, prio, [["TCA_KIND", kind]])
    except NetlinkError as e:
        if e.code not in (errno.ENOENT, errno.ENODEV):
            raise syscall_error(f"tc filter del (ifindex {ifindex} parent {parent:x} pref {prio})", e.code) from None


def _root_qdisc(ipr, ifindex):
    """(kind, handle) of the device's root qdisc; handle 0 is the kernel's default one."""
    for q in ipr.get_qdiscs(index=ifindex):
        if q["parent"] == TC_H_ROOT:
            return q.get_attr("TCA_KIND"), q["handle"]
    return None, 0


def _add_qdisc(ipr, kind, ifindex, handle=None):
    """Add a clsact qdisc, or a root prio qdisc (tc's default bands) at handle; NLM_F_EXCL, never a replace."""
    if kind == "clsact":
        ipr.tc("add", "clsact", ifindex)
    else:
        ipr.tc("add", "prio", ifindex, handle, bands=3, priomap=PRIO_PRIOMAP)


@functools.cache
def kernel_has_qdisc(kind):
    """Whether this kernel takes a `kind` qdisc (clsact, prio): tried on the loopback of a throwaway
    network namespace, never on a real interface; once per process."""
    result = []
    probe = threading.Thread(target=_try_qdisc, args=(kind, result), name=f"bpfhook-probe-{kind}")
    probe.start()
    probe.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


def _try_qdisc(kind, result):
    """In this thread alone, a new netns; it goes away with the thread, and the qdisc with it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(CLONE_NEWNET):
            code = ctypes.get_errno()
            if code == errno.EPERM:
                raise NotPermitted("probing qdiscs in a new network namespace needs CAP_SYS_ADMIN")
            raise MirrorError(f"unshare(CLONE_NEWNET): {os.strerror(code)}")
        with IPRoute() as ipr:
            try:
                _add_qdisc(ipr, kind, socket.if_nametoindex("lo"), 0x10000)
                result.append(True)
            except NetlinkError as e:
                if e.code not in (errno.ENOENT, errno.EOPNOTSUPP):  # ENOENT: "qdisc kind is unknown"
                    raise syscall_error(f"tc qdisc add {kind} (probe)", e.code) from None
                result.append(False)
    except BaseException as e:
        result.append(e)


def choose_qdisc(requested, directions, has_qdisc):
    """The qdisc for mirred: requested ("clsact", "prio") or, for None, clsact where the kernel has it
    (has_qdisc(kind) says), else prio. Ingress always needs clsact."""
    if requested is not None and requested not in QDISCS:
        raise MirrorError(f"qdisc must be clsact or prio, not {requested!r}")
    qdisc = requested or ("clsact" if has_qdisc("clsact") else "prio")
    if qdisc == "prio" and requested is None and not has_qdisc("prio"):
        raise FeatureUnavailable("this kernel has neither the clsact nor the prio qdisc: mirred cannot run")
    if qdisc == "prio" and "ingress" in directions and requested is None:
        raise MirrorError("this kernel has no clsact qdisc: only egress can be mirrored "
                          "(a root prio qdisc), use --direction egress")
    return qdisc


# -- setting up and taking down -----------------------------------------------------------------

class Mirror:
    """One source mirrored to one observer. Use mirror(...) to make one."""

    def __init__(self, source, observer, directions, method, packet_filter, keep, qdisc=None):
        self.source, self.observer = source, observer
        self.directions, self.method, self.qdisc = tuple(directions), method, qdisc
        self.packet_filter, self.keep = packet_filter, keep
        self.attachments = []  # bpf: Link / TcFilter objects while we hold them
        self.state = None
        self._token = None

    def describe(self):
        what = f" ({self.packet_filter})" if self.packet_filter else ""
        how = f"bpf/{self.state['attach']}" if self.method == "bpf" and self.state else self.method
        if self.qdisc == "prio":
            how += " (egress on a root prio qdisc)"
        return f"{self.source} {'+'.join(self.directions)} -> {self.observer}{what} via {how}"

    def close(self):
        """Take down what we added (not with keep: that stays until remove())."""
        if self._token is not None:
            token, self._token = self._token, None
            cleanup.run(token)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _check(source, observer, directions, method, packet_filter, qdisc):
    if source.ifindex == observer.ifindex:
        raise MirrorError(f"the observer {observer} is the source itself")
    if not directions or any(d not in DIRECTIONS for d in directions):
        raise MirrorError(f"direction must be ingress, egress or both, not {directions!r}")
    if method not in METHODS:
        raise MirrorError(f"method must be mirred or bpf, not {method!r}")
    if packet_filter and method != "bpf":
        raise MirrorError("--filter needs --method bpf (mirred mirrors everything)")
    if qdisc and method != "mirred":
        raise MirrorError("--qdisc needs --method mirred")


def mirror(source, observer, directions=DIRECTIONS, method="mirred", packet_filter=None, keep=False,
           bpf_attach=None, qdisc=None):
    """Set up mirroring of source to observer (specs or Endpoints); returns a Mirror.

    Returns None when this very mirror is already in place (running twice is
    harmless). Raises MirrorError on conflicts, with nothing left half-done.
    bpf_attach: None (tcx where the kernel has it), "tcx" or "cls_bpf".
    qdisc (mirred): None (clsact where the kernel has it, else a root prio
    qdisc for egress), "clsact", or "prio" (egress on a root prio qdisc,
    ingress on clsact)."""
    source, observer = resolve(source), resolve(observer)
    directions = tuple(d for d in DIRECTIONS if d in directions)
    _check(source, observer, directions, method, packet_filter, qdisc)
    if method == "mirred":
        qdisc = choose_qdisc(qdisc, directions, kernel_has_qdisc)
    existing = read_state(source.ifname)
    if existing is not None:
        same = (existing["observer_ifindex"] == observer.ifindex and existing["method"] == method
                and existing.get("qdisc", "clsact" if method == "mirred" else None) == qdisc
                and existing["directions"] == list(directions)
                and existing.get("filter") == (str(packet_filter) if packet_filter else None))
        if existing["keep"] or _alive(existing["pid"]):
            if same:
                return None
            raise MirrorError(
                f"{source.ifname} is already mirrored to {existing['observer']} ({existing['method']}); "
                f"take that down first: bpfhook mirror --remove --from {source.ifname}")
        _remove_state(existing)  # left by a process that died without cleaning up
    m = Mirror(source, observer, directions, method, packet_filter, keep, qdisc)
    state = {"source": source.ifname, "source_ifindex": source.ifindex, "observer": observer.ifname,
             "observer_ifindex": observer.ifindex, "method": method, "qdisc": qdisc, "directions": list(directions),
             "filter": str(packet_filter) if packet_filter else None, "keep": keep, "pid": os.getpid(),
             "clsact_created": False, "root_qdisc": None, "filters": [], "pins": [], "tc_filters": [],
             "attach": None}
    m.state = state
    undo = lambda: _teardown(m)  # noqa: E731
    m._token = cleanup.register(undo, f"mirror {source.ifname} -> {observer.ifname}")
    try:
        _write_state(state)  # first: a crash from here on leaves a record for --remove
        if method == "mirred":
            _setup_mirred(m)
        else:
            _setup_bpf(m, bpf_attach)
        _write_state(state)
    except BaseException:
        m.close()
        raise
    if keep:  # ours no longer: remove() takes it down
        for a in m.attachments:
            if isinstance(a, tc.TcFilter):
                a.keep()  # a cls_bpf filter stays, and holds the program
            else:
                a.close()  # pinned links stay attached
        m.attachments.clear()
        cleanup.unregister(m._token)
        m._token = None
    return m


def _setup_mirred(m):
    state, index, name = m.state, m.source.ifindex, m.source.ifname
    on_prio = {d for d in m.directions if m.qdisc == "prio" and d == "egress"}
    with IPRoute() as ipr:
        try:
            if on_prio != set(m.directions):
                present = tc.clsact_kind(ipr, index)
                if present not in (None, "clsact"):
                    raise MirrorError(f"{name} has an {present} qdisc, which excludes clsact; "
                                      "mirred needs clsact (remove that qdisc or use --method bpf)")
                if present is None:
                    _add_qdisc(ipr, "clsact", index)
                    state["clsact_created"] = True
                    _write_state(state)
            if on_prio:
                _add_root_prio(ipr, m)
            for direction in m.directions:
                parent = state["root_qdisc"]["handle"] if direction in on_prio else CLSACT_PARENT[direction]
                prios = {_prio(f) for f in _filters_at(ipr, index, parent)}
                prio = min(prios) - 1 if prios else FIRST_PRIO
                if prio < 1:  # ours must run first to see every packet
                    raise MirrorError(f"{name} {direction}: a filter at pref 1 leaves no room "
                                      "for the mirror in front of it")
                state["filters"].append({"direction": direction, "parent": parent, "prio": prio, "kind": _add_any(
                    ipr, index, parent, prio, m.observer.ifindex)})
                _write_state(state)
        except NetlinkError as e:
            if e.code == errno.EPERM:
                raise NotPermitted("tc: changing qdiscs and filters needs CAP_NET_ADMIN") from None
            raise syscall_error(f"tc on {name}", e.code) from None


def _add_root_prio(ipr, m):
    """A root prio qdisc in place of the kernel's default one; someone's own root qdisc is never replaced."""
    index, name = m.source.ifindex, m.source.ifname
    kind, handle = _root_qdisc(ipr, index)
    if handle:
        raise MirrorError(f"{name} has a root qdisc of its own ({kind} {handle >> 16:x}:), which a prio qdisc "
                          "would replace: use --qdisc clsact or --method bpf")
    taken = {q["handle"] >> 16 for q in ipr.get_qdiscs(index=index)}
    handle = min(set(range(1, len(taken) + 2)) - taken) << 16
    try:
        _add_qdisc(ipr, "prio", index, handle)
    except NetlinkError as e:
        if e.code in (errno.ENOENT, errno.EOPNOTSUPP):
            raise FeatureUnavailable("this kernel has no prio qdisc (sch_prio): use --qdisc clsact") from None
        raise
    m.state["root_qdisc"] = {"kind": "prio", "handle": handle}
    _write_state(m.state)


def _add_any(ipr, index, parent, prio, observer_ifindex):
    """Add our filter with the first classifier the kernel has; returns its kind."""
    for kind in CLASSIFIERS:
        try:
            _add_mirred(ipr, kind, index, parent, prio, observer_ifindex)
            return kind
        except NetlinkError as e:
            if e.code not in (errno.ENOENT, errno.EOPNOTSUPP) or kind == CLASSIFIERS[-1]:
                raise
    raise AssertionError("unreachable")


def _setup_bpf(m, bpf_attach):
    f = m.packet_filter
    program = prog.load(build_program(m.observer.ifindex, f and f.proto, f and f.port), "sched_cls", name=BPF_PROG_NAME)
    with program:
        for direction in m.directions:
            a = tc.attach(program, m.source.ifindex, direction, mode=bpf_attach, name=BPF_PROG_NAME)
            m.attachments.append(a)
            m.state["attach"] = "cls_bpf" if isinstance(a, tc.TcFilter) else "tcx"
            if isinstance(a, tc.TcFilter):  # outlives us: recorded so that remove() finds it after a crash too
                m.state["tc_filters"].append(dataclasses.asdict(a.ref))
                _write_state(m.state)
            elif m.keep:
                ensure_bpffs(PIN_DIR)
                os.makedirs(PIN_DIR, exist_ok=True)
                pin = os.path.join(PIN_DIR, f"{m.source.ifname}-{direction}")
                obj_pin(a.fd, pin)
                m.state["pins"].append(pin)
                _write_state(m.state)


def _teardown(m):
    for a in m.attachments:
        a.close()
    m.attachments.clear()
    _remove_state(m.state)


def _remove_state(state):
    """Remove what a state record says was added, after checking it is still ours; then the record."""
    for pin in state["pins"]:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pin)  # the link's last reference: it detaches
    if state["pins"]:
        # The directories --keep made, once no mirror pins there any more.
        for directory in (PIN_DIR, os.path.dirname(PIN_DIR)):
            with contextlib.suppress(OSError):
                os.rmdir(directory)
    index = state["source_ifindex"]
    try:
        current = socket.if_indextoname(index)
    except OSError:
        current = None  # the interface went away, taking its qdiscs and filters along
    root = state.get("root_qdisc")
    if current == state["source"]:
        for ref in state.get("tc_filters", ()):
            tc.TcFilterRef(**ref).remove()  # only a cls_bpf filter of our program's name at that spot
    if current == state["source"] and (state["filters"] or state["clsact_created"] or root):
        with IPRoute() as ipr:
            root_ours = bool(root) and _root_qdisc(ipr, index) == (root["kind"], root["handle"])
            for f in state["filters"]:
                parent = f.get("parent", CLSACT_PARENT[f["direction"]])
                if parent not in CLSACT_PARENT.values() and not (root_ours and parent == root["handle"]):
                    continue  # our root qdisc is gone, its filters with it
                at_prio = [x for x in _filters_at(ipr, index, parent) if _prio(x) == f["prio"]]
                nodes = [x for x in at_prio if _actions(x)]  # u32 also lists its hash table entries
                if nodes and all(is_our_filter(x, state["observer_ifindex"]) for x in nodes):
                    _del_filter(ipr, index, parent, f["prio"], f["kind"])
            if state["clsact_created"] and tc.clsact_kind(ipr, index) == "clsact":
                tc.drop_clsact_if_unused(ipr, index)
            if root_ours and not _filters_at(ipr, index, root["handle"]):
                ipr.tc("del", root["kind"], index, root["handle"])  # the kernel puts its default back
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_state_path(state["source"]))


def remove(source, observer=None):
    """Take down the mirror of source (spec or Endpoint) left by --keep or by a dead process."""
    ifname = _source_ifname(source)
    state = read_state(ifname)
    if state is None:
        raise MirrorError(f"no mirror of {ifname} (nothing in {STATE_DIR})")
    if observer is not None:
        obs = resolve(observer)
        if obs.ifindex != state["observer_ifindex"]:
            raise MirrorError(f"{ifname} is mirrored to {state['observer']}, not to {obs.ifname}")
    if not state["keep"] and state["pid"] != os.getpid() and _alive(state["pid"]):
        raise MirrorError(f"{ifname} is mirrored by running process {state['pid']}: stop it instead")
    _remove_state(state)
    return state


def _source_ifname(spec):
    """The source interface of spec: resolved when it still exists, else a state file of that name."""
    try:
        return resolve(spec).ifname
    except MirrorError:
        if isinstance(spec, str) and read_state(spec) is not None:
            return spec
        raise


# -- command line ---------------------------------------------------------------------------------

NEEDS_ROOT = True
POLLS_SHUTDOWN = True  # a signal during set-up waits for it, then the mirror is taken down


def add_arguments(parser):
    parser.add_argument("--from", dest="source", required=True, metavar="IFACE|CONTAINER",
                        help="interface, pid, or container: lab/docker/podman name, id or prefix, cgroup path, "
                             "namespace/pod[/container]")
    parser.add_argument("--to", dest="observer", metavar="IFACE|CONTAINER",
                        help="where the copies go (a container: its host-side veth, so they arrive on its eth0)")
    parser.add_argument("--direction", choices=("ingress", "egress", "both"), default="both",
                        help="packets the source receives, sends, or both (default)")
    parser.add_argument("--method", choices=METHODS, default="mirred",
                        help="tc mirred action (default) or a BPF program with bpf_clone_redirect")
    parser.add_argument("--qdisc", choices=QDISCS,
                        help="mirred only: clsact hooks (default where the kernel has clsact) or, for egress, "
                             "a root prio qdisc (refused when the interface has a root qdisc of its own)")
    parser.add_argument("--filter", metavar="PROTO[/PORT]|PORT",
                        help="bpf method only: mirror just tcp, udp/53, 8080 (tcp/udp/sctp), icmp, ...")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--keep", action="store_true", help="leave the mirror in place and exit")
    action.add_argument("--remove", action="store_true", help="take down a mirror left by --keep")


def run(args):
    if args.remove:
        state = remove(args.source, args.observer)
        print(f"removed mirror {state['source']} -> {state['observer']} ({state['method']})")
        return 0
    if not args.observer:
        raise MirrorError("--to is required (except with --remove)")
    directions = DIRECTIONS if args.direction == "both" else (args.direction,)
    packet_filter = PacketFilter.parse(args.filter) if args.filter else None
    m = mirror(args.source, args.observer, directions, args.method, packet_filter, keep=args.keep,
               qdisc=args.qdisc)
    if m is None:
        print(f"{args.source} is already mirrored to {args.observer} this way: nothing to do")
        return 0
    if args.keep:
        print(f"mirroring {m.describe()}; take it down with: "
              f"bpfhook mirror --remove --from {m.source.ifname} --to {m.observer.ifname}")
        return 0
    print(f"mirroring {m.describe()}; Ctrl-C or SIGTERM stops it", flush=True)
    with m:
        args.shutdown.wait(None)
    print("mirror removed")
    return 0
