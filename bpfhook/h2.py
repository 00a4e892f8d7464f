"""HTTP/2 over cleartext (h2c, prior knowledge) and gRPC: frames, captured conversations, a replay client.

A captured connection is read frame by frame on both sides (HEADERS and
CONTINUATION decoded with hpack, DATA, trailers) into requests and responses
paired by stream id. Replay opens its own connection, sends each request on
a new stream at its captured moment (streams overlap as captured), honours
flow control, answers SETTINGS and PING, and hands each response to the diff.
gRPC is HTTP/2 with content-type application/grpc: its status is in the
trailers (grpc-status, grpc-message), compared like headers.
"""
import dataclasses
import select
import ssl
import time

from bpfhook import diff, flows, hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
SETTINGS_HEADER_TABLE_SIZE, SETTINGS_ENABLE_PUSH, SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_FRAME_SIZE = 1, 2, 4, 5
DEFAULT_WINDOW = 65535
DEFAULT_FRAME = 16384
OUR_WINDOW = (1 << 31) - 1  # we read everything: the server is never held back by us
GRPC_TRAILERS = ("grpc-status", "grpc-message", "grpc-status-details-bin")


class H2Error(ValueError):
    """Bytes that are no HTTP/2 this module reads."""


@dataclasses.dataclass
class Frame:
    type: int
    flags: int
    stream: int
    payload: bytes
    offset: int = 0  # in the stream it was read from


def frame(type_, flags, stream, payload=b""):
    return len(payload).to_bytes(3, "big") + bytes([type_, flags]) + stream.to_bytes(4, "big") + payload


def read_frames(data, pos=0):
    """([Frame], offset after the last whole frame)."""
    out = []
    while len(data) - pos >= 9:
        length = int.from_bytes(data[pos:pos + 3], "big")
        if len(data) - pos < 9 + length:
            break
        out.append(Frame(data[pos + 3], data[pos + 4], int.from_bytes(data[pos + 5:pos + 9], "big") & 0x7FFFFFFF,
                         bytes(data[pos + 9:pos + 9 + length]), pos))
        pos += 9 + length
    return out, pos


def _unpad(f):
    """A HEADERS or DATA payload without its padding and priority fields."""
    payload, start = f.payload, 0
    pad = 0
    if f.flags & PADDED:
        if not payload:
            raise H2Error("padded frame without its pad length")
        pad, start = payload[0], 1
    if f.type == HEADERS and f.flags & PRIORITY_FLAG:
        start += 5
    if start + pad > len(payload):
        raise H2Error("padding longer than the frame")
    return payload[start:len(payload) - pad]


def settings(pairs):
    return b"".join(k.to_bytes(2, "big") + v.to_bytes(4, "big") for k, v in pairs)


def parse_settings(payload):
    return {int.from_bytes(payload[i:i + 2], "big"): int.from_bytes(payload[i + 2:i + 6], "big")
            for i in range(0, len(payload) - 5, 6)}


@dataclasses.dataclass
class Message:
    """One side of a stream: its header fields, body and trailers."""
    stream: int
    headers: list = dataclasses.field(default_factory=list)
    body: bytes = b""
    trailers: list = dataclasses.field(default_factory=list)
    offset: int = 0  # of its first HEADERS frame
    ended: bool = False

    def get(self, name, default=""):
        return next((v for k, v in self.headers if k == name), default)

    def response(self):
        """A diff.Response; a gRPC answer's status is always a trailer, also when the server sent
        it in the headers alone ("trailers-only")."""
        status = self.get(":status")
        headers, trailers = [(k, v) for k, v in self.headers if not k.startswith(":")], self.trailers
        if self.grpc and not trailers:
            trailers = [(k, v) for k, v in headers if k in GRPC_TRAILERS]
            headers = [(k, v) for k, v in headers if k not in GRPC_TRAILERS]
        return diff.Response(int(status) if status.isdigit() else 0, headers, self.body, trailers)

    @property
    def grpc(self):
        return self.get("content-type").startswith("application/grpc")


class Reader:
    """One direction of a connection: frames in, Messages out, one HPACK state."""

    def __init__(self):
        self.decoder = hpack.Decoder()
        self.messages = {}  # stream id -> Message
        self.order = []
        self._block = None  # (stream, flags, bytes so far) of a header block waiting for CONTINUATION

    def take(self, f):
        """Apply a frame; returns the Message it completed, if any."""
        if self._block is not None and f.type != CONTINUATION:
            raise H2Error("a header block was cut by another frame")
        if f.type in (HEADERS, CONTINUATION):
            if f.type == HEADERS:
                self._block = (f.stream, f.flags, _unpad(f), f.offset)
            else:
                stream, flags, block, offset = self._block
                self._block = (stream, flags, block + f.payload, offset)
            if not f.flags & END_HEADERS:
                return None
            stream, flags, block, offset = self._block
            self._block = None
            fields = self.decoder.decode(block)
            m = self.messages.get(stream)
            if m is None:
                m = self.messages[stream] = Message(stream, offset=offset)
                self.order.append(m)
            interim = bool(fields) and fields[0][0] == ":status" and fields[0][1].startswith("1")
            if m.headers:
                m.trailers = fields
            elif not interim:  # (1xx answers are dropped)
                m.headers = fields
            return self._end(m, flags)
        if f.type == DATA and f.stream in self.messages:
            m = self.messages[f.stream]
            m.body += _unpad(f)
            return self._end(m, f.flags)
        if f.type == RST_STREAM and f.stream in self.messages:
            m = self.messages[f.stream]
            m.ended = True
            code = int.from_bytes(f.payload[:4], "big") if len(f.payload) >= 4 else -1
            m.trailers = m.trailers + [(":rst-stream", str(code))]
            return m
        return None

    @staticmethod
    def _end(m, flags):
        if flags & END_STREAM:
            m.ended = True
            return m
        return None


