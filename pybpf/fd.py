"""What holds kernel resources: closed once, by close(), a `with` block or collection.

Closeable is the protocol (attachments, readers); FdOwner is the common case of one fd to one
BPF object (maps, loaded programs, links), which can also be pinned in bpffs.
"""
import os

from . import syscall
from .errors import BpfError


class Closeable:
    """Releases what it holds once: on close(), at the end of its `with` block, or when collected."""

    _closed = True  # until a subclass holds something

    @property
    def closed(self):
        return self._closed

    def close(self):
        """Release what this object holds. Idempotent."""
        if not self._closed:
            self._closed = True
            self._release()

    def _release(self):
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown may have torn down os: fds then die with the process
            pass


class FdOwner(Closeable):
    """Owns one fd to a BPF object; `fd` is -1 once closed."""

    fd = -1
    pinned = None  # the bpffs path pin() made or the object was opened from
    what = "BPF object"  # how messages name it: subclasses say "map 'counts'", "program xdp_pass"

    def _own(self, fd):
        self.fd, self._closed = fd, False

    def _live_fd(self):
        if self._closed:
            raise BpfError(f"{self.what} is closed")
        return self.fd

    def _release(self):
        fd, self.fd = self.fd, -1
        os.close(fd)

    def pin(self, path):
        """Pin in bpffs (mounting /sys/fs/bpf when it is missing), so that the object outlives this
        process; unpin() removes the pin."""
        path = os.fspath(path)
        syscall.ensure_bpffs(os.path.dirname(path) or ".")
        syscall.obj_pin(self._live_fd(), path)
        self.pinned = path

    def unpin(self, path=None):
        """Remove the pin at `path`, by default the one pin() made or the object was opened from
        (nothing to do when there is none)."""
        path = self.pinned if path is None else os.fspath(path)
        if path is None:
            return
        os.unlink(path)
        if path == self.pinned:
            self.pinned = None
