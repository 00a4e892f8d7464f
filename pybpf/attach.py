"""Attach loaded programs to kernel hooks: tracepoint, raw_tracepoint, kprobe/kretprobe,
uprobe/uprobe_multi (symbols through pybpf.elf), fentry/fexit/tracing, iterator, cgroup,
tc (pybpf.tc), xdp, netns/sk_lookup, sockmap.

Each returns an Attachment (pybpf.attachment), which close() undoes; the caller may close the
program right after attaching. bpf links come first: a link dies with its fd, even on SIGKILL.
Where a kernel lacks one, the legacy path (PERF_EVENT_IOC_SET_BPF, BPF_PROG_ATTACH, netlink) is
recorded in pybpf.cleanup, which undoes it at exit and on SIGINT/SIGTERM.
"""
import errno
import os

from . import cleanup, mounts, pmu, syscall, tracefs
from .attachment import NO_LINK, Attachment, Link, attach_error, ifindex, link_create, prog_fd
from .errors import BpfError, FeatureUnavailable, SyscallError, netlink_error
from .pmu import KPROBE_PMU, pmu_config_bit, pmu_type  # noqa: F401 (KPROBE_PMU: a public name before pybpf.pmu)
from .uapi import AttachFlags, AttachType, Cmd

ffi = syscall.ffi


def tc(*args, **kwargs):
    """SCHED_CLS programs at ingress or egress: tcx link, else clsact + cls_bpf (pybpf.tc.attach,
    imported when first used: no cost to the start of tools that attach no tc program)."""
    from .tc import attach

    return attach(*args, **kwargs)

BPF_F_UPROBE_MULTI_RETURN = 1 << 0

# Short names for cgroup hooks, as bpftool spells most of them.
CGROUP_HOOKS = {
    "ingress": AttachType.CGROUP_INET_INGRESS,
    "egress": AttachType.CGROUP_INET_EGRESS,
    "sock_create": AttachType.CGROUP_INET_SOCK_CREATE,
    "sock_release": AttachType.CGROUP_INET_SOCK_RELEASE,
    "sock_ops": AttachType.CGROUP_SOCK_OPS,
    "device": AttachType.CGROUP_DEVICE,
    "bind4": AttachType.CGROUP_INET4_BIND,
    "bind6": AttachType.CGROUP_INET6_BIND,
    "post_bind4": AttachType.CGROUP_INET4_POST_BIND,
    "post_bind6": AttachType.CGROUP_INET6_POST_BIND,
    "connect4": AttachType.CGROUP_INET4_CONNECT,
    "connect6": AttachType.CGROUP_INET6_CONNECT,
    "sendmsg4": AttachType.CGROUP_UDP4_SENDMSG,
    "sendmsg6": AttachType.CGROUP_UDP6_SENDMSG,
    "recvmsg4": AttachType.CGROUP_UDP4_RECVMSG,
    "recvmsg6": AttachType.CGROUP_UDP6_RECVMSG,
    "getpeername4": AttachType.CGROUP_INET4_GETPEERNAME,
    "getpeername6": AttachType.CGROUP_INET6_GETPEERNAME,
    "getsockname4": AttachType.CGROUP_INET4_GETSOCKNAME,
    "getsockname6": AttachType.CGROUP_INET6_GETSOCKNAME,
    "sysctl": AttachType.CGROUP_SYSCTL,
    "getsockopt": AttachType.CGROUP_GETSOCKOPT,
    "setsockopt": AttachType.CGROUP_SETSOCKOPT,
    "unix_connect": AttachType.CGROUP_UNIX_CONNECT,
    "unix_sendmsg": AttachType.CGROUP_UNIX_SENDMSG,
    "unix_recvmsg": AttachType.CGROUP_UNIX_RECVMSG,
    "unix_getpeername": AttachType.CGROUP_UNIX_GETPEERNAME,
    "unix_getsockname": AttachType.CGROUP_UNIX_GETSOCKNAME,
}

