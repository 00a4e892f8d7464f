"""A Prometheus scrape of the monitor with 100 containers' worth of cgroups.

100 cgroups (lab containers' paths, /bpfhook.lab/NAME: containers to the resolver, named
without a runtime lookup), each with one loopback connection made from it (this process moved
in for its connect), then the connection closed: every cgroup has counters and histogram
buckets in the kernel's maps. A scrape is what `--prometheus` does for each GET /metrics in a
monitor that streams nothing: the live walk, the maps read, the snapshot, the text.

    scrape time      median of SCRAPES scrapes, ms
    series           sample lines of the exposition (per container: exporters.SERIES_PER_CONTAINER)
    bytes            the exposition's size

No peer here: coroot-node-agent and Inspektor Gadget are Go programs not packaged for Debian.
Run as root: python tests/perf/run.py scrape
"""
import os
import socket
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from bpfhook import cgroups  # noqa: E402
from bpfhook.containers import Resolver  # noqa: E402
from bpfhook.exporters import SERIES_PER_CONTAINER, exposition  # noqa: E402
from bpfhook.monitor import Monitor  # noqa: E402
from bpfhook.report import summary_snapshot  # noqa: E402

CONTAINERS = 100
SCRAPES = 20
PARENT = "/bpfhook.lab"
NO_PEER = "no peer packaged here"


def _connect_from(cgroup, port):
    """One loopback connection whose client socket is made in `cgroup` (this process moved
    there for its connect), accepted and closed."""
    home = cgroups.of_pid()
    cgroups.move(0, cgroup)
    try:
        client = socket.create_connection(("127.0.0.1", port))
    finally:
        cgroups.move(0, home)
    return client


def run():
    names = [f"{PARENT}/scrape{os.getpid()}-{i}" for i in range(CONTAINERS)]
    with Monitor(cgroups.mount(), stream=False, older=False) as monitor, socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(CONTAINERS)
        port = listener.getsockname()[1]
        try:
            for name in names:
                cgroups.create(name)
                client = _connect_from(name, port)
                listener.accept()[0].close()
                client.close()
            resolve = Resolver()
            shown = {}
            times, text = [], ""
            for _ in range(SCRAPES):
                start = time.perf_counter()
                monitor.refresh_live()
                live = monitor.connections()
                snapshot = summary_snapshot(live, monitor.recent(), monitor.stats(), monitor.cgroup_metrics(live),
                                            resolve, monitor.lost())
                text = exposition(snapshot, shown, "bench")
                times.append(time.perf_counter() - start)
        finally:
            for name in names:
                cgroups.remove(name)
    series = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
    ours = sum(1 for line in text.splitlines() if line.startswith("bpfhook_connects_total{")
               and 'container_kind="lab"' in line and "scrape" in line)
    return {
        "scrape with 100 containers (ms)": (statistics.median(times) * 1000, NO_PEER, "ms", "<= 100"),
        "series in the scrape": (series, NO_PEER, "series", None),
        "containers in the scrape": (ours, None, "containers", f">= {CONTAINERS}"),
        "series per container": (SERIES_PER_CONTAINER, None, "series", None),
        "exposition size (KiB)": (len(text) / 1024, None, "KiB", None),
    }


if __name__ == "__main__":
    for figure, value in run().items():
        print(figure, value)
