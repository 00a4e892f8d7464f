"""TLS plaintext of a container's processes (bpfhook capture --tls).

The TLS libraries the container's processes map are found in /proc/PID/maps
(pybpf.procmaps) and opened through /proc/PID/root, so a container's own
libssl is the one probed; so are those in the container's library
directories that no process has loaded yet (a curl that runs for a moment
after the capture started). Each file (device, inode) is probed once, for
every process that maps it, and the container is looked at again every
RESCAN_EVERY seconds for libraries loaded later from elsewhere, and within
JOINED_EVERY of a process joining it. The programs (bpfhook.programs.tls) keep only
calls of the container's cgroup subtree, in the kernel. Their records
become TCP/IP packets on the connection's addresses (bpfhook.synth):
Plaintext below.

A call is tied to its connection by the socket syscall the library makes
on the same thread inside the call (the ciphertext it writes or reads): it
works whatever BIO the application gave the library (curl's own BIO, where
SSL_set_fd is never called; a socket BIO) and names the socket itself, not
an fd number. A call the library answers from bytes it had buffered makes
no syscall; it goes to the connection its handle (SSL *) was last seen on.
"""
import contextlib
import dataclasses
import ipaddress
import os
import socket
import time

import construct

from bpfhook import procfs, synth
from bpfhook.programs import conn_common
from bpfhook.programs import tls as prog
from pybpf import attach, features, procmaps, tracefs
from pybpf.elf import ElfError, ElfFile
from pybpf.errors import BpfError, FeatureUnavailable
from pybpf.fd import Closeable
from pybpf.layout import codec
from pybpf.probesite import function_sites
from pybpf.prog import load

RESCAN_EVERY = 2.0  # seconds between looks for newly loaded TLS libraries
# seconds between looks at the container's processes (a walk of its cgroups): a capture polls
# its ring hundreds of times a second under load, ~9 records each
JOINED_EVERY = 0.05
ROLE_TTL = 1.0  # seconds a process's listening ports are trusted
IDLE_FORGET = 600.0  # seconds after which a connection no call used is forgotten
LIBRARY_DIRS = ("/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/local/lib")  # and their multiarch subdirs


@dataclasses.dataclass(frozen=True)
class Library:
    name: str
    prefix: str  # file names starting with this: libssl.so, libssl.so.3, libssl.so.1.1
    functions: tuple


LIBRARIES = (
    Library("OpenSSL", "libssl.so", ("SSL_read", "SSL_write", "SSL_read_ex", "SSL_write_ex")),
    Library("GnuTLS", "libgnutls.so", ("gnutls_record_recv", "gnutls_record_send")),
)


def library_of(path):
    """The Library a mapped file is, by its name; None for other files."""
    name = os.path.basename(path)
    return next((lib for lib in LIBRARIES if name.startswith(lib.prefix)), None)


@dataclasses.dataclass
class Probed:
    """A library file with its probes."""
    number: int  # in the probes' cookies
    path: str  # as the first process mapping it sees it
    library: Library
    functions: tuple


def check_kernel():
    """One line (FeatureUnavailable) when this kernel cannot run the TLS hooks."""
    uprobes = features.probe("uprobe_pmu")
    if not uprobes:
        raise FeatureUnavailable(f"--tls needs uprobes: {uprobes.detail}")
    if not features.has("bpf_loop"):
        raise FeatureUnavailable("--tls needs bpf_loop in uprobe programs (Linux 5.17): "
                                 + features.probe("bpf_loop").detail)


