"""bpfhook capture: a container's network packets and Unix-socket messages to pcapng.

Network: cgroup_skb programs (programs/capture.py) on the container's
cgroup see every TCP/UDP packet delivered to one of its sockets (and, with
--both-directions, sent by one), as L3 packets: interface 0, LINKTYPE_RAW.
The program writes each packet into a BPF ring buffer as a whole Enhanced
Packet Block, and runs of them go to the file as they are (one writev of
views over the ring). Only the first packet of each flow comes through
Python, to name the process owning its socket, found by 5-tuple the way
`ss -p` does (the socket table of the container's netns, then its
processes' fds), in that packet's comment; a socket that is gone before we
look stays "unknown". --pid, --tls and --packet-comments pass every packet
through Python instead.

UDS: syscall tracepoints (programs/uds.py) see read/write/send*/recv*
on Unix sockets of the container's processes: interface 1, LINKTYPE_USER0
with the header of bpfhook.pcapng.UdsHeader.

TLS (--tls): uprobes on the TLS library's read and write calls
(bpfhook.tls) give the plaintext, written as synthesized TCP/IP packets on
the connection's addresses: an interface of its own, LINKTYPE_RAW.

Nothing is silent: ring buffer losses and snaplen cuts are counted in the
kernel, shown on the terminal and written to the file (ISB ifdrop and
comments), periodically and at the end.
"""
import contextlib
import dataclasses
import ipaddress
import os
import select
import struct
import sys
import time

from bpfhook import cgroups, containers, pcapng, procfs
from bpfhook.cli import ring_megabytes
from bpfhook.programs import capture as net_program
from bpfhook.programs import uds as uds_program
from bpfhook.records import flat_struct
from bpfhook.rotation import RotatingWriter
from bpfhook.tls import Plaintext, TlsHooks, check_kernel
from pybpf import attach
from pybpf.errors import BpfError
from pybpf.readers import open_reader
from pybpf.prog import load

SUMMARY_EVERY = 1.0  # seconds between live summary lines
STATS_EVERY = 10.0  # seconds between ISBs
COMMENTS_KEPT = 4096  # packet comments kept made (one a flow owner and cgroup); emptied when full
DEFAULT_SNAPLEN = 262144
# Event buffer pages per CPU (16 MiB): smaller ones drop packets at 1 Gbit/s (docs/benchmarks.md)
DEFAULT_PAGES = 4096
OWNER_RETRY = 0.5  # seconds before asking /proc again about a socket we could not place
RING_SIZE = 64 << 20  # the packets' ring buffer: half a second of 1 Gbit/s while a write waits on the disk
DRAIN_BYTES = 1 << 20  # ring bytes written, then given back to the kernel, at a time

# A FLOW record: FlowHead, then the EPB (its head, the packet, epb_flags, trailing length)
_FLOW_HEAD = flat_struct(net_program.FlowHead)
_FLOW_KEY = slice(net_program.FlowHead.sizeof() - net_program.FlowKey.sizeof(), net_program.FlowHead.sizeof())
_EPB_BODY = flat_struct(pcapng.EpbBody)
_EPB_AT = net_program.FlowHead.sizeof()
_U32 = struct.Struct("<I")


def _epb_fields(record, at=0):
    """(interface, timestamp, packet view, original length, epb_flags) of the EPB at `at` in a
    ring record, as the program laid it out."""
    interface, high, low, caplen, length = _EPB_BODY.unpack_from(record, at + 8)  # after type and length
    data_at = at + net_program.EPB_HEAD
    flags = _U32.unpack_from(record, data_at + (caplen + 3 & ~3) + 4)[0]  # epb_flags' value
    return interface, (high << 32) | low, record[data_at:data_at + caplen], length, flags


class CaptureError(BpfError):
    """A capture that cannot start: no such container, a file that cannot be written, ..."""


# -- the target -------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Target:
    label: str  # container name (or id) for humans and comments
    cgroup_path: str  # "/bpfhook.lab/web"
    cgroup_id: int

    @property
    def cgroup_dir(self):
        return cgroups.directory(self.cgroup_path)


def resolve_target(spec):
    """The Target of a container spec (bpfhook.containers.find)."""
    c = containers.find(spec)
    return Target(c.label, c.cgroup_path, cgroups.cgroup_id(c.cgroup_path))


