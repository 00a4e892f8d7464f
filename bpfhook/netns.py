"""Network namespaces: the host's, and entering one on the calling thread.

setns(2) goes through ctypes: pyroute2's wrapper would cost the monitor ~20 MB and
~170 ms of imports for one system call.
"""
import contextlib
import ctypes
import glob
import os
import socket
import sys

CLONE_NEWNET = 0x40000000
SO_NETNS_COOKIE = 71  # Linux 5.14
_libc = None


def _setns(fd):
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def entered(path):
    """Run the block with the calling thread inside the network namespace at path, then back."""
    target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(home)
        finally:
            os.close(home)
    finally:
        os.close(target)


def host_namespaces():
    """{(st_dev, st_ino): a path to it} of every network namespace some process is in or
    /run/netns pins (one that neither holds is gone, or held only by sockets' fds)."""
    found = {}
    for path in glob.glob("/run/netns/*") + glob.glob("/proc/[0-9]*/ns/net"):
        try:
            st = os.stat(path)
        except OSError:
            continue  # the process exited meanwhile
        found.setdefault((st.st_dev, st.st_ino), path)
    return found


def own():
    """(st_dev, st_ino) of the calling thread's network namespace."""
    st = os.stat("/proc/thread-self/ns/net")
    return st.st_dev, st.st_ino


def cookie():
    """The cookie of the calling thread's network namespace (what the programs read from a
    socket's sk_net), or None where the kernel cannot say (before 5.14)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            return int.from_bytes(s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), sys.byteorder)
    except OSError:
        return None
