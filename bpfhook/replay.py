"""bpfhook replay: send the client side of captured flows to a server again, and compare the answers.

Each flow (bpfhook.flows) becomes a plan: HTTP/1.x requests (http1), HTTP/2
streams (h2), raw client turns, or datagrams, each with the moment it was
captured. Flows replay concurrently from a pool of --concurrency threads,
each step sent at its captured offset scaled by --speed (or the k-th request
at k/--rate). Answers are compared with the captured ones (diff); the report
has per-path totals, the timing error and, with --rate, how far the achieved
rate fell short.

TLS: flows capture --tls wrote as plaintext replay like clear ones (their
ciphertext twins are left out); --tls sends them inside TLS to the target,
its certificate checked unless --insecure.
"""
import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import json
import os
import select
import socket
import ssl
import tempfile
import threading
import time

from bpfhook import diff, flows, h2, http1, targets
from bpfhook.targets import TargetError

NEEDS_ROOT = False
IDLE = 0.5  # seconds of silence that end reading answers no capture tells the length of
ANSWER_IDLE = 2.0  # seconds of silence that end waiting for a captured raw answer's bytes
CONCURRENCY = 256  # threads: keep-alive flows hold one each for their whole length
STOP_CHECK = 0.05  # seconds: how often a wait looks at the stop event
ON_TIME_MS = 10.0  # a paced request sent within this of its due time is on time
EXTRA_TIME = 60.0  # default --timeout: the capture's span at --speed, plus this
SOCK_TYPES = {"tcp": socket.SOCK_STREAM, "udp": socket.SOCK_DGRAM, "unix-stream": socket.SOCK_STREAM,
              "unix-dgram": socket.SOCK_DGRAM, "unix-seqpacket": socket.SOCK_SEQPACKET}


class ReplayError(TargetError):
    """A replay that cannot start: bad target, unknown flow, bad option."""


# -- options -------------------------------------------------------------------------------------

@dataclasses.dataclass
class Options:
    speed: float = 1.0  # None: as fast as the concurrency allows
    rate: float = None  # requests per second, instead of the captured timing
    concurrency: int = CONCURRENCY
    edits: http1.Edits = http1.Edits()
    rewrites: tuple = ()  # ((old bytes, new bytes), ...)
    ignore: tuple = ()  # header names left out of the comparison
    timeout: float = None  # the whole replay; None: the capture's span at this speed + EXTRA_TIME
    response_timeout: float = 5.0
    tls: object = None  # a Tls: each TCP flow inside TLS to the target


@dataclasses.dataclass(frozen=True)
class Tls:
    """--tls: the target's certificate checked against the system's CAs (or ca_file), unless insecure."""
    insecure: bool = False
    ca_file: str = None


@functools.lru_cache(maxsize=None)
def tls_context(tls, alpn=None):
    """The client SSLContext of a Tls, offering `alpn` (h2 for HTTP/2 plans) when given."""
    try:
        context = ssl.create_default_context(cafile=tls.ca_file)
    except (OSError, ssl.SSLError) as e:
        raise ReplayError(f"--ca-file {tls.ca_file}: {getattr(e, 'strerror', None) or e}") from None
    if tls.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols([alpn])
    return context


def parse_rewrite(text):
    """'OLD=NEW' with Python escapes (\\r\\n, \\x00) -> (old bytes, new bytes)."""
    import codecs

    old, sep, new = text.partition("=")
    if not sep or not old:
        raise ReplayError(f"bad --rewrite {text!r}: use OLD=NEW")
    return tuple(codecs.escape_decode(s.encode())[0] for s in (old, new))


def parse_map(text):
    """'ORIG=NEW' -> (original destination Target, new Target)."""
    orig, sep, new = text.partition("=")
    if not sep or not orig or not new:
        raise ReplayError(f"bad --map {text!r}: use ORIG_HOST:PORT=NEW_HOST:PORT (or Unix paths)")
    return targets.parse(orig, "--map original"), targets.parse(new, "--map target")