# -- who owns a socket ------------------------------------------------------------------------

_TABLES = {(4, 6): "tcp", (6, 6): "tcp6", (4, 17): "udp", (6, 17): "udp6"}


def five_tuple(packet):
    """(ip version, proto, src, sport, dst, dport) of an L3 packet, or None when it is not TCP/UDP."""
    if len(packet) < 20:
        return None
    version = packet[0] >> 4
    if version == 4:
        proto, l4 = packet[9], (packet[0] & 0x0F) * 4
        src, dst = packet[12:16], packet[16:20]
    elif version == 6 and len(packet) >= 40:
        proto, l4 = packet[6], 40
        src, dst = packet[8:24], packet[24:40]
    else:
        return None
    if proto not in (6, 17) or len(packet) < l4 + 4:
        return None
    sport, dport = struct.unpack_from(">HH", packet, l4)
    return version, proto, ipaddress.ip_address(bytes(src)), sport, ipaddress.ip_address(bytes(dst)), dport


def _flow_of(tuple5):
    """Both directions of a five_tuple as one key (None for None)."""
    if tuple5 is None:
        return None
    version, proto, src, sport, dst, dport = tuple5
    return (version, proto) + tuple(sorted(((src, sport), (dst, dport))))


def _proc_addr(text, version):
    """An address:port of /proc/net/{tcp,udp}[6] (host-order 32-bit words in hex)."""
    addr, port = text.split(":")
    raw = bytes.fromhex(addr)
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(raw if version == 6 or len(raw) == 4 else raw), int(port, 16)


class Owners:
    """Socket -> (pid, comm), for the processes of one cgroup subtree."""

    def __init__(self, target):
        self.target = target
        self._by_cookie = {}  # cookie -> (pid, comm) or (None, retry_after)

    def lookup(self, cookie, tuple5, local_is_dst):
        hit = self._by_cookie.get(cookie)
        now = time.monotonic()
        if hit is not None and (hit[0] is not None or now < hit[1]):
            return hit if hit[0] is not None else None
        owner = self._find(tuple5, local_is_dst)
        self._by_cookie[cookie] = owner if owner else (None, now + OWNER_RETRY)
        return owner

    def _find(self, tuple5, local_is_dst):
        version, proto, src, sport, dst, dport = tuple5
        local, lport, remote, rport = (dst, dport, src, sport) if local_is_dst else (src, sport, dst, dport)
        pids = cgroups.pids_below(self.target.cgroup_path)
        if not pids:
            return None
        candidates = self._inodes(pids[0], version, proto, local, lport, remote, rport)
        if not candidates:
            return None
        owners = procfs.socket_holders(pids)
        for inode in candidates:  # the connected socket if a process still holds it, else the listener
            if inode in owners:
                return owners[inode], procfs.comm(owners[inode])
        return None

    @staticmethod
    def _inodes(pid, version, proto, local, lport, remote, rport):
        """Inodes of the sockets matching, best first: connected, then bound-only (listeners, UDP)."""
        exact, wild = [], []
        names = [_TABLES[(version, proto)]]
        if version == 4:
            names.append(_TABLES[(6, proto)])  # v4-mapped on dual-stack sockets
        for name in names:
            with contextlib.suppress(OSError):
                with open(f"/proc/{pid}/net/{name}") as f:
                    next(f)
                    for line in f:
                        fields = line.split()
                        laddr, lp = _proc_addr(fields[1], 6 if name.endswith("6") else 4)
                        raddr, rp = _proc_addr(fields[2], 6 if name.endswith("6") else 4)
                        inode = int(fields[9])
                        if lp != lport or not inode:
                            continue
                        laddr = getattr(laddr, "ipv4_mapped", None) or laddr
                        raddr = getattr(raddr, "ipv4_mapped", None) or raddr
                        if laddr not in (local,) and not laddr.is_unspecified:
                            continue
                        if raddr == remote and rp == rport:
                            exact.append(inode)
                        elif raddr.is_unspecified and rp == 0:
                            wild.append(inode)
        return exact + wild


