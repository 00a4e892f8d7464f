"""What capturing TLS plaintext costs an HTTPS service: `bpfhook capture --tls` beside a bpftrace
one-liner hooking the same four OpenSSL functions, in the same run.

    python tests/perf/bench_tls.py [cycles] [seconds]

A Python ssl HTTPS server (tests/https_server.py) runs in a lab container; a client on the
host sends GET /hello over one keep-alive connection (a ping-pong: each request waits for the
last answer), both on the host's libssl, which every tool probes for every process mapping
it. Phases alternate: unmonitored, capture --tls, unmonitored, bpftrace, unmonitored,
capture with its defaults, ...; each tool phase's request rate is divided by the mean of the
unmonitored phases on either side of it, and the figure is the median of these ratios (the
A/A figure pairs the inner unmonitored phases the same way: what the host's noise alone makes
of such a ratio). Each tool's own CPU time (utime + stime, /proc) during its phases is given
per request: on a 2-CPU host the client and the server fill both CPUs, and what the tool's
process spends is taken from them. The client process lives through the whole run, idle between phases, and
each tool is started before its phase and stopped after it.

capture runs as a user types it, `bpfhook capture --container NAME --tls -w FILE`: uprobes for
SSL_read, SSL_write, SSL_read_ex, SSL_write_ex (entry and return; on this libssl placed in
the internal functions the _ex wrappers call, where the kernel emulates the probed
instruction: docs/capture.md), the syscall tracepoints that tie a call to its socket, the
plaintext copied to user space and written as packets. For scale, the third tool is capture
with its defaults (net and uds, no TLS), what a user adds with `--net --uds`. bpftrace's
one-liner probes the same functions' entries and returns as a user writes it (at the
entries: single-stepped), keeps only the container's cgroup, saves the buffer at entry and
counts at return: less work than ours (no copy, no syscall hooks), costlier traps. The
client's and the server's CPU per request added by each tool is the figure the host's load
disturbs least. Each tool phase starts with one untimed request: it completes the read the
server was in when the tool attached, which no uprobe sees return (_requests_in).

run() returns {name: (ours, peer, unit, target)}.
"""
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

MAIN = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, MAIN)

from bpfhook import analyze, flows  # noqa: E402
from bpfhook.lab import Lab  # noqa: E402
from tests import certs, oracles  # noqa: E402
from tests.https_server import LOAD, SERVER  # noqa: E402

PORT = 8443
CYCLES = 5  # of (unmonitored, capture, unmonitored, bpftrace)
SECONDS = 3.0  # per phase
SETTLE = 1.0  # seconds after a tool says it attached
FUNCTIONS = ("SSL_read", "SSL_write", "SSL_read_ex", "SSL_write_ex")


def libssl():
    """The libssl this Python's ssl module maps (the server and the client both use it)."""
    __import__("ssl")  # maps it
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split()[-1]
            if os.path.basename(path).startswith("libssl.so"):
                return path
    raise RuntimeError("this Python's ssl module maps no libssl")


def one_liner(library, cgroup_dir):
    probes = ",".join(f"uprobe:{library}:{f}" for f in FUNCTIONS)
    returns = ",".join(f"uretprobe:{library}:{f}" for f in FUNCTIONS)
    return (f'{probes} /cgroup == cgroupid("{cgroup_dir}")/ {{ @buf[tid] = arg1; }} '
            f"{returns} /@buf[tid]/ {{ @calls = count(); delete(@buf[tid]); }}")


class Tool:
    """A monitoring process started before its phase (ready(output lines so far): it has attached),
    stopped after it."""

    def __init__(self, argv, ready):
        self.argv, self.ready = argv, ready

    def __enter__(self):
        self.proc = subprocess.Popen(self.argv, cwd=MAIN, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines = []
        threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True).start()
        deadline = time.monotonic() + 60
        while not self.ready(self.lines):
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.argv[0]} exited: {''.join(self.lines)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.argv[0]} did not attach in 60 s")
            time.sleep(0.1)
        time.sleep(SETTLE)
        self.cpu = -_cpu_seconds(self.proc.pid)
        return self

    def __exit__(self, *exc):
        self.cpu += _cpu_seconds(self.proc.pid)  # the phase's, start-up and shutdown left out
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _cpu_seconds(pid):
    """utime + stime of a process so far, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _median_interval(ratios):
    ratios = sorted(ratios)
    n = len(ratios)
    if n < 3:
        return ratios[0], ratios[-1]
    k = max(0, int(n / 2 - 0.98 * n ** 0.5))  # the order statistics around the median (sign test, ~95%)
    return ratios[k], ratios[n - 1 - k]


def _paired(sequence, kind, difference=False):
    """Each `kind` phase's value over (difference: minus) the mean of the phases on either side of it."""
    def pair(value, neighbours):
        return value - neighbours if difference else value / neighbours
    return [pair(value, (sequence[i - 1][1] + sequence[i + 1][1]) / 2)
            for i, (k, value) in enumerate(sequence) if k == kind and 0 < i < len(sequence) - 1]