class TlsHooks(Closeable):
    """The maps, programs and probes of one capture.

    pids(): the processes of the container (rescanned); notify(line): where one-line notes go.
    attach() attaches the syscall tracepoints and probes the libraries found so far, and
    returns a context manager that detaches everything; rescan() probes libraries loaded since."""

    def __init__(self, cgroup_dir, pids, notify, pid=0, ringbuf_size=None, multi=None):
        check_kernel()
        self.prog, self._pids, self.notify, self.pid = prog, pids, notify, pid
        self.multi = features.has("link.uprobe_multi") if multi is None else multi
        self.probed = {}  # (dev, inode) -> Probed, or None: looked at, nothing to probe
        self._probes = None  # an ExitStack while attached
        self._last_scan = self._last_joined = 0.0
        self._scanned_pids = set()
        self._stack = contextlib.ExitStack()
        self._closed = False
        try:
            dirfd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                self.maps = prog.new_maps(dirfd, ringbuf_size or prog.RINGBUF_SIZE)
            finally:
                os.close(dirfd)
            for m in self.maps.values():
                self._stack.callback(m.close)
            self.events = self.maps["events"]
            kernel = conn_common.KernelOffsets.load()
            attach_type = "trace_uprobe_multi" if self.multi else None
            self.enter = self._load(prog.build_enter(self.maps, pid), attach_type)
            self.ret = self._load(prog.build_return(self.maps, kernel), attach_type)
            by_offset = {}
            for name in prog.SYSCALLS:
                fields = tracefs.tracepoint_fields("syscalls", f"sys_enter_{name}", require=("fd",))
                by_offset.setdefault(fields["fd"].offset, []).append(name)
            self.socket_programs = [(self._load(prog.build_socket(self.maps, kernel, offset)), names)
                                    for offset, names in by_offset.items()]
        except BaseException:
            self._stack.close()
            raise

    def _load(self, program, attach_type=None):
        loaded = load(program, expected_attach_type=attach_type)
        self._stack.callback(loaded.close)
        return loaded

    # -- attaching -----------------------------------------------------------------------
    def attach(self):
        """Attach, and probe the libraries mapped now; a context manager that detaches."""
        links = contextlib.ExitStack()
        with links:  # a failure takes down what was attached
            for program, names in self.socket_programs:
                for name in names:
                    links.enter_context(attach.tracepoint(program, "syscalls", f"sys_enter_{name}"))
            self._probes = links
            found = self.rescan()
            if not found:
                self.notify(f"tls: no TLS library ({', '.join(lib.prefix + '*' for lib in LIBRARIES)}) in the "
                            f"container's processes or library directories; the capture goes on and probes "
                            f"one when it appears")
            self._probes = links.pop_all()  # later rescans add their probes here
        return self._probes

    def rescan(self, now=None):
        """Probe the TLS libraries mapped since the last look; returns how many are probed."""
        self._last_scan = time.monotonic() if now is None else now
        pids = [self.pid] if self.pid else self._pids()
        self._scanned_pids = set(pids)
        files = procmaps.mapped_files(pids, lambda path: library_of(path) is not None)
        for key, found in procmaps.files_in(pids, LIBRARY_DIRS, lambda name: library_of(name) is not None).items():
            files.setdefault(key, found)
        for key, mapped in files.items():
            if key not in self.probed:
                self.probed[key] = self._probe_file(mapped)
        return sum(1 for p in self.probed.values() if p is not None)

    def maybe_rescan(self):
        """Look again every RESCAN_EVERY seconds, and within JOINED_EVERY of a process joining the container."""
        if self._probes is None:
            return
        now = time.monotonic()
        if now - self._last_scan >= RESCAN_EVERY:
            self.rescan(now)
        elif now - self._last_joined >= JOINED_EVERY:
            self._last_joined = now
            if set(self._pids()) - self._scanned_pids:
                self.rescan(now)

    def _probe_file(self, mapped):
        library = library_of(mapped.path)
        who = f"{mapped.path} (pid {mapped.pids[0]})"  # the pid whose view of the file system the path is in
        try:
            elf = ElfFile(mapped.open_path)
        except ElfError as e:
            self.notify(f"tls: {who}: cannot read it: {str(e).rsplit(': ', 1)[-1]}")
            return None
        present = tuple(f for f in library.functions if elf.has(f))
        missing = [f for f in library.functions if f not in present]
        if not present:
            self.notify(f"tls: {who} exports none of {', '.join(library.functions)}: not probed")
            return None
        if missing:
            self.notify(f"tls: {who} lacks {', '.join(missing)}; probing {', '.join(present)}")
        probed = Probed(len([p for p in self.probed.values() if p is not None]), mapped.path, library, present)
        sites = function_sites(elf, present)
        try:
            with contextlib.ExitStack() as these:
                for link in self._attach_library(mapped.open_path, sites, probed):
                    these.enter_context(link)
                self._probes.enter_context(these.pop_all())
        except BpfError as e:
            self.notify(f"tls: {who}: cannot probe it: {e}")
            return None
        followed = "".join(f"; {s.symbol} probed in the function it calls first, at {s.followed:#x}"
                           + (f", which {' and '.join(s.covers)} calls too" if s.covers else "")
                           for s in sites if s.followed)
        self.notify(f"tls: probing {mapped.path} ({library.name}: {', '.join(present)}{followed}; "
                    f"{'uprobe_multi links' if self.multi else 'perf-event uprobes'})")
        return probed

    def _attach_library(self, path, sites, probed):
        """Yield the attachments for one library: entries first would leave calls no return takes."""
        offsets = [site.offset for site in sites]
        cookies = [self.prog.cookie(site.symbol, probed.number) for site in sites]
        if self.multi:
            yield attach.uprobe_multi(self.ret, path, offsets, ret=True)
            yield attach.uprobe_multi(self.enter, path, offsets, cookies=cookies)
            return
        for offset in offsets:
            yield attach.uprobe(self.ret, path, offset, ret=True)
        for offset, value in zip(offsets, cookies):
            yield attach.uprobe(self.enter, path, offset, cookie=value)

    # -- reading ---------------------------------------------------------------------------
    def stats(self):
        return {name: sum(self.maps["stats"].lookup(index)) for name, index in self.prog.STAT.items()}

    def library(self, number):
        return next((p for p in self.probed.values() if p is not None and p.number == number), None)

    def _release(self):
        self._stack.close()


