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

files_in() finds files the same way that no process maps yet (a library on disk).
"""
import dataclasses
import os
import stat


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


def files_in(pids, directories, match):
    """{(dev, inode): MappedFile} of the regular files directly in `directories` (and in their
    multiarch subdirectories, x86_64-linux-gnu and the like) whose name `match(name)` accepts,
    as the processes `pids` see them: through /proc/PID/root, each mount namespace once. For
    files that processes will map later (a library on disk no process has loaded yet)."""
    found, namespaces = {}, set()
    for pid in pids:
        try:
            namespace = os.stat(f"/proc/{pid}/ns/mnt").st_ino
        except OSError:
            continue
        if namespace in namespaces:
            continue
        namespaces.add(namespace)
        root = f"/proc/{pid}/root"
        for directory in _with_multiarch(root, directories):
            try:
                names = os.listdir(root + directory)
            except OSError:
                continue
            for name in names:
                if not match(name):
                    continue
                path = f"{directory}/{name}"
                try:
                    st = os.lstat(root + path)  # symlinks lead to files listed here too (or out of the root)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    entry = found.setdefault((st.st_dev, st.st_ino),
                                             MappedFile(st.st_dev, st.st_ino, path, root + path))
                    if pid not in entry.pids:
                        entry.pids.append(pid)
    return found


def _with_multiarch(root, directories):
    for directory in directories:
        yield directory
        try:
            subdirs = sorted(os.listdir(root + directory))
        except OSError:
            continue
        yield from (f"{directory}/{d}" for d in subdirs if "-linux-" in d)


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
