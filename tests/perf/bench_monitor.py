"""The monitor beside bpftrace running an equivalent one-liner, in the same run.

    launch -> attached   seconds from exec to the "attached" status line (bpftrace: its
                         "Attaching N probes" line, printed just before it attaches)
    resident memory      VmHWM after the attach and one phase of measurements (worst phase)
    churn                loopback connect/accept/close rate with each tool attached,
                         relative to the rate with nothing attached. Phases alternate:
                         unmonitored, monitor, unmonitored, bpftrace, ..., and each tool
                         phase's rate is paired with the mean of the unmonitored phases on
                         either side of it; the figure is the median of these ratios. The
                         churn runs in one process for the whole benchmark, stopped between
                         its measurements, so that what differs from one process to the
                         next is out of the ratios. Twice: with the client and server threads
                         free to run on any CPU (the target's figure), and both pinned to one
                         CPU. Spread over CPUs, a connection waits on cross-CPU wakeups (on a
                         VM, IPIs of tens of microseconds); on one CPU it is CPU-bound, and
                         the ratio weighs the tools' kernel time per connection against the
                         loop's own.
                         Spread, a tool that follows each connection (the monitor) also pays
                         for its entry moving between the CPUs' caches as the socket's
                         transitions alternate CPUs: there its programs take ~1.5x their
                         one-CPU time per run (bpf_stats: ~190 against ~126 ns a transition;
                         an empty program on the same tracepoint ~65 against ~57 ns).
                         Each figure comes with the 95% interval of its median: this shared
                         host's speed swings by ~10% within seconds, and one phase's ratio
                         with it.
    churn A/A            each inner unmonitored phase paired alike, with its unmonitored
                         neighbours: what the host's noise alone makes of such a ratio (a
                         tool's figure within the A/A's interval is no measured cost)
    syscalls             a loop of 1-byte read()s (dd bs=1), relative to unmonitored, paired
                         like churn: what the tool costs every other task on the host (an
                         enabled syscall tracepoint slows every system call)
    lost                 events the monitor reported lost, all phases
    skipped runs         runs of each tool's programs the kernel skipped because the program
                         was already running on that CPU (bpf_prog_info.recursion_misses, read
                         from the kernel for both tools the same way, all phases): each is an
                         event neither tool saw. The monitor makes good those that were closes
                         (at the socket's destroy) and counts the rest in its lost events;
                         bpftrace reports none of them

The monitor runs as a user runs it: `python -m bpfhook monitor` with the site's
start-up hooks (this machine's site-packages has a .pth that imports certifi,
~20-75 ms of every Python start, counted here) and byte-compiled modules, as a
pip install leaves them: run() compiles the checkout first, since this
environment sets PYTHONDONTWRITEBYTECODE and would otherwise recompile every
module at every launch.

With BPFHOOK_BENCH_BEFORE=CHECKOUT (another worktree, e.g. main's), that checkout's monitor is
a third tool in the same alternation: its churn ratio and memory beside ours, a change's
kernel cost measured in one run. BPFHOOK_BENCH_CYCLES overrides CYCLES (a shorter run).

Run as root: python tests/perf/run.py monitor
"""
import compileall
import errno
import mmap
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BPFTRACE_ONE_LINER = "tracepoint:sock:inet_sock_set_state { @[args->newstate] = count(); }"
LAUNCHES = 5  # best of
CYCLES = int(os.environ.get("BPFHOOK_BENCH_CYCLES", 40))  # of (unmonitored, monitor, unmonitored, bpftrace)
BEFORE = os.environ.get("BPFHOOK_BENCH_BEFORE")  # a checkout whose monitor runs beside ours
MEASURE_SECONDS = {"spread": 1.5, "one CPU": 0.75}  # a churn's measurement in each phase
WARM_SECONDS = 0.1  # a continued churn runs this long before its measurement starts
SETTLE_SECONDS = 0.5  # before each unmonitored phase: the last tool's teardown finishes in the kernel
# After each tool's marker line, before its measurements: the rest of its start-up finishes
# (bpftrace attaches after its line; the monitor enters the connections open before it, a walk of
# every TCP socket including earlier runs' TIME_WAIT ones, and looks their owners up in /proc)
STARTED_SECONDS = 0.3
SYSCALL_BYTES = 500_000  # per syscall-loop run (~0.25 s here)
CHURN_LIMIT = (50_000_000, 3600)  # connections, seconds: a churn process's bound if left running

