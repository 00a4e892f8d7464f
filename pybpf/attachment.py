"""What every attach function returns, and what they share.

An Attachment is undone by close() (alias detach(); closing twice is harmless) or by
leaving its `with` block. A Link is a bpf link: it dies with its fd, even on SIGKILL, so
pybpf prefers one wherever the kernel has it (pybpf.attach, pybpf.tc).
"""
import errno
import socket

from . import syscall
from .errors import ENOTSUPP, BpfError, SyscallError, syscall_error
from .fd import Closeable, FdOwner
from .uapi import AttachFlags, AttachType, Cmd

# Errnos meaning "this kernel has no such link / attach type", which send us to the legacy path.
NO_LINK = frozenset({errno.EINVAL, errno.EOPNOTSUPP, ENOTSUPP})


def prog_fd(prog):
    """The fd of a loaded program (anything with .fd) or a plain int."""
    fd = getattr(prog, "fd", prog)
    if not isinstance(fd, int) or fd < 0:
        raise BpfError(f"expected a loaded program or its fd, got {prog!r}")
    return fd


def ifindex(iface):
    """Interface index of a name or index in the calling thread's netns; one-line error if absent."""
    try:
        if isinstance(iface, int):
            socket.if_indextoname(iface)
            return iface
        return socket.if_nametoindex(iface)
    except OSError:
        raise BpfError(f"no network interface {iface!r} in this network namespace") from None


def attach_error(error, what, hint=None):
    """A syscall failure renamed after the hook; the errno and exception class stay."""
    return syscall_error(f"{error.command} ({what})", error.errno, hint)


class Attachment(Closeable):
    """Something attached. Close it (or leave its `with` block) to detach."""

    what = "attachment"
    detach = Closeable.close

    def __repr__(self):
        return f"<{type(self).__name__} {self.what}{' closed' if self._closed else ''}>"


class Link(Attachment, FdOwner):
    """A bpf link: detached when its fd closes (also when the process dies); pin() keeps it."""

    def __init__(self, fd, what):
        self.what = what
        self._own(fd)

    def info(self):
        """struct bpf_link_info (cffi) from BPF_OBJ_GET_INFO_BY_FD."""
        return syscall.obj_get_info_by_fd(self._live_fd(), "link")

    @property
    def id(self):
        return self.info().id

    def update(self, prog, old_prog=None):
        """BPF_LINK_UPDATE: swap in another program atomically (optionally only if old_prog is current)."""
        attr = syscall.new_attr()
        attr.link_update.link_fd = self._live_fd()
        attr.link_update.new_prog_fd = prog_fd(prog)
        if old_prog is not None:
            attr.link_update.flags = AttachFlags.REPLACE
            attr.link_update.old_prog_fd = prog_fd(old_prog)
        try:
            syscall.bpf(Cmd.LINK_UPDATE, attr)
        except SyscallError as e:
            raise attach_error(e, self.what) from None


def link_create(prog, target_fd, type, flags=0, *, cookie=None, target_btf_id=0):
    """BPF_LINK_CREATE -> link fd. cookie goes where the attach type keeps it."""
    attr = syscall.new_attr()
    lc = attr.link_create
    lc.prog_fd = prog_fd(prog)
    lc.target_fd = target_fd
    lc.attach_type = type
    lc.flags = flags
    if type == AttachType.PERF_EVENT:
        lc.perf_event.bpf_cookie = cookie or 0
    elif target_btf_id or cookie:
        lc.tracing.target_btf_id = target_btf_id
        lc.tracing.cookie = cookie or 0
    return syscall.bpf(Cmd.LINK_CREATE, attr)
