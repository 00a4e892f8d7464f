"""pcapng writer and reader (draft-ietf-opsawg-pcapng), just the blocks capture needs.

Blocks: Section Header (SHB), Interface Description (IDB, one per interface
and link type, nanosecond timestamps), Enhanced Packet (EPB, with
opt_comment and epb_flags direction), Interface Statistics (ISB, ifrecv and
ifdrop). Little-endian. Each block goes to the file in one write(2) and is
on disk before the next one starts: a writer killed at any moment leaves a
file that is valid up to its last whole block (the reader stops cleanly at
a torn tail and says so in `truncated`).

Unix-socket records use LINKTYPE_USER0 (147) with the UdsHeader below,
then the path bytes, then the payload. Wireshark shows them as raw data
without a dissector; `UdsHeader` and `decode_uds` are the reference.
"""
import dataclasses
import os
import struct

import construct

from bpfhook.records import flat_struct
from pybpf.errors import BpfError
from pybpf.layout import codec

LINKTYPE_RAW = 101  # IPv4/IPv6 packet, no link header
LINKTYPE_USER0 = 147  # bpfhook Unix-socket record (UdsHeader + path + payload)

SHB, IDB, EPB, ISB = 0x0A0D0D0A, 0x00000001, 0x00000006, 0x00000005
BYTE_ORDER_MAGIC = 0x1A2B3C4D
OPT_END, OPT_COMMENT = 0, 1
SHB_USERAPPL = 4
IF_NAME, IF_DESCRIPTION, IF_TSRESOL = 2, 3, 9
EPB_FLAGS = 2
ISB_STARTTIME, ISB_ENDTIME, ISB_IFRECV, ISB_IFDROP = 2, 3, 4, 5
INBOUND, OUTBOUND = 1, 2  # epb_flags bits 0-1
IOV_MAX = 1024  # pieces a writev takes (Linux)
EPB_OPTIONS_KEPT = 4096  # distinct (comment, flags) pairs whose encoding a Writer keeps

BlockHeader = construct.Struct("type" / construct.Int32ul, "length" / construct.Int32ul)
ShbBody = construct.Struct("magic" / construct.Int32ul, "major" / construct.Int16ul,
                           "minor" / construct.Int16ul, "section_length" / construct.Int64sl)
IdbBody = construct.Struct("linktype" / construct.Int16ul, construct.Padding(2), "snaplen" / construct.Int32ul)
EpbBody = construct.Struct("interface" / construct.Int32ul, "ts_high" / construct.Int32ul,
                           "ts_low" / construct.Int32ul, "caplen" / construct.Int32ul,
                           "orig_len" / construct.Int32ul)
IsbBody = construct.Struct("interface" / construct.Int32ul, "ts_high" / construct.Int32ul,
                           "ts_low" / construct.Int32ul)
OptionHeader = construct.Struct("code" / construct.Int16ul, "length" / construct.Int16ul)

# The LINKTYPE_USER0 record header, network byte order, 24 bytes; path_len bytes of
# socket path follow (abstract names start with NUL, as in sun_path), then the payload.
UdsHeader = construct.Struct(
    "version" / construct.Int8ub,  # UDS_VERSION
    "direction" / construct.Int8ub,  # 0: sent by pid, 1: received by pid
    "sock_type" / construct.Int8ub,  # SOCK_STREAM 1, SOCK_DGRAM 2, SOCK_SEQPACKET 5
    "flags" / construct.Int8ub,  # UDS_FLAGS
    "pid" / construct.Int32ub,  # process that made the syscall (tgid)
    "tid" / construct.Int32ub,
    "peer_pid" / construct.Int32ub,  # 0: unknown
    "fd" / construct.Int32ub,
    "path_len" / construct.Int16ub,
    "peer_path_len" / construct.Int16ub,  # the peer's path follows the own path
)
assert UdsHeader.sizeof() == 24
UDS_VERSION = 1
UDS_FLAGS = {"truncated": 1}
SOCK_TYPES = {1: "stream", 2: "dgram", 5: "seqpacket"}

_codec = {name: codec(layout) for name, layout in
          (("block", BlockHeader), ("shb", ShbBody), ("idb", IdbBody), ("epb", EpbBody),
           ("isb", IsbBody), ("opt", OptionHeader), ("uds", UdsHeader))}
