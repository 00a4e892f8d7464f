"""Shared record layouts: sizes, offsets, alignment, and decoding to dicts."""
import socket
import struct

import pytest
from construct import Container, Int16ub, Int16ul, Int32un, Padding, Struct

from bpfhook import records as r
from pybpf.errors import LayoutError
from pybpf.layout import codec, offsetof

# The C view the BPF programs are written against. A change here is a change
# of the kernel/user contract: the programs must move with it.
EXPECTED_OFFSETS = {
    "EVENT": {"ts_ns": 0, "cgroup_id": 8, "netns": 16, "sock": 24, "cookie": 32, "bytes_sent": 40,
              "bytes_received": 48, "duration_ns": 56, "pid": 64, "tid": 68, "comm": 72, "saddr": 88,
              "daddr": 104, "sport": 120, "dport": 122, "family": 124, "protocol": 126, "kind": 127,
              "oldstate": 128, "newstate": 129, "flags": 130, "failure": 131, "retransmits": 132, "srtt_us": 136,
              "connect_us": 140, "resets_sent": 144, "resets_received": 146},
    "CONN": {"state": 0, "flags": 1, "family": 2, "sport": 4, "dport": 6, "pid": 8, "tid": 12, "start_ns": 16,
             "cgroup_id": 24, "netns": 32, "bytes_sent": 40, "bytes_received": 48, "comm": 56, "saddr": 72,
             "daddr": 88, "resets_sent": 104, "resets_received": 106, "retransmits": 108, "connect_us": 112, "srtt_us": 116},
    "CONN_SLOT": {"sock": 0, "conn": 8},
    "METRICS": {"closed": 0, "bytes_sent": 8, "bytes_received": 16, "udp": 24, "connects": 32, "failed_refused": 40,
                "failed_timeout": 48, "failed_other": 56, "retransmits": 64, "resets_sent": 72,
                "resets_received": 80, "connect_sum_us": 88, "connect_buckets": 96, "rtt_sum_us": 192,
                "rtt_buckets": 200},
    "CONN_KEY": {"sock": 0},
    "CGROUP_KEY": {"cgroup_id": 0},
    "NETNS_KEY": {"netns": 0},
}
SIZES = {"EVENT": 152, "CONN": 120, "CONN_SLOT": 128, "METRICS": 296, "CONN_KEY": 8, "CGROUP_KEY": 8,
         "NETNS_KEY": 8}


@pytest.mark.parametrize("name", sorted(EXPECTED_OFFSETS))
def test_offsets_and_sizes(name):
    layout = getattr(r, name)
    assert {f: offsetof(layout, f) for f in EXPECTED_OFFSETS[name]} == EXPECTED_OFFSETS[name]
    assert r.sizeof(layout) == SIZES[name]
    assert [f for f, _, _ in r.fields(layout)] == list(EXPECTED_OFFSETS[name])  # nothing undocumented


def test_lost_slots_and_field_sizes():
    assert r.LOST_KEY.sizeof() == 4 and r.LOST_VALUE.sizeof() == 8
    assert r.LOST_SLOTS[r.LOST_EVENTS] == "events"
    assert r.sizeof(r.EVENT, "comm") == 16 and r.sizeof(r.EVENT, "saddr") == 16
    with pytest.raises(LayoutError):
        offsetof(r.EVENT, "nosuch")


def test_tcp_states_match_the_kernel_enum():
    assert r.TCP_STATES[1] == "ESTABLISHED" and r.TCP_STATES[2] == "SYN_SENT"
    assert r.TCP_STATES[7] == "CLOSE" and r.TCP_STATES[10] == "LISTEN" and r.TCP_STATES[12] == "NEW_SYN_RECV"
    assert max(r.TCP_STATES) < r.NSTATES and r.NSTATES & (r.NSTATES - 1) == 0  # masking works
    assert r.state_name(0) == "" and r.state_name(99) == "STATE_99"


