"""Network namespaces: the host's, and entering one on the calling thread.

setns(2) goes through ctypes: pyroute2's wrapper would cost the monitor its imports (tens of
MB, docs/benchmarks.md) for one system call.
"""
import contextlib
import ctypes
import glob
import os
import socket
import sys

CLONE_NEWNET = 0x40000000
SO_NETNS_COOKIE = 71  # Linux 5.14
PROC_PID_INIT_INO = 0xEFFFFFFC  # include/linux/proc_ns.h
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


def host_namespaces(processes=None):
    """{inode: a path to it} of every network namespace some process is in or /run/netns pins
    (one that neither holds is gone, or held only by sockets' fds).

    processes: [(namespace inode, pid)] of every process, and of every thread in another
    namespace than its process's, read from the kernel (the monitor's task walk): then one
    path per namespace; else a stat() of every /proc/PID/ns/net (a process's only)."""
    found = {}
    if processes is not None:
        for ino, pid in processes:
            found.setdefault(ino, f"/proc/{pid}/ns/net")
        paths = glob.glob("/run/netns/*")
    else:
        paths = glob.glob("/run/netns/*") + glob.glob("/proc/[0-9]*/ns/net")
    for path in paths:
        try:
            found.setdefault(os.stat(path).st_ino, path)
        except OSError:
            continue  # the process exited meanwhile
    return found


def in_initial_pid_namespace():
    """True when the calling process sees the kernel's own pids (its pid namespace is the
    initial one, whose inode number is fixed: PROC_PID_INIT_INO)."""
    return os.stat("/proc/self/ns/pid").st_ino == PROC_PID_INIT_INO


def own():
    """The inode of the calling thread's network namespace."""
    return os.stat("/proc/thread-self/ns/net").st_ino


def cookie():
    """The cookie of the calling thread's network namespace (what the programs read from a
    socket's sk_net), or None where the kernel cannot say (before 5.14)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            return int.from_bytes(s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), sys.byteorder)
    except OSError:
        return None
