"""Map dump speed: pybpf batch ops vs key walk vs `bpftool map dump -j`, same map, same run.

    python tests/perf/bench_maps.py [entries]

run() returns {name: (ours, peer, unit, target)} for a harness; peer/target are None when absent.
"""
import os
import shutil
import subprocess
import sys
import time

import construct as c

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from pybpf.maps import Map  # noqa: E402
from pybpf.uapi import MapType  # noqa: E402

Value = c.Struct("packets" / c.Int64ul, "bytes" / c.Int64ul)


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def _bpftool_dump(map_id):
    if not shutil.which("bpftool"):
        return None
    seconds, proc = _timed(lambda: subprocess.run(["bpftool", "map", "dump", "id", str(map_id), "-j"],
                                                  capture_output=True, timeout=120))
    return seconds if proc.returncode == 0 else None


def run(entries=100_000):
    figures = {}
    with Map(MapType.HASH, key=c.Int32ul, value=Value, max_entries=entries, name="bench") as m:
        data = {i: dict(packets=i, bytes=i * 1500) for i in range(entries)}
        fill, _ = _timed(lambda: m.update_batch(data))
        figures["fill (update_batch)"] = (fill, None, "s", None)

        batch, pairs = _timed(m.lookup_batch)
        assert len(pairs) == entries and dict(pairs)[entries - 1].bytes == (entries - 1) * 1500
        peer = _bpftool_dump(m.id)
        figures["dump+decode (lookup_batch)"] = (batch, peer, "s", 0.2 if entries == 100_000 else None)

        walk, pairs = _timed(lambda: list(m.items()))
        assert len(pairs) == entries
        figures["dump+decode (key walk)"] = (walk, peer, "s", None)
        figures["entries/s (lookup_batch)"] = (entries / batch, entries / peer if peer else None, "1/s", None)
    return figures


def main():
    entries = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    figures = run(entries)
    print(f"{entries} entries, HASH u32 -> {{u64 packets, u64 bytes}}; peer = bpftool map dump -j")
    print(f"{'measure':30} {'pybpf':>12} {'peer':>12} {'target':>10} unit")
    for name, (ours, peer, unit, target) in figures.items():
        def fmt(x):
            return "-" if x is None else f"{x:.3f}" if x < 1000 else f"{x:,.0f}"
        print(f"{name:30} {fmt(ours):>12} {fmt(peer):>12} {fmt(target):>10} {unit}")


if __name__ == "__main__":
    main()