# include/uapi/linux/if_link.h XDP_FLAGS_*
XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_REPLACE = 1 << 4
XDP_MODES = {None: 0, "skb": 1 << 1, "drv": 1 << 2, "hw": 1 << 3}


# -- arguments ---------------------------------------------------------------
def attach_type(value, names=None):
    """An AttachType from the enum, its int, its name ("CGROUP_INET_EGRESS") or a short name."""
    if isinstance(value, str):
        if names and value in names:
            return names[value]
        try:
            return AttachType[value.upper()]
        except KeyError:
            known = ", ".join(sorted(names)) if names else "an AttachType name"
            raise BpfError(f"unknown attach type {value!r} (expected {known})") from None
    try:
        return AttachType(value)
    except ValueError:
        raise BpfError(f"unknown attach type {value!r}") from None


class PerfEventLink(Attachment):
    """A program on a perf event (tracepoint, kprobe): a BPF_PERF_EVENT link when the
    kernel has one, else PERF_EVENT_IOC_SET_BPF. Either way it ends with the perf fd."""

    def __init__(self, perf_fd, link_fd, what):
        self.perf_fd = perf_fd
        self.link_fd = link_fd
        self.what = what
        self._closed = False

    @property
    def fd(self):
        return self.link_fd if self.link_fd is not None else self.perf_fd

    def _release(self):
        try:
            if self.link_fd is not None:
                os.close(self.link_fd)
            else:
                syscall.ioctl(self.perf_fd, syscall.PERF_EVENT_IOC_DISABLE)
        finally:
            os.close(self.perf_fd)


class ProgAttachment(Attachment):
    """BPF_PROG_ATTACH to a target fd (cgroup, sockmap). It outlives the process, so it
    is undone by BPF_PROG_DETACH on close, at exit and on SIGINT/SIGTERM (pybpf.cleanup)."""

    def __init__(self, target_fd, prog, type, flags, what):
        self.what = what
        self.attach_type = type
        # Own duplicates: the detach must name the same program and target even if the caller closed theirs.
        target = os.dup(target_fd)
        program = os.dup(prog_fd(prog))
        try:
            attr = syscall.new_attr()
            attr.target_fd = target
            attr.attach_bpf_fd = program
            attr.attach_type = type
            attr.attach_flags = flags
            syscall.bpf(Cmd.PROG_ATTACH, attr)
        except BaseException as e:
            os.close(target)
            os.close(program)
            if isinstance(e, SyscallError):
                raise attach_error(e, what) from None
            raise
        self._token = cleanup.register(lambda: _prog_detach(target, program, type), what)
        self._closed = False

    def _release(self):
        cleanup.run(self._token)


def _prog_detach(target, program, type):
    attr = syscall.new_attr()
    attr.target_fd = target
    attr.attach_bpf_fd = program
    attr.attach_type = type
    try:
        syscall.bpf(Cmd.PROG_DETACH, attr)
    except SyscallError as e:
        if e.errno != errno.ENOENT:  # already gone (target removed): nothing left to undo
            raise
    finally:
        os.close(target)
        os.close(program)


# -- perf events: tracepoints and kprobes --------------------------------------
def _check_mode(mode, what, choices):
    if mode not in (None,) + choices:
        raise BpfError(f"{what} mode {mode!r}: expected {' or '.join(map(repr, choices))}")


