"""http1: requests and responses in a stream (keep-alive, pipelining, chunked, 1xx, HEAD, read to
close), the incremental ResponseReader, header edits; checked against the standard library's
http.client on generated messages."""
import http.client
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bpfhook import http1

GET = b"GET /a?x=1 HTTP/1.1\r\nHost: lab\r\nAccept: */*\r\n\r\n"
POST = b"POST /b HTTP/1.1\r\nHost: lab\r\nContent-Length: 5\r\n\r\nhello"
CHUNKED = b"PUT /c HTTP/1.1\r\nHost: lab\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Sum: 5\r\n\r\n"


def test_pipelined_requests_in_one_stream():
    data = GET + POST + CHUNKED + b"GET /incomplete HTTP/1.1\r\nHost:"
    requests, end = http1.requests(data)
    assert [(r.method, r.target, r.body) for r in requests] == [
        ("GET", "/a?x=1", b""), ("POST", "/b", b"hello"), ("PUT", "/c", b"abcde")]
    assert requests[2].trailers == [(b"X-Sum", b"5")]
    assert [r.raw for r in requests] == [GET, POST, CHUNKED] and end == len(GET + POST + CHUNKED)
    assert requests[1].start == len(GET) and requests[1].header("content-length") == "5"
    assert requests[0].head == GET and requests[1].head == POST[:-5]


def test_no_http():
    assert http1.requests(b"\x16\x03\x01\x00binary\r\n\r\n") == ([], 0)
    assert not http1.looks_like_request(b"SSH-2.0-OpenSSH\r\n")
    assert http1.looks_like_request(GET)
    with pytest.raises(http1.HttpError):
        http1.read_request(b"GET / HTTP/1.1\r\nno colon here\r\n\r\n")


def test_responses_skip_1xx_and_know_head_and_no_body_statuses():
    data = (b"HTTP/1.1 100 Continue\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"  # a HEAD answer: no body follows
            b"HTTP/1.1 204 No Content\r\n\r\n"
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n"
            b"HTTP/1.0 200 OK\r\n\r\nuntil the end")
    out = http1.responses(data, ["HEAD", "DELETE", "GET", "GET"])
    assert [(r.status, r.body) for r in out] == [(200, b""), (204, b""), (304, b""), (200, b"until the end")]
    assert http1.responses(data, ["HEAD", "DELETE", "GET", "GET"], eof=False)[-1].status == 304


def test_response_reader_reads_as_bytes_arrive():
    whole = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n0\r\n\r\n"
             b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nnah")
    reader = http1.ResponseReader()
    got = []
    for i in range(len(whole)):  # one byte at a time
        reader.feed(whole[i:i + 1])
        while (r := reader.next_response()) is not None:
            got.append(r)
    assert [(r.status, r.body) for r in got] == [(200, b"wiki"), (404, b"nah")]
    reader.feed(b"HTTP/1.1 200 OK\r\n\r\nto close")
    assert reader.next_response() is None
    reader.feed(b"")  # EOF ends a body without a length
    assert reader.next_response().body == b"to close"
    with pytest.raises(http1.HttpError, match="closed before a response"):
        reader.next_response()
    cut = http1.ResponseReader()
    cut.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc")
    cut.feed(b"")
    with pytest.raises(http1.HttpError, match="inside a response"):
        cut.next_response()


def test_edits_keep_order_replace_add_and_drop():
    (r,), _ = http1.requests(b"GET / HTTP/1.1\r\nHost: old\r\nX-A: 1\r\nCookie: a\r\nX-A: 2\r\n\r\n")
    assert http1.edit_request(r, http1.Edits()) == r.raw
    out = http1.edit_request(r, http1.Edits(host="new.example", set=(("x-a", "9"), ("X-New", "v")),
                                            drop=("COOKIE",)))
    assert out == b"GET / HTTP/1.1\r\nHost: new.example\r\nx-a: 9\r\nX-New: v\r\n\r\n"
    (c,), _ = http1.requests(CHUNKED)
    assert http1.edit_request(c, http1.Edits(host="h")).endswith(CHUNKED[CHUNKED.index(b"\r\n\r\n"):])
    (g,), _ = http1.requests(b"GET / HTTP/1.0\r\n\r\n")
    assert http1.edit_request(g, http1.Edits(host="added")) == b"GET / HTTP/1.0\r\nHost: added\r\n\r\n"