def _require_ring_buffers():
    """A clear error where the network capture's program cannot be: the kernel has no BPF ring
    buffer or no atomic fetch operations (both Linux 5.12 on)."""
    from pybpf import features  # ~75 ms of imports a capture that starts never needs

    missing = [name for name in ("map_type.ringbuf", "atomics") if not features.has(name)]
    if missing:
        raise CaptureError(f"network capture needs BPF ring buffers and atomic operations (Linux 5.12+); "
                           f"this kernel lacks {', '.join(missing)}")


def _sun_path(path):
    """A bound filesystem path's address length counts its NUL; abstract names are exact."""
    return path if path[:1] == b"\0" else path.rstrip(b"\0")


def _word(text):
    """A comment value without spaces (comments are key=value words)."""
    return "".join(c if c.isprintable() and not c.isspace() else "_" for c in text) or "_"


# -- the capture ------------------------------------------------------------------------------

@dataclasses.dataclass
class Counters:
    packets: int = 0
    bytes: int = 0
    uds_messages: int = 0
    uds_bytes: int = 0
    filtered: int = 0  # left out by --pid
    ciphertext_left_out: int = 0  # packets of connections whose plaintext is written (--tls)
    tls: object = None  # the bpfhook.tls.Plaintext of a --tls capture: its calls and bytes

    def line(self, drops, elapsed):
        tls = f"tls {self.tls.calls} msgs {_human(self.tls.bytes)}  " if self.tls is not None else ""
        return (f"{elapsed:6.1f}s  net {self.packets} pkts {_human(self.bytes)}  "
                f"uds {self.uds_messages} msgs {_human(self.uds_bytes)}  {tls}"
                f"drops {drops['total']} (ring {drops['ring']}, truncated {drops['truncated']})")


def _human(n):
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