def _attach_perf_event(prog, attr, what, cookie, mode, pid=None):
    _check_mode(mode, what.split()[0], ("link", "ioctl"))
    if cookie and mode == "ioctl":
        raise BpfError(f"{what}: a bpf cookie needs a BPF_PERF_EVENT link, not the ioctl")
    # pid -1 on one CPU: a BPF program on a tracepoint/kprobe event runs for hits on every
    # CPU (the program hangs off the trace event, not the per-CPU perf event). A pid: that
    # process only, on any CPU.
    pfd = syscall.perf_event_open(attr, pid, -1) if pid else syscall.perf_event_open(attr, -1, 0)
    link_fd = None
    try:
        if mode != "ioctl":
            try:
                link_fd = link_create(prog, pfd, AttachType.PERF_EVENT, cookie=cookie)
            except SyscallError as e:
                if mode == "link" or e.errno not in NO_LINK:
                    raise attach_error(e, what) from None
                if cookie:
                    raise FeatureUnavailable(f"{what}: a bpf cookie needs BPF_PERF_EVENT links, "
                                             f"which this kernel lacks") from None
        if link_fd is None:
            try:
                syscall.ioctl(pfd, syscall.PERF_EVENT_IOC_SET_BPF, prog_fd(prog))
            except SyscallError as e:
                raise attach_error(e, what) from None
        syscall.ioctl(pfd, syscall.PERF_EVENT_IOC_ENABLE)
    except BaseException:
        if link_fd is not None:
            os.close(link_fd)
        os.close(pfd)
        raise
    return PerfEventLink(pfd, link_fd, what)


def tracepoint(prog, category, name=None, *, cookie=None, mode=None):
    """Attach a BPF_PROG_TYPE_TRACEPOINT program: tracepoint(p, "sched:sched_process_exec")
    or tracepoint(p, "sched", "sched_process_exec"). Mounts tracefs if needed.
    mode: None = BPF_PERF_EVENT link, else PERF_EVENT_IOC_SET_BPF; "link" or "ioctl" forces one."""
    category, name = tracefs.split_name(category, name)
    attr = syscall.new_perf_attr()
    attr.type = syscall.PERF_TYPE_TRACEPOINT
    attr.config = tracefs.tracepoint_id(category, name)
    return _attach_perf_event(prog, attr, f"tracepoint {category}:{name}", cookie, mode)


def kprobe(prog, func, *, offset=0, retprobe=False, cookie=None, mode=None):
    """Attach a BPF_PROG_TYPE_KPROBE program to a kernel function through the kprobe PMU
    (mode as for tracepoint)."""
    what = f"{'kretprobe' if retprobe else 'kprobe'} {func}" + (f"+{offset:#x}" if offset else "")
    attr = syscall.new_perf_attr()
    attr.type = pmu_type(pmu.KPROBE_PMU, what)
    if retprobe:
        attr.config = pmu_config_bit(pmu.KPROBE_PMU, "retprobe")
    name = ffi.new("char[]", func.encode())  # must stay alive until perf_event_open returns
    attr.kprobe_func = syscall.address(name)
    attr.probe_offset = offset
    try:
        return _attach_perf_event(prog, attr, what, cookie, mode)
    except SyscallError as e:
        if e.errno == errno.ENOENT:
            raise FeatureUnavailable(f"{what}: no such kernel function (or it cannot be probed)") from None
        raise


def kretprobe(prog, func, *, cookie=None, mode=None):
    """kprobe(prog, func, retprobe=True)."""
    return kprobe(prog, func, retprobe=True, cookie=cookie, mode=mode)


# -- uprobes -----------------------------------------------------------------------
def _uprobe_offset(path, target):
    """(file offset, name for messages) of a symbol of the ELF file at path (pybpf.elf), or of
    an offset given as an int."""
    if isinstance(target, int):
        return target, f"{target:#x}"
    from .elf import ElfFile  # (construct's ELF layouts: uprobes only)

    return ElfFile(path).offset(target), target


def uprobe(prog, path, symbol_or_offset, pid=None, ret=False, *, cookie=None, mode=None):
    """Attach a BPF_PROG_TYPE_KPROBE program to a user-space function through the uprobe PMU.

    symbol_or_offset: a symbol of the ELF file at `path` ("SSL_write", "SSL_write@@OPENSSL_3.0.0")
    or a file offset. pid None: every process that maps the file, now or later; else that
    process only. ret: at the function's return (the PMU's retprobe bit). mode as for tracepoint.
    The probe goes with the perf event's fd: nothing outlives the process."""
    offset, name = _uprobe_offset(path, symbol_or_offset)
    what = f"{'uretprobe' if ret else 'uprobe'} {path}:{name}" + (f" pid {pid}" if pid else "")
    attr = syscall.new_perf_attr()
    attr.type = pmu_type(pmu.UPROBE_PMU, what)
    if ret:
        attr.config = pmu_config_bit(pmu.UPROBE_PMU, "retprobe")
    cpath = ffi.new("char[]", os.fsencode(path))  # alive until perf_event_open returns
    attr.uprobe_path = syscall.address(cpath)
    attr.probe_offset = offset
    try:
        return _attach_perf_event(prog, attr, what, cookie, mode, pid=pid)
    except SyscallError as e:
        if e.errno in (errno.ENOENT, errno.ESRCH):
            raise BpfError(f"{what}: {'no such process' if e.errno == errno.ESRCH else 'no such file'}") from None
        raise


