"""pcapng writer/reader: round trip, torn tails, tshark as the independent reader, file safety."""
import os
import struct
import subprocess

import pytest

from bpfhook import pcapng
from tests import oracles

IP_UDP = bytes.fromhex("4500001f00004000401100000a4d01010a4d0102") + struct.pack(">HHHH", 1234, 5678, 11, 0) + b"abc"


def write_sample(path):
    with pcapng.Writer(str(path), application="test") as w:
        net = w.interface(pcapng.LINKTYPE_RAW, "x:net", "container x", 1500)
        uds = w.interface(pcapng.LINKTYPE_USER0, "x:unix", None, 1500)
        w.packet(net, 1_700_000_000_123_456_789, IP_UDP, 40, "pid=7 comm=srv container=x", pcapng.INBOUND)
        w.packet(uds, 1_700_000_000_200_000_000,
                 pcapng.encode_uds(1, 2, 7, 8, 9, 3, b"\0abstract", b"/run/peer.sock", b"payload!"),
                 comment="pid=7 path=@abstract")
        w.statistics(net, 1_700_000_001_000_000_000, received=1, dropped=2, comment="kernel: lost=2")
    return net, uds


def test_round_trip(tmp_path):
    path = tmp_path / "f.pcapng"
    write_sample(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    reader = pcapng.Reader(str(path))
    records = list(reader)
    assert reader.application == "test" and reader.truncated == 0
    p, u, s = records
    assert p.data == IP_UDP and p.orig_len == 40 and p.ts_ns == 1_700_000_000_123_456_789
    assert p.direction == "in" and pcapng.parse_comment(p.comment) == {"pid": "7", "comm": "srv", "container": "x"}
    rec = pcapng.decode_uds(u.data)
    assert (rec.direction, rec.sock_type, rec.pid, rec.tid, rec.peer_pid, rec.fd) == (1, 2, 7, 8, 9, 3)
    assert rec.path == b"\0abstract" and rec.peer_path == b"/run/peer.sock" and rec.payload == b"payload!"
    assert pcapng.show_path(rec.path) == "@abstract" and pcapng.show_path(b"") == "(unnamed)"
    assert (s.received, s.dropped, s.comments) == (1, 2, ["kernel: lost=2"])


def test_existing_file_is_not_overwritten(tmp_path):
    path = tmp_path / "f.pcapng"
    path.write_bytes(b"keep")
    with pytest.raises(pcapng.PcapngError, match="cannot create"):
        pcapng.Writer(str(path))
    assert path.read_bytes() == b"keep"


@pytest.mark.parametrize("cut", [1, 4, 11, 30])
def test_torn_tail_reads_up_to_last_whole_block(tmp_path, cut):
    path = tmp_path / "f.pcapng"
    write_sample(path)
    data = path.read_bytes()
    path.write_bytes(data[:-cut])
    reader = pcapng.Reader(str(path))
    records = list(reader)
    assert len(records) == 2 and reader.truncated > 0  # the ISB was torn


def test_garbage_is_one_clear_error(tmp_path):
    path = tmp_path / "g"
    path.write_bytes(b"\0" * 64)
    with pytest.raises(pcapng.PcapngError, match="not a pcapng"):
        pcapng.Reader(str(path))
    with pytest.raises(pcapng.PcapngError, match="shorter"):
        pcapng.decode_uds(b"\1\0")


@oracles.skip_unless("tshark")
def test_tshark_reads_it_without_complaint(tmp_path):
    path = tmp_path / "f.pcapng"
    write_sample(path)
    r = subprocess.run([oracles.find("tshark").path, "-r", str(path), "-T", "fields", "-e", "frame.comment", "-e", "udp.payload",
                        "-e", "data", "-e", "frame.p2p_dir"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    assert "appears" not in r.stderr and "warn" not in r.stderr.lower()
    rows = [line.split("\t") for line in r.stdout.splitlines()]
    assert rows[0][0] == "pid=7 comm=srv container=x" and rows[0][1] == b"abc".hex()
    assert bytes.fromhex(rows[1][2]).endswith(b"payload!")


def test_packets_are_written_in_batches_whole_and_in_order(tmp_path):
    """Packets wait for flush() (or the batch limits), in order with the blocks written at once;
    every length of padding, views of buffers that change later, and close() writes the rest."""
    path = tmp_path / "f.pcapng"
    sent = [IP_UDP + bytes([i % 251]) * (i % 7) for i in range(2500)]  # more pieces than one writev takes
    with pcapng.Writer(str(path), application="test") as w:
        net = w.interface(pcapng.LINKTYPE_RAW, "x:net", None, 1500)
        header = os.path.getsize(path)
        buffer = bytearray(sent[0])
        w.packet(net, 1, memoryview(buffer), comment="first")
        buffer[:] = bytes(len(buffer))  # the reader's buffer, reused
        assert os.path.getsize(path) == header  # (kept)
        w.flush()
        assert os.path.getsize(path) > header
        w.statistics(net, 2, received=1)
        for i, data in enumerate(sent[1:], 3):
            w.packet(net, i, data, comment=f"c{i % 3}", flags=pcapng.INBOUND)
    records = list(pcapng.Reader(str(path)))
    assert [r.data for r in records if isinstance(r, pcapng.Packet)] == sent
    assert isinstance(records[1], pcapng.Statistics) and records[0].comment == "first"
    assert [r.ts_ns for r in records[2:]] == list(range(3, 2 + len(sent)))
    assert os.path.getsize(path) == w.bytes_written


def test_short_writes_resume_where_they_stopped(tmp_path, monkeypatch):
    """A writev that writes part of what it was given (a full disk, a pipe) is resumed mid-piece."""
    path = tmp_path / "f.pcapng"
    sent = [IP_UDP + bytes([i % 251]) * (i % 9) for i in range(300)]
    real = os.writev
    monkeypatch.setattr(pcapng.os, "writev", lambda fd, pieces: real(fd, [b"".join(bytes(p) for p in pieces)[:1001]]))
    with pcapng.Writer(str(path), application="test") as w:
        net = w.interface(pcapng.LINKTYPE_RAW, "x:net", None, 1500)
        for i, data in enumerate(sent):
            w.packet(net, i, data, comment=f"c{i % 2}")
    assert [r.data for r in pcapng.Reader(str(path)) if isinstance(r, pcapng.Packet)] == sent
    assert os.path.getsize(path) == w.bytes_written