# The server closes first, so TIME_WAIT sits on the server side and the client's ephemeral
# ports do not run out. The count of connections done is kept in the shared page on fd argv[1].
CHURN = """
import mmap, socket, sys, threading, time
done = memoryview(mmap.mmap(int(sys.argv[1]), 8)).cast("Q")
limit, seconds = int(sys.argv[2]), float(sys.argv[3])
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1024)
addr = srv.getsockname()
def serve():
    while True:
        c, _ = srv.accept(); c.close()
threading.Thread(target=serve, daemon=True).start()
start = time.monotonic(); n = 0
while n < limit and time.monotonic() - start < seconds:
    s = socket.create_connection(addr); s.recv(1); s.close(); n += 1; done[0] = n
"""


def _start(cmd, marker, cwd=ROOT):
    """(process, seconds until a stderr/stdout line containing marker)."""
    start = time.monotonic()
    env = dict(os.environ, PYTHONPATH=cwd) if cwd != ROOT else None
    p = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = start + 20
    said = []
    while time.monotonic() < deadline:
        line = p.stdout.readline()
        if not line:
            break
        if marker in line:
            return p, time.monotonic() - start
        said.append(line.strip())
    p.kill()
    p.wait()
    raise RuntimeError(f"{cmd[0]} did not report {marker!r}: " + " | ".join(said[-3:]))


def _stop(p):
    p.send_signal(signal.SIGINT)
    try:
        out, _ = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
    return out


def _hwm_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


class Churn:
    """The churn loop in a process of its own, kept for the whole benchmark and stopped (SIGSTOP)
    between its measurements: each phase measures the same process, so what differs from one
    process to the next (where its threads land, its memory layout: ~10% in rate here) is out of
    the ratios."""

    def __init__(self, placement):
        pin = None
        if placement == "one CPU":
            cpu = max(os.sched_getaffinity(0))
            pin = lambda: os.sched_setaffinity(0, {cpu})  # noqa: E731  (client and server thread alike)
        self._page = tempfile.TemporaryFile()
        self._page.write(bytes(8))
        self._page.flush()
        fd = self._page.fileno()
        self._map = mmap.mmap(fd, 8)
        self._done = memoryview(self._map).cast("Q")
        self.proc = subprocess.Popen([sys.executable, "-c", CHURN, str(fd), *map(str, CHURN_LIMIT)],
                                     pass_fds=(fd,), preexec_fn=pin)
        deadline = time.monotonic() + 10
        while self.done == 0:  # running
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError("the churn process did not start")
            time.sleep(0.01)
        self.pause()

    @property
    def done(self):
        """Connections made so far."""
        return self._done[0]

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)

    def pause(self):
        self.proc.send_signal(signal.SIGSTOP)
        if self.proc.poll() is not None:
            raise RuntimeError(f"the churn process exited ({self.proc.returncode})")

    def rate(self, seconds):
        """Connections per second over `seconds` of running, after WARM_SECONDS."""
        self.resume()
        time.sleep(WARM_SECONDS)
        done, start = self.done, time.monotonic()
        time.sleep(seconds)
        done, elapsed = self.done - done, time.monotonic() - start
        self.pause()
        return done / elapsed

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.proc.kill()
        self.proc.wait()
        self._done.release()
        self._map.close()
        self._page.close()


def _syscalls():
    """read() calls per second of `dd bs=1` (one read and one write per byte)."""
    start = time.perf_counter()
    subprocess.run(["dd", "if=/dev/zero", "of=/dev/null", "bs=1", f"count={SYSCALL_BYTES}"], capture_output=True,
                   check=True, timeout=60)
    return SYSCALL_BYTES / (time.perf_counter() - start)