_BLOCK_HEAD, _EPB, _IDB, _ISB, _OPTION = map(flat_struct, (BlockHeader, EpbBody, IdbBody, IsbBody, OptionHeader))
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")
_PADDING = (b"", b"\0", b"\0\0", b"\0\0\0")


class PcapngError(BpfError):
    """A pcapng file that cannot be written or read."""


def _pad4(data):
    return data + b"\0" * (-len(data) % 4)


def _option(code, value):
    if isinstance(value, str):
        value = value.encode()
    return _codec["opt"].encode(dict(code=code, length=len(value))) + _pad4(value)


def _options(pairs):
    body = b"".join(_option(code, value) for code, value in pairs if value is not None)
    return body + _codec["opt"].encode(dict(code=OPT_END, length=0)) if body else b""


def _block(kind, body):
    total = 12 + len(body)
    return _BLOCK_HEAD.pack(kind, total) + body + _U32.pack(total)


def _ts(ts_ns):
    return ts_ns >> 32, ts_ns & 0xFFFFFFFF


def encode_uds(direction, sock_type, pid, tid, peer_pid, fd, path, peer_path, payload, truncated=False):
    """A LINKTYPE_USER0 record."""
    head = _codec["uds"].encode(dict(version=UDS_VERSION, direction=direction, sock_type=sock_type,
                                     flags=UDS_FLAGS["truncated"] if truncated else 0, pid=pid, tid=tid,
                                     peer_pid=peer_pid, fd=fd, path_len=len(path),
                                     peer_path_len=len(peer_path)))
    return head + path + peer_path + payload


@dataclasses.dataclass
class UdsRecord:
    direction: int
    sock_type: int
    flags: int
    pid: int
    tid: int
    peer_pid: int
    fd: int
    path: bytes
    peer_path: bytes
    payload: bytes


def decode_uds(data):
    size = UdsHeader.sizeof()
    if len(data) < size:
        raise PcapngError(f"UDS record of {len(data)} bytes is shorter than its {size}-byte header")
    h = _codec["uds"].decode(bytes(data[:size]))
    if h.version != UDS_VERSION:
        raise PcapngError(f"UDS record version {h.version}, this reader knows {UDS_VERSION}")
    end_path = size + h.path_len
    end_peer = end_path + h.peer_path_len
    return UdsRecord(h.direction, h.sock_type, h.flags, h.pid, h.tid, h.peer_pid, h.fd,
                     bytes(data[size:end_path]), bytes(data[end_path:end_peer]), bytes(data[end_peer:]))


def show_path(path):
    """A socket path for humans: abstract names as @name, unnamed as (unnamed)."""
    if not path:
        return "(unnamed)"
    if path[:1] == b"\0":
        return "@" + path[1:].decode(errors="backslashreplace")
    return path.decode(errors="backslashreplace")