def conversation(data, client):
    """The Messages of one captured direction (client: after the preface), in order of first HEADERS."""
    if client:
        if not data.startswith(PREFACE):
            raise H2Error("no HTTP/2 connection preface")
        start = len(PREFACE)
    else:
        start = 0
    frames, _end = read_frames(data, start)
    reader = Reader()
    for f in frames:
        reader.take(f)
    return reader.order


# -- replay plans --------------------------------------------------------------------------------

@dataclasses.dataclass
class Request:
    headers: list
    body: bytes
    trailers: list


def _edited(headers, edits):
    if not edits:
        return headers
    drop = {n.lower() for n in edits.drop}
    replace = {low: value for low, _name, value in edits.replacements()}
    if "host" in replace:
        replace[":authority"] = replace["host"]
        if not any(k == "host" for k, _v in headers):
            del replace["host"]
    out, done = [], set()
    for k, v in headers:
        if k in drop:
            continue
        if k in replace:
            if k not in done:
                done.add(k)
                out.append((k, replace[k]))
            continue
        out.append((k, v))
    return out + [(k, v) for k, v in replace.items() if k not in done and not k.startswith(":")]


def steps(flow, base, opts, make_exchange):
    """One Exchange per captured stream, due at its first HEADERS frame."""
    c2s, s2c = flow.streams[flows.C2S], flow.streams[flows.S2C]
    try:
        requests = conversation(c2s.contiguous(), client=True)
        responses = {m.stream: m for m in conversation(s2c.contiguous(), client=False)}
    except (H2Error, hpack.HpackError) as err:
        step = make_exchange(**base, protocol="h2", ts_ns=flow.first_ns, error=f"captured HTTP/2 unreadable: {err}")
        return [step]
    out = []
    for m in requests:
        answer = responses.get(m.stream)
        answer = answer if answer is not None and answer.ended and answer.headers else None
        grpc = m.grpc or (answer is not None and answer.grpc)
        step = make_exchange(**base, protocol="grpc" if grpc else "h2", ts_ns=c2s.ts_at(m.offset),
                             method=m.get(":method"), path=m.get(":path"), data=m.body,
                             expected=answer.response() if answer else None,
                             captured_status=int(answer.get(":status")) if answer and answer.get(":status").isdigit()
                             else None)
        step.request = Request(_edited(m.headers, opts.edits), m.body, m.trailers)
        if answer is None:
            step.notes.append("no captured response to compare")
        if not m.ended:
            step.notes.append("the captured request did not end (capture cut?): sent as far as captured")
        out.append(step)
    return out


# -- the replay client ---------------------------------------------------------------------------