def run(cycles=CYCLES, seconds=SECONDS):
    name = f"bt{os.getpid() % 100000}"
    workdir = tempfile.mkdtemp(prefix="bench_tls.")
    c = Lab.up(name, ipv6=False)
    server = client = None
    captured = []
    try:
        if not oracles.find("openssl"):
            raise RuntimeError(oracles.find("openssl").problem)
        cert, key = certs.self_signed(workdir, c.ipv4)
        server = c.spawn([sys.executable, "-c", SERVER, cert, key, "0.0.0.0", str(PORT)], stdout=subprocess.PIPE,
                         text=True)
        assert server.stdout.readline().strip() == "ready", "the HTTPS server did not start"
        client = subprocess.Popen([sys.executable, "-c", LOAD, c.ipv4, str(PORT), cert], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        assert client.stdout.readline().strip() == "ready", "the client did not connect"

        spent = []  # the client's and the server's CPU microseconds per request, per timed phase

        def measure(duration=seconds):
            pids = [client.pid] + c.pids()
            before = sum(_cpu_seconds(pid) for pid in pids)
            client.stdin.write(f"{duration}\n")
            client.stdin.flush()
            done = int(client.stdout.readline())
            if duration:
                spent.append((sum(_cpu_seconds(pid) for pid in pids) - before) * 1e6 / done)
            return done / (duration or 1)

        files = iter(range(1 << 30))

        def capture(*options):
            path = os.path.join(workdir, f"capture{next(files)}.pcapng")
            if options:
                captured.append(path)
            return Tool([sys.executable, "-m", "bpfhook", "capture", "--container", name, *options, "-w", path],
                        lambda lines: any(line.startswith("capturing ") for line in lines))

        bpftrace = shutil.which("bpftrace")
        tools = {"capture": lambda: capture("--tls")}
        if bpftrace:
            tools["bpftrace"] = lambda: Tool([bpftrace, "-e", one_liner(libssl(), c.cgroup_dir)],
                                             lambda lines: any("Attaching" in line for line in lines))
        tools["net+uds"] = capture
        measure()  # warm up: the server's threads, the session
        spent.clear()
        sequence = [("none", measure())]
        cpu = {kind: [] for kind in tools}  # the tool's CPU microseconds per request, per phase
        for _ in range(cycles):
            for kind, make in tools.items():
                with make() as tool:
                    measure(0)  # completes the read the server was in when the tool attached (below)
                    sequence.append((kind, measure()))
                cpu[kind].append(tool.cpu * 1e6 / (sequence[-1][1] * seconds))
                sequence.append(("none", measure()))
        rates = {kind: [r for k, r in sequence if k == kind] for kind in ("none", *tools)}
        nones = [("none", r) for r in rates["none"]]
        aa = _paired(nones, "none")
        ours, peer, plain = _paired(sequence, "capture"), _paired(sequence, "bpftrace"), _paired(sequence, "net+uds")
        work = [(kind, cost) for (kind, _), cost in zip(sequence, spent)]
        added = {kind: _paired(work, kind, difference=True) for kind in tools}
        requests = sum(_requests_in(path) for path in captured)
        sent = sum(rate * seconds for rate in rates["capture"])
        return {
            "HTTPS keep-alive requests/s, unmonitored": (round(statistics.median(rates["none"])), None, "req/s", None),
            "HTTPS requests/s with capture --tls vs unmonitored": (
                round(statistics.median(ours), 3), round(statistics.median(peer), 3) if peer else None,
                "ratio", ">= 0.9"),
            "... 95% interval": ("%.3f-%.3f" % _median_interval(ours),
                                 "%.3f-%.3f" % _median_interval(peer) if peer else None, "ratio", None),
            "HTTPS requests/s with capture --tls vs with bpftrace": (
                round(statistics.median(rates["capture"]) / statistics.median(rates["bpftrace"]), 3)
                if peer else None, None, "ratio", ">= 1"),
            "HTTPS requests/s with capture's defaults (net + uds, no TLS) vs unmonitored": (
                round(statistics.median(plain), 3), None, "ratio", None),
            "tool process CPU per request (capture --tls; peer: bpftrace)": (
                round(statistics.median(cpu["capture"]), 1),
                round(statistics.median(cpu["bpftrace"]), 1) if peer else None, "us", None),
            "client + server CPU per request added by capture --tls (peer: bpftrace)": (
                round(statistics.median(added["capture"]), 1),
                round(statistics.median(added["bpftrace"]), 1) if peer else None, "us", None),
            "unmonitored vs unmonitored (A/A: the host's noise)": (
                round(statistics.median(aa), 3) if aa else None, None, "ratio", None),
            "requests in the capture files / requests sent meanwhile": (
                round(100 * requests / sent, 2) if sent else None, None, "%", ">= 100"),
        }
    finally:
        for p in (client, server):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        c.down()
        if not os.environ.get("BENCH_TLS_KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)


def _requests_in(path):
    """HTTP requests in a capture's TLS plaintext. The server waits in SSL_read_ex between
    requests, so each phase starts with one request whose read entered before the probes were
    attached: no uprobe sees that call return (docs/capture.md), and it is sent before the
    timed requests, uncounted (the file says server_spoke_first=1)."""
    return sum(len(analyze.http_exchanges(f)) for f in flows.read(path).flows if f.tls == "plaintext")


if __name__ == "__main__":
    args = [float(a) for a in sys.argv[1:3]]
    figures = run(int(args[0]) if args else CYCLES, *args[1:2])
    for figure, (ours, peer, unit, target) in figures.items():
        print(f"{figure}: ours {ours} {unit}, bpftrace {peer}, target {target}")
