"""bpfhook.shutdown: the first signal asks a tool to stop, later ones never interrupt its clean-up."""
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from bpfhook.shutdown import Shutdown

MAIN = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_a_signal_ends_the_wait_at_once():
    """SIGINT/SIGTERM set the request and wake a long wait through the pipe."""
    with Shutdown() as stop:
        threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGTERM)).start()
        started = time.monotonic()
        assert stop.wait(30)
        assert time.monotonic() - started < 10
        assert stop and stop.signal == signal.SIGTERM


def test_the_callers_event_ends_the_wait_with_or_without_signals():
    for install in (False, True):
        event = threading.Event()
        stop = Shutdown(event)
        if install:
            stop.install()
        try:
            assert not stop
            threading.Timer(0.1, event.set).start()
            assert stop.wait(30)
            assert stop and stop.signal is None
        finally:
            stop.restore()


def test_a_wait_without_a_stop_times_out():
    with Shutdown() as stop:
        started = time.monotonic()
        assert not stop.wait(0.05)
        assert time.monotonic() - started >= 0.05


def test_handlers_are_given_back():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with Shutdown():
        assert signal.getsignal(signal.SIGINT) != before[signal.SIGINT]
    assert {s: signal.getsignal(s) for s in before} == before


def test_the_first_signal_raises_where_asked_and_later_ones_only_say_so():
    """A tool that does not poll gets a KeyboardInterrupt, once: a signal during the unwinding
    (its finally blocks, its clean-up) is noted, never raised."""
    code = r"""
import os, signal, sys, time
from bpfhook.shutdown import Shutdown
with Shutdown(raise_first=True) as stop:
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
        print("not interrupted")
    except KeyboardInterrupt:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)
            print("clean-up ran whole", stop.signal == signal.SIGINT)
        except KeyboardInterrupt:
            print("clean-up cut short")
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=MAIN, capture_output=True, text=True, timeout=30)
    assert r.stdout.strip() == "clean-up ran whole True", r.stderr
    assert r.stderr.strip() == "bpfhook: still cleaning up (SIGKILL would skip it)"


def test_hand_over_gives_the_signals_their_defaults_for_exec():
    with Shutdown() as stop:
        assert stop.hand_over()
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with Shutdown() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.wait(5)
        assert not stop.hand_over()  # a stop came first: no exec


@pytest.mark.parametrize("tool", ["monitor", "capture", "mirror", "lab", "demo"])
def test_tools_that_clean_up_in_order_poll_the_request(tool):
    """Those that add kernel objects stop in their own order; a KeyboardInterrupt could land
    between a kernel object made and its undo recorded."""
    from bpfhook import cli

    module = __import__(cli.COMMANDS[tool][0], fromlist=["run"])
    assert module.POLLS_SHUTDOWN is True