def _event_bytes(**over):
    """An EVENT packed by hand with struct at the documented offsets (independent of construct)."""
    v = dict(ts_ns=10**12, cgroup_id=4242, netns=4026531840, sock=0xFFFF888012345678, cookie=77, bytes_sent=1000,
             bytes_received=2000, duration_ns=5_000_000, pid=1234, tid=1235, comm=b"curl",
             saddr=socket.inet_aton("10.77.1.2"), daddr=socket.inet_aton("10.77.1.1"), sport=43210, dport=80,
             family=socket.AF_INET, protocol=6, kind=r.EV_CLOSE, oldstate=1, newstate=7, flags=r.F_NETNS_INODE,
             failure=0, retransmits=3, srtt_us=420, connect_us=95, resets_sent=1, resets_received=2)
    v.update(over)
    buf = bytearray(152)
    struct.pack_into("=8Q", buf, 0, v["ts_ns"], v["cgroup_id"], v["netns"], v["sock"], v["cookie"],
                     v["bytes_sent"], v["bytes_received"], v["duration_ns"])
    struct.pack_into("=II16s16s16sHHHBBBBB", buf, 64, v["pid"], v["tid"], v["comm"], v["saddr"], v["daddr"],
                     v["sport"], v["dport"], v["family"], v["protocol"], v["kind"], v["oldstate"],
                     v["newstate"], v["flags"])
    struct.pack_into("=BIIIHH", buf, 131, v["failure"], v["retransmits"], v["srtt_us"], v["connect_us"],
                     v["resets_sent"], v["resets_received"])
    return bytes(buf)


def test_decode_event_ipv4():
    d = r.decode_event(_event_bytes())
    assert d == {
        "ts_ns": 10**12, "event": "close", "pid": 1234, "tid": 1235, "comm": "curl", "cgroup_id": 4242,
        "netns": 4026531840, "netns_is_inode": True, "owner_from_accept": False, "owner_from_close": False,
        "passive": False, "older": False, "accepted_before": False, "found_late": False, "close_unseen": False,
        "owner_from_proc": False,
        "family": "ipv4", "protocol": "tcp", "saddr": "10.77.1.2", "sport": 43210, "daddr": "10.77.1.1", "dport": 80,
        "oldstate": "ESTABLISHED", "newstate": "CLOSE", "bytes_sent": 1000, "bytes_received": 2000,
        "duration_ns": 5_000_000, "sock": 0xFFFF888012345678, "cookie": 77, "failure": None, "retransmits": 3,
        "srtt_us": 420, "connect_us": 95, "resets_sent": 1, "resets_received": 2,
    }
    assert [r.decode_event(_event_bytes(failure=n, oldstate=2))["failure"] for n in (1, 2, 3)] == [
        "refused", "timeout", "other"]


def test_decode_event_follows_the_layout(monkeypatch):
    """decode_event names the fields from EVENT itself: one added there (as resets_sent and
    resets_received were) comes through by its name, with no edit here."""
    grown = Struct(*r.EVENT.subcons, "resets" / Int32un, Padding(4))
    monkeypatch.setattr(r, "EVENT_CODEC", codec(grown))
    d = r.decode_event(_event_bytes() + struct.pack("=I4x", 9))
    assert d["resets"] == 9 and (d["event"], d["comm"], d["saddr"], d["connect_us"]) == ("close", "curl", "10.77.1.2", 95)
    assert "kind" not in d and "flags" not in d  # (as "event" and the flag booleans)


def test_decode_event_ipv6_and_codec_container():
    raw = _event_bytes(family=socket.AF_INET6, saddr=socket.inet_pton(socket.AF_INET6, "fd77::1:2"),
                       daddr=socket.inet_pton(socket.AF_INET6, "::1"), kind=r.EV_ACCEPT, oldstate=0, newstate=0,
                       flags=r.F_OWNER_FROM_ACCEPT, comm=b"python3\0garbage!")
    d = r.decode_event(r.EVENT_CODEC.decode(raw))  # what the ring buffer reader hands over
    assert (d["family"], d["saddr"], d["daddr"]) == ("ipv6", "fd77::1:2", "::1")
    assert (d["event"], d["oldstate"], d["newstate"]) == ("accept", "", "")
    assert d["comm"] == "python3" and d["owner_from_accept"] and not d["netns_is_inode"]
    assert not d["owner_from_close"]
    closer = r.decode_event(_event_bytes(flags=r.F_OWNER_FROM_CLOSE))
    assert closer["owner_from_close"] and not closer["owner_from_accept"]