def _measure(churns):
    """{placement: churn rate} for each churn placement, and {"syscalls": rate}."""
    rates = {placement: churn.rate(MEASURE_SECONDS[placement]) for placement, churn in churns.items()}
    rates["syscalls"] = _syscalls()
    return rates


def _program_ids():
    from pybpf.prog import iter_ids

    return set(iter_ids())


def _skipped_runs(program_ids):
    """recursion_misses summed over the programs `program_ids` that are still loaded."""
    from pybpf.errors import SyscallError
    from pybpf.prog import LoadedProgram

    skipped = 0
    for prog_id in program_ids:
        try:
            with LoadedProgram.from_id(prog_id) as prog:
                skipped += prog.info(contents=False).recursion_misses
        except SyscallError as e:
            if e.errno != errno.ENOENT:  # (unloaded since)
                raise
    return skipped


class Tool:
    """A tool the benchmark attaches, and what its phases measured."""

    def __init__(self, cmd, marker, cwd=ROOT):
        self.cmd, self.marker, self.cwd = cmd, marker, cwd  # marker: in the line it prints once attached
        self.phases = []  # {placement: rate} of each of its phases
        self.mem = []  # VmHWM MB after each
        self.skipped = 0  # runs of its programs the kernel skipped
        self.lost = 0  # events it reported lost; None: it reports none

    def launch_time(self):
        """Seconds from exec to the marker line, best of LAUNCHES: the machine is shared, the
        noise only ever adds."""
        times = []
        for _ in range(LAUNCHES):
            p, seconds = _start(self.cmd, self.marker, self.cwd)
            times.append(seconds)
            time.sleep(STARTED_SECONDS)  # bpftrace, stopped while it attaches, ignores SIGINT for 30 s
            _stop(p)
        return min(times)

    def measure(self, churns):
        """One phase: the tool started, the churns measured, the tool stopped."""
        before = _program_ids()
        p, _ = _start(self.cmd, self.marker, self.cwd)
        try:
            time.sleep(STARTED_SECONDS)
            self.phases.append(_measure(churns))
            self.mem.append(_hwm_mb(p.pid))
            self.skipped += _skipped_runs(_program_ids() - before)
        finally:
            out = _stop(p)
        m = re.search(r"detached \((\d+) events, (\d+) lost\)", out)
        self.lost = None if m is None or self.lost is None else self.lost + int(m[2])


def _peer():
    """bpftrace with the one-liner, or None where it is not installed. bpftrace finds
    tracepoints in tracefs, which a fresh machine may not have mounted (the monitor does not
    need it): mounted first, as the project's tools do."""
    if not shutil.which("bpftrace"):
        return None
    from pybpf import tracefs

    tracefs.root()
    return Tool(["bpftrace", "-e", BPFTRACE_ONE_LINER], "Attaching")


def _median_interval(ratios):
    """The 95% interval of the median of `ratios`: the order statistics a binomial count of
    ratios below the true median puts around it, no assumption about their distribution."""
    if len(ratios) < 6:
        return None
    ordered = sorted(ratios)
    half_width = 1.96 * len(ordered) ** 0.5 / 2
    low = max(0, int(len(ordered) / 2 - half_width))
    high = min(len(ordered) - 1, int(len(ordered) / 2 + half_width + 0.5))
    return f"{ordered[low]:.3f}-{ordered[high]:.3f}"


