"""Which files processes have mapped, and a path that opens each one from here.

A uprobe binds to a file's inode: every process that maps it hits the probe.
/proc/PID/maps names each mapping's file by its device, inode and path as
the process sees it (inside its mount namespace: a container's own /usr).
From outside, /proc/PID/root/<path> opens that file, and when the path no
longer leads to the mapped inode (replaced, deleted, an overlay showing a
different device) /proc/PID/map_files/<range> still does. Files are keyed
by (device, inode): a library that many processes or containers share is
one key, so it is probed once.

    for f in mapped_files(pids, lambda path: "libssl.so" in path).values():
        print(f.open_path, f.pids)
"""
import dataclasses
import os


@dataclasses.dataclass(frozen=True)
class Mapping:
    """One line of /proc/PID/maps."""
    start: int
    end: int
    perms: str  # "r-xp"
    offset: int
    dev: int  # os.makedev(major, minor)
    inode: int
    path: str  # "" for anonymous memory; "[heap]" and the like for special mappings

    @property
    def executable(self):
        return "x" in self.perms


@dataclasses.dataclass
class MappedFile:
    """A file mapped by one or more processes."""
    dev: int
    inode: int
    path: str  # as the first process that maps it sees it
    open_path: str  # a path that opens this very file from our mount namespace
    pids: list = dataclasses.field(default_factory=list)

    @property
    def key(self):
        return self.dev, self.inode

    @property
    def name(self):
        return os.path.basename(self.path)


def parse_line(line):
    """A Mapping from a maps line; None for a line that is not one."""
    fields = line.rstrip("\n").split(None, 5)
    if len(fields) < 5:
        return None
    try:
        start, end = (int(x, 16) for x in fields[0].split("-"))
        major, minor = (int(x, 16) for x in fields[3].split(":"))
        offset, inode = int(fields[2], 16), int(fields[4])
    except ValueError:
        return None
    path = fields[5] if len(fields) > 5 else ""
    return Mapping(start, end, fields[1], offset, os.makedev(major, minor), inode, path)


def mappings(pid):
    """The Mappings of process `pid`; [] when it is gone (or we may not read it)."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            lines = f.readlines()
    except OSError:
        return []
    return [m for m in map(parse_line, lines) if m is not None]


def _same_file(path, dev, inode):
    try:
        st = os.stat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (dev, inode)


def open_path(pid, mapping):
    """A path to `mapping`'s file that works from here: through the process's root, else its
    map_files entry; None when neither leads to that inode (the process went away)."""
    through_root = f"/proc/{pid}/root{mapping.path}"
    if _same_file(through_root, mapping.dev, mapping.inode):
        return through_root
    by_range = f"/proc/{pid}/map_files/{mapping.start:x}-{mapping.end:x}"
    try:
        os.stat(by_range)  # any inode: an overlay's device differs from the one maps shows
    except OSError:
        return None
    return by_range


def mapped_files(pids, match, executable=True):
    """{(dev, inode): MappedFile} of the files the processes `pids` map whose path `match(path)`
    accepts (only executable mappings unless executable=False)."""
    found = {}
    for pid in pids:
        for m in mappings(pid):
            if not m.inode or not m.path.startswith("/") or (executable and not m.executable):
                continue
            if not match(m.path):
                continue
            entry = found.get((m.dev, m.inode))
            if entry is None:
                where = open_path(pid, m)
                if where is None:
                    continue
                entry = found[(m.dev, m.inode)] = MappedFile(m.dev, m.inode, m.path, where)
            if pid not in entry.pids:
                entry.pids.append(pid)
    return found