class Writer:
    """Writes a pcapng file block by block.

    The file is created with O_EXCL and mode 0600 (captures hold secrets);
    an existing path is an error, never overwritten. Packets are kept until flush() (or
    PENDING_BYTES of them) and written with one writev: a poll's packets in one system call,
    their data never copied into a block; the other blocks are written at once."""

    PENDING_BYTES = 1 << 20
    PENDING_PIECES = 4 * IOV_MAX

    def __init__(self, path, application="bpfhook"):
        self.path = path
        try:
            self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise PcapngError(f"cannot create {path}: {e.strerror}") from None
        self.interfaces = []  # linktype per interface id
        self.bytes_written = 0
        self._epb_options = {}  # (comment, flags) -> their encoded options: captures repeat them
        self._pending, self._pending_bytes = [], 0  # packets' pieces not yet written
        shb = _codec["shb"].encode(dict(magic=BYTE_ORDER_MAGIC, major=1, minor=0, section_length=-1))
        self._write(_block(SHB, shb + _options([(SHB_USERAPPL, application)])))

    def _write(self, block):
        self.flush()
        view = memoryview(block)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        self.bytes_written += len(block)

    @property
    def size(self):
        """Bytes in the file once what is kept is written."""
        return self.bytes_written + self._pending_bytes

    def flush(self):
        """Write the packets kept: one writev per IOV_MAX of pieces (more after a short write)."""
        pieces, first = self._pending, 0
        while first < len(pieces):
            batch = pieces[first:first + IOV_MAX]
            n = os.writev(self.fd, batch)
            self.bytes_written += n
            for piece in batch:
                if n < len(piece):
                    pieces[first] = memoryview(piece)[n:]
                    break
                n -= len(piece)
                first += 1
        pieces.clear()
        self._pending_bytes = 0

    def interface(self, linktype, name, description=None, snaplen=0):
        """Describe an interface; returns its id for packet()/statistics()."""
        body = _codec["idb"].encode(dict(linktype=linktype, snaplen=snaplen))
        body += _options([(IF_NAME, name), (IF_DESCRIPTION, description), (IF_TSRESOL, b"\x09")])
        self._write(_block(IDB, body))
        self.interfaces.append(linktype)
        return len(self.interfaces) - 1

    def packet(self, interface, ts_ns, data, orig_len=None, comment=None, flags=None):
        """An Enhanced Packet Block; ts_ns in nanoseconds since the epoch."""
        high, low = _ts(ts_ns)
        caplen = len(data)
        opts = self._epb_options.get((comment, flags))
        if opts is None:
            if len(self._epb_options) >= EPB_OPTIONS_KEPT:
                self._epb_options.clear()
            opts = self._epb_options[(comment, flags)] = _options(
                [(OPT_COMMENT, comment), (EPB_FLAGS, None if flags is None else _U32.pack(flags))])
        total = 12 + _EPB.size + caplen + (-caplen % 4) + len(opts)
        head = _BLOCK_HEAD.pack(EPB, total) + _EPB.pack(interface, high, low, caplen,
                                                         caplen if orig_len is None else orig_len)
        # (a view of a reader's buffer would change under us: copied, as the caller's bytes are not)
        self._pending += (head, data if data.__class__ is bytes else bytes(data),
                          _PADDING[-caplen % 4] + opts + _U32.pack(total))
        self._pending_bytes += total
        if self._pending_bytes >= self.PENDING_BYTES or len(self._pending) >= self.PENDING_PIECES:
            self.flush()

    def blocks(self, blocks):
        """Whole blocks made elsewhere (a capture's EPBs, as views over a ring buffer), kept and
        written in order with the packets; the caller keeps them unchanged until flush().
        Returns how many were taken: all (RotatingWriter.blocks may take fewer)."""
        self._pending += blocks
        self._pending_bytes += sum(map(len, blocks))
        if self._pending_bytes >= self.PENDING_BYTES or len(self._pending) >= self.PENDING_PIECES:
            self.flush()
        return len(blocks)

    def statistics(self, interface, ts_ns, received=None, dropped=None, start_ns=None, comment=None):
        """An Interface Statistics Block: packets received and dropped so far."""
        high, low = _ts(ts_ns)
        body = _codec["isb"].encode(dict(interface=interface, ts_high=high, ts_low=low))
        body += _options([
            (OPT_COMMENT, comment),
            (ISB_STARTTIME, None if start_ns is None else _U32.pack(start_ns >> 32) + _U32.pack(start_ns & 0xFFFFFFFF)),
            (ISB_ENDTIME, _U32.pack(high) + _U32.pack(low)),
            (ISB_IFRECV, None if received is None else _U64.pack(received)),
            (ISB_IFDROP, None if dropped is None else _U64.pack(dropped)),
        ])
        self._write(_block(ISB, body))

    def close(self):
        if self.fd >= 0:
            try:
                self.flush()
            finally:
                os.close(self.fd)
                self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# -- reading -----------------------------------------------------------------------------

@dataclasses.dataclass
class Interface:
    id: int
    linktype: int
    snaplen: int
    name: str = ""
    description: str = ""
    tsresol_ns: int = 1000  # default resolution: microseconds


@dataclasses.dataclass
class Packet:
    interface: Interface
    ts_ns: int
    data: bytes
    orig_len: int
    comments: list
    flags: int | None = None

    @property
    def direction(self):
        """"in", "out" or "" from epb_flags."""
        return {INBOUND: "in", OUTBOUND: "out"}.get((self.flags or 0) & 3, "")

    @property
    def comment(self):
        return "\n".join(self.comments)


@dataclasses.dataclass
class Statistics:
    interface: Interface
    ts_ns: int
    received: int | None
    dropped: int | None
    comments: list


