"""bpfhook.rotation: each file whole and named once complete; -W's ring; -G's clock; capinfos
(an independent reader) reads every file."""
import os
import struct
import subprocess

import pytest

from bpfhook import capture, pcapng
from bpfhook.rotation import RotatingWriter
from tests import oracles

PACKET = bytes.fromhex("4500001f00004000401100000a4d01010a4d0102") + bytes(11)


def fill(writer, packets, comment="pid=1", flags=None):
    net = writer.interface(pcapng.LINKTYPE_RAW, "x:net", "container x", 1500)
    for i in range(packets):
        writer.packet(net, 1_700_000_000_000_000_000 + i, PACKET + bytes([i % 256]) * 200, comment=comment,
                      flags=flags)
    return net


def packets_in(path):
    return [r for r in pcapng.Reader(path) if isinstance(r, pcapng.Packet)]


def test_files_are_whole_numbered_and_hold_every_packet(tmp_path):
    rotations = []
    with RotatingWriter(str(tmp_path / "cap.pcapng"), max_bytes=10_000,
                        on_rotate=lambda w: rotations.append(w.path)) as w:
        fill(w, 200)
        assert not os.path.exists(w.path)  # the file being written has no name yet
    names = sorted(os.listdir(tmp_path))
    assert names == [f"cap-{i:03d}.pcapng" for i in range(len(names))] and len(names) > 3
    assert rotations == [str(tmp_path / n) for n in names[:-1]]
    counts = [len(packets_in(str(tmp_path / n))) for n in names]
    assert sum(counts) == 200 and all(counts)
    assert all(os.path.getsize(tmp_path / n) <= 10_000 + 300 for n in names)
    ids = [p.ts_ns for n in names for p in packets_in(str(tmp_path / n))]
    assert ids == sorted(ids)  # in order across the files


def test_a_ring_keeps_the_last_files(tmp_path):
    with RotatingWriter(str(tmp_path / "cap.pcapng"), max_bytes=5_000, count=3) as w:
        fill(w, 200)
    assert sorted(os.listdir(tmp_path)) == ["cap-000.pcapng", "cap-001.pcapng", "cap-002.pcapng"]
    last = max((tmp_path / n for n in os.listdir(tmp_path)), key=lambda p: packets_in(str(p))[-1].ts_ns)
    assert packets_in(str(last))[-1].ts_ns == 1_700_000_000_000_000_199


def test_rotation_by_time(tmp_path):
    now = [0.0]
    with RotatingWriter(str(tmp_path / "t.pcapng"), seconds=10, clock=lambda: now[0]) as w:
        net = fill(w, 3)
        now[0] = 10.0
        w.packet(net, 5, PACKET)
    assert sorted(os.listdir(tmp_path)) == ["t-000.pcapng", "t-001.pcapng"]
    assert [len(packets_in(str(tmp_path / n))) for n in ("t-000.pcapng", "t-001.pcapng")] == [3, 1]


def test_the_first_name_taken_is_an_error(tmp_path):
    (tmp_path / "cap-000.pcapng").write_bytes(b"keep")
    with pytest.raises(pcapng.PcapngError, match="never overwritten"):
        RotatingWriter(str(tmp_path / "cap.pcapng"), max_bytes=1000)
    assert os.listdir(tmp_path) == ["cap-000.pcapng"]


def test_discard_leaves_nothing(tmp_path):
    w = RotatingWriter(str(tmp_path / "cap.pcapng"), max_bytes=5_000)
    fill(w, 100)
    w.discard()
    assert os.listdir(tmp_path) == []