class Capture:
    """Everything a running capture holds: maps, programs, attachments, readers, the writer.

    Build it (loads programs, attaches nothing), then start(writer) attaches
    and poll() moves records into the file. close() detaches and closes all."""

    def __init__(self, target, *, net=True, uds=False, both_directions=False, snaplen=DEFAULT_SNAPLEN,
                 ip_proto=0, port=0, pid=0, pages=DEFAULT_PAGES, tls=False, packet_comments=False,
                 ring_size=RING_SIZE):
        self.target, self.net, self.uds, self.tls, self.pid = target, net, uds, tls, pid
        self.packet_comments = packet_comments
        self.both_directions, self.snaplen = both_directions, snaplen
        self.counters = Counters()
        self.owners = Owners(target)
        self._clock = time.time_ns() - time.monotonic_ns()  # bpf_ktime_get_ns is CLOCK_MONOTONIC
        self._cgroup_paths = {}
        self._comments = {}  # (owner, cgroup id) -> the packet comment
        self._stack = contextlib.ExitStack()
        self._attach_steps = []
        self._readers = []
        self.writer = None
        try:
            if tls:
                check_kernel()  # before anything loads
            if net:
                self._build_net(ip_proto, port, ring_size)
            if uds:
                self._build_uds(pages)
            if tls:
                self._build_tls(pages)
        except BaseException:
            self._stack.close()
            raise

    # -- network --------------------------------------------------------------------------
    def _build_net(self, ip_proto, port, ring_size):
        try:
            self.net_maps = net_program.Maps(self.snaplen, ring_size)
        except BpfError:
            _require_ring_buffers()
            raise
        self._stack.callback(self.net_maps.close)
        self.net_maps.config.update(0, dict(clock_offset_ns=self._clock & (1 << 64) - 1))
        self._per_packet = bool(self.packet_comments or self.pid or self.tls)
        directions = ("ingress", "egress") if self.both_directions else ("ingress",)
        for direction in directions:
            try:
                program = load(net_program.build(direction, self.net_maps, self.snaplen, ip_proto, port,
                                                 per_packet=self._per_packet),
                               "cgroup_skb", name=f"cap_{direction}",
                               expected_attach_type=f"cgroup_inet_{direction}")
            except BpfError:
                _require_ring_buffers()
                raise
            self._stack.callback(program.close)
            self._attach_steps.append(
                lambda program=program, direction=direction: attach.cgroup(program, direction,
                                                                           self.target.cgroup_dir))
        self.net_reader = open_reader(self.net_maps.events)
        self._stack.callback(self.net_reader.close)
        self._readers.append(self.net_reader)
        self._retry = []  # (when, flow key) of flows whose owner was not found: announced again then
        self._said = {}  # flow (_flow_of) -> the comment its first packet carried
        self._unsaid, self._stale_bytes = None, 0  # after a new file: flows not yet named in it

    def _drain_net(self):
        """Write the ring's records: runs of EPBs as they are (views over the ring, one writev),
        a flow's first packet (a FLOW record) with its owner's comment."""
        reader, writer = self.net_reader, self.writer
        while True:
            records, end = reader.views(DRAIN_BYTES)
            if end is None:
                return
            start = 0
            for index in [i for i, r in enumerate(records) if r[0] != net_program.EPB]:
                self._write_run(records[start:index])
                self._on_flow(records[index])
                start = index + 1
            self._write_run(records[start:] if start else records)
            writer.flush()  # before the kernel may write over them
            reader.release(end)

    def _write_run(self, run):
        while run:
            if self._unsaid:
                run = self._say_again(run)
                continue
            taken = self.writer.blocks(run)
            self.counters.packets += taken
            self.counters.bytes += sum(map(len, run[:taken]))
            run = run[taken:]

    def _say_again(self, run):
        """A new file: the records the kernel wrote before it forgot the flows (rotated) are
        written one by one, each flow's first with its owner's comment; returns the rest."""
        for index, record in enumerate(run):
            if self._stale_bytes <= 0 or not self._unsaid:
                self._unsaid = None
                return run[index:]
            self._stale_bytes -= len(record) + 8  # (the ring's record header)
            interface, ts, data, length, flags = _epb_fields(record)
            comment = self._unsaid.pop(_flow_of(five_tuple(data)), None)
            self.writer.packet(interface, ts, data, length, comment, flags)
            self.counters.packets += 1
            self.counters.bytes += length
        return []

    def _on_flow(self, record):
        """A FLOW record: the first packet of a flow (every packet, per packet), with its head."""
        _kind, cgid, cookie = _FLOW_HEAD.unpack_from(record)[:3]
        interface, ts, data, length, flags = _epb_fields(record, _EPB_AT)
        inbound = flags == pcapng.INBOUND
        tuple5 = five_tuple(data)
        owner = self.owners.lookup(cookie, tuple5, inbound) if tuple5 else None
        if owner is None and not self._per_packet:
            self._retry.append((time.monotonic() + OWNER_RETRY, bytes(record[_FLOW_KEY])))
        if self.pid and (owner is None or owner[0] != self.pid):
            self.counters.filtered += 1
            return
        if self.tls and tuple5 and tuple5[1] == 6 and self._plaintext_written(data, tuple5, ts - self._clock):
            self.counters.ciphertext_left_out += 1
            return
        comment = self._comment(owner, cgid)
        if not self._per_packet:
            flow = _flow_of(tuple5)
            if len(self._said) >= net_program.FLOWS_MAX:
                self._said.clear()
            self._said[flow] = comment
            if self._unsaid:
                self._unsaid.pop(flow, None)
        self.writer.packet(interface, ts, data, length, comment, flags)
        self.counters.packets += 1
        self.counters.bytes += length

    def _announce_again(self, everything=False):
        """Forget flows in the kernel, so that their next packet comes with its head again: those
        whose owner was unknown once OWNER_RETRY has passed, or (everything) all: a new file."""
        flows = self.net_maps.flows
        if everything:
            self._retry.clear()
            flows.lookup_and_delete_batch()
            return
        now = time.monotonic()
        while self._retry and self._retry[0][0] <= now:
            with contextlib.suppress(KeyError):
                flows.delete(self._retry.pop(0)[1])

    def _plaintext_written(self, data, tuple5, ts):
        """Whether this TCP packet is the ciphertext of a connection whose plaintext the TLS
        interface has: tshark (before 4.2's conversation deinterlacing) joins the two streams of
        one 4-tuple into one and loses the HTTP in it, so from the connection's first plaintext
        on its ciphertext is left out (and counted). A later SYN on those addresses starts afresh."""
        version, _, src, sport, dst, dport = tuple5
        at = (data[0] & 0x0F) * 4 + 13 if version == 4 else 40 + 13
        flags = data[at] if len(data) > at else 0
        return self.counters.tls.written((src, sport), (dst, dport), ts, syn=bool(flags & 0x02))

    def _comment(self, owner, cgid):
        """The packet comment of this owner and cgroup: made once while they repeat (a flow's)."""
        key = (owner, cgid)
        comment = self._comments.get(key)
        if comment is None:
            path = self._cgroup_paths.get(cgid)
            if path is None:
                path = self._cgroup_paths[cgid] = cgroups.path_of_id(cgid) or f"id:{cgid}"
            who = f"pid={owner[0]} comm={_word(owner[1])}" if owner else "pid=unknown comm=unknown"
            if len(self._comments) >= COMMENTS_KEPT:
                self._comments.clear()
            comment = self._comments[key] = f"{who} cgroup={_word(path)} container={_word(self.target.label)}"
        return comment

    # -- unix sockets ---------------------------------------------------------------------
    def _build_uds(self, pages):
        self.uds_set = uds_program.UdsPrograms(self.target.cgroup_dir, self.pid, self.snaplen)
        self._stack.callback(self.uds_set.close)
        self._attach_steps.append(self.uds_set.attach)
        reader = open_reader(self.uds_set.events, callback=self._on_uds, pages=pages)
        self._stack.callback(reader.close)
        self.uds_reader = reader
        self._readers.append(reader)
        self._segments = {}  # msg id -> [event, payload...] until its last segment

    def _on_uds(self, record):
        ev = uds_program.decode(record)
        parts = self._segments.setdefault(ev.msg_id, [ev])
        parts.append(ev.payload)
        if not ev.last:
            return
        del self._segments[ev.msg_id]
        first = parts[0]
        payload = b"".join(parts[1:])
        pid, tid = first.pid_tgid >> 32, first.pid_tgid & 0xFFFFFFFF
        data = pcapng.encode_uds(first.direction, first.sock_type, pid, tid, first.peer_pid, first.fd,
                                 _sun_path(first.path), _sun_path(first.peer_path), payload,
                                 truncated=len(payload) < first.total)
        comment = (f"pid={pid} comm={_word(first.comm)} cgroup={_word(self._cgroup_path(first.cgroup_id))} "
                   f"container={_word(self.target.label)} path={_word(pcapng.show_path(_sun_path(first.path)))} "
                   f"peer_path={_word(pcapng.show_path(_sun_path(first.peer_path)))} peer_pid={first.peer_pid or 'unknown'} "
                   f"syscall={uds_program.SYSCALL_NAMES[first.syscall]}")
        self.writer.packet(self.uds_if, first.ts_ns + self._clock, data,
                           len(data) - len(payload) + first.total, comment,
                           pcapng.OUTBOUND if first.direction == 0 else pcapng.INBOUND)
        self.counters.uds_messages += 1
        self.counters.uds_bytes += first.total

    def _cgroup_path(self, cgid):
        path = self._cgroup_paths.get(cgid)
        if path is None:
            path = self._cgroup_paths[cgid] = cgroups.path_of_id(cgid) or f"id:{cgid}"
        return path

    # -- TLS plaintext --------------------------------------------------------------------
    def _build_tls(self, pages):
        self.tls_hooks = TlsHooks(self.target.cgroup_dir, lambda: cgroups.pids_below(self.target.cgroup_path),
                                  lambda line: print(line, file=sys.stderr), self.pid,
                                  ringbuf_size=1 << max(22, (pages * 4096 - 1).bit_length()))
        self._stack.callback(self.tls_hooks.close)
        self._attach_steps.append(self.tls_hooks.attach)
        # a connection's packets sent before its first plaintext go to the file before its
        # synthesized handshake: the rings are read one after the other, the TLS one may run ahead
        self.counters.tls = Plaintext(self._on_tls_packet, self._tls_comment,
                                      before_new=lambda: self.net and self._drain_net())
        reader = open_reader(self.tls_hooks.events, callback=self.counters.tls.record)
        self._stack.callback(reader.close)
        self.tls_reader = reader
        self._readers.append(reader)

    def _on_tls_packet(self, ts_ns, packet, comment, inbound):
        self.writer.packet(self.tls_if, ts_ns + self._clock, packet, None, comment,
                           pcapng.INBOUND if inbound else pcapng.OUTBOUND)

    def _tls_comment(self, ev):
        probed = self.tls_hooks.library(ev.cookie >> 16)
        call = self.tls_hooks.prog.CALL_NAMES.get(ev.cookie & 0xFF, "?")
        comm = ev.comm.split(b"\0", 1)[0].decode(errors="replace")
        return (f"pid={ev.pid_tgid >> 32} comm={_word(comm)} "
                f"cgroup={_word(self._cgroup_path(ev.cgroup_id))} container={_word(self.target.label)} "
                f"library={_word(os.path.basename(probed.path) if probed else '?')} call={call} tls=plaintext")

    # -- running --------------------------------------------------------------------------
    def start(self, writer):
        """Describe the interfaces in `writer`, then attach. Nothing stays attached if one step fails."""
        self.writer = writer
        self.start_ns = time.time_ns()
        label = self.target.label
        if self.net:  # interface 0: the program writes its id into the EPBs
            self.net_if = writer.interface(pcapng.LINKTYPE_RAW, f"{label}:net",
                                           f"IP packets of container {label} ({self.target.cgroup_path}), "
                                           f"{'both directions' if self.both_directions else 'incoming'}",
                                           self.snaplen)
        if self.uds:
            self.uds_if = writer.interface(pcapng.LINKTYPE_USER0, f"{label}:unix",
                                           f"Unix-socket messages of container {label}: bpfhook UdsHeader "
                                           "(24 bytes, big endian) + path + peer path + payload", self.snaplen)
        if self.tls:
            self.tls_if = writer.interface(pcapng.LINKTYPE_RAW, f"{label}:tls-plaintext",
                                           f"TLS plaintext of container {label}, from uprobes on its TLS "
                                           "library, as synthesized TCP/IP packets on the connections' "
                                           "addresses", 0)
        for step in self._attach_steps:
            self._stack.enter_context(step())
        self._last_stats = time.monotonic()

    def poll(self, timeout):
        """Move what the kernel wrote into the file; wait up to `timeout` for something."""
        if timeout:
            select.select(self._readers, [], [], timeout)
        if self.net:
            self._drain_net()
            if self._retry:
                self._announce_again()
        for reader in self._readers:
            if reader is not getattr(self, "net_reader", None):
                reader.read(0)
        self.writer.flush()  # the poll's packets, in one writev
        if self.tls:
            self.tls_hooks.maybe_rescan()
        if time.monotonic() - self._last_stats >= STATS_EVERY:
            self.write_statistics()

    def rotated(self, writer):
        """A file is complete: its statistics; the next file gets each flow's owner again, from
        the kernel for packets to come, from here for those already in the ring."""
        self.write_statistics()
        if self.net and not self._per_packet:
            self._announce_again(everything=True)
            self._unsaid, self._stale_bytes = dict(self._said), self.net_reader.pending()

    def drops(self):
        """{'ring': .., 'truncated': .., 'total': ..} from the kernel counters and the readers."""
        ring = truncated = 0
        if self.net:
            values = self._net_stats()
            ring += values["lost"] + values["busy"]
            truncated += values["truncated"]
        if self.uds:
            values = self.uds_set.stats()
            ring += values["lost"] + self.uds_reader.lost
            truncated += values["truncated"]
        if self.tls:
            values = self.tls_hooks.stats()
            ring += values["lost"] + self.tls_reader.lost
            truncated += values["truncated"]
        return {"ring": ring, "truncated": truncated, "total": ring}

    def _net_stats(self):
        return {name: sum(self.net_maps.stats.lookup(index)) for name, index in net_program.STAT.items()}

    def write_statistics(self):
        """ISBs with what the kernel saw and dropped so far."""
        now = time.time_ns()
        if self.net:
            values = self._net_stats()
            lost = values["lost"] + values["busy"]
            self.writer.statistics(self.net_if, now, received=values["seen"], dropped=lost, start_ns=self.start_ns,
                                   comment=f"kernel: seen={values['seen']} lost_ring_full={values['lost']} "
                                           f"lost_slots_busy={values['busy']} "
                                           f"truncated_at_snaplen={values['truncated']} "
                                           f"written={self.counters.packets} filtered_by_pid={self.counters.filtered}"
                                           + (f" tls_ciphertext_left_out={self.counters.ciphertext_left_out}"
                                              if self.tls else ""))
        if self.uds:
            values = self.uds_set.stats()
            lost = values["lost"] + self.uds_reader.lost
            self.writer.statistics(self.uds_if, now, received=values["seen"], dropped=lost, start_ns=self.start_ns,
                                   comment=f"kernel: seen={values['seen']} lost_ring_full={lost} "
                                           f"truncated_at_snaplen={values['truncated']} "
                                           f"written={self.counters.uds_messages}")
        if self.tls:
            self.counters.tls.forget_idle()
            values, plain = self.tls_hooks.stats(), self.counters.tls
            lost = values["lost"] + self.tls_reader.lost
            self.writer.statistics(self.tls_if, now, received=values["calls"], dropped=lost, start_ns=self.start_ns,
                                   comment=f"kernel: calls={values['calls']} lost_ring_full={lost} "
                                           f"truncated_calls={values['truncated']} faults={values['faults']} "
                                           f"without_syscall={values['no_socket']} written_calls={plain.calls} "
                                           f"unknown_connection={plain.unknown} other_end_duplicates={plain.duplicates} "
                                           f"server_spoke_first={plain.server_first}")
        self._last_stats = time.monotonic()

    def close(self):
        self._stack.close()