# -- plans: what each flow sends, when, and what it expects back ---------------------------------

@dataclasses.dataclass
class Exchange:
    """One request (HTTP) or one whole flow (raw bytes, datagrams) and how its replay went."""
    flow: int
    kind: str  # tcp, udp, unix-stream, ...
    protocol: str  # http/1.1, h2, grpc, bytes, datagrams
    target: str
    ts_ns: int  # captured
    offset: float = 0.0  # seconds after the replay's start it was due
    method: str = ""
    path: str = ""
    data: bytes = b""  # what is sent (raw flows: every client turn)
    expected: object = None  # diff.Response, bytes, a list of datagrams; None: nothing captured
    pipelined: bool = False  # captured sent before the previous answer was complete
    sent_at: float = None  # monotonic time of the replay's send
    status: int = None  # replayed
    captured_status: int = None
    received: object = None
    differences: list = dataclasses.field(default_factory=list)
    error: str = ""
    notes: list = dataclasses.field(default_factory=list)
    request: object = None  # HTTP/2: the request's fields, body and trailers (h2.Request)

    @property
    def outcome(self):
        if self.error:
            return "error"
        if self.expected is None:
            return "uncompared"
        return "different" if self.differences else "identical"

    @property
    def key(self):
        """The row of the per-path table it counts in."""
        if self.method:
            return f"{self.method} {self.path.split('?', 1)[0]}"
        return f"({self.protocol} over {self.kind})"

    def as_dict(self):
        return dict(flow=self.flow, kind=self.kind, protocol=self.protocol, target=self.target,
                    method=self.method or None, path=self.path or None, outcome=self.outcome,
                    captured_status=self.captured_status, status=self.status,
                    sent_bytes=len(self.data), due_s=round(self.offset, 6),
                    differences=self.differences, error=self.error or None, notes=self.notes)


@dataclasses.dataclass
class Plan:
    flow: flows.Flow
    target: targets.Target
    protocol: str
    steps: list  # Exchange, in the order they are sent
    start_ns: int  # when the captured connection began
    offset: float = 0.0  # seconds after the replay's start it connects


def protocol_of(flow):
    if SOCK_TYPES[flow.kind] != socket.SOCK_STREAM:
        return "datagrams" if SOCK_TYPES[flow.kind] == socket.SOCK_DGRAM else "bytes"
    head = flow.streams[flows.C2S].contiguous()[:8192]
    if head and head.startswith(h2.PREFACE[:len(head)]):
        return "h2"
    return "http/1.1" if http1.looks_like_request(head) else "bytes"


def _rewrite(data, rewrites):
    for old, new in rewrites:
        data = data.replace(old, new)
    return data


def make_plan(flow, target, opts):
    protocol = protocol_of(flow)
    base = dict(flow=flow.id, kind=flow.kind, target=str(target))
    steps = []
    if protocol == "http/1.1":
        steps = _http1_steps(flow, base, opts)
        protocol = protocol if steps else "bytes"  # not one whole request (a cut capture): sent as bytes
    elif protocol == "h2":
        steps = h2.steps(flow, base, opts, Exchange)
    if not steps:
        steps = _raw_steps(flow, base, opts, protocol)
    return Plan(flow, target, "grpc" if protocol == "h2" and any(s.protocol == "grpc" for s in steps) else protocol,
                steps, flow.first_ns)


