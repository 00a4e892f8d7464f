"""SCHED_CLS programs at a device's ingress or egress: a tcx link where the kernel has one
(it dies with its fd), else a clsact qdisc and a direct-action cls_bpf filter (pyroute2, imported then).
Those outlive the process, so what was added is recorded in pybpf.cleanup: our filter, and
the qdisc only if we made it and nothing else is left on it. TcFilter.keep() lets a filter
outlive the process until remove_filter() finds it again. Devices are looked up in the
calling thread's network namespace.
"""
import dataclasses
import errno
import os

from . import cleanup
from .attachment import NO_LINK, Attachment, Link, attach_error, ifindex, link_create, prog_fd
from .errors import BpfError, SyscallError, netlink_error
from .uapi import AttachType

TCX = {"ingress": AttachType.TCX_INGRESS, "egress": AttachType.TCX_EGRESS}
# clsact's ingress and egress hooks, TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS / TC_H_MIN_EGRESS).
CLSACT_PARENT = {"ingress": 0xFFFFFFF2, "egress": 0xFFFFFFF3}
CLSACT_HANDLE = 0xFFFF0000  # shared with the old `ingress` qdisc: the two exclude each other
FILTER_HANDLE = 1
ETH_P_ALL = 0x0003

# (netns inode, ifindex) -> how many of our filters sit on a clsact qdisc this process created.
_our_qdiscs = {}


def _netns_inode():
    return os.stat("/proc/thread-self/ns/net").st_ino


class TcFilter(Attachment):
    """A cls_bpf direct-action filter on a clsact qdisc, removed on close, at exit and on signals
    (unless kept: keep()). ref says where it sits."""

    def __init__(self, prog, index, direction, prio, name, what):
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError

        self.what = what
        self.ifindex = index
        self.direction = direction
        parent = CLSACT_PARENT[direction]
        ipr = IPRoute()
        qdisc_key = (_netns_inode(), index)
        created_qdisc = False
        try:
            if clsact_kind(ipr, index) != "clsact":
                ipr.tc("add", "clsact", index)
                created_qdisc = True
                _our_qdiscs[qdisc_key] = 0
            if prio is None:
                taken = {f["info"] >> 16 for f in ipr.get_filters(index=index, parent=parent)}
                prio = min(set(range(1, len(taken) + 2)) - taken)
            ipr.tc("add-filter", "bpf", index, FILTER_HANDLE, fd=prog_fd(prog), name=name,
                   parent=parent, prio=prio, protocol=ETH_P_ALL, classid=1, direct_action=True)
        except BaseException as e:
            if created_qdisc:
                _our_qdiscs.pop(qdisc_key, None)
                ipr.tc("del", "clsact", index)
            ipr.close()
            if isinstance(e, NetlinkError):
                raise netlink_error(e, f"tc add cls_bpf ({what})") from None
            raise
        self.prio = prio
        self.ref = TcFilterRef(index, direction, prio, FILTER_HANDLE, name, qdisc_key in _our_qdiscs)
        self._ipr, self._qdisc_key = ipr, qdisc_key
        if qdisc_key in _our_qdiscs:
            _our_qdiscs[qdisc_key] += 1

        def undo():
            try:
                ipr.tc("del-filter", "bpf", index, FILTER_HANDLE, parent=parent, prio=prio, protocol=ETH_P_ALL)
            except NetlinkError as e:
                if e.code not in (errno.ENODEV, errno.ENOENT, errno.EINVAL):  # device or qdisc already gone
                    raise netlink_error(e, f"tc del cls_bpf ({what})") from None
            finally:
                try:
                    _release_qdisc(ipr, qdisc_key, NetlinkError)
                finally:
                    ipr.close()

        self._token = cleanup.register(undo, what)
        self._closed = False

    def _release(self):
        cleanup.run(self._token)

    def keep(self):
        """Let the filter outlive this object and the process: from now on nothing removes it but
        remove_filter(). Returns its TcFilterRef (self.ref)."""
        if self._closed:
            raise BpfError(f"{self.what}: already detached, nothing to keep")
        self._closed = True
        cleanup.unregister(self._token)
        self._ipr.close()
        if self._qdisc_key in _our_qdiscs:  # no longer ours to drop when our last filter goes
            _our_qdiscs[self._qdisc_key] -= 1
            if not _our_qdiscs[self._qdisc_key]:
                del _our_qdiscs[self._qdisc_key]
        return self.ref


@dataclasses.dataclass(frozen=True)
class TcFilterRef:
    """Where a cls_bpf filter sits, enough to find or remove it from another process:
    plain values (dataclasses.asdict() them to save them)."""

    ifindex: int
    direction: str
    prio: int
    handle: int
    name: str
    clsact_created: bool = False  # made by us: remove() also drops it once no filter is left on it

    def remove(self):
        return remove_filter(self.ifindex, self.direction, self.prio, self.handle, self.name,
                             drop_clsact=self.clsact_created)