# -- command line -------------------------------------------------------------------------

NEEDS_ROOT = True
POLLS_SHUTDOWN = True  # a signal during set-up waits for it; the file is then finished whole


def add_arguments(parser):
    parser.add_argument("--container", required=True, metavar="NAME|ID|CGROUP",
                        help="lab/docker/podman name, container id or prefix, cgroup path, or Kubernetes "
                             "namespace/pod[/container]")
    parser.add_argument("--pid", type=int, default=0, help="only this process (its tgid)")
    parser.add_argument("-w", "--write", metavar="FILE.pcapng", help="output file (created 0600; must not exist)")
    parser.add_argument("--snaplen", type=int, default=DEFAULT_SNAPLEN, help="bytes kept per packet/message")
    parser.add_argument("--net", action="store_true", help="network packets (default: net and uds)")
    parser.add_argument("--uds", action="store_true", help="Unix-socket messages (default: net and uds)")
    parser.add_argument("--tls", action="store_true",
                        help="TLS plaintext (OpenSSL, GnuTLS) as TCP/IP packets on an interface of its own "
                             "(add --net --uds for those too)")
    parser.add_argument("--both-directions", action="store_true", help="also packets the container sends")
    parser.add_argument("--filter", default="", metavar="PORT|PROTO|PROTO/PORT",
                        help="network filter: 80, tcp, udp/53")
    parser.add_argument("--duration", type=float, default=0, metavar="SEC", help="stop after SEC seconds")
    parser.add_argument("--quiet", action="store_true", help="no live summary lines")
    parser.add_argument("--packet-comments", action="store_true",
                        help="a comment (pid, comm, cgroup, container) on every network packet, not only on "
                             "each flow's first: every packet then passes through Python")
    parser.add_argument("-C", "--file-size", type=int, metavar="MB",
                        help="start a new file once this one holds MB megabytes (FILE-000.pcapng, FILE-001.pcapng, "
                        "...; each file whole, named once complete)")
    parser.add_argument("-G", "--rotate-seconds", type=float, metavar="SEC",
                        help="start a new file every SEC seconds (numbered as with -C)")
    parser.add_argument("-W", "--file-count", type=int, metavar="COUNT",
                        help="with -C or -G: keep COUNT files, a ring (the next replaces the oldest)")
    parser.add_argument("--buffer-pages", type=int, default=DEFAULT_PAGES, metavar="N",
                        help=f"Unix-socket and TLS event buffer pages per CPU, a power of two (default "
                             f"{DEFAULT_PAGES}: {DEFAULT_PAGES * 4 // 1024} MiB; smaller buffers drop at high rates)")
    parser.add_argument("--ring-size", metavar="MB", type=ring_megabytes, default=RING_SIZE,
                        help=f"the network packets' ring buffer, a power of two (default {RING_SIZE >> 20}: "
                             "half a second of 1 Gbit/s while the disk makes a write wait)")