def test_capinfos_reads_every_file(tmp_path):
    oracles.require("capinfos")
    with RotatingWriter(str(tmp_path / "cap.pcapng"), max_bytes=8_000, count=4) as w:
        fill(w, 150)
    for name in sorted(os.listdir(tmp_path)):
        r = subprocess.run(["capinfos", "-c", str(tmp_path / name)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert f"Number of packets:   {len(packets_in(str(tmp_path / name)))}" in " ".join(r.stdout.split("\n"))


def epbs(path, count, comment="pid=1", flags=None):
    """`count` Enhanced Packet Blocks as views, cut from a file a Writer wrote: whole blocks, as
    capture's BPF program lays them out in its ring buffer."""
    with pcapng.Writer(str(path)) as w:
        fill(w, count, comment, flags)
    data, out, pos = path.read_bytes(), [], 0
    os.unlink(path)
    while pos < len(data):
        kind, length = struct.unpack_from("<II", data, pos)
        if kind == pcapng.EPB:
            out.append(memoryview(data)[pos:pos + length])
        pos += length
    return out


def test_blocks_rotate_where_packets_do(tmp_path):
    """Runs of whole blocks (capture's ring records) make the same files, byte for byte, as
    the same packets written one by one: each file starts where packet() would start it."""
    blocks = epbs(tmp_path / "src.pcapng", 200)
    (tmp_path / "blocks").mkdir()
    (tmp_path / "packets").mkdir()
    with RotatingWriter(str(tmp_path / "blocks" / "cap.pcapng"), max_bytes=10_000) as w:
        w.interface(pcapng.LINKTYPE_RAW, "x:net", "container x", 1500)
        for run in (blocks[:1], blocks[1:150], blocks[150:]):
            while run:
                run = run[w.blocks(run):]
    with RotatingWriter(str(tmp_path / "packets" / "cap.pcapng"), max_bytes=10_000) as w:
        fill(w, 200)
    names = sorted(os.listdir(tmp_path / "packets"))
    assert len(names) > 3 and sorted(os.listdir(tmp_path / "blocks")) == names
    for name in names:
        assert (tmp_path / "blocks" / name).read_bytes() == (tmp_path / "packets" / name).read_bytes()


def test_a_run_longer_than_one_writev_takes(tmp_path):
    """pcapng.Writer.blocks: more blocks in one call than IOV_MAX, in order with packet()'s."""
    blocks = epbs(tmp_path / "src.pcapng", 3 * pcapng.IOV_MAX + 5)
    path = tmp_path / "run.pcapng"
    with pcapng.Writer(str(path)) as w:
        net = w.interface(pcapng.LINKTYPE_RAW, "x:net", "container x", 1500)
        w.blocks(blocks[:-1])
        w.packet(net, 1, PACKET, comment="last")
    got = packets_in(str(path))
    assert len(got) == len(blocks) and got[-1].comment == "last"
    assert [p.ts_ns for p in got[:-1]] == [1_700_000_000_000_000_000 + i for i in range(len(blocks) - 1)]
    assert os.path.getsize(path) == w.bytes_written


def test_a_new_file_names_the_owners_of_flows_already_in_the_ring(tmp_path):
    """capture, after a new file: records the kernel wrote before it forgot the flows are written
    one by one, the first of each flow with its owner's comment; then runs go as they are."""
    blocks = epbs(tmp_path / "src.pcapng", 50, comment=None, flags=pcapng.INBOUND)  # as the kernel's
    cap = object.__new__(capture.Capture)  # (only its writing: no kernel objects)
    cap.counters = capture.Counters()
    flow = capture._flow_of(capture.five_tuple(PACKET))
    path = tmp_path / "cap.pcapng"
    with RotatingWriter(str(path), max_bytes=1 << 30) as w:
        w.interface(pcapng.LINKTYPE_RAW, "x:net", "container x", 1500)
        cap.writer = w
        cap._unsaid, cap._stale_bytes = {flow: "pid=7 comm=x"}, sum(len(b) + 8 for b in blocks[:30])
        cap._write_run(blocks)
    got = packets_in(str(tmp_path / "cap-000.pcapng"))
    assert [p.comment for p in got] == ["pid=7 comm=x"] + [""] * 49 and {p.direction for p in got} == {"in"}
    assert [p.data for p in got] == [bytes(b[28:28 + 231]) for b in blocks]
    assert cap.counters.packets == 50 and cap._unsaid is None
