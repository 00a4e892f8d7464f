"""Compare a replayed response with the captured one: status, headers, body (JSON-aware), trailers.

Responses of HTTP/1.x and HTTP/2 come here in one shape (`Response`). Headers
that change on every answer (Date, Server, ...) are ignored by default; the
framing ones (Content-Length, ETag) only where the body differs anyway, so a
changed body is reported once. JSON bodies compare as values (key order does
not matter), other bodies byte for byte with a short unified diff.
"""
import dataclasses
import difflib
import gzip
import json
import zlib

# Headers that differ between two runs of the same server.
IGNORED_HEADERS = frozenset({"date", "server", "age", "expires", "last-modified", "x-request-id",
                             "x-runtime", "keep-alive", "connection", "transfer-encoding"})
# Headers that follow from the body: compared only when the bodies are the same.
BODY_HEADERS = frozenset({"content-length", "etag", "content-md5", "digest"})
MAX_LINES = 12  # of a unified diff, and of JSON paths listed
MAX_VALUE = 80  # characters of one value shown


@dataclasses.dataclass
class Response:
    """One response, HTTP/1.x or HTTP/2, normalized: header names lower case."""
    status: int
    headers: list  # [(name, value)] str
    body: bytes
    trailers: list = dataclasses.field(default_factory=list)

    def values(self, name):
        return [v for k, v in self.headers if k == name]

    @classmethod
    def from_http1(cls, m):
        text = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in m.headers]
        trailers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in m.trailers]
        return cls(m.status, text, m.body, trailers)


def _decoded(response):
    """The body with its Content-Encoding (gzip, deflate) undone, when it can be."""
    encoding = ",".join(response.values("content-encoding")).strip().lower()
    try:
        if encoding in ("gzip", "x-gzip"):
            return gzip.decompress(response.body)
        if encoding == "deflate":
            return zlib.decompress(response.body)
    except (OSError, zlib.error, EOFError):
        pass
    return response.body


def _short(text):
    return text if len(text) <= MAX_VALUE else text[:MAX_VALUE - 3] + "..."


def _short_json(value):
    return _short(json.dumps(value, sort_keys=True))


def _grouped(pairs, ignored):
    out = {}
    for k, v in pairs:
        if k not in ignored and not k.startswith(":"):
            out.setdefault(k, []).append(v)
    return out


def header_differences(captured, replayed, ignored, kind="header"):
    was, now = _grouped(captured, ignored), _grouped(replayed, ignored)
    out = []
    for name in sorted(set(was) | set(now)):
        a, b = was.get(name), now.get(name)
        if a == b:
            continue
        if a is None:
            out.append(f"{kind} {name} added: {_short(', '.join(b))}")
        elif b is None:
            out.append(f"{kind} {name} removed (was {_short(', '.join(a))})")
        else:
            out.append(f"{kind} {name}: {_short(', '.join(a))} -> {_short(', '.join(b))}")
    return out


def _json(data):
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return _NOT_JSON


_NOT_JSON = object()


def json_differences(a, b, where="$"):
    """Paths where two JSON values differ: ['$.items[1].name: "x" -> "y"', ...]."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            if key not in b:
                out.append(f"{where}.{key} removed (was {_short_json(a[key])})")
            elif key not in a:
                out.append(f"{where}.{key} added: {_short_json(b[key])}")
            else:
                out += json_differences(a[key], b[key], f"{where}.{key}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        out = []
        for i, (x, y) in enumerate(zip(a, b)):
            out += json_differences(x, y, f"{where}[{i}]")
        if len(a) != len(b):
            out.append(f"{where}: {len(a)} items -> {len(b)}")
        return out
    if a == b and type(a) is type(b):
        return []
    return [f"{where}: {_short_json(a)} -> {_short_json(b)}"]


def body_differences(captured, replayed):
    """[] when the bodies are the same, else lines saying how they differ."""
    a, b = _decoded(captured), _decoded(replayed)
    if a == b:
        return []
    ja, jb = _json(a), _json(b)
    if ja is not _NOT_JSON and jb is not _NOT_JSON and a.strip() and b.strip():
        paths = json_differences(ja, jb)
        if not paths:
            return []  # the same JSON value: key order and spacing do not matter
        more = [f"... {len(paths) - MAX_LINES} more"] if len(paths) > MAX_LINES else []
        return ["body (JSON) differs"] + [f"  {p}" for p in paths[:MAX_LINES]] + more
    return [f"body differs ({len(a)} B -> {len(b)} B)"] + [f"  {line}" for line in unified(a, b)]


def unified(a, b):
    """A short unified diff of two bodies as text; for binary ones, the first differing byte."""
    if _binary(a) or _binary(b):
        at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        return [f"first difference at byte {at}: {a[at:at + 16].hex() or '(end)'} -> {b[at:at + 16].hex() or '(end)'}"]
    lines = list(difflib.unified_diff(a.decode("utf-8", "replace").splitlines(),
                                      b.decode("utf-8", "replace").splitlines(),
                                      "captured", "replayed", n=1, lineterm=""))
    shown = [line if len(line) <= MAX_VALUE else line[:MAX_VALUE - 3] + "..." for line in lines[:MAX_LINES]]
    return shown + ([f"... {len(lines) - MAX_LINES} more lines"] if len(lines) > MAX_LINES else [])


def _binary(data):
    if b"\0" in data[:4096]:
        return True
    try:
        data[:4096].decode("utf-8")
    except UnicodeDecodeError as err:
        return err.start < 4090  # a character cut at the 4096th byte is no sign of binary
    return False


def compare(captured, replayed, ignore=()):
    """The differences between two Responses, as lines: [] when they match."""
    out = []
    if captured.status != replayed.status:
        out.append(f"status {captured.status} -> {replayed.status}")
    body = body_differences(captured, replayed)
    ignored = IGNORED_HEADERS | {h.lower() for h in ignore}
    if body:
        ignored |= BODY_HEADERS
    elif bool(captured.values("content-length")) != bool(replayed.values("content-length")):
        ignored |= {"content-length"}  # the same body framed another way (chunked)
    out += header_differences(captured.headers, replayed.headers, ignored)
    out += header_differences(captured.trailers, replayed.trailers, ignored, "trailer")
    return out + body