def parse_filter(text):
    """'tcp/80' -> (6, 80); 'udp' -> (17, 0); '53' -> (0, 53); '' -> (0, 0)."""
    proto, port = 0, 0
    for part in filter(None, text.lower().split("/")):
        if part in net_program.IPPROTO and not proto:
            proto = net_program.IPPROTO[part]
        elif part.isdigit() and 0 < int(part) < 65536 and not port:
            port = int(part)
        else:
            raise CaptureError(f"bad --filter {text!r}: use PORT, tcp, udp, or tcp/PORT")
    return proto, port


def run(args):
    if not 0 < args.snaplen <= DEFAULT_SNAPLEN:
        raise CaptureError(f"--snaplen {args.snaplen}: must be 1..{DEFAULT_SNAPLEN}")
    if not args.write:
        raise CaptureError("no output file: give -w FILE.pcapng")
    pages = args.buffer_pages
    if pages <= 0 or pages & (pages - 1):
        raise CaptureError(f"--buffer-pages {pages}: must be a power of two")
    rotating = _rotation(args)
    proto, port = parse_filter(args.filter)
    net, uds = (args.net, args.uds) if (args.net or args.uds or args.tls) else (True, True)
    target = resolve_target(args.container)
    if os.path.lexists(args.write) and not rotating:
        raise CaptureError(f"{args.write} exists; captures are never overwritten")
    directory = os.path.dirname(os.path.abspath(args.write))
    if not os.access(directory, os.W_OK | os.X_OK):
        raise CaptureError(f"cannot write in {directory}")
    capture = Capture(target, net=net, uds=uds, both_directions=args.both_directions, snaplen=args.snaplen,
                      ip_proto=proto, port=port, pid=args.pid, pages=pages, tls=args.tls,
                      packet_comments=args.packet_comments, ring_size=args.ring_size)
    try:
        if rotating:
            writer = RotatingWriter(args.write, application="bpfhook capture", on_rotate=capture.rotated,
                                    **rotating)
        else:
            writer = pcapng.Writer(args.write, application="bpfhook capture")
        try:
            capture.start(writer)
        except BaseException:
            if rotating:
                writer.discard()
            else:
                writer.close()
                os.unlink(args.write)
            raise
        return _loop(capture, args)
    finally:
        capture.close()
        if capture.writer is not None:
            capture.writer.close()