def _http1_steps(flow, base, opts):
    c2s, s2c = flow.streams[flows.C2S], flow.streams[flows.S2C]
    data = c2s.contiguous()
    requests, end = http1.requests(data)
    answers = http1.responses(s2c.contiguous(), [r.method for r in requests])
    steps = []
    for i, request in enumerate(requests):
        answer = answers[i] if i < len(answers) else None
        previous = answers[i - 1] if 0 < i <= len(answers) else None
        step = Exchange(**base, protocol="http/1.1", ts_ns=c2s.ts_at(request.start), method=request.method,
                        path=request.target,
                        data=_rewrite(http1.edit_request(request, opts.edits), opts.rewrites),
                        expected=answer and diff.Response.from_http1(answer),
                        captured_status=answer.status if answer else None,
                        pipelined=previous is not None and c2s.ts_at(request.start) < s2c.ts_at(previous.end - 1))
        if answer is None:
            step.notes.append("no captured response to compare")
        steps.append(step)
    if end < len(data):
        (steps[-1].notes if steps else []).append(f"{len(data) - end} bytes after the last whole request not sent")
    return steps


def _raw_steps(flow, base, opts, protocol):
    """One Exchange for the whole flow; its data are the client's turns, sent by _run_raw."""
    turns = [m for m in flow.messages if m.direction == flows.C2S]
    answers = [m.data for m in flow.messages if m.direction == flows.S2C]
    first = turns[0].ts_ns if turns else flow.first_ns
    step = Exchange(**base, protocol=protocol, ts_ns=first, data=b"".join(_rewrite(t.data, opts.rewrites) for t in turns),
                    expected=(answers if protocol == "datagrams" else b"".join(answers)) if answers else None)
    step.notes += [p for p in flow.problems() if p.startswith(flows.C2S)]
    return [step]


def schedule(plans, opts):
    """Set each plan's and step's offset (seconds after the replay's start); the last step's.
    A raw flow is one step: its later turns keep their captured gaps (_run_raw)."""
    everything = sorted((s for p in plans for s in p.steps), key=lambda s: (s.ts_ns, s.flow))
    t0 = min((p.start_ns for p in plans), default=0)
    if opts.rate:
        for k, step in enumerate(everything):
            step.offset = k / opts.rate
        for p in plans:
            p.offset = min((s.offset for s in p.steps), default=0.0)
    elif opts.speed:
        for step in everything:
            step.offset = (step.ts_ns - t0) / 1e9 / opts.speed
        for p in plans:
            p.offset = (p.start_ns - t0) / 1e9 / opts.speed
    return max((s.offset for s in everything), default=0.0)


# -- running a plan ------------------------------------------------------------------------------

class Clock:
    """Monotonic time of the replay's start; waits bounded by the deadline and the stop event."""

    def __init__(self, deadline, stop, paced):
        self.start = time.monotonic()
        self.deadline = self.start + deadline
        self.stop = stop
        self.paced = paced

    def wait(self, offset):
        """Sleep until `offset` seconds after the start; False when the replay must end first."""
        if self.paced:
            due = self.start + offset
            while (left := min(due, self.deadline) - time.monotonic()) > 0:
                if self.stop.wait(min(left, 0.05)):
                    return False
        return not self.stop.is_set() and time.monotonic() < self.deadline

    def left(self, cap):
        return max(0.0, min(cap, self.deadline - time.monotonic()))


def _connect(plan, clock, opts, cleanup):
    sock = socket.socket(plan.target.family, SOCK_TYPES[plan.flow.kind]
                         if plan.target.unix or SOCK_TYPES[plan.flow.kind] != socket.SOCK_SEQPACKET
                         else socket.SOCK_STREAM)
    try:
        if plan.target.unix and sock.type == socket.SOCK_DGRAM:
            # a name the server can answer to; a path, not an abstract name: those are per network
            # namespace, and the server may be in a container's
            directory = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="bpfhook-replay-"))
            sock.bind(os.path.join(directory, "client.sock"))
        sock.settimeout(max(0.01, clock.left(opts.response_timeout)))
        sock.connect(plan.target.address)
        if opts.tls is not None:
            context = tls_context(opts.tls, "h2" if plan.protocol in ("h2", "grpc") else None)
            sock = context.wrap_socket(sock, server_hostname=plan.target.address[0])
    except OSError:
        sock.close()
        raise
    return sock


