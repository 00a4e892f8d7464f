"""bpfhook replay: send the client side of captured flows to a server again.

Each selected flow (bpfhook.flows: TCP streams reassembled, UDP datagrams,
Unix-socket conversations) is replayed on a new connection/socket to the
target, its client turns sent with the captured gaps between them (scaled
by --speed, or none with --speed max). Where the capture holds the
server's side too, the replayed server's answer is read up to the captured
length and compared byte for byte. Flows are replayed one after the other;
everything is bounded by --timeout.

Only loopback addresses, lab container addresses and Unix paths are
targets: replaying captured requests at a production host is refused.

TLS: flows capture --tls wrote as plaintext replay like clear ones (their
ciphertext twins are left out); --tls sends them inside TLS to the target,
its certificate checked unless --insecure.
"""
import codecs
import dataclasses
import ipaddress
import json
import socket
import ssl
import time

from bpfhook import flows
from bpfhook.lab import Lab
from pybpf.errors import BpfError

NEEDS_ROOT = False
IDLE = 0.5  # seconds of silence that end reading answers no capture tells the length of
ANSWER_IDLE = 2.0  # seconds of silence that end waiting for a captured answer's bytes
SOCK_TYPES = {"tcp": socket.SOCK_STREAM, "udp": socket.SOCK_DGRAM, "unix-stream": socket.SOCK_STREAM,
              "unix-dgram": socket.SOCK_DGRAM, "unix-seqpacket": socket.SOCK_SEQPACKET}


class ReplayError(BpfError):
    """A replay that cannot start: bad target, unknown flow, bad option."""


@dataclasses.dataclass(frozen=True)
class Target:
    family: int
    address: object  # (host, port) or a path (str; abstract names start with NUL)
    text: str

    @property
    def unix(self):
        return self.family == socket.AF_UNIX


def lab_addresses():
    out = set()
    for c in Lab.list():
        out.update(ipaddress.ip_address(a) for a in (c.ipv4, c.ipv6) if a)
    return out


def parse_target(text):
    """HOST:PORT ([v6]:PORT) on loopback or a lab container, or a Unix path (@name: abstract)."""
    if text.startswith(("/", ".", "@")):
        return Target(socket.AF_UNIX, "\0" + text[1:] if text.startswith("@") else text, text)
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        addr = ipaddress.ip_address("127.0.0.1" if host == "localhost" else host)
        port = int(port)
        if not sep or not 0 < port < 65536:
            raise ValueError
    except ValueError:
        raise ReplayError(f"bad --to {text!r}: use IP:PORT, [IPv6]:PORT or a Unix socket path") from None
    if not addr.is_loopback and addr not in lab_addresses():
        raise ReplayError(f"refusing to replay to {addr}: only loopback and lab container addresses")
    return Target(socket.AF_INET if addr.version == 4 else socket.AF_INET6, (str(addr), port), text)


def parse_rewrite(text):
    """'OLD=NEW' with Python escapes (\\r\\n, \\x00) -> (old bytes, new bytes)."""
    old, sep, new = text.partition("=")
    if not sep or not old:
        raise ReplayError(f"bad --rewrite {text!r}: use OLD=NEW")
    return tuple(codecs.escape_decode(s.encode())[0] for s in (old, new))


def tls_context(insecure=False, ca_file=None):
    """The client side of --tls: the system's CAs (or ca_file) and hostname check, none with insecure."""
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as e:
        raise ReplayError(f"--ca-file {ca_file}: {getattr(e, 'strerror', None) or e}") from None
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def select(capture, target, ids=(), tls=False):
    """The flows to replay to this target: the given ids, or every one of a kind it can take
    (the ciphertext of a connection whose plaintext was captured is left out: it is replayed)."""
    kinds = ("tcp",) if tls else ("tcp", "udp")
    fits = (lambda f: f.kind.startswith("unix-")) if target.unix else (lambda f: f.kind in kinds)
    by_id = {f.id: f for f in capture.flows}
    if ids:
        for i in ids:
            if i not in by_id:
                raise ReplayError(f"no flow {i} in the capture (flows 1..{len(by_id)})")
            if not fits(by_id[i]):
                raise ReplayError(f"flow {i} is {by_id[i].kind}; it cannot be replayed to {target.text}")
        return [by_id[i] for i in ids]
    return [f for f in capture.flows if fits(f) and not f.duplicate and f.tls != "ciphertext"
            and any(m.direction == flows.C2S for m in f.messages)]