def uprobe_multi(prog, path, targets, pid=None, ret=False, *, cookies=None):
    """Attach a KPROBE program loaded with expected_attach_type TRACE_UPROBE_MULTI to several
    functions of one file through one bpf link (Linux 6.6; features "link.uprobe_multi").

    targets: symbols or offsets (as for uprobe); cookies: one u64 per target, which the program
    reads with bpf_get_attach_cookie. pid: that process only (kernels before 6.9 filter by
    thread, not process); ret: at the functions' returns."""
    resolved = [_uprobe_offset(path, t) for t in targets]
    if not resolved or cookies is not None and len(cookies) != len(resolved):
        raise BpfError(f"uprobe_multi {path}: give one target or more, and one cookie per target")
    what = f"uprobe_multi{' return' if ret else ''} {path}:{','.join(name for _, name in resolved)}"
    cpath = ffi.new("char[]", os.fsencode(path))
    offsets = ffi.new("uint64_t[]", [offset for offset, _ in resolved])
    attr = syscall.new_attr()
    lc = attr.link_create
    lc.prog_fd = prog_fd(prog)
    lc.attach_type = AttachType.TRACE_UPROBE_MULTI
    lc.uprobe_multi.path = syscall.address(cpath)
    lc.uprobe_multi.offsets = syscall.address(offsets)
    lc.uprobe_multi.cnt = len(resolved)
    lc.uprobe_multi.flags = BPF_F_UPROBE_MULTI_RETURN if ret else 0
    lc.uprobe_multi.pid = pid or 0
    if cookies is not None:
        values = ffi.new("uint64_t[]", list(cookies))
        lc.uprobe_multi.cookies = syscall.address(values)
    try:
        return Link(syscall.bpf(Cmd.LINK_CREATE, attr), what)
    except SyscallError as e:
        if e.errno in (errno.EOPNOTSUPP, syscall.ENOTSUPP):
            raise FeatureUnavailable(f"{what}: this kernel has no uprobe_multi links") from None
        raise attach_error(e, what) from None


# -- raw tracepoints and BTF-typed tracing ------------------------------------
def _raw_tracepoint_open(prog, name, what, cookie=None):
    attr = syscall.new_attr()
    if name is not None:  # None: a tracing program, whose target came with attach_btf_id
        cname = ffi.new("char[]", name.encode())
        attr.raw_tracepoint.name = syscall.address(cname)
    attr.raw_tracepoint.prog_fd = prog_fd(prog)
    attr.raw_tracepoint.cookie = cookie or 0
    try:
        return Link(syscall.bpf(Cmd.RAW_TRACEPOINT_OPEN, attr), what)
    except SyscallError as e:
        if e.errno == errno.ENOENT and name is not None:
            raise FeatureUnavailable(f"{what}: no such raw tracepoint on this kernel") from None
        raise attach_error(e, what) from None


def raw_tracepoint(prog, name, *, cookie=None):
    """Attach a BPF_PROG_TYPE_RAW_TRACEPOINT program by tracepoint name ("sched_process_exec";
    a "category:" prefix, as in "sock:inet_sock_set_state", is dropped)."""
    name = name.rpartition(":")[2]
    return _raw_tracepoint_open(prog, name, f"raw_tracepoint {name}", cookie)