def _parse_options(data):
    pos, out = 0, []
    while pos + _OPTION.size <= len(data):
        code, length = _OPTION.unpack_from(data, pos)
        if code == OPT_END:
            break
        pos += _OPTION.size
        out.append((code, bytes(data[pos:pos + length])))
        pos += length + (-length % 4)
    return out


def _tsresol(value):
    exp = value[0]
    if exp & 0x80:
        raise PcapngError(f"binary timestamp resolution 2^-{exp & 0x7F} is not supported")
    return 10 ** max(0, 9 - exp) if exp <= 9 else None


class Reader:
    """Iterates Packet and Statistics records of a pcapng file.

    A file whose last block is torn (the writer was killed mid-write) reads
    up to the last whole block; `truncated` then says how many bytes were left."""

    def __init__(self, path):
        self.path = path
        self.interfaces = []
        self.application = ""
        self.truncated = 0
        try:
            with open(path, "rb") as f:
                self._data = f.read()
        except OSError as e:
            raise PcapngError(f"cannot read {path}: {e.strerror}") from None
        if len(self._data) < 28 or _U32.unpack_from(self._data, 0)[0] != SHB:
            raise PcapngError(f"{path}: not a pcapng file (no section header block)")
        if _U32.unpack_from(self._data, 8)[0] != BYTE_ORDER_MAGIC:
            raise PcapngError(f"{path}: big-endian pcapng is not supported")

    def __iter__(self):
        data, pos, end = self._data, 0, len(self._data)
        while pos < end:
            if end - pos < 12:
                self.truncated = end - pos
                return
            kind, length = _BLOCK_HEAD.unpack_from(data, pos)
            if length < 12 or length % 4 or pos + length > end:
                self.truncated = end - pos
                return
            body = memoryview(data)[pos + 8:pos + length - 4]
            pos += length
            if kind == SHB:
                self.interfaces = []
                for code, value in _parse_options(body[ShbBody.sizeof():]):
                    if code == SHB_USERAPPL:
                        self.application = value.decode(errors="replace")
            elif kind == IDB:
                linktype, snaplen = _IDB.unpack_from(body)
                iface = Interface(len(self.interfaces), linktype, snaplen)
                for code, value in _parse_options(body[_IDB.size:]):
                    if code == IF_NAME:
                        iface.name = value.decode(errors="replace")
                    elif code == IF_DESCRIPTION:
                        iface.description = value.decode(errors="replace")
                    elif code == IF_TSRESOL:
                        iface.tsresol_ns = _tsresol(value)
                self.interfaces.append(iface)
            elif kind == EPB:
                index, high, low, caplen, orig_len = _EPB.unpack_from(body)
                iface = self._interface(index)
                comments, flags = [], None
                for code, value in _parse_options(body[_EPB.size + caplen + (-caplen % 4):]):
                    if code == OPT_COMMENT:
                        comments.append(value.decode(errors="replace"))
                    elif code == EPB_FLAGS:
                        flags = _U32.unpack(value)[0]
                yield Packet(iface, ((high << 32) | low) * iface.tsresol_ns, bytes(body[_EPB.size:_EPB.size + caplen]),
                             orig_len, comments, flags)
            elif kind == ISB:
                index, high, low = _ISB.unpack_from(body)
                iface = self._interface(index)
                received = dropped = None
                comments = []
                for code, value in _parse_options(body[_ISB.size:]):
                    if code == ISB_IFRECV:
                        received = _U64.unpack(value)[0]
                    elif code == ISB_IFDROP:
                        dropped = _U64.unpack(value)[0]
                    elif code == OPT_COMMENT:
                        comments.append(value.decode(errors="replace"))
                yield Statistics(iface, ((high << 32) | low) * iface.tsresol_ns, received, dropped, comments)

    def _interface(self, index):
        if index >= len(self.interfaces):
            raise PcapngError(f"{self.path}: block refers to interface {index}, "
                              f"only {len(self.interfaces)} described")
        return self.interfaces[index]


def parse_comment(comment):
    """'pid=1 comm=x container=y' -> {'pid': '1', 'comm': 'x', 'container': 'y'} (values without spaces)."""
    out = {}
    for word in comment.split():
        key, sep, value = word.partition("=")
        if sep:
            out[key] = value
    return out