@dataclasses.dataclass
class Result:
    flow: int
    kind: str
    messages: int = 0  # client turns/datagrams sent
    sent: bytes = b""
    received: bytes = b""
    expected: bytes = None  # the captured answer, None when the capture has no server side
    error: str = ""
    problems: list = dataclasses.field(default_factory=list)  # reassembly gaps: what could not be sent

    @property
    def verdict(self):
        if self.error:
            return f"error: {self.error}"
        if self.expected is None:
            return f"answer {len(self.received)} B; no captured answer to compare"
        if self.received == self.expected:
            return f"same answer ({len(self.received)} B)"
        at = next((i for i, (a, b) in enumerate(zip(self.received, self.expected)) if a != b),
                  min(len(self.received), len(self.expected)))
        if len(self.received) == len(self.expected):
            return f"answer differs from byte {at} (same length {len(self.received)} B)"
        return f"answer length {len(self.received)} B vs captured {len(self.expected)} B, first difference at byte {at}"

    def as_dict(self):
        return dict(flow=self.flow, kind=self.kind, messages=self.messages, sent_bytes=len(self.sent),
                    received_bytes=len(self.received),
                    expected_bytes=None if self.expected is None else len(self.expected),
                    same=self.expected is not None and not self.error and self.received == self.expected,
                    verdict=self.verdict, problems=self.problems)


class _Clock:
    """Turns captured timestamps into waits: each message goes out its captured gap after the previous one."""

    def __init__(self, speed, deadline):
        self.speed, self.deadline = speed, deadline
        self.last_ts = self.last_local = None

    def wait(self, ts_ns):
        if self.speed and self.last_ts is not None:
            due = self.last_local + (ts_ns - self.last_ts) / 1e9 / self.speed
            time.sleep(max(0.0, min(due, self.deadline) - time.monotonic()))
        self.mark(ts_ns)

    def mark(self, ts_ns):
        self.last_ts, self.last_local = ts_ns, time.monotonic()


def _rewrite(data, rewrites):
    for old, new in rewrites:
        data = data.replace(old, new)
    return data


def _recv_until(sock, want, deadline, idle=None):
    """Read until `want` bytes (None: until EOF or `idle` seconds of silence) or the deadline."""
    out = bytearray()
    while want is None or len(out) < want:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(min(left, idle) if idle else left)
        try:
            data = sock.recv(65536)
        except (TimeoutError, socket.timeout):
            break
        if not data:
            break
        out += data
    return bytes(out)


def replay_flow(flow, target, speed=None, rewrites=(), deadline=None, tls=None):
    """Replay one flow; a Result, never an exception for what the server does. tls: an
    ssl.SSLContext to send the flow inside TLS."""
    deadline = deadline or time.monotonic() + 30
    r = Result(flow.id, flow.kind, problems=[p for p in flow.problems() if p.startswith(flows.C2S)])
    datagrams = SOCK_TYPES[flow.kind] == socket.SOCK_DGRAM
    has_answer = any(m.direction == flows.S2C for m in flow.messages)
    sock = socket.socket(target.family, SOCK_TYPES[flow.kind])
    clock = _Clock(speed, deadline)
    got, want = [], []
    try:
        if target.unix and datagrams:
            sock.bind("")  # autobind an abstract name: the server can answer
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        sock.connect(target.address)
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname=target.address[0])
        for m in flow.messages:
            if m.direction == flows.C2S:
                clock.wait(m.ts_ns)
                data = _rewrite(m.data, rewrites)
                sock.sendall(data) if not datagrams else sock.send(data)
                r.messages += 1
                r.sent += data
            else:
                want.append(m.data)
                answer = (_recv_until(sock, len(m.data), deadline, ANSWER_IDLE) if not datagrams
                          else _recv_datagram(sock, min(deadline, time.monotonic() + ANSWER_IDLE)))
                got.append(answer)
                clock.mark(m.ts_ns)
        if not datagrams:
            if tls is None:  # (a TLS connection cannot be half closed: its reads need the write side)
                sock.shutdown(socket.SHUT_WR)
            got.append(_recv_until(sock, None, deadline, IDLE))  # the rest, until EOF or silence
        elif not has_answer:
            while (d := _recv_datagram(sock, min(deadline, time.monotonic() + IDLE))) is not None:
                got.append(d)
    except ssl.SSLCertVerificationError as e:
        r.error = (f"TLS: certificate verify failed: {e.verify_message} "
                   "(--ca-file FILE trusts its CA; --insecure skips the check)")
    except OSError as e:
        r.error = e.strerror or str(e)
    finally:
        sock.close()
    r.received = b"".join(g for g in got if g)
    r.expected = b"".join(want) if has_answer else None
    return r