def tracing(prog, type=None, *, cookie=None):
    """Attach a BTF-typed tracing program (fentry, fexit, fmod_ret, tp_btf, lsm) whose target
    was fixed at load time by attach_btf_id; type is the expected_attach_type it was loaded
    with (default: prog.expected_attach_type, when the object carries one)."""
    if type is None:
        type = getattr(prog, "expected_attach_type", None)
        if type is None:
            raise BpfError("tracing: give the attach type the program was loaded with (e.g. TRACE_FENTRY)")
    type = attach_type(type)
    what = f"{type.name.lower()} program"
    try:
        return Link(link_create(prog, 0, type, cookie=cookie), what)
    except SyscallError as e:
        if e.errno not in NO_LINK or cookie:
            raise attach_error(e, what) from None
    return _raw_tracepoint_open(prog, None, what)  # kernels before tracing links


def fentry(prog, *, cookie=None):
    return tracing(prog, AttachType.TRACE_FENTRY, cookie=cookie)


def fexit(prog, *, cookie=None):
    return tracing(prog, AttachType.TRACE_FEXIT, cookie=cookie)


def iterator(prog):
    """Attach a BPF iterator program (loaded as tracing, expected_attach_type TRACE_ITER,
    attach_btf_id the kernel's bpf_iter_<target> function, e.g. bpf_iter_tcp): a Link that
    run_iterator() runs. Targets that take parameters (map_elem, task of one pid) are not
    covered here."""
    try:
        return Link(link_create(prog, 0, AttachType.TRACE_ITER), "iterator program")
    except SyscallError as e:
        raise attach_error(e, "iterator program") from None


def run_iterator(link, max_bytes=64 << 20):
    """Run an iterator over every object of its target (BPF_ITER_CREATE, then read() to the
    end: each read runs the program on the next batch). Returns what the program wrote with
    bpf_seq_write/bpf_seq_printf; raises BpfError past max_bytes of it."""
    attr = syscall.new_attr()
    attr.iter_create.link_fd = link.fd
    try:
        fd = syscall.bpf(Cmd.ITER_CREATE, attr)
    except SyscallError as e:
        raise attach_error(e, "iterator") from None
    chunks, size = [], 0
    try:
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes:
                raise BpfError(f"iterator output passed {max_bytes} bytes")
    finally:
        os.close(fd)
    return b"".join(chunks)


# -- cgroups -------------------------------------------------------------------
def cgroup2_root():
    """Where cgroup2 is mounted, from /proc/self/mountinfo."""
    return mounts.cgroup2_root()


def cgroup_path(cgroup):
    """Directory of a cgroup: a path under the cgroup2 mount passes as it is; anything else is a
    cgroup path as the kernel writes it ("/", "/system.slice/x.service") below that mount."""
    cgroup = os.fspath(cgroup)
    root = cgroup2_root()
    if cgroup == root or cgroup.startswith(root.rstrip("/") + "/"):
        return cgroup
    return os.path.join(root, cgroup.strip("/")) if cgroup.strip("/") else root


def cgroup(prog, type, cgroup="/", *, mode=None, flags=AttachFlags.ALLOW_MULTI):
    """Attach a cgroup program (type: an AttachType or a CGROUP_HOOKS name such as "egress",
    "connect4", "sock_create") to a cgroup2 directory (absolute, or relative to the cgroup2 root).

    mode: None = link, falling back to BPF_PROG_ATTACH when the kernel has no cgroup links;
          "link" or "attach" to force one. flags apply to BPF_PROG_ATTACH only."""
    type = attach_type(type, CGROUP_HOOKS)
    _check_mode(mode, "cgroup", ("link", "attach"))
    path = cgroup_path(cgroup)
    what = f"cgroup {path} {type.name.lower()}"
    try:
        dirfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise BpfError(f"{what}: cannot open cgroup: {e.strerror}") from None
    try:
        if mode != "attach":
            try:
                return Link(link_create(prog, dirfd, type), what)
            except SyscallError as e:
                if mode == "link" or e.errno not in NO_LINK:
                    raise attach_error(e, what) from None
        return ProgAttachment(dirfd, prog, type, flags, what)
    finally:
        os.close(dirfd)


