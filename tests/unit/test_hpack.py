"""hpack and h2 frames: RFC 7541 Appendix C vectors, round trips (hypothesis), and Debian's
python3-hpack as the independent encoder and decoder (both ways, Huffman and dynamic table)."""
import json
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bpfhook import h2, hpack
from tests import oracles

# RFC 7541 C.4: three requests on one connection, Huffman-coded, sharing one dynamic table.
C4 = [("828684418cf1e3c2e5f23a6ba0ab90f4ff",
       [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com")]),
      ("828684be5886a8eb10649cbf",
       [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com"),
        ("cache-control", "no-cache")]),
      ("828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
       [(":method", "GET"), (":scheme", "https"), (":path", "/index.html"), (":authority", "www.example.com"),
        ("custom-key", "custom-value")])]


def test_rfc7541_c4_requests_with_huffman_and_the_dynamic_table():
    d = hpack.Decoder()
    for block, fields in C4:
        assert d.decode(bytes.fromhex(block)) == fields
    assert d.dynamic == [("custom-key", "custom-value"), ("cache-control", "no-cache"),
                         (":authority", "www.example.com")] and d.used == 164


def test_rfc7541_c1_integers():
    assert hpack.encode_int(10, 5) == b"\x0a" and hpack.encode_int(1337, 5) == bytes([31, 154, 10])
    assert hpack.decode_int(bytes([31, 154, 10]), 0, 5) == (1337, 3)


def test_size_update_evicts_and_bad_input_is_an_error():
    d = hpack.Decoder()
    d.decode(bytes.fromhex(C4[0][0]))
    d.decode(b"\x20")  # table size 0: everything evicted
    assert d.dynamic == [] and d.used == 0
    for bad in (b"\xff", b"\x80", b"\xfe\x7f", b"\x00\x85\xff\xff\xff\xff\xff", b"\x3f\xe1\x3f"):
        with pytest.raises(hpack.HpackError):
            hpack.Decoder().decode(bad)


_text = st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=40)
_fields = st.lists(st.tuples(st.sampled_from([n for n, _ in hpack.STATIC]) | _text.map(str.lower), _text),
                   max_size=12)


@settings(max_examples=300, deadline=None)
@given(_fields)
def test_round_trip(fields):
    assert hpack.Decoder().decode(hpack.encode(fields)) == fields


@given(st.binary(max_size=64))
def test_huffman_round_trip(data):
    assert hpack.huffman_decode(hpack.huffman_encode(data)) == data


def test_against_debian_hpack_both_ways():
    python = oracles.require("hpack")
    fields = [[(":method", "POST"), (":path", "/demo.Users/Get"), ("content-type", "application/grpc"),
               ("user-agent", "grpc-python/1.51"), ("x-bin", "\u00ff\u00fe latin-1 ok"), ("te", "trailers")],
              [(":method", "POST"), (":path", "/demo.Users/Get"), ("content-type", "application/grpc"),
               ("x-new", "v" * 300)]]
    script = """
import json, sys
from hpack import Encoder, Decoder
fields, ours = json.loads(sys.stdin.read())
e, d = Encoder(), Decoder()
theirs = [e.encode([(k.encode('latin-1'), v.encode('latin-1')) for k, v in block], huffman=True).hex()
          for block in fields]
decoded = [[(k.decode('latin-1'), v.decode('latin-1')) for k, v in d.decode(bytes.fromhex(b), raw=True)] for b in ours]
print(json.dumps([theirs, decoded]))
"""
    ours = [hpack.encode(f).hex() for f in fields]
    r = subprocess.run([python, "-c", script], input=json.dumps([fields, ours]), capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    theirs, decoded = json.loads(r.stdout)
    d = hpack.Decoder()  # one connection's state: their second block indexes their first
    assert [d.decode(bytes.fromhex(b)) for b in theirs] == fields
    assert [[tuple(f) for f in block] for block in decoded] == fields


def test_frames_and_a_reader_with_continuation_padding_and_trailers():
    block = hpack.encode([(":method", "POST"), (":path", "/x"), ("content-type", "application/grpc")])
    padded = bytes([3]) + block[:5] + b"\0\0\0"
    data = h2.PREFACE + b"".join([
        h2.frame(h2.SETTINGS, 0, 0, h2.settings([(h2.SETTINGS_ENABLE_PUSH, 0)])),
        h2.frame(h2.HEADERS, h2.PADDED, 1, padded), h2.frame(h2.CONTINUATION, h2.END_HEADERS, 1, block[5:]),
        h2.frame(h2.DATA, 0, 1, b"\0\0\0\0\x02hi"),
        h2.frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, 1, hpack.encode([("x-trailer", "1")])),
        h2.frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, 3, hpack.encode([(":method", "GET"), (":path", "/y")])),
    ])
    (a, b) = h2.conversation(data, client=True)
    assert (a.stream, a.get(":path"), a.body, a.trailers, a.ended, a.grpc) == (
        1, "/x", b"\0\0\0\0\x02hi", [("x-trailer", "1")], True, True)
    assert (b.stream, b.get(":method"), b.ended) == (3, "GET", True)
    frames, end = h2.read_frames(data[len(h2.PREFACE):-3])
    assert end < len(data) - len(h2.PREFACE) and frames[-1].type == h2.HEADERS and frames[-1].stream == 1
    with pytest.raises(h2.H2Error):
        h2.conversation(b"GET / HTTP/1.1\r\n\r\n", client=True)


def test_grpc_trailers_only_answer_puts_the_status_in_the_trailers():
    m = h2.Message(1, [(":status", "200"), ("content-type", "application/grpc"), ("grpc-status", "5")], ended=True)
    r = m.response()
    assert r.status == 200 and r.trailers == [("grpc-status", "5")] and ("grpc-status", "5") not in r.headers


def test_request_edits_set_authority_add_and_drop():
    from bpfhook.http1 import Edits

    fields = [(":method", "GET"), (":authority", "prod"), (":path", "/"), ("cookie", "a"), ("x-env", "prod")]
    edited = h2._edited(fields, Edits("staging", (("X-Env", "test"), ("x-new", "1")), ("Cookie",)))
    assert edited == [(":method", "GET"), (":authority", "staging"), (":path", "/"), ("x-env", "test"),
                      ("x-new", "1")]
    assert h2._edited(fields, Edits()) is fields
