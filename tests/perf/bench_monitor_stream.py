"""Streaming without loss: `monitor --json > /dev/null` while loopback churn loops run on every
CPU, beside bpftrace printing the same events (a line per opening and per close).

For 1, 2, ... CHURNS_MAX churn processes (bench_monitor.Churn: a client thread and a server
thread each, all run together): SECONDS of churn with the tool attached; the events it wrote and
those it reported lost (the monitor: the ring buffer's refusals of its "detached (N events, M
lost: F the ring buffer refused full, R it refused with room left, S in runs the kernel skipped)"
line, F + R, the kernel's skipped runs being lost to bpftrace too, uncounted; bpftrace: its "Lost
N events" lines). F apart: what a larger ring or a faster reader would have kept.
The figure is the highest event rate a tool streamed with none lost.

Run as root: python tests/perf/run.py monitor_stream
"""
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from tests.perf.bench_monitor import Churn  # noqa: E402  (the one churn loop, its count in a shared page)

SECONDS = 5.0
CHURNS_MAX = 3
# A line per opening (SYN_SENT 2, SYN_RECV 3) and per close (CLOSE 7), as the monitor sends by default
BPFTRACE = ('tracepoint:sock:inet_sock_set_state /args->newstate == 2 || args->newstate == 3 || '
            'args->newstate == 7/ { printf("%d %d %d %d %d\\n", pid, args->oldstate, args->newstate, '
            'args->sport, args->dport); }')


def churn(tool_cmd, marker, churns):
    """(events written, events lost, of them with the ring full (None: not told), connections/s) of
    `churns` churn processes with the tool,
    its output going to a file (bpftrace: counted there) or /dev/null (the monitor: its count)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        ours = tool_cmd[0] != "bpftrace"
        tool = subprocess.Popen(tool_cmd, stdout=subprocess.DEVNULL if ours else out, stderr=err, text=True)
        try:
            said = err if ours else out
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and tool.poll() is None:
                said.seek(0)
                if marker in said.read():
                    break
                time.sleep(0.01)
            else:
                err.seek(0)
                said_last = (err.read().strip().splitlines() or ["nothing on stderr"])[-1]
                raise RuntimeError(f"{tool_cmd[0]} did not start (exit {tool.poll()}): {said_last}")
            time.sleep(0.3)
            with contextlib.ExitStack() as stack:
                loops = [stack.enter_context(Churn("spread")) for _ in range(churns)]
                before = [loop.done for loop in loops]
                for loop in loops:
                    loop.resume()
                time.sleep(SECONDS)
                for loop in loops:
                    loop.pause()
                connections = sum(loop.done - done for loop, done in zip(loops, before))
            time.sleep(0.5)  # the tool drains what is left
        finally:
            tool.send_signal(signal.SIGINT)
            try:
                tool.wait(timeout=60)
            except subprocess.TimeoutExpired:  # (bpftrace may sit on SIGINT; what it printed is in the file)
                tool.kill()
                tool.wait()
        out.seek(0)
        err.seek(0)
        printed, said = out.read(), err.read()
    if ours:
        m = re.search(r"detached \((\d+) events, (\d+) lost(?:: (\d+) the ring buffer refused full, (\d+) it "
                      r"refused with room)?", said)
        written, lost, full = (int(m[1]), int(m[3]) + int(m[4]) if m[3] else int(m[2]), int(m[3] or 0)) if m \
            else (None, None, None)
    else:
        written, full = printed.count("\n") - 1, None  # (its "Attaching" line)
        lost = sum(int(n) for n in re.findall(r"Lost (\d+) events", printed + said))
    return written, lost, full, connections / SECONDS


def run():
    ours_cmd = [sys.executable, "-m", "bpfhook", "monitor", "--json"]
    peer_cmd = ["bpftrace", "-e", BPFTRACE] if shutil.which("bpftrace") else None
    figures = {}
    best = {"ours": None, "peer": None}
    for churns in range(1, CHURNS_MAX + 1):
        row = {}
        for who, cmd, marker in (("ours", ours_cmd, "attached"), ("peer", peer_cmd, "Attaching")):
            if cmd is None:
                row[who] = (None, None, None, None)
                continue
            written, lost, full, rate = churn(cmd, marker, churns)
            row[who] = (written, lost, full, rate)
            if lost == 0 and written is not None and (best[who] is None or written / SECONDS > best[who]):
                best[who] = written / SECONDS
        (ow, ol, ofull, orate), (pw, pl, _, prate) = row["ours"], row["peer"]
        figures[f"{churns} churn loop(s): events/s streamed"] = (
            ow and ow / SECONDS, pw and pw / SECONDS, "events/s", None)
        figures[f"{churns} churn loop(s): events lost"] = (ol, pl, "events", "<= 0")
        figures[f"{churns} churn loop(s): events lost with the ring full"] = (ofull, None, "events", "<= 0")
        figures[f"{churns} churn loop(s): connections/s"] = (orate, prate, "conn/s", None)
    figures["highest event rate streamed with none lost"] = (best["ours"], best["peer"], "events/s", None)
    return figures


if __name__ == "__main__":
    for name, figure in run().items():
        print(name, figure)
