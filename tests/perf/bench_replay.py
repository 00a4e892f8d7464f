"""Replay speed and timing: HTTP requests replayed per second at --speed max against a local
server, and the timing error at --speed 1; the peer is tcpreplay's packet rate on the same file
(for scale: tcpreplay sends packets blindly, it cannot hold a TCP conversation with a server).

    sudo python tests/perf/bench_replay.py

The file is synthetic (Ethernet frames, as tcpreplay wants them): keep-alive HTTP/1.1
connections to tests/httpserver.py, with that server's own answers, so every replayed answer
compares equal. The server runs in its own process on 127.0.0.1; tcpreplay sends on a veth
pair this benchmark creates and removes.
run() returns {name: (ours, peer, unit, target)}.
"""
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from bpfhook import flows, http1, replay  # noqa: E402
from tests import oracles  # noqa: E402
from tests.capturing import http_server  # noqa: E402
from tests.pcapfiles import CLIENT, SERVER, conversation, ethernet, write  # noqa: E402

PATHS = ["/health", "/users/1", "/items", "/static.txt"]
VETH = ("bhbench0", "bhbench1")  # tcpreplay sends on the first; the kernel here has no dummy links


def _answers(port):
    import socket

    out = {}
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        reader = http1.ResponseReader()
        for p in PATHS:
            s.sendall(b"GET %s HTTP/1.1\r\nHost: bench\r\n\r\n" % p.encode())
            while (m := reader.next_response()) is None:
                reader.feed(s.recv(65536))
            out[p] = m.raw
    return out


def make_file(path, answers, conns, per_conn, gap_ms):
    """conns keep-alive connections of per_conn requests each, interleaved gap_ms apart."""
    pkts = []
    for n in range(conns):
        turns = []
        for k in range(per_conn):
            at = 1 + (k * conns + n) * gap_ms
            p = PATHS[(k + n) % len(PATHS)]
            turns += [(at, "c", b"GET %s HTTP/1.1\r\nHost: bench\r\n\r\n" % p.encode()),
                      (at + gap_ms / 2, "s", answers[p])]
        pkts += conversation((CLIENT[0], CLIENT[1] + n), SERVER, turns, isn_c=1000 + 7919 * n, start_ms=n * gap_ms / 4)
    write(path, [(ms, ethernet(p)) for ms, p in pkts], linktype=flows.LINKTYPE_ETHERNET)
    return len(pkts)


def _tcpreplay_pps(path):
    tool = oracles.find("tcpreplay")
    if not tool:
        return tool.problem
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        ipr.link("add", ifname=VETH[0], kind="veth", peer=VETH[1])
        try:
            for name in VETH:
                ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")
            r = subprocess.run([tool.path, f"--intf1={VETH[0]}", "--topspeed", "--loop=5", path],
                               capture_output=True, text=True, timeout=120)
        finally:
            ipr.link("del", index=ipr.link_lookup(ifname=VETH[0])[0])  # its peer goes with it
    rated = re.search(r"Rated:.*?([\d.]+) pps", r.stdout)
    return float(rated[1]) if r.returncode == 0 and rated else f"tcpreplay failed: {(r.stderr or r.stdout)[-200:]}"


def run():
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp, http_server() as port:
        port = int(port)
        answers = _answers(port)
        fast = os.path.join(tmp, "fast.pcapng")
        packets = make_file(fast, answers, conns=50, per_conn=40, gap_ms=0.5)  # 2000 requests
        best = None
        for _ in range(3):
            report = replay.replay(fast, f"127.0.0.1:{port}", opts=replay.Options(speed=None, timeout=120))
            assert report["summary"]["identical"] == 2000, report["summary"]
            elapsed = report["timing"]["elapsed_s"]
            best = elapsed if best is None else min(best, elapsed)
        peer = _tcpreplay_pps(fast)
        results["HTTP requests replayed, --speed max (2000 on 50 keep-alive connections)"] = (
            round(2000 / best), None, "req/s", None)
        results["capture packets covered per second, --speed max vs tcpreplay --topspeed"] = (
            round(packets / best), peer if isinstance(peer, float) else None, "pkt/s", None)
        timed = os.path.join(tmp, "timed.pcapng")
        make_file(timed, answers, conns=20, per_conn=10, gap_ms=15)  # 200 requests over 3 s
        t = replay.replay(timed, f"127.0.0.1:{port}", opts=replay.Options(speed=1.0, timeout=60))["timing"]
        results["timing error p50, --speed 1 (replayed vs captured gaps)"] = (t["gap_error_ms"]["p50"], None, "ms", "< 1")
        results["timing error p99, --speed 1"] = (t["gap_error_ms"]["p99"], None, "ms", "< 5")
    return results


if __name__ == "__main__":
    for name, (ours, peer, unit, target) in run().items():
        print(f"{name}: {ours} {unit} (peer {peer}, target {target})")