def run_plan(plan, clock, opts):
    """Replay one flow; its steps get their outcome. Never raises for what the server does."""
    if not clock.wait(plan.offset):
        return _unsent(plan.steps, clock)
    with contextlib.ExitStack() as cleanup:
        try:
            sock = _connect(plan, clock, opts, cleanup)
        except OSError as err:
            for s in plan.steps:
                s.error = f"connect: {_error_text(err)}"
            return
        try:
            {"http/1.1": _run_http1, "h2": h2.run, "grpc": h2.run, "bytes": _run_raw,
             "datagrams": _run_datagrams}[plan.protocol](plan, sock, clock, opts)
        finally:
            sock.close()


def _unsent(steps, clock):
    why = "stopped" if clock.stop.is_set() else "--timeout reached"
    for s in steps:
        if s.sent_at is None and not s.error:
            s.error = f"not sent: {why}"


def _run_http1(plan, sock, clock, opts):
    reader = http1.ResponseReader()
    waiting = collections.deque()
    pending = collections.deque(plan.steps)
    try:
        while pending or waiting:
            if pending and (not waiting or pending[0].pipelined):
                step = pending.popleft()
                if not clock.wait(step.offset):
                    pending.appendleft(step)
                    break
                step.sent_at = time.monotonic()
                sock.sendall(step.data)
                waiting.append(step)
                continue
            step = waiting.popleft()
            response = _read_response(sock, reader, step.method, clock, opts)
            step.status = response.status
            step.received = diff.Response.from_http1(response)
            if step.expected is not None:
                step.differences = diff.compare(step.expected, step.received, opts.ignore)
            if response.header("connection", "").lower() == "close" and (pending or waiting):
                raise ConnectionError("the server closed the connection (Connection: close)")
    except (OSError, http1.HttpError) as err:
        message = _error_text(err)
        for s in ([step] if step.status is None and step.sent_at is not None else []) + list(waiting):
            s.error = message
        for s in pending:
            s.error = f"not sent: {message}"
    _unsent(plan.steps, clock)


def _error_text(err):
    if isinstance(err, (TimeoutError, socket.timeout)):
        return "no complete response in time"
    if isinstance(err, ssl.SSLCertVerificationError):
        return (f"TLS: certificate verify failed: {err.verify_message} "
                "(--ca-file FILE trusts its CA; --insecure skips the check)")
    return getattr(err, "strerror", None) or str(err) or type(err).__name__


def _read_response(sock, reader, method, clock, opts):
    until = time.monotonic() + opts.response_timeout
    while True:
        response = reader.next_response(method)
        if response is not None:
            return response
        _recv_ready(sock, clock, until)
        reader.feed(sock.recv(1 << 16))


def _recv_ready(sock, clock, until):
    """Wait until the socket has something to read; TimeoutError at `until` or the replay's end,
    looking at the stop event every STOP_CHECK seconds."""
    while True:
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return  # decrypted bytes the socket itself no longer shows
        left = min(until, clock.deadline) - time.monotonic()
        if left <= 0 or clock.stop.is_set():
            raise TimeoutError
        sock.settimeout(min(left, STOP_CHECK))
        if select.select([sock], [], [], min(left, STOP_CHECK))[0]:
            return


def _recv_until(sock, want, clock, idle):
    """Read until `want` bytes (None: until EOF or `idle` seconds of silence) or the deadline."""
    out = bytearray()
    while want is None or len(out) < want:
        try:
            _recv_ready(sock, clock, time.monotonic() + idle)
            data = sock.recv(1 << 16)
        except (TimeoutError, socket.timeout):
            break
        if not data:
            break
        out += data
    return bytes(out)


