"""Find (or mount) tracefs and read tracepoint ids from it.

Mounts are read from /proc/self/mountinfo, never assumed: tracefs may sit at
/sys/kernel/tracing, under debugfs at /sys/kernel/debug/tracing, or nowhere.
When it is nowhere we mount it at /sys/kernel/tracing and leave it mounted
(as systemd would): other tracers may start using it at once.
"""
import os

import cffi

from .errors import BpfError, FeatureUnavailable

TRACEFS_DIR = "/sys/kernel/tracing"

_ffi = cffi.FFI()
_ffi.cdef("int mount(const char *source, const char *target, const char *fstype,"
          " unsigned long flags, const void *data);")
_libc = _ffi.dlopen(None)


def _unescape(field):
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts():
    """Yield (mount_point, fstype, source) for every mount this process sees."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")  # optional fields before " - " vary in number
            yield _unescape(fields[4]), fields[sep + 1], _unescape(fields[sep + 2])


def find_mount(fstype):
    """The first mount point of a filesystem type, or None."""
    return next((point for point, kind, _ in mounts() if kind == fstype), None)


def _mount_tracefs():
    os.makedirs(TRACEFS_DIR, exist_ok=True)
    if _libc.mount(b"nodev", TRACEFS_DIR.encode(), b"tracefs", 0, _ffi.NULL) != 0:
        err = _ffi.errno
        raise FeatureUnavailable(f"tracefs is not mounted and mounting it at {TRACEFS_DIR} failed: "
                                 f"{os.strerror(err)}")
    return TRACEFS_DIR


def root():
    """The tracefs directory: an existing tracefs or debugfs/tracing mount, else a fresh mount."""
    tracefs = find_mount("tracefs")
    if tracefs is not None:
        return tracefs
    debugfs = find_mount("debugfs")
    if debugfs is not None and os.path.isdir(os.path.join(debugfs, "tracing", "events")):
        return os.path.join(debugfs, "tracing")
    return _mount_tracefs()


def split_name(category, name=None):
    """("sched", "sched_switch") from "sched:sched_switch", "sched/sched_switch" or two arguments."""
    if name is None:
        for sep in (":", "/"):
            if sep in category:
                category, name = category.split(sep, 1)
                break
        else:
            raise BpfError(f"tracepoint {category!r}: expected 'category:name' (e.g. 'sched:sched_switch')")
    if not category or not name or "/" in name or ".." in (category, name):
        raise BpfError(f"tracepoint {category}:{name}: not a valid tracepoint name")
    return category, name


def tracepoint_id(category, name=None):
    """The perf config id of a tracepoint, from <tracefs>/events/<category>/<name>/id."""
    category, name = split_name(category, name)
    path = os.path.join(root(), "events", category, name, "id")
    try:
        with open(path) as f:
            return int(f.read())
    except FileNotFoundError:
        raise FeatureUnavailable(f"tracepoint {category}:{name} does not exist on this kernel "
                                 f"({path} is absent)") from None