def test_event_roundtrip_through_construct_and_codec():
    fam, saddr = r.pack_address("fd77::3:1")
    value = Container(ts_ns=1, cgroup_id=2, netns=3, sock=4, cookie=5, bytes_sent=6, bytes_received=7,
                      duration_ns=8, pid=9, tid=10, comm=b"x".ljust(16, b"\0"), saddr=saddr,
                      daddr=r.pack_address("::1")[1], sport=1, dport=2, family=fam, protocol=17,
                      kind=r.EV_UDP, oldstate=0, newstate=0, flags=0, failure=0, retransmits=0, srtt_us=0,
                      connect_us=0, resets_sent=0, resets_received=0)
    raw = r.EVENT.build(value)
    assert raw == r.EVENT_CODEC.encode(value) and len(raw) == 152
    d = r.decode_event(raw)
    assert (d["saddr"], d["daddr"], d["protocol"], d["event"]) == ("fd77::3:1", "::1", "udp", "udp")

    # The flat struct hot paths use is the layout's own; one that mixes byte orders has none
    assert r.flat_struct(r.EVENT).unpack_from(raw + b"tail")[:2] == (1, 2)
    with pytest.raises(ValueError, match="one struct"):
        r.flat_struct(Struct("a" / Int16ub, "b" / Int16ul))


def _metrics_bytes(*head, connect_buckets=(), rtt_buckets=()):
    """A METRICS packed by hand: the counters in order, then the two histograms."""
    counters = list(head) + [0] * (12 - len(head))
    hist = lambda b: list(b) + [0] * (r.HISTOGRAM_BUCKETS - len(b))  # noqa: E731
    return struct.pack("=12Q12QQ12Q", *counters, *hist(connect_buckets), 0, *hist(rtt_buckets))


def test_decode_metrics():
    d = r.decode_metrics(_metrics_bytes(2, 100, 200, 1, 5, 1, 2, 3, 9, 4, 6, 700, connect_buckets=(4, 1)))
    assert {k: d[k] for k in ("closed", "bytes_sent", "bytes_received", "udp")} == {
        "closed": 2, "bytes_sent": 100, "bytes_received": 200, "udp": 1}
    assert (d["connects"], d["failed_refused"], d["failed_timeout"], d["failed_other"], d["retransmits"],
            d["resets_sent"], d["resets_received"], d["connect_sum_us"]) == (5, 1, 2, 3, 9, 4, 6, 700)
    assert d["connect_buckets"] == [4, 1] + [0] * 10 and d["rtt_buckets"] == [0] * 12


def test_decode_metrics_sums_the_values_of_every_cpu():
    """A per-CPU map's value: each CPU counts the closes and flows it saw; buckets sum bucket by bucket."""
    cpu0 = _metrics_bytes(1, 5, 6, 0, rtt_buckets=(0, 2))
    cpu1 = _metrics_bytes(2, 10, 20, 2, rtt_buckets=(1, 1, 1))
    d = r.decode_metrics([cpu0, r.METRICS_CODEC.decode(cpu1)])
    assert {k: d[k] for k in ("closed", "bytes_sent", "bytes_received", "udp")} == {
        "closed": 3, "bytes_sent": 15, "bytes_received": 26, "udp": 2}
    assert d["rtt_buckets"] == [1, 3, 1] + [0] * 9


def test_histogram_quantile_interpolates_as_prometheus_does():
    bounds = (1, 2, 4)
    assert r.histogram_quantile(0.5, [0, 0, 0, 0], bounds) is None
    assert r.histogram_quantile(0.5, [0, 4, 0, 0], bounds) == 1.5  # halfway into (1, 2]
    assert r.histogram_quantile(0.25, [2, 0, 6, 0], bounds) == 1.0  # the top of the first bucket
    assert r.histogram_quantile(0.99, [1, 0, 0, 9], bounds) == 4  # in +Inf: the last bound


def test_describe_lists_every_field_with_its_offset():
    text = r.describe()
    assert "struct event {  /* 152 bytes */" in text
    assert "/* 130 */ flags: 1 bytes" in text and "/*  24 */ udp: 8 bytes" in text
