"""Mirroring cost: client -> server TCP throughput over lab veths with the server's veth
mirrored (tc mirred, BPF clone_redirect) and without, plus the share of the server
veth's packets that reach the observer's eth0.

    python tests/perf/bench_mirror.py [seconds]

Three lab containers; the client streams TCP to the server through the host for a
bounded time (Python send loop, 64 KiB writes). Packet counts come from interface
statistics (IFLA_STATS64): the server veth's rx+tx against the observer eth0's rx,
over the same run, so no capture socket competes with the traffic. The baseline is
measured right before each mirrored run.
run() returns {name: (ours, peer, unit, target)}; peer is the unmirrored baseline.
"""
import contextlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from bpfhook import demo, mirror, netns  # noqa: E402
from bpfhook.lab import Lab  # noqa: E402

NBYTES = 4 << 30  # the time bound ends each run first


def _stats(ifindex, netns_path=None):
    from pyroute2 import IPRoute

    with netns.entered(netns_path) if netns_path else contextlib.nullcontext():
        ipr = IPRoute()
    with ipr:
        s = ipr.get_links(ifindex)[0].get_attr("IFLA_STATS64")
    return s["rx_packets"], s["tx_packets"]


def _throughput(cli, srv, seconds):
    sent, elapsed = demo.client(cli, srv.ipv4, seconds=seconds, nbytes=NBYTES, datagrams=0)
    return sent * 8 / elapsed / 1e6


def run(seconds=2.0):
    names = [f"bm{os.getpid() % 100000}-{role}" for role in ("client", "server", "observer")]
    made = []
    try:
        for name in names:
            made.append(Lab.up(name))
        cli, srv, obs = made
        results = {}
        with demo.server(srv, seconds=10 * seconds + 60):
            for method in ("mirred", "bpf"):
                baseline = _throughput(cli, srv, seconds)  # next to each mirrored run: the VM's speed drifts
                with mirror.mirror(srv, obs, method=method) as m:
                    rx0, tx0 = _stats(srv.ifindex)
                    orx0, _ = _stats(obs.peer_ifindex, obs.netns_path)
                    mbps = _throughput(cli, srv, seconds)
                    rx1, tx1 = _stats(srv.ifindex)
                    orx1, _ = _stats(obs.peer_ifindex, obs.netns_path)
                    how = m.describe().rsplit(" via ", 1)[1]
                ratio = 100.0 * (orx1 - orx0) / max(1, (rx1 - rx0) + (tx1 - tx0))
                results[f"client->server TCP, mirrored ({how}) vs not"] = (round(mbps), round(baseline), "Mbit/s", None)
                results[f"observer rx / server veth packets ({how})"] = (round(ratio, 2), None, "%", ">= 100")
        return results
    finally:
        for c in reversed(made):
            c.down()


if __name__ == "__main__":
    for name, (ours, peer, unit, target) in run(float(sys.argv[1]) if len(sys.argv) > 1 else 2.0).items():
        print(f"{name}: {ours} {unit} (peer {peer}, target {target})")