def _rotation(args):
    """RotatingWriter's arguments from -C, -G and -W (None: one file)."""
    size, seconds, count = args.file_size, args.rotate_seconds, args.file_count
    if size is not None and size <= 0:
        raise CaptureError(f"-C {size}: must be a positive number of megabytes")
    if seconds is not None and not 0 < seconds < float("inf"):
        raise CaptureError(f"-G {seconds:g}: must be a positive number of seconds")
    if count is not None and (count <= 0 or size is None and seconds is None):
        raise CaptureError(f"-W {count}: must be positive, and goes with -C or -G")
    if size is None and seconds is None:
        return None
    return dict(max_bytes=None if size is None else size << 20, seconds=seconds, count=count)


def _loop(capture, args):
    tty = sys.stderr.isatty()
    started = time.monotonic()
    deadline = started + args.duration if args.duration else None
    next_line = started + SUMMARY_EVERY
    what = " + ".join(w for w, on in (("net", capture.net), ("uds", capture.uds), ("tls", capture.tls)) if on)
    print(f"capturing {what} of {capture.target.label} ({capture.target.cgroup_path}) to {capture.writer.path}",
          file=sys.stderr)
    while not args.shutdown:
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            break
        capture.poll(min(0.2, deadline - now) if deadline else 0.2)
        if not args.quiet and time.monotonic() >= next_line:
            next_line += SUMMARY_EVERY
            line = capture.counters.line(capture.drops(), time.monotonic() - started)
            print("\r" + line if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)
    capture.poll(0)
    capture.write_statistics()
    drops = capture.drops()
    if tty and not args.quiet:
        print(file=sys.stderr)
    print("done: " + capture.counters.line(drops, time.monotonic() - started), file=sys.stderr)
    if drops["total"]:
        print(f"warning: the kernel dropped {drops['total']} records (ring buffer full); "
              "they are counted in the file's statistics blocks", file=sys.stderr)
    return 0