def _run_raw(plan, sock, clock, opts):
    """A stream that is no HTTP: client turns at their captured moments, each captured answer's
    length read back before the next turn; compared as bytes."""
    (step,) = plan.steps
    flow, got = plan.flow, []
    scale = (1 / opts.speed) if opts.speed and not opts.rate else 0
    try:
        for m in flow.messages:
            if m.direction == flows.C2S:
                if not clock.wait(step.offset + (m.ts_ns - step.ts_ns) / 1e9 * scale):
                    break
                if step.sent_at is None:
                    step.sent_at = time.monotonic()
                sock.sendall(_rewrite(m.data, opts.rewrites))
            else:
                got.append(_recv_until(sock, len(m.data), clock, ANSWER_IDLE))
        if sock.type == socket.SOCK_STREAM and not isinstance(sock, ssl.SSLSocket):
            sock.shutdown(socket.SHUT_WR)  # (TLS has no half close: its reads need the write side)
        got.append(_recv_until(sock, None, clock, IDLE))  # the rest, until EOF or silence
    except OSError as err:
        step.error = _error_text(err)
    step.received = b"".join(got)
    _unsent([step], clock)
    if step.expected is not None and not step.error and step.received != step.expected:
        step.differences = [f"answer differs ({len(step.expected)} B -> {len(step.received)} B)"] + [
            f"  {line}" for line in diff.unified(step.expected, step.received)]


def _run_datagrams(plan, sock, clock, opts):
    """Datagrams at their captured moments; answers read as they come, compared in order."""
    (step,) = plan.steps
    flow, got = plan.flow, []
    scale = (1 / opts.speed) if opts.speed and not opts.rate else 0
    sends = [m for m in flow.messages if m.direction == flows.C2S]
    want = len(step.expected) if step.expected else None
    sock.setblocking(False)
    try:
        for m in sends:
            due = clock.start + step.offset + (m.ts_ns - step.ts_ns) / 1e9 * scale
            while (left := due - time.monotonic()) > 0 and clock.left(1) > 0 and not clock.stop.is_set():
                _recv_datagrams(sock, got, min(left, 0.05))
            if not clock.wait(0):
                break
            if step.sent_at is None:
                step.sent_at = time.monotonic()
            sock.send(_rewrite(m.data, opts.rewrites))
        idle = ANSWER_IDLE if want else IDLE
        while (want is None or len(got) < want) and not clock.stop.is_set() and \
                _recv_datagrams(sock, got, clock.left(idle)):
            pass
    except OSError as err:
        step.error = _error_text(err)
    step.received = got
    _unsent([step], clock)
    if step.expected is not None and not step.error:
        for i, (a, b) in enumerate(zip(step.expected, got), 1):
            if a != b:
                step.differences += [f"datagram {i} differs ({len(a)} B -> {len(b)} B)"] + [
                    f"  {line}" for line in diff.unified(a, b)[:3]]
        if len(got) != len(step.expected):
            step.differences.append(f"{len(step.expected)} answers captured, {len(got)} received")


def _recv_datagrams(sock, got, wait):
    """Wait up to `wait` seconds for datagrams; append what came. False when nothing did."""
    if not select.select([sock], [], [], max(0.0, wait))[0]:
        return False
    while True:
        try:
            got.append(sock.recv(1 << 16))
        except BlockingIOError:
            return True


# -- the whole replay ----------------------------------------------------------------------------

def select_flows(capture, to, maps, ids=(), tls=False):
    """[(flow, target)] to replay: each flow to its --map target, else to --to when its kind fits
    (with tls: TCP flows only). The ciphertext of a connection whose plaintext was captured is
    left out: the plaintext is replayed."""
    by_id = {f.id: f for f in capture.flows}
    chosen = []
    for i in ids:
        if i not in by_id:
            raise ReplayError(f"no flow {i} in the capture (flows 1..{len(by_id)})")
    for f in ([by_id[i] for i in ids] if ids else capture.flows):
        if not ids and (f.duplicate or f.tls == "ciphertext" or not any(m.direction == flows.C2S for m in f.messages)):
            continue
        target = _mapped(f, maps) or to
        if target is None or not _fits(f, target) or tls and f.kind != "tcp":
            if ids:
                where = target.text if target else "no target (--to or --map)"
                raise ReplayError(f"flow {f.id} is {f.kind}; it cannot be replayed to {where}")
            continue
        chosen.append((f, target))
    return chosen


