"""SIGINT and SIGTERM end a tool in order, however many arrive.

The command line installs one Shutdown for the whole run, before a tool starts. The first
signal asks the tool to stop: a tool that polls (`POLLS_SHUTDOWN`) sees the request at its
next check and takes down what it added; any other tool gets a KeyboardInterrupt. Later
signals only say that clean-up is still going: a second Ctrl-C, or `timeout` signalling the
tool and then its process group, must not cut the clean-up short. SIGKILL alone skips it.

The handler only sets a flag and writes a byte to a pipe that wait() selects on: it takes no
lock, so it cannot deadlock against the code it interrupts (threading.Event.set() would).
"""
import os
import select
import signal
import threading
import time

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_SLICE = 0.05  # how often wait() looks at a caller's event when signals may also come


class Shutdown:
    """The stop request: true once a signal came, or once `event` (a caller's
    threading.Event, for a tool run in a thread) is set."""

    def __init__(self, event=None, raise_first=False):
        self.signal = None
        self.event = event
        self.raise_first = raise_first
        self._previous = {}
        self._told = False
        self._wake = None  # (read fd, write fd) while installed
        self._pid = os.getpid()

    def install(self):
        """Take SIGINT and SIGTERM (main thread only: elsewhere the caller's event is the only way)."""
        if threading.current_thread() is threading.main_thread() and not self._previous:
            self._pid = os.getpid()
            self._wake = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def restore(self):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
        if self._wake is not None:
            for fd in self._wake:
                os.close(fd)
            self._wake = None

    def _on_signal(self, signum, _frame):
        if os.getpid() != self._pid:  # a forked helper (pyroute2's netns maker): it finishes, we stop
            return
        if self.signal is None:
            self.signal = signum
            try:
                os.write(self._wake[1], b"!")
            except (OSError, TypeError):  # pipe full (it already says stop), or restored meanwhile
                pass
            if self.raise_first:
                raise KeyboardInterrupt
            return
        if not self._told:
            self._told = True
            os.write(2, b"bpfhook: still cleaning up (SIGKILL would skip it)\n")

    def hand_over(self):
        """Before exec(): from here on the signals act as they will on the new program (their
        defaults). False when a stop came first, and then nothing changes."""
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        try:
            if self:
                return False
            for signum in self._previous:
                signal.signal(signum, signal.SIG_DFL)
            self._previous = {}
            return True
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)  # one that came meanwhile acts now

    def wait(self, seconds):
        """Sleep up to `seconds` (None: until told), less if told to stop; True when told to stop."""
        deadline = None if seconds is None else time.monotonic() + seconds
        while not self:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            if self._wake is None:  # no signals here: the caller's event alone
                if self.event is None:
                    time.sleep(_SLICE if left is None else left)
                else:
                    self.event.wait(left)
                continue
            if self.event is not None:
                left = _SLICE if left is None else min(left, _SLICE)
            select.select([self._wake[0]], [], [], left)
        return bool(self)

    def __bool__(self):
        return self.signal is not None or (self.event is not None and self.event.is_set())

    def __enter__(self):
        return self.install()

    def __exit__(self, *exc):
        self.restore()