def _recv_datagram(sock, deadline):
    sock.settimeout(max(0.001, deadline - time.monotonic()))
    try:
        return sock.recv(65536)
    except (TimeoutError, socket.timeout):
        return None


def replay(path, to, ids=(), speed=None, rewrites=(), timeout=30.0, tls=None):
    """Replay the flows of the capture at `path` to `to`; a list of Result. speed None: as fast as possible.
    tls: an ssl.SSLContext (tls_context()) to replay inside TLS."""
    target = parse_target(to)
    if tls is not None and target.unix:
        raise ReplayError(f"--tls replays to a TCP server, not to {target.text}")
    chosen = select(flows.read(path), target, ids, tls is not None)
    deadline = time.monotonic() + timeout
    results = []
    for flow in chosen:
        if time.monotonic() >= deadline:
            results.append(Result(flow.id, flow.kind, error=f"not replayed: --timeout {timeout:g}s reached"))
            continue
        results.append(replay_flow(flow, target, speed, rewrites, deadline, tls))
    return results


# -- command line -------------------------------------------------------------------------

def _speed(text):
    if text == "max":
        return None
    try:
        speed = float(text)
        if speed > 0:
            return speed
    except ValueError:
        pass
    raise ReplayError(f"bad --speed {text!r}: a factor > 0 (1.0: as captured) or max")


def add_arguments(parser):
    parser.add_argument("file", metavar="FILE.pcapng")
    parser.add_argument("--to", required=True, metavar="HOST:PORT|UNIX_PATH",
                        help="the server: loopback or lab container address, or a Unix socket path (@name: abstract)")
    parser.add_argument("--flow", type=int, action="append", default=[], metavar="ID",
                        help="replay this flow (ids from bpfhook analyze); repeatable; default: all that fit")
    parser.add_argument("--speed", default="1.0", metavar="FACTOR|max",
                        help="timing: 1.0 as captured, 2 twice as fast, max without waits")
    parser.add_argument("--rewrite", action="append", default=[], metavar="OLD=NEW",
                        help="replace bytes in what the client sends (escapes like \\r\\n allowed); repeatable")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="SEC", help="bound for the whole replay")
    parser.add_argument("--json", action="store_true", help="one JSON document")
    parser.add_argument("--tls", action="store_true", help="send the flows inside TLS to the target")
    parser.add_argument("--insecure", action="store_true", help="with --tls: do not check the server's certificate")
    parser.add_argument("--ca-file", metavar="PEM", help="with --tls: trust this CA (or self-signed certificate)")


def run(args):
    if args.timeout <= 0:
        raise ReplayError(f"bad --timeout {args.timeout}: must be > 0")
    if (args.insecure or args.ca_file) and not args.tls:
        raise ReplayError("--insecure and --ca-file go with --tls")
    context = tls_context(args.insecure, args.ca_file) if args.tls else None
    results = replay(args.file, args.to, args.flow, _speed(args.speed),
                     [parse_rewrite(t) for t in args.rewrite], args.timeout, context)
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=1))
    else:
        if not results:
            print(f"no flow in {args.file} fits {args.to}")
        for r in results:
            notes = f" [{'; '.join(r.problems)}]" if r.problems else ""
            print(f"flow {r.flow} {r.kind}: sent {r.messages} messages, {len(r.sent)} B; {r.verdict}{notes}")
    return 1 if any(r.error for r in results) else 0