def _matching(ipr, index, direction, prio, handle, name):
    """The cls_bpf filter nodes at (hook, prio, handle) named name (any name for None)."""
    found = []
    for f in ipr.get_filters(index=index, parent=CLSACT_PARENT[direction]):
        opts = f.get_attr("TCA_OPTIONS")
        if (f["info"] >> 16 == prio and f["handle"] == handle and f.get_attr("TCA_KIND") == "bpf" and opts
                and (name is None or opts.get_attr("TCA_BPF_NAME") == name)):
            found.append(f)
    return found


def _check_direction(direction):
    if direction not in TCX:
        raise BpfError(f"tc direction {direction!r}: expected 'ingress' or 'egress'")


def find_filter(iface, direction, prio, handle=FILTER_HANDLE, name=None):
    """Whether a cls_bpf filter sits on iface's clsact hook at (prio, handle), named name (if given)."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    _check_direction(direction)
    index = ifindex(iface)
    with IPRoute() as ipr:
        try:
            return bool(_matching(ipr, index, direction, prio, handle, name))
        except NetlinkError as e:
            if e.code in (errno.ENOENT, errno.EINVAL):  # no clsact qdisc
                return False
            raise netlink_error(e, f"tc show cls_bpf (ifindex {index} {direction})") from None


def remove_filter(iface, direction, prio, handle=FILTER_HANDLE, name=None, *, drop_clsact=False):
    """Remove a (kept) cls_bpf filter found as find_filter() finds it; anything else there is left alone.
    drop_clsact: then delete the clsact qdisc too if no filter is left on either hook.
    Returns whether a filter was removed; a device that is gone counts as nothing to remove."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    _check_direction(direction)
    try:
        index = ifindex(iface)
    except BpfError:
        return False
    removed = False
    with IPRoute() as ipr:
        try:
            if _matching(ipr, index, direction, prio, handle, name):
                ipr.tc("del-filter", "bpf", index, handle, parent=CLSACT_PARENT[direction], prio=prio,
                       protocol=ETH_P_ALL)
                removed = True
            if drop_clsact:
                drop_clsact_if_unused(ipr, index)
        except NetlinkError as e:
            if e.code not in (errno.ENODEV, errno.ENOENT, errno.EINVAL):  # device, qdisc or filter already gone
                raise netlink_error(e, f"tc del cls_bpf (ifindex {index} {direction} pref {prio})") from None
    return removed


def clsact_kind(ipr, index):
    """The kind of qdisc at device `index`'s clsact handle: "clsact", one that excludes it
    (the old `ingress`), or None. ipr: a pyroute2 IPRoute."""
    for q in ipr.get_qdiscs(index=index):
        if q["handle"] == CLSACT_HANDLE:
            return q.get_attr("TCA_KIND")
    return None


def drop_clsact_if_unused(ipr, index):
    """Delete device `index`'s clsact qdisc unless a filter is left on one of its hooks; whether it did."""
    if any(ipr.get_filters(index=index, parent=p) for p in CLSACT_PARENT.values()):
        return False
    ipr.tc("del", "clsact", index)
    return True


def _release_qdisc(ipr, key, NetlinkError):
    """Drop our clsact when our last filter on it goes, unless someone else's filters remain."""
    if key not in _our_qdiscs:
        return
    _our_qdiscs[key] -= 1
    if _our_qdiscs[key] > 0:
        return
    del _our_qdiscs[key]
    index = key[1]
    try:
        drop_clsact_if_unused(ipr, index)
    except NetlinkError as e:
        if e.code not in (errno.ENODEV, errno.ENOENT, errno.EINVAL):
            raise netlink_error(e, f"tc del clsact (ifindex {index})") from None


def attach(prog, iface, direction="ingress", *, mode=None, prio=None, name="pybpf"):
    """Attach a SCHED_CLS program to iface (name or index) at "ingress" or "egress".

    mode: None = tcx link, falling back to cls_bpf when the kernel has no tcx;
          "tcx" or "cls_bpf" to force one. prio and name apply to cls_bpf
          (prio defaults to the lowest one free on that hook).
    Returns a Link (tcx) or a TcFilter (cls_bpf); both are context managers."""
    _check_direction(direction)
    if mode not in (None, "tcx", "cls_bpf"):
        raise BpfError(f"tc mode {mode!r}: expected 'tcx' or 'cls_bpf'")
    index = ifindex(iface)
    what = f"tc {iface} {direction}"
    if mode != "cls_bpf":
        try:
            return Link(link_create(prog, index, TCX[direction]), f"tcx {iface} {direction}")
        except SyscallError as e:
            if mode == "tcx" or e.errno not in NO_LINK:
                raise attach_error(e, f"tcx {iface} {direction}") from None
    return TcFilter(prog, index, direction, prio, name, f"{what} cls_bpf")