# -- records to packets ------------------------------------------------------------------

@dataclasses.dataclass
class _Conn:
    conn: synth.Connection
    local_is_client: bool
    sk: int
    local: tuple  # (ip address, port)
    remote: tuple
    used: float = 0.0
    duplicate: bool = False  # the other end of a connection already written from its first end
    ended: bool = False  # another connection took its 4-tuple (a new socket, a SYN)
    first_ts: int = 0  # ktime of its first plaintext: its packets before then are its handshake


class Plaintext:
    """tls_return records -> packets: emit(ts_ns, packet, comment, inbound) for each.

    Connections are told apart by socket (sk) and addresses; a call without a socket goes to
    the connection its (pid, handle) was last seen on. When both ends of a connection are in
    the container, it is written from the end seen first: the other end's calls carry the
    same bytes and are counted (`duplicates`), not written twice. before_new(): called before a
    connection's synthesized handshake, so that a caller writing the same connection's packets
    from another buffer writes those sent before it first (capture: the net reader)."""

    def __init__(self, emit, describe, rng=None, before_new=None):
        self.emit, self.describe = emit, describe  # describe(record) -> comment words
        self.before_new = before_new  # called before a connection's first packets are emitted
        self.prog = prog
        layout = codec(prog.TlsEvent)
        self._values, self._names = layout.values_from, layout.names
        self._rng = rng
        self._by_tuple = {}  # (local, remote) -> _Conn
        self._by_handle = {}  # (tgid, handle) -> _Conn
        self._by_socket = {}  # (sk, the record's address fields) -> _Conn: the common case, without parsing
        self._listening = {}  # pid -> (time read, ports)
        self._comments = {}  # (pid, comm, cgroup id, cookie, unknown) -> comment
        self.calls = self.bytes = self.duplicates = self.unknown = self.server_first = 0

    def record(self, record, now=None):
        prog = self.prog
        values = self._values(record)
        ts, pid_tgid, handle, sk, cgroup_id, cookie, total, offset, length, family, sport, dport, saddr, daddr, comm = values
        payload = record[prog.HDR:prog.HDR + length]
        now = time.monotonic() if now is None else now
        # the common case first: a whole call on a connection seen before, by a caller seen before
        entry = self._by_socket.get((sk, family, saddr, sport, daddr, dport)) if sk and length == total else None
        if entry is not None and not entry.ended and not entry.duplicate:
            comment = self._comments.get((pid_tgid >> 32, comm, cgroup_id, cookie, False))
            if comment is not None:
                self.calls += 1
                self.bytes += total
                entry.used = now
                self._by_handle[(pid_tgid >> 32, handle)] = entry
                from_client = ((cookie >> 8 & 0xF) == prog.SENT) == entry.local_is_client
                self.emit(ts, entry.conn.whole_call(from_client, payload), comment, from_client != entry.local_is_client)
                return
        self._record(construct.Container(zip(self._names, values)), payload, now)

    def _record(self, ev, payload, now):
        prog = self.prog
        if ev["offset"] == 0:
            self.calls += 1
            self.bytes += ev["total"]
        entry, fresh = self._connection(ev, now)
        if entry.duplicate:
            self.duplicates += ev["offset"] == 0
            return
        entry.used = now
        who = (ev["pid_tgid"] >> 32, ev["comm"], ev["cgroup_id"], ev["cookie"], not entry.sk)
        comment = self._comments.get(who)
        if comment is None:
            comment = self._comments[who] = self.describe(ev) + (" conn=unknown" if not entry.sk else "")
        from_client = ((ev["cookie"] >> 8 & 0xF) == prog.SENT) == entry.local_is_client
        if fresh:
            entry.first_ts = ev["ts_ns"]
            # a client speaks first (HTTP): a connection whose first plaintext is the server's had
            # a read in flight when the probes were attached, which no uprobe sees return
            self.server_first += bool(entry.sk) and not from_client
            if self.before_new is not None:
                self.before_new()
        packets = entry.conn.handshake() if fresh else []
        packets += entry.conn.data(from_client, (ev["ts_ns"], ev["pid_tgid"]), ev["total"], ev["offset"], payload)
        for is_client, packet in packets:
            self.emit(ev["ts_ns"], packet, comment, is_client != entry.local_is_client)

    def _connection(self, ev, now):
        """(_Conn, whether it is new) for a record."""
        handle = (ev["pid_tgid"] >> 32, ev["handle"])
        sk = ev["sk"]
        if sk:
            raw = (sk, ev["family"], ev["saddr"], ev["sport"], ev["daddr"], ev["dport"])
            entry = self._by_socket.get(raw)
            if entry is not None and not entry.ended:
                self._by_handle[handle] = entry
                return entry, False
        else:
            entry = self._by_handle.get(handle)
            if entry is not None:
                return entry, False
            self.unknown += 1  # a buffered call of a connection seen before the capture started (or a memory BIO)
            unknown = (ipaddress.ip_address("0.0.0.0"), 0)
            entry = _Conn(self._new(unknown, (unknown[0], self.unknown % 65536), False), False, 0, unknown,
                          (unknown[0], self.unknown % 65536), now)
            self._by_handle[handle] = entry
            return entry, True
        local, remote = _endpoints(ev)
        entry = self._by_tuple.get((local, remote))
        fresh = entry is None or entry.sk != sk  # a new socket on an old 4-tuple: a new connection
        if fresh:
            other = self._by_tuple.get((remote, local))
            if other is not None and not other.duplicate and now - other.used < IDLE_FORGET:
                entry = _Conn(other.conn, False, sk, local, remote, now, duplicate=True)
                fresh = False
            else:
                client = not self._listens(handle[0], local[1])
                conn = self._new(local, remote, client)
                entry = _Conn(conn, client, sk, local, remote, now)
            old = self._by_tuple.get((local, remote))
            if old is not None:
                old.ended = True
            self._by_tuple[(local, remote)] = entry
        self._by_socket[raw] = entry
        self._by_handle[handle] = entry
        return entry, fresh

    def written(self, a, b, ts, syn=False):
        """Whether a packet sent at `ts` (ktime ns) between endpoints a and b, (ip address, port)
        each, belongs to a connection whose plaintext is written from before then. syn: the
        packet opens a connection, which (after that plaintext began) ends the one known there."""
        entry = self._by_tuple.get((a, b)) or self._by_tuple.get((b, a))
        if entry is None or ts < entry.first_ts:
            return False
        if syn:
            entry.ended = True
            self._by_tuple.pop((entry.local, entry.remote), None)
            return False
        return True

    def _new(self, local, remote, local_is_client):
        client, server = (local, remote) if local_is_client else (remote, local)
        return synth.Connection(client, server, *(() if self._rng is None else (self._rng,)))

    def _listens(self, pid, port):
        """Whether `port` is a listening port in pid's network namespace: then pid's end is the server."""
        seen = self._listening.get(pid)
        now = time.monotonic()
        age = now - seen[0] if seen is not None else None
        if age is None or age > ROLE_TTL or port not in seen[1] and age > ROLE_TTL / 10:
            seen = self._listening[pid] = (now, procfs.listening_ports(pid))
        return port in seen[1]

    def forget_idle(self, now=None):
        """Drop connections no call used for IDLE_FORGET seconds (memory of a long capture)."""
        now = time.monotonic() if now is None else now
        for table in (self._by_tuple, self._by_handle, self._by_socket):
            for key in [k for k, e in table.items() if now - e.used > IDLE_FORGET]:
                del table[key]
        self._comments.clear()


def _endpoints(ev):
    """(local, remote) as (ip address, port); an IPv4-mapped IPv6 address as the IPv4 one."""
    def address(raw):
        if ev["family"] == socket.AF_INET:
            return ipaddress.ip_address(raw[:4])
        addr = ipaddress.ip_address(raw)
        return addr.ipv4_mapped or addr

    return (address(ev["saddr"]), ev["sport"]), (address(ev["daddr"]), ev["dport"])