@pytest.mark.parametrize("bad", ["NoColon", ": v", "X Y: v", "X: a\r\nInjected: 1"])
def test_bad_header_options(bad):
    with pytest.raises(ValueError):
        http1.parse_header(bad)


# -- generated messages, with http.client as the independent reader ----------------------------

_token = st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12).filter(lambda t: t[0] != "-")
_value = st.text("abcdefghijklmnopqrstuvwxyz0123456789 ;=/", max_size=20).map(str.strip)


def _chunk(body, sizes):
    out, pos = b"", 0
    for n in sizes:
        if pos >= len(body):
            break
        out += b"%x\r\n%s\r\n" % (len(body[pos:pos + n]), body[pos:pos + n])
        pos += n
    if pos < len(body):
        out += b"%x\r\n%s\r\n" % (len(body) - pos, body[pos:])
    return out + b"0\r\n\r\n"


@st.composite
def responses(draw):
    status = draw(st.sampled_from([200, 201, 404, 500]))
    headers = draw(st.lists(st.tuples(_token.map(lambda t: "x-" + t), _value), max_size=4))
    body = draw(st.binary(max_size=300))
    chunked = draw(st.booleans())
    head = [f"HTTP/1.1 {status} Whatever"] + [f"{k}: {v}" for k, v in headers]
    if chunked:
        wire = _chunk(body, draw(st.lists(st.integers(1, 64), max_size=8)))
        head.append("Transfer-Encoding: chunked")
    else:
        wire = body
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + wire, status, headers, body


class _Sock:
    def __init__(self, data):
        self.data = data

    def makefile(self, *_):
        return io.BytesIO(self.data)


@settings(max_examples=200, deadline=None)
@given(st.lists(responses(), min_size=1, max_size=4), st.integers(1, 50))
def test_generated_keep_alive_responses_match_http_client(msgs, piece):
    stream = b"".join(m[0] for m in msgs)
    reader = http1.ResponseReader()
    ours = []
    for i in range(0, len(stream), piece):
        reader.feed(stream[i:i + piece])
        while (r := reader.next_response()) is not None:
            ours.append(r)
    theirs, rest = [], stream
    for wire, *_ in msgs:  # http.client reads one response from a file of the whole stream
        resp = http.client.HTTPResponse(_Sock(rest))
        resp.begin()
        theirs.append((resp.status, resp.read()))
        rest = rest[len(wire):]
    assert [(r.status, r.body) for r in ours] == theirs == [(s, b) for _w, s, _h, b in msgs]
    for r, (_w, _s, headers, _b) in zip(ours, msgs):
        assert [(k, v) for k, v in ((k.decode(), v.decode()) for k, v in r.headers) if k.startswith("x-")] == headers


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["GET", "POST", "DELETE"]), _token, st.binary(max_size=100),
                          st.booleans()), min_size=1, max_size=5))
def test_generated_pipelined_requests_round_trip(reqs):
    wire = b""
    for method, path, body, chunked in reqs:
        head = f"{method} /{path} HTTP/1.1\r\nHost: h\r\n"
        head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {len(body)}\r\n\r\n"
        wire += head.encode() + (_chunk(body, [7]) if chunked else body)
    parsed, end = http1.requests(wire)
    assert end == len(wire)
    assert [(r.method, r.target, r.body) for r in parsed] == [(m, f"/{p}", b) for m, p, b, _c in reqs]
    assert b"".join(r.raw for r in parsed) == wire