class Connection:
    """The client side of one HTTP/2 connection over a connected socket."""

    def __init__(self, sock):
        self.sock = sock
        self.reader = Reader()
        self.buf = bytearray()
        self.next_stream = 1
        self.peer_window = DEFAULT_WINDOW  # connection-level send window
        self.peer_initial = DEFAULT_WINDOW
        self.peer_frame = DEFAULT_FRAME
        self.windows = {}  # stream -> send window
        self.unacked = 0  # received DATA not yet given back with WINDOW_UPDATE
        self.goaway = None
        sock.sendall(PREFACE + frame(SETTINGS, 0, 0, settings([(SETTINGS_ENABLE_PUSH, 0),
                                                               (SETTINGS_INITIAL_WINDOW_SIZE, OUR_WINDOW)]))
                     + frame(WINDOW_UPDATE, 0, 0, (OUR_WINDOW - DEFAULT_WINDOW).to_bytes(4, "big")))

    def send_request(self, request, deadline):
        stream, self.next_stream = self.next_stream, self.next_stream + 2
        self.windows[stream] = self.peer_initial
        body, trailers = request.body, request.trailers
        self._send_headers(stream, request.headers, end=not body and not trailers)
        pos = 0
        while pos < len(body):
            room = min(self.peer_frame, self.peer_window, self.windows[stream], len(body) - pos)
            if room <= 0:
                if not self.poll(deadline - time.monotonic()):
                    raise TimeoutError("no flow-control window from the server")
                continue
            last = pos + room == len(body)
            self.sock.sendall(frame(DATA, END_STREAM if last and not trailers else 0, stream, body[pos:pos + room]))
            pos += room
            self.peer_window -= room
            self.windows[stream] -= room
        if trailers:
            self._send_headers(stream, trailers, end=True)
        return stream

    def _send_headers(self, stream, fields, end):
        block = hpack.encode(fields)
        pieces = [block[i:i + self.peer_frame] for i in range(0, len(block), self.peer_frame)] or [b""]
        out = b""
        for i, piece in enumerate(pieces):
            flags = (END_HEADERS if i == len(pieces) - 1 else 0) | (END_STREAM if end and i == 0 else 0)
            out += frame(HEADERS if i == 0 else CONTINUATION, flags, stream, piece)
        self.sock.sendall(out)

    def poll(self, wait):
        """Read and apply what arrives within `wait` seconds; False when nothing came."""
        decrypted = isinstance(self.sock, ssl.SSLSocket) and self.sock.pending()  # (--tls) select misses these
        if not decrypted and not select.select([self.sock], [], [], max(0.0, wait))[0]:
            return False
        data = self.sock.recv(1 << 18)
        if not data:
            raise ConnectionError("the server closed the connection")
        self.buf += data
        frames, end = read_frames(self.buf)
        del self.buf[:end]
        for f in frames:
            self._apply(f)
        return True

    def _apply(self, f):
        if f.type == SETTINGS and not f.flags & ACK:
            values = parse_settings(f.payload)
            if SETTINGS_INITIAL_WINDOW_SIZE in values:
                delta = values[SETTINGS_INITIAL_WINDOW_SIZE] - self.peer_initial
                self.peer_initial += delta
                self.windows = {s: w + delta for s, w in self.windows.items()}
            self.peer_frame = values.get(SETTINGS_MAX_FRAME_SIZE, self.peer_frame)
            self.sock.sendall(frame(SETTINGS, ACK, 0))
        elif f.type == PING and not f.flags & ACK:
            self.sock.sendall(frame(PING, ACK, 0, f.payload))
        elif f.type == WINDOW_UPDATE:
            increment = int.from_bytes(f.payload[:4], "big") & 0x7FFFFFFF
            if f.stream:
                self.windows[f.stream] = self.windows.get(f.stream, 0) + increment
            else:
                self.peer_window += increment
        elif f.type == GOAWAY:
            self.goaway = int.from_bytes(f.payload[:4], "big") & 0x7FFFFFFF
        else:
            if f.type == DATA:
                self.unacked += len(f.payload)
                if self.unacked > OUR_WINDOW // 2:  # give the connection window back before it runs dry
                    self.sock.sendall(frame(WINDOW_UPDATE, 0, 0, self.unacked.to_bytes(4, "big")))
                    self.unacked = 0
            self.reader.take(f)

    def answer(self, stream):
        m = self.reader.messages.get(stream)
        return m if m is not None and m.ended else None


def run(plan, sock, clock, opts):
    """Replay the streams of one HTTP/2 connection; each Exchange gets its answer or error."""
    if any(s.error for s in plan.steps):
        return
    pending = list(plan.steps)
    streams = {}  # stream id -> (Exchange, deadline), sent and not yet answered
    try:
        conn = Connection(sock)
        while pending or streams:
            if conn.goaway is not None:
                raise ConnectionError(f"the server sent GOAWAY (last stream {conn.goaway})")
            if clock.stop.is_set() or time.monotonic() >= clock.deadline:
                break
            due = clock.start + pending[0].offset if pending and clock.paced else time.monotonic()
            if pending and time.monotonic() >= due:
                step = pending.pop(0)
                step.sent_at = time.monotonic()
                deadline = step.sent_at + opts.response_timeout
                streams[conn.send_request(step.request, deadline)] = step, deadline
                continue
            conn.poll(min(max(0.0, due - time.monotonic()) if pending else 0.05, 0.05))
            for stream, (step, deadline) in list(streams.items()):
                m = conn.answer(stream)
                if m is not None:
                    _finish(step, m, opts)
                    del streams[stream]
                elif time.monotonic() > deadline:
                    step.error = "no complete response in time"
                    del streams[stream]
    except (OSError, H2Error, hpack.HpackError) as err:
        message = getattr(err, "strerror", None) or str(err) or type(err).__name__
        for step, _deadline in streams.values():
            step.error = message
        for step in pending:
            step.error = f"not sent: {message}"


def _finish(step, m, opts):
    rst = next((v for k, v in m.trailers if k == ":rst-stream"), None)
    if rst is not None:
        step.error = f"the server reset the stream (error code {rst})"
        return
    step.received = m.response()
    step.status = step.received.status
    if m.grpc:
        step.protocol = "grpc"
    if step.expected is not None:
        step.differences = diff.compare(step.expected, step.received, opts.ignore)
