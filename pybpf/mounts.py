"""The mount table: one parser of /proc/self/mountinfo for every "where is X mounted".

Nothing is assumed: tracefs, bpffs and cgroup2 may be mounted anywhere, more
than once, or not at all.

    find("tracefs")                        # "/sys/kernel/tracing" or None
    containing("/sys/fs/bpf/x", "bpf")     # the bpffs mount holding a path, or None
    cgroup2_root()                         # "/sys/fs/cgroup/unified" (FeatureUnavailable if none)
"""
import os
import re
from collections import namedtuple

from .errors import FeatureUnavailable

MOUNTINFO = "/proc/self/mountinfo"

# point: where it is mounted; root: the directory of the filesystem seen there ("/" unless a
# bind mount shows a subtree); options: the per-mount options ("rw,nosuid,relatime").
Mount = namedtuple("Mount", "point fstype source root options")

_ESCAPE = re.compile(r"\\([0-7]{3})")


def unescape(field):
    """mountinfo writes space, tab, newline and backslash in paths as \\ooo octal."""
    return _ESCAPE.sub(lambda m: chr(int(m[1], 8)), field) if "\\" in field else field


def parse(lines):
    """[Mount] from mountinfo lines, in table order (the kernel's mount order)."""
    table = []
    for line in lines:
        fields = line.split()
        if not fields:
            continue
        sep = fields.index("-", 6)  # optional fields ("shared:9", ...) before " - " vary in number
        table.append(Mount(unescape(fields[4]), fields[sep + 1], unescape(fields[sep + 2]),
                           unescape(fields[3]), fields[5]))
    return table


def mounts(path=MOUNTINFO):
    """[Mount] for every mount this process sees."""
    with open(path) as f:
        return parse(f)


def find(fstype, table=None):
    """Mount point of a filesystem type, or None. A mount of the filesystem's root wins over a
    bind mount of a subtree; among equals, the first mounted."""
    table = mounts() if table is None else table
    found = [m for m in table if m.fstype == fstype]
    if not found:
        return None
    return min(found, key=lambda m: m.root != "/").point


def containing(path, fstype, table=None):
    """Mount point of the nearest `fstype` mount at or above path (symlinks resolved), or None."""
    path = os.path.realpath(path)
    best = None
    for m in mounts() if table is None else table:
        if m.fstype == fstype and (path == m.point or path.startswith(m.point.rstrip("/") + "/")):
            if best is None or len(m.point) > len(best):
                best = m.point
    return best


def cgroup2_root(table=None):
    """Mount point of the cgroup2 hierarchy (unified, or hybrid's unified/)."""
    point = find("cgroup2", table)
    if point is None:
        raise FeatureUnavailable(f"no cgroup2 hierarchy is mounted (looked in {MOUNTINFO})")
    return point
