"""Monitor launch to its first reported connection, beside bpftrace printing the same event.

While the tool starts, a client connects to a loopback listener every 5 ms; the figure is the
time from exec to the first line of output naming the listener's port (the monitor: --json;
bpftrace: a printf of the ports on tcp state changes). Best of LAUNCHES: the machine is
shared, its noise only ever adds.

The monitor runs as users run it: installed from a wheel (pip byte-compiles it) into a venv of
its own, the dependencies reached through a .pth naming this venv's site-packages (whose own
.pth files, the editable checkout's import hook among them, ~10 ms a start, are not read then). The programs built at the
first start are kept (bpfhook.program_cache): the first launch, a cold one, is reported too.
The monitor's own --timings line of the best launch says where its time went.

Run as root: python tests/perf/run.py monitor_launch
"""
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAUNCHES = 7
CONNECT_EVERY = 0.005
GIVE_UP = 10.0
BPFTRACE = 'tracepoint:sock:inet_sock_set_state { printf("%d %d\\n", args->sport, args->dport); }'


def first_report(cmd, env=None):
    """(seconds from exec to the first output line naming the listener's port, stderr)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    listener.setblocking(False)
    port = str(listener.getsockname()[1]).encode()
    started = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out, err, seen, next_connect = b"", b"", None, started
    try:
        while seen is None and time.monotonic() - started < GIVE_UP:
            now = time.monotonic()
            if now >= next_connect:
                client = socket.socket()
                client.setblocking(False)
                try:
                    client.connect(("127.0.0.1", int(port)))
                except BlockingIOError:
                    pass
                client.close()
                try:
                    while True:
                        listener.accept()[0].close()
                except BlockingIOError:
                    pass
                next_connect = now + CONNECT_EVERY
            ready, _, _ = select.select([p.stdout, p.stderr], [], [], max(next_connect - time.monotonic(), 0))
            if p.stderr in ready:
                err += os.read(p.stderr.fileno(), 65536)
            if p.stdout in ready:
                out += os.read(p.stdout.fileno(), 65536)
                if port in out:
                    seen = time.monotonic() - started
            if p.poll() is not None and not ready:
                break
    finally:
        p.terminate()
        try:
            _, rest = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            _, rest = p.communicate()
        listener.close()
    if seen is None:
        raise RuntimeError(f"{cmd[0]} reported no connection: {(err + rest).decode(errors='replace')[-300:]}")
    return seen, (err + rest).decode(errors="replace")


def install_wheel(into):
    """The checkout built into a wheel (from a copy: the build leaves its build/ behind) and
    pip-installed (byte-compiled) into a venv in `into`: its python."""
    source, wheels = os.path.join(into, "source"), os.path.join(into, "wheels")
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__",
                                                                ".pytest_cache", ".hypothesis"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", wheels,
                    source], check=True, capture_output=True)
    wheel = [os.path.join(wheels, name) for name in os.listdir(wheels) if name.endswith(".whl")]
    venv = os.path.join(into, "venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, capture_output=True)
    python = os.path.join(venv, "bin", "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], check=True,
                          capture_output=True, text=True).stdout.strip()
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", site,
                    *wheel], check=True, capture_output=True)
    dependencies = [path for path in sys.path if path.endswith("-packages") and os.path.isdir(path)]
    with open(os.path.join(site, "dependencies.pth"), "w") as f:
        f.write("\n".join(dependencies) + "\n")
    return python


def run():
    from bpfhook.program_cache import CACHE_DIR

    with tempfile.TemporaryDirectory() as tmp:
        python = install_wheel(tmp)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        cmd = [python, "-m", "bpfhook", "monitor", "--json", "--timings"]
        for name in os.listdir(CACHE_DIR) if os.path.isdir(CACHE_DIR) else ():
            if name.startswith("monitor-programs-"):
                os.unlink(os.path.join(CACHE_DIR, name))  # the first launch builds the programs
        cold, _ = first_report(cmd, env)
        ours = [first_report(cmd, env) for _ in range(LAUNCHES)]
    best, said = min(ours)
    timings = re.search(r"timings: (.*) \(", said)
    peer = min(first_report(["bpftrace", "-e", BPFTRACE])[0] for _ in range(LAUNCHES)) \
        if shutil.which("bpftrace") else None
    return {
        "launch to first reported connection (s)": (best, peer, "s", None),
        "launch to first reported connection: ratio to bpftrace": (best / peer if peer else None, None, "ratio",
                                                                   "<= 1.0"),
        "launch to first reported connection, programs not yet kept (s)": (cold, peer, "s", None),
        "monitor --timings of the best launch": (timings[1] if timings else None, None, "", None),
    }


if __name__ == "__main__":
    for name, figure in run().items():
        print(name, figure)
