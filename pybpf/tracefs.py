"""Find (or mount) tracefs and read tracepoint ids and record layouts from it.

Mounts are read from /proc/self/mountinfo (pybpf.mounts), never assumed: tracefs may sit at
/sys/kernel/tracing, under debugfs at /sys/kernel/debug/tracing, or nowhere.
When it is nowhere we mount it at /sys/kernel/tracing and leave it mounted
(as systemd would): other tracers may start using it at once.
"""
import os
import re
from collections import namedtuple

from . import mounts as _mounts
from . import syscall
from .errors import BpfError, FeatureUnavailable, SyscallError

TRACEFS_DIR = "/sys/kernel/tracing"


def mounts():
    """Yield (mount_point, fstype, source) for every mount this process sees (pybpf.mounts)."""
    for m in _mounts.mounts():
        yield m.point, m.fstype, m.source


def find_mount(fstype):
    """The mount point of a filesystem type, or None (pybpf.mounts.find)."""
    return _mounts.find(fstype)


def _mount_tracefs():
    os.makedirs(TRACEFS_DIR, exist_ok=True)
    try:
        syscall.mount("tracefs", TRACEFS_DIR, "nodev")
    except SyscallError as e:
        raise FeatureUnavailable(f"tracefs is not mounted and mounting it at {TRACEFS_DIR} failed: "
                                 f"{os.strerror(e.errno)}") from None
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


# A tracepoint program's context is the raw record laid out as the format file says, and that
# layout changes between kernels (fields are added, arrays move): read offsets, never hard-code them.
#     field:__u16 sport;	offset:24;	size:2;	signed:0;
Field = namedtuple("Field", "offset size signed")
_FORMAT_FIELD = re.compile(r"^\s*field:(?P<decl>[^;]*);\s*offset:(?P<offset>\d+);\s*size:(?P<size>\d+);"
                           r"\s*signed:(?P<signed>\d+);", re.M)
_FIELD_NAME = re.compile(r"(\w+)\s*(\[[^\]]*\])?\s*$")


def parse_format(text):
    """{field name: Field(offset, size, signed)} of a format file's text, in record order."""
    out = {}
    for m in _FORMAT_FIELD.finditer(text):
        name = _FIELD_NAME.search(m["decl"])
        if name:
            out[name[1]] = Field(int(m["offset"]), int(m["size"]), m["signed"] == "1")
    return out


def tracepoint_fields(category, name=None, require=()):
    """{field name: Field(offset, size, signed)} of tracepoint category:name on this kernel, in
    record order; FeatureUnavailable when the tracepoint or a `require`d field is missing."""
    category, name = split_name(category, name)
    path = os.path.join(root(), "events", category, name, "format")
    try:
        with open(path) as f:
            fields = parse_format(f.read())
    except FileNotFoundError:
        raise FeatureUnavailable(f"tracepoint {category}:{name} does not exist on this kernel "
                                 f"({path} is absent)") from None
    missing = [field for field in require if field not in fields]
    if missing:
        raise FeatureUnavailable(f"tracepoint {category}:{name} lacks field(s) {', '.join(missing)} "
                                 "on this kernel")
    return fields