def _fits(flow, target):
    return flow.kind.startswith("unix-") == target.unix


def _mapped(flow, maps):
    for orig, new in maps:
        if orig.unix and flow.path and flow.path.decode("latin-1") == orig.address:
            return new
        if not orig.unix and flow.server_addr and (str(flow.server_addr[0]), flow.server_addr[1]) == orig.address:
            return new
    return None


def replay(path, to=None, maps=(), ids=(), opts=None, stop=None):
    """Replay the capture at `path`; the report (a dict, see Report)."""
    opts = opts or Options()
    to = targets.parse(to, "--to") if isinstance(to, str) else to
    maps = [parse_map(m) if isinstance(m, str) else m for m in maps]
    if to is None and not maps:
        raise ReplayError("nowhere to replay: give --to TARGET or --map ORIG=NEW")
    if opts.tls is not None and any(t is not None and t.unix for t in [to] + [new for _, new in maps]):
        raise ReplayError("--tls replays to TCP servers, not to Unix sockets")
    plans = [make_plan(f, t, opts) for f, t in select_flows(flows.read(path), to, maps, ids, opts.tls is not None)]
    span = schedule(plans, opts)
    timeout = opts.timeout if opts.timeout is not None else span + EXTRA_TIME
    stop = stop or threading.Event()
    clock = Clock(timeout, stop, paced=bool(opts.speed or opts.rate))
    with concurrent.futures.ThreadPoolExecutor(max_workers=opts.concurrency,
                                               thread_name_prefix="replay") as pool:
        try:
            futures = []
            for plan in sorted(plans, key=lambda p: p.offset):
                if not clock.wait(plan.offset - 0.002):  # a little early: the connect precedes the first send
                    break
                futures.append(pool.submit(run_plan, plan, clock, opts))
            for fut in futures:
                fut.result()
        except BaseException:
            stop.set()
            raise
    elapsed = time.monotonic() - clock.start
    for plan in plans:
        _unsent(plan.steps, clock)
    return Report(path, to, maps, plans, opts, elapsed, timeout, clock.start).as_dict()


# -- the report ----------------------------------------------------------------------------------

