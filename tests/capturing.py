"""Kernel-test helpers: `bpfhook capture` of a lab container around some traffic, and servers
started as child processes (in a container, or on loopback) that print one ready line."""
import contextlib
import os
import signal
import subprocess
import sys
import time

from tests.conftest import ROOT


@contextlib.contextmanager
def capture(container, out, *extra):
    """`bpfhook capture --container NAME --both-directions` writing `out` while the block runs."""
    proc = subprocess.Popen([sys.executable, "-m", "bpfhook", "capture", "--container", container.name, "-w",
                             str(out), "--both-directions", "--quiet", *extra], cwd=ROOT,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not (os.path.exists(out) and os.path.getsize(out) > 100):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "capture did not start"
            time.sleep(0.1)
        time.sleep(0.3)  # attached right after the interfaces are written
        yield proc
        time.sleep(1)  # the last packets reach the file
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        status = proc.wait(timeout=20)
    assert status == 0, proc.stderr.read()


@contextlib.contextmanager
def server(argv, spawn=subprocess.Popen, **popen):
    """A child that prints one line when ready and serves until its stdin closes; yields that line."""
    proc = spawn(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, **popen)
    try:
        ready = proc.stdout.readline().strip()
        assert ready, f"server {argv} did not start (exit {proc.poll()})"
        yield ready
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def http_server(*args, spawn=subprocess.Popen):
    """tests/httpserver.py with `args`; yields its port (or Unix path)."""
    return server([sys.executable, os.path.join(ROOT, "tests", "httpserver.py"), *args], spawn)