# -- XDP -----------------------------------------------------------------------
class XdpNetlink(Attachment):
    """XDP attached through rtnetlink IFLA_XDP: survives the process, so it is recorded in
    pybpf.cleanup. The detach only removes our program (XDP_FLAGS_REPLACE + EXPECTED_FD)."""

    def __init__(self, prog, index, flags, what):
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError

        self.what = what
        ipr = IPRoute()  # bound to this netns for good: the detach reaches the same device
        program = os.dup(prog_fd(prog))
        try:
            ipr.link("set", index=index, xdp={"attrs": [
                ("IFLA_XDP_FD", program), ("IFLA_XDP_FLAGS", flags | XDP_FLAGS_UPDATE_IF_NOEXIST)]})
        except BaseException as e:
            ipr.close()
            os.close(program)
            if isinstance(e, NetlinkError):
                raise netlink_error(e, f"IFLA_XDP ({what})") from None
            raise

        def undo():
            try:
                ipr.link("set", index=index, xdp={"attrs": [
                    ("IFLA_XDP_FD", -1), ("IFLA_XDP_FLAGS", flags | XDP_FLAGS_REPLACE),
                    ("IFLA_XDP_EXPECTED_FD", program)]})
            except NetlinkError as e:
                # ENODEV: the device is gone, and our program with it. EEXIST: someone replaced it.
                if e.code not in (errno.ENODEV, errno.EEXIST):
                    raise
            finally:
                ipr.close()
                os.close(program)

        self._token = cleanup.register(undo, what)
        self._closed = False

    def _release(self):
        cleanup.run(self._token)


def xdp(prog, iface, *, mode=None, via=None):
    """Attach an XDP program to an interface. mode: None (kernel picks), "skb", "drv", "hw".
    via: None = BPF_XDP link, falling back to netlink; "link" or "netlink" to force one."""
    if mode not in XDP_MODES:
        raise BpfError(f"xdp mode {mode!r}: expected one of skb, drv, hw")
    if via not in (None, "link", "netlink"):
        raise BpfError(f"xdp via {via!r}: expected 'link' or 'netlink'")
    index = ifindex(iface)
    what = f"xdp {iface}" + (f" {mode}" if mode else "")
    if via != "netlink":
        try:
            return Link(link_create(prog, index, AttachType.XDP, XDP_MODES[mode]), what)
        except SyscallError as e:
            if via == "link" or e.errno not in NO_LINK:
                raise attach_error(e, what) from None
    return XdpNetlink(prog, index, XDP_MODES[mode], what)


# -- netns and sockmap ---------------------------------------------------------
def netns(prog, type=AttachType.SK_LOOKUP, netns="/proc/thread-self/ns/net"):
    """Attach an sk_lookup or flow_dissector program to a network namespace (default: ours)."""
    type = attach_type(type)
    what = f"netns {netns} {type.name.lower()}"
    nsfd = os.open(netns, os.O_RDONLY)
    try:
        return Link(link_create(prog, nsfd, type), what)
    except SyscallError as e:
        raise attach_error(e, what) from None
    finally:
        os.close(nsfd)


def sk_lookup(prog, netns_path="/proc/thread-self/ns/net"):
    return netns(prog, AttachType.SK_LOOKUP, netns_path)


def sockmap(prog, map, type):
    """Attach an sk_msg / sk_skb program to a sockmap or sockhash (type e.g. "sk_msg_verdict").
    A sockmap link where the kernel has one (6.10+), else BPF_PROG_ATTACH."""
    type = attach_type(type)
    map_fd = getattr(map, "fd", map)
    what = f"sockmap fd {map_fd} {type.name.lower()}"
    try:
        return Link(link_create(prog, map_fd, type), what)
    except SyscallError as e:
        if e.errno not in NO_LINK:
            raise attach_error(e, what) from None
    return ProgAttachment(map_fd, prog, type, 0, what)
