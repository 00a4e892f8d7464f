"""cgroup v2: where it is mounted, ids <-> paths, and small lifecycle helpers.

Paths named `cgroup` here are the kernel's view, rooted at the cgroup2
hierarchy ("/", "/system.slice/foo.service"), as /proc/PID/cgroup shows them.
`directory(cgroup)` turns one into a filesystem path under the mount.

On cgroup2 the kernel's cgroup id (bpf_get_current_cgroup_id(), the id BPF
cgroup hooks report) is the inode number of the cgroup's directory.
"""
import contextlib
import functools
import os
import signal
import time

from pybpf import mounts
from pybpf.errors import FeatureUnavailable


@functools.cache
def mount():
    """Mount point of the cgroup2 hierarchy (unified, or hybrid's unified/)."""
    return mounts.cgroup2_root()


def directory(cgroup):
    """Filesystem directory of a cgroup path such as "/bpfhook.lab/web"."""
    if not cgroup.startswith("/"):
        raise ValueError(f"cgroup path must start with '/': {cgroup!r}")
    return os.path.join(mount(), cgroup.lstrip("/"))


def cgroup_id(cgroup):
    """The kernel's 64-bit id of a cgroup (inode of its directory)."""
    return os.stat(directory(cgroup)).st_ino


def of_pid(pid="self"):
    """cgroup2 path of a process, from the "0::" line of /proc/PID/cgroup."""
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                return line[3:].rstrip("\n")
    raise FeatureUnavailable(f"/proc/{pid}/cgroup has no cgroup2 (0::) entry")


def walk(cgroup="/"):
    """Every cgroup at and below `cgroup`, parents first: (cgroup path, its directory)."""
    root = mount()
    for dirpath, _dirs, _files in os.walk(directory(cgroup)):
        rel = os.path.relpath(dirpath, root)
        yield ("/" if rel == "." else "/" + rel), dirpath


def pids_below(cgroup):
    """Processes in a cgroup and in the cgroups below it (one removed meanwhile is passed over)."""
    out = []
    for path, _directory in walk(cgroup):
        with contextlib.suppress(OSError):
            out.extend(pids(path))
    return out


_paths_by_id = {}


def _walk():
    _paths_by_id.clear()
    for cgroup, path in walk():
        try:
            _paths_by_id[os.stat(path).st_ino] = cgroup
        except FileNotFoundError:  # removed while walking
            continue


def path_of_id(cgid):
    """cgroup path of a cgroup id, or None if no such cgroup exists now.

    Answers from a cache; a miss or a stale entry rewalks the hierarchy once.
    """
    path = _paths_by_id.get(cgid)
    if path is not None:
        try:
            if os.stat(directory(path)).st_ino == cgid:
                return path
        except FileNotFoundError:
            pass
    _walk()
    return _paths_by_id.get(cgid)


def create(cgroup):
    """Create a cgroup (parents too); returns its id. It must not exist yet."""
    path = directory(cgroup)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.mkdir(path)
    return os.stat(path).st_ino


def move(pid, cgroup):
    """Move a whole process (all its threads) into a cgroup. pid 0 = caller."""
    with open(os.path.join(directory(cgroup), "cgroup.procs"), "w") as f:
        f.write(str(pid))


def pids(cgroup):
    """Processes directly in a cgroup."""
    with open(os.path.join(directory(cgroup), "cgroup.procs")) as f:
        return [int(line) for line in f if line.strip()]


def kill(cgroup, timeout=5.0):
    """SIGKILL every process in a cgroup and its children; wait until empty."""
    path = directory(cgroup)
    try:
        with open(os.path.join(path, "cgroup.kill"), "w") as f:
            f.write("1")
    except FileNotFoundError:  # kernel < 5.14: signal one by one
        for pid in pids_below(cgroup):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while _populated(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"cgroup {cgroup} still has processes after {timeout}s")
        time.sleep(0.01)


def _populated(path):
    with open(os.path.join(path, "cgroup.events")) as f:
        return "populated 1\n" in f.read()


def remove(cgroup, timeout=5.0):
    """Kill what runs in a cgroup, then remove it and its children.

    A cgroup that is already gone is not an error.
    """
    path = directory(cgroup)
    if not os.path.isdir(path):
        return
    kill(cgroup, timeout)
    for dirpath, _dirs, _files in os.walk(path, topdown=False):
        os.rmdir(dirpath)
