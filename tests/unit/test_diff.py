"""diff: status, headers (ignored by default, by option, framing ones when the body differs),
JSON bodies as values, text and binary bodies, gzip, trailers."""
import gzip
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from bpfhook.diff import Response, compare, json_differences


def resp(status=200, headers=(), body=b"", trailers=()):
    return Response(status, list(headers), body, list(trailers))


def test_same_response_but_run_dependent_headers():
    a = resp(headers=[("date", "Mon"), ("server", "a/1"), ("content-type", "text/plain")], body=b"x")
    b = resp(headers=[("date", "Tue"), ("server", "b/2"), ("content-type", "text/plain")], body=b"x")
    assert compare(a, b) == []


def test_status_and_headers_and_ignore_option():
    a = resp(headers=[("content-type", "text/plain"), ("x-version", "1"), ("cache-control", "no")])
    b = resp(404, headers=[("content-type", "text/html"), ("x-version", "2"), ("x-new", "y")])
    assert compare(a, b) == ["status 200 -> 404", "header cache-control removed (was no)",
                             "header content-type: text/plain -> text/html", "header x-new added: y",
                             "header x-version: 1 -> 2"]
    assert compare(a, b, ignore=("X-Version", "x-new", "cache-control")) == [
        "status 200 -> 404", "header content-type: text/plain -> text/html"]


def test_content_length_only_counts_when_the_bodies_match():
    a = resp(headers=[("content-length", "3"), ("etag", '"a"')], body=b"abc")
    b = resp(headers=[("content-length", "4"), ("etag", '"b"')], body=b"abcd")
    assert compare(a, b) == ["body differs (3 B -> 4 B)", "  --- captured", "  +++ replayed", "  @@ -1 +1 @@",
                             "  -abc", "  +abcd"]
    c = resp(headers=[("content-length", "3"), ("etag", '"b"')], body=b"abc")
    assert compare(a, c) == ["header etag: \"a\" -> \"b\""]
    chunked = resp(headers=[("transfer-encoding", "chunked")], body=b"abc")
    assert compare(a, chunked) == ["header etag removed (was \"a\")"]  # the same body, framed otherwise


def test_json_bodies_compare_as_values():
    a = resp(body=json.dumps({"id": 1, "tags": ["a", "b"], "meta": {"x": None}}).encode())
    same = resp(body=b'{"meta": {"x": null},\n "tags": ["a","b"], "id": 1}')
    assert compare(a, same) == []
    other = resp(body=b'{"id": 2, "tags": ["a"], "meta": {"x": null, "y": true}}')
    assert compare(a, other) == ["body (JSON) differs", "  $.id: 1 -> 2", "  $.meta.y added: true",
                                 "  $.tags: 2 items -> 1"]
    assert json_differences(1, 1.0) == ["$: 1 -> 1.0"] and json_differences(True, 1) == ["$: true -> 1"]


def test_binary_and_gzip_bodies():
    a, b = resp(body=b"\x00\x01\x02\x03"), resp(body=b"\x00\x01\xff\x03")
    assert compare(a, b) == ["body differs (4 B -> 4 B)", "  first difference at byte 2: 0203 -> ff03"]
    z = resp(headers=[("content-encoding", "gzip")], body=gzip.compress(b'{"a": 1}', mtime=1))
    z2 = resp(headers=[("content-encoding", "gzip")], body=gzip.compress(b'{ "a":1 }', mtime=2))
    assert compare(z, z2) == []


def test_trailers_compare_like_headers():
    a = resp(trailers=[("grpc-status", "0")])
    b = resp(trailers=[("grpc-status", "5"), ("grpc-message", "not found")])
    assert compare(a, b) == ["trailer grpc-message added: not found", "trailer grpc-status: 0 -> 5"]


def test_long_text_diff_is_short():
    a = resp(body=b"\n".join(b"line %d" % i for i in range(200)))
    b = resp(body=b"\n".join(b"LINE %d" % i for i in range(200)))
    out = compare(a, b)
    assert len(out) <= 15 and out[-1].startswith("  ... ") and "more lines" in out[-1]


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                     max_leaves=10)


@settings(max_examples=200, deadline=None)
@given(_json, st.randoms())
def test_generated_json_reordered_is_the_same(value, rnd):
    def shuffled(v):
        if isinstance(v, dict):
            items = list(v.items())
            rnd.shuffle(items)
            return {k: shuffled(x) for k, x in items}
        return [shuffled(x) for x in v] if isinstance(v, list) else v
    a, b = json.dumps(value).encode(), json.dumps(shuffled(value), indent=2).encode()
    assert compare(resp(body=a), resp(body=b)) == []
