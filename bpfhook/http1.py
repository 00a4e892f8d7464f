"""HTTP/1.x messages in a byte stream: keep-alive, pipelining, chunked bodies, header edits.

One parser serves analyze (the exchanges of a captured stream) and replay
(requests to send, and responses read as they arrive: `ResponseReader`).
Messages keep their bytes as on the wire, so an unedited request is sent
exactly as captured.
"""
import dataclasses
import re

REQUEST_LINE = re.compile(rb"([A-Z][A-Z_-]{2,19}) (\S+) (HTTP/1\.[01])\Z")
STATUS_LINE = re.compile(rb"(HTTP/1\.[01]) (\d{3})(?: (.*))?\Z")
HEAD_END = b"\r\n\r\n"
MAX_HEAD = 64 * 1024  # a head longer than this is no HTTP this parser takes
MAX_CHUNKS = 1 << 20


class HttpError(ValueError):
    """Bytes that are no HTTP/1.x message."""


@dataclasses.dataclass
class Message:
    """A request or a response: its head parsed, its body decoded, its wire bytes kept."""
    line: tuple  # request: (method, target, version); response: (version, status, reason)
    headers: list  # [(name, value)] as bytes, in wire order
    body: bytes  # de-chunked
    raw: bytes  # the message as on the wire (head, and the body as sent: chunked stays chunked)
    head_len: int  # bytes of raw that are the head
    start: int = 0  # offsets in the stream it was read from
    end: int = 0
    trailers: list = dataclasses.field(default_factory=list)

    def header(self, name, default=None):
        """The value of the first header called `name` (any case), as str."""
        name = name.lower().encode() if isinstance(name, str) else name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v.decode("latin-1")
        return default

    @property
    def method(self):
        return self.line[0].decode()

    @property
    def target(self):
        return self.line[1].decode("latin-1")

    @property
    def status(self):
        return int(self.line[1])

    @property
    def head(self):
        return self.raw[:self.head_len]


def _parse_head(data, pos, line_re):
    """(line groups, headers, body start) of the head at pos; None when incomplete; HttpError when no HTTP."""
    end = data.find(HEAD_END, pos, pos + MAX_HEAD)
    if end < 0:
        eol = data.find(b"\r\n", pos)
        if len(data) - pos >= MAX_HEAD or eol >= 0 and not line_re.match(data[pos:eol]):
            raise HttpError(f"no HTTP/1.x start line: {bytes(data[pos:pos + 60])!r}")
        return None
    lines = data[pos:end].split(b"\r\n")
    match = line_re.match(lines[0])
    if not match:
        raise HttpError(f"no HTTP/1.x start line: {bytes(lines[0][:60])!r}")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise HttpError(f"bad header line {bytes(line[:60])!r}")
        headers.append((bytes(name), bytes(value.strip(b" \t"))))
    return match.groups(default=b""), headers, end + len(HEAD_END)


def _get(headers, name):
    return next((v for k, v in headers if k.lower() == name), None)


def _chunked(data, pos):
    """(decoded body, trailers, end) of a chunked body at pos, or None when it is incomplete."""
    body = []
    for _ in range(MAX_CHUNKS):
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return None
        try:
            size = int(data[pos:eol].split(b";")[0].strip(), 16)
        except ValueError:
            raise HttpError(f"bad chunk size line {bytes(data[pos:eol][:40])!r}") from None
        pos = eol + 2
        if size == 0:
            trailers = []
            while True:  # trailer lines, then the empty line
                eol = data.find(b"\r\n", pos)
                if eol < 0:
                    return None
                line, pos = data[pos:eol], eol + 2
                if not line:
                    return b"".join(body), trailers, pos
                name, _, value = line.partition(b":")
                trailers.append((bytes(name), bytes(value.strip(b" \t"))))
        if len(data) < pos + size + 2:
            return None
        body.append(bytes(data[pos:pos + size]))
        pos += size + 2
    raise HttpError("too many chunks")


def _body(data, pos, headers, eof):
    """(body, trailers, end) of the body at pos, or None when the bytes stop first. Without a
    length, a request has none (eof None) and a response's runs to the end of the connection:
    known when eof is True, not yet when False."""
    encoding = _get(headers, b"transfer-encoding")
    if encoding is not None and b"chunked" in encoding.lower():
        return _chunked(data, pos)
    length = _get(headers, b"content-length")
    if length is not None:
        try:
            end = pos + int(length)
        except ValueError:
            raise HttpError(f"bad Content-Length {length!r}") from None
        return (bytes(data[pos:end]), [], end) if end <= len(data) else None
    if eof is None:
        return b"", [], pos
    return (bytes(data[pos:]), [], len(data)) if eof else None