def run():
    for package in ("pybpf", "bpfhook"):
        compileall.compile_dir(os.path.join(ROOT, package), quiet=1)
    ours = Tool([sys.executable, "-m", "bpfhook", "monitor", "-m", "600"], "attached")
    peer = _peer()
    earlier = None
    if BEFORE:
        for package in ("pybpf", "bpfhook"):
            compileall.compile_dir(os.path.join(BEFORE, package), quiet=1)
        earlier = Tool([sys.executable, "-m", "bpfhook", "monitor", "-m", "600"], "attached", cwd=BEFORE)
    tools = [tool for tool in (ours, peer, earlier) if tool]
    ours_launch, peer_launch = (tool.launch_time() if tool else None for tool in (ours, peer))

    # Phases alternate: unmonitored, a tool, unmonitored, the other tool, ... Each tool's phase is
    # paired with the mean of the unmonitored phases on either side of it, which cancels a drift
    # of the host's speed that is even over the three; each unmonitored phase, likewise, with its
    # unmonitored neighbours two phases away (the A/A: what the host's noise alone makes of such
    # a ratio). Every unmonitored phase starts a moment after the last tool stopped: a detach
    # leaves the kernel work (RCU callbacks, freeing maps and probes) that would otherwise fall
    # on it.
    base = []  # {placement: rate} of each unmonitored phase
    churns = {}
    try:
        for placement in MEASURE_SECONDS:
            churns[placement] = Churn(placement)
        for tool in tools * CYCLES:
            time.sleep(SETTLE_SECONDS)
            base.append(_measure(churns))
            tool.measure(churns)
        time.sleep(SETTLE_SECONDS)
        base.append(_measure(churns))
    finally:
        for churn in churns.values():
            churn.close()

    def pairs(tool, placement):
        """Each of the tool's phases' rate over the mean of the unmonitored phases on either side
        of it; tool None: each inner unmonitored phase's over its unmonitored neighbours'."""
        if tool is None:
            return [base[i][placement] * 2 / (base[i - 1][placement] + base[i + 1][placement])
                    for i in range(1, len(base) - 1)]
        return [rates[placement] * 2 / (base[i][placement] + base[i + 1][placement])
                for i, rates in zip(range(tools.index(tool), len(base), len(tools)), tool.phases)]

    def ratio(tool, placement):
        return statistics.median(pairs(tool, placement))

    def interval(tool, placement):
        return _median_interval(pairs(tool, placement))

    def both(figure, placement):
        return tuple(figure(tool, placement) if tool else None for tool in (ours, peer))

    def unmonitored_rate(placement):
        return statistics.median(rates[placement] for rates in base)

    return {
        "launch to attached (s)": (ours_launch, peer_launch, "s", "<= 0.15"),
        "resident memory VmHWM (MB)": (max(ours.mem), max(peer.mem) if peer else None, "MB", "< 40"),
        "churn rate vs unmonitored": (*both(ratio, "spread"), "ratio", ">= 0.97"),
        "churn rate vs unmonitored: 95% interval": (*both(interval, "spread"), "ratio", None),
        "churn unmonitored vs unmonitored (A/A: the host's noise)": (ratio(None, "spread"), None, "ratio", None),
        "churn A/A: 95% interval": (interval(None, "spread"), None, "ratio", None),
        "churn unmonitored (conn/s)": (unmonitored_rate("spread"), None, "conn/s", None),
        "churn on one CPU vs unmonitored": (*both(ratio, "one CPU"), "ratio", None),
        "churn on one CPU: 95% interval": (*both(interval, "one CPU"), "ratio", None),
        "churn on one CPU A/A": (ratio(None, "one CPU"), None, "ratio", None),
        "churn on one CPU A/A: 95% interval": (interval(None, "one CPU"), None, "ratio", None),
        "churn on one CPU unmonitored (conn/s)": (unmonitored_rate("one CPU"), None, "conn/s", None),
        "1-byte read() loop vs unmonitored": (*both(ratio, "syscalls"), "ratio", None),
        "lost events during churn": (ours.lost, None, "events", "<= 0"),
        "runs skipped on a busy CPU during churn": (ours.skipped, peer.skipped if peer else None, "runs", None),
        **({} if earlier is None else {
            "before (BPFHOOK_BENCH_BEFORE's monitor): churn rate vs unmonitored": (
                ratio(earlier, "spread"), None, "ratio", None),
            "before: churn 95% interval": (interval(earlier, "spread"), None, "ratio", None),
            "before: churn on one CPU vs unmonitored": (ratio(earlier, "one CPU"), None, "ratio", None),
            "before: resident memory VmHWM (MB)": (max(earlier.mem), None, "MB", None),
            "before: lost events during churn": (earlier.lost, None, "events", None)}),
    }

if __name__ == "__main__":
    for name, figure in run().items():
        print(name, figure)