def percentile(values, q):
    """The q-th percentile (nearest rank) of values, None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q / 100 * len(ordered) + 0.5)) - 1))]


@dataclasses.dataclass
class Report:
    path: str
    to: object
    maps: list
    plans: list
    opts: Options
    elapsed: float
    timeout: float
    started: float  # monotonic time of the replay's start

    def timing(self, steps):
        sent = sorted((s for s in steps if s.sent_at is not None), key=lambda s: (s.ts_ns, s.flow))
        out = dict(mode="rate" if self.opts.rate else "speed", speed=self.opts.speed, rate=self.opts.rate,
                   concurrency=self.opts.concurrency, elapsed_s=round(self.elapsed, 3), sent=len(sent))
        if len(sent) >= 2:
            first, last = min(s.sent_at for s in sent), max(s.sent_at for s in sent)
            out["achieved_rate"] = round((len(sent) - 1) / (last - first), 2) if last > first else None
        if self.opts.rate and out.get("achieved_rate"):
            out["shortfall_pct"] = round(max(0.0, 100 * (1 - out["achieved_rate"] / self.opts.rate)), 2)
        if self.opts.speed or self.opts.rate:
            gaps = [abs((b.sent_at - a.sent_at) - (b.offset - a.offset)) * 1e3 for a, b in zip(sent, sent[1:])]
            late = [(s.sent_at - self.started - s.offset) * 1e3 for s in sent]
            out.update(gap_error_ms=dict(p50=_ms(percentile(gaps, 50)), p99=_ms(percentile(gaps, 99))),
                       late_ms=dict(p50=_ms(percentile(late, 50)), p99=_ms(percentile(late, 99))),
                       on_time_pct=round(100 * sum(x <= ON_TIME_MS for x in late) / len(late), 2) if late else None)
        return out

    def as_dict(self):
        steps = [s for p in self.plans for s in p.steps]
        counts = collections.Counter(s.outcome for s in steps)
        paths = collections.OrderedDict()
        for s in sorted(steps, key=lambda s: s.key):
            row = paths.setdefault(s.key, collections.Counter())
            row["requests"] += 1
            row[s.outcome] += 1
        return dict(
            file=str(self.path), to=self.to.text if self.to else None,
            maps=[f"{a.text}={b.text}" for a, b in self.maps],
            targets=sorted({str(p.target) + (f" ({p.target.via})" if p.target.via else "") for p in self.plans}),
            flows=len(self.plans), timeout_s=round(self.timeout, 3),
            summary=dict(requests=len(steps), identical=counts["identical"], different=counts["different"],
                         errors=counts["error"], uncompared=counts["uncompared"]),
            paths=[dict(path=k, requests=c["requests"], identical=c["identical"], different=c["different"],
                        errors=c["error"], uncompared=c["uncompared"]) for k, c in paths.items()],
            timing=self.timing(steps),
            exchanges=[s.as_dict() for s in steps])


def _ms(value):
    return None if value is None else round(value, 3)


def text(report, show=20):
    s, t = report["summary"], report["timing"]
    pace = f"rate {t['rate']:g}/s" if t["mode"] == "rate" else f"speed {t['speed']:g}" if t["speed"] else "speed max"
    lines = [f"replayed {s['requests']} requests in {report['flows']} flows to {', '.join(report['targets']) or '-'} "
             f"in {t['elapsed_s']:.2f} s ({pace}, concurrency {t['concurrency']}): {s['identical']} identical, "
             f"{s['different']} different, {s['errors']} errors, {s['uncompared']} without a captured answer"]
    timing = []
    if t.get("achieved_rate") is not None:
        timing.append(f"achieved {t['achieved_rate']:g} requests/s")
    if t.get("shortfall_pct"):
        timing.append(f"{t['shortfall_pct']:g}% short of --rate {t['rate']:g} (the target or --concurrency "
                      "could not keep up)")
    if t.get("gap_error_ms") and t["gap_error_ms"]["p50"] is not None:
        timing.append(f"gap error p50 {t['gap_error_ms']['p50']:.2f} ms, p99 {t['gap_error_ms']['p99']:.2f} ms")
    if t.get("on_time_pct") is not None:
        timing.append(f"{t['on_time_pct']:g}% sent within {ON_TIME_MS:g} ms of their time (late p99 "
                      f"{t['late_ms']['p99']:.1f} ms)")
    if timing:
        lines.append("timing: " + "; ".join(timing))
    if report["paths"]:
        rows = [("PATH", "REQUESTS", "IDENTICAL", "DIFFERENT", "ERRORS", "UNCOMPARED")] + [
            (p["path"], p["requests"], p["identical"], p["different"], p["errors"], p["uncompared"])
            for p in report["paths"]]
        widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
        lines += [""] + ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    bad = [e for e in report["exchanges"] if e["outcome"] in ("different", "error")]
    if bad:
        lines += ["", f"differences and errors ({len(bad)}{'' if len(bad) <= show else f', first {show}'})"]
        for e in bad[:show]:
            what = f"{e['method']} {e['path']}" if e["method"] else f"{e['protocol']} over {e['kind']}"
            lines.append(f"flow {e['flow']} {what}" + (f": error: {e['error']}" if e["error"] else ""))
            lines += [f"  {d}" for d in e["differences"]]
    return "\n".join(lines)


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


def _positive(name, value):
    if value is not None and not value > 0:
        raise ReplayError(f"bad {name} {value:g}: must be > 0")
    return value


def add_arguments(parser):
    parser.add_argument("file", metavar="FILE.pcapng")
    parser.add_argument("--to", metavar="TARGET", help=f"the server: {targets.FORMS}")
    parser.add_argument("--map", action="append", default=[], metavar="ORIG=NEW",
                        help="flows captured to ORIG (HOST:PORT or a Unix path) go to NEW; repeatable; "
                             "other flows go to --to")
    parser.add_argument("--flow", type=int, action="append", default=[], metavar="ID",
                        help="replay this flow (ids from bpfhook analyze); repeatable; default: all that fit")
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument("--speed", default="1.0", metavar="FACTOR|max",
                      help="timing: 1.0 as captured, 2 twice as fast, max as fast as --concurrency allows")
    pace.add_argument("--rate", type=float, metavar="R",
                      help="R requests per second in captured order, none dropped (the report says how far "
                           "a slower target kept it short)")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY, metavar="N",
                        help=f"flows in flight at most (default {CONCURRENCY})")
    parser.add_argument("--host", metavar="NAME", help="HTTP: set the Host header (HTTP/2: :authority)")
    parser.add_argument("--header", action="append", default=[], metavar="'K: V'",
                        help="HTTP: add or replace a header; repeatable")
    parser.add_argument("--drop-header", action="append", default=[], metavar="K",
                        help="HTTP: remove a header; repeatable")
    parser.add_argument("--rewrite", action="append", default=[], metavar="OLD=NEW",
                        help="replace bytes in what the client sends (escapes like \\r\\n allowed); repeatable")
    parser.add_argument("--ignore-header", action="append", default=[], metavar="K",
                        help="leave this response header out of the comparison (beside Date, Server, ...); "
                             "repeatable")
    parser.add_argument("--timeout", type=float, metavar="SEC",
                        help=f"bound for the whole replay (default: the capture's span at --speed + {EXTRA_TIME:g})")
    parser.add_argument("--response-timeout", type=float, default=5.0, metavar="SEC",
                        help="wait for one response at most this long (default 5)")
    parser.add_argument("--fail-on-diff", action="store_true",
                        help="exit 1 when any answer differs or any request fails (for CI)")
    parser.add_argument("--show", type=int, default=20, metavar="N", help="differences listed (default 20)")
    parser.add_argument("--json", action="store_true", help="the whole report as one JSON document")
    parser.add_argument("--tls", action="store_true", help="send each TCP flow inside TLS to the target")
    parser.add_argument("--insecure", action="store_true", help="with --tls: do not check the server's certificate")
    parser.add_argument("--ca-file", metavar="PEM", help="with --tls: trust this CA (or self-signed certificate)")


def options(args):
    try:
        headers = tuple(http1.parse_header(h) for h in args.header)
    except ValueError as err:
        raise ReplayError(f"bad --header: {err}") from None
    if args.concurrency <= 0:
        raise ReplayError(f"bad --concurrency {args.concurrency}: must be > 0")
    if (args.insecure or args.ca_file) and not args.tls:
        raise ReplayError("--insecure and --ca-file go with --tls")
    tls = Tls(args.insecure, args.ca_file) if args.tls else None
    if tls is not None:
        tls_context(tls)  # a bad --ca-file: one line before anything is sent
    return Options(speed=None if args.rate else _speed(args.speed),
                   rate=_positive("--rate", args.rate), concurrency=args.concurrency,
                   edits=http1.Edits(args.host, headers, tuple(args.drop_header)),
                   rewrites=tuple(parse_rewrite(t) for t in args.rewrite),
                   ignore=tuple(args.ignore_header), timeout=_positive("--timeout", args.timeout),
                   response_timeout=_positive("--response-timeout", args.response_timeout), tls=tls)


def run(args):
    opts = options(args)
    report = replay(args.file, args.to, args.map, args.flow, opts)
    print(json.dumps(report, indent=1) if args.json else text(report, args.show))
    s = report["summary"]
    if not args.json and not s["requests"]:
        print(f"no flow in {args.file} fits {args.to or 'the --map targets'}")
    if s["errors"] or args.fail_on_diff and s["different"]:
        return 1
    return 0