def read_request(data, pos=0):
    """The Request at pos, or None when the bytes stop before it ends."""
    head = _parse_head(data, pos, REQUEST_LINE)
    if head is None:
        return None
    line, headers, body_at = head
    body = _body(data, body_at, headers, eof=None)
    if body is None:
        return None
    return _message(data, pos, line, headers, body_at, body)


def _message(data, pos, line, headers, body_at, body):
    body, trailers, end = body
    return Message(line, headers, body, bytes(data[pos:end]), body_at - pos, pos, end, trailers)


def read_response(data, pos=0, method="GET", eof=True):
    """The Response at pos, or None when incomplete. A body without a length ends at EOF:
    with eof False it is incomplete until then."""
    head = _parse_head(data, pos, STATUS_LINE)
    if head is None:
        return None
    line, headers, body_at = head
    status = int(line[1])
    if status < 200 or status in (204, 304) or method == "HEAD":
        body = (b"", [], body_at)
    else:
        body = _body(data, body_at, headers, eof)
        if body is None:
            return None
    return _message(data, pos, line, headers, body_at, body)


def requests(data):
    """(the complete requests at the start of a client stream, offset where parsing stopped)."""
    out, pos = [], 0
    while pos < len(data):
        try:
            r = read_request(data, pos)
        except HttpError:
            break
        if r is None:
            break
        out.append(r)
        pos = r.end
    return out, pos


def responses(data, methods, eof=True):
    """The final responses (1xx skipped) in a server stream answering requests of `methods`, in order."""
    out, pos = [], 0
    while pos < len(data) and len(out) < len(methods):
        try:
            r = read_response(data, pos, methods[len(out)], eof)
        except HttpError:
            break
        if r is None:
            break
        pos = r.end
        if r.status >= 200:
            out.append(r)
        if r.status == 101:  # the connection speaks another protocol from here on
            break
    return out


def looks_like_request(data):
    """True when a stream starts with an HTTP/1.x request line."""
    eol = data.find(b"\r\n", 0, 8192)
    return eol > 0 and REQUEST_LINE.match(data[:eol]) is not None


class ResponseReader:
    """Responses read from a live connection as bytes arrive: feed(), then next_response()."""

    def __init__(self):
        self.buf = bytearray()
        self.pos = 0
        self.eof = False

    def feed(self, data):
        if data:
            self.buf += data
        else:
            self.eof = True

    def next_response(self, method="GET"):
        """The next final response, or None until it is complete; HttpError for what is no HTTP."""
        while self.pos < len(self.buf):
            r = read_response(self.buf, self.pos, method, self.eof)
            if r is None:
                if self.eof:
                    raise HttpError(f"connection closed inside a response ({len(self.buf) - self.pos} bytes)")
                return None
            self.pos = r.end
            if r.status >= 200:
                return r
        if self.eof:
            raise HttpError("connection closed before a response")
        return None

    def rest(self):
        return bytes(self.buf[self.pos:])


# -- request edits -------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Edits:
    """Header edits: --host, --header 'K: V' (add or replace), --drop-header K."""
    host: str = None
    set: tuple = ()  # ((name, value), ...)
    drop: tuple = ()  # names

    def __bool__(self):
        return bool(self.host or self.set or self.drop)

    def replacements(self):
        """[(lower name, name, value)]: what replaces every header of that name."""
        out = [(n.lower(), n, v) for n, v in self.set]
        if self.host is not None:
            out = [r for r in out if r[0] != "host"] + [("host", "Host", self.host)]
        return out


def parse_header(text):
    """'Name: value' -> (name, value); ValueError otherwise."""
    name, sep, value = text.partition(":")
    name = name.strip()
    if not sep or not name or not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name) or "\n" in value or "\r" in value:
        raise ValueError(f"bad header {text!r}: use 'Name: value'")
    return name, value.strip()


def edit_request(request, edits):
    """The request's bytes with header edits applied; its wire bytes unchanged when there are none."""
    if not edits:
        return request.raw
    drop = {n.lower() for n in edits.drop}
    replace = {low: (name, value) for low, name, value in edits.replacements()}
    lines, done = [b" ".join(request.line)], set()
    for name, value in request.headers:
        low = name.decode("latin-1").lower()
        if low in drop:
            continue
        if low in replace:
            if low not in done:
                done.add(low)
                lines.append(f"{replace[low][0]}: {replace[low][1]}".encode("latin-1"))
            continue
        lines.append(name + b": " + value)
    lines += [f"{n}: {v}".encode("latin-1") for low, (n, v) in replace.items() if low not in done]
    return b"\r\n".join(lines) + HEAD_END + request.raw[len(request.head):]
