"""Undo what would outlive the process: tc filters and qdiscs, netlink XDP, BPF_PROG_ATTACH.

bpf links need none of this (their fds die with the process), which is why pybpf prefers
them. The rest is recorded here and undone, newest first, when its owner closes, at exit,
and on SIGINT/SIGTERM when the program leaves those to Python's defaults. A forked child
starts with an empty registry: only the process that made something undoes it.
"""
import atexit
import itertools
import os
import signal
import sys
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)
# The handlers a program has not chosen: Python's SIGINT -> KeyboardInterrupt, and the OS default.
_DEFAULTS = (signal.default_int_handler, signal.SIG_DFL)


class Registry:
    """Ordered undo actions; each entry runs at most once."""

    def __init__(self):
        self._entries = {}              # token -> (description, undo)
        self._tokens = itertools.count(1)
        self._lock = threading.RLock()
        self._hooked = False
        self._previous = {}             # signal -> handler we replaced
        self._undoing = False           # a signal's undo is running: later signals wait for it

    def register(self, undo, description):
        """Record undo() (no arguments) to run at exit; returns a token for unregister/run."""
        with self._lock:
            self._hook()
            token = next(self._tokens)
            self._entries[token] = (description, undo)
            return token

    def unregister(self, token):
        """Forget an entry without running it (the owner undid it itself)."""
        with self._lock:
            self._entries.pop(token, None)

    def run(self, token):
        """Run one entry now and forget it; a second call does nothing."""
        with self._lock:
            entry = self._entries.pop(token, None)
        if entry is not None:
            entry[1]()

    def pending(self):
        """Descriptions of what is still to be undone, oldest first."""
        with self._lock:
            return [description for description, _ in self._entries.values()]

    def run_all(self):
        """Undo everything, newest first. Failures are reported on stderr, never raised:
        one stuck entry must not keep the others in place."""
        while True:
            with self._lock:
                if not self._entries:
                    return
                token = max(self._entries)
                description, undo = self._entries.pop(token)
            try:
                undo()
            except Exception as e:  # noqa: BLE001 -- keep undoing the rest
                print(f"pybpf cleanup: could not undo {description}: {e}", file=sys.stderr)

    # -- process hooks ------------------------------------------------------
    def _hook(self):
        if self._hooked:
            return
        self._hooked = True
        atexit.register(self.run_all)
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread; atexit still covers exit
        for signum in SIGNALS:
            previous = signal.getsignal(signum)
            if previous not in _DEFAULTS:  # the program handles it (or C does): it stops in its own order
                continue
            self._previous[signum] = previous
            signal.signal(signum, self._on_signal)

    def _forget_inherited(self):
        # Hooks (atexit, signal handlers) survive fork and are right for the child; entries are not.
        self._entries.clear()
        self._lock = threading.RLock()

    def _on_signal(self, signum, frame):
        if self._undoing:  # a second Ctrl-C must not cut the undo short
            os.write(2, b"pybpf cleanup: still cleaning up\n")
            return
        self._undoing = True
        try:
            self.run_all()
        finally:
            self._undoing = False
        previous = self._previous.get(signum, signal.SIG_DFL)
        if previous == signal.SIG_DFL:
            # Die the way the signal would have killed us, so a parent sees -SIGTERM, not an exit code.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        previous(signum, frame)  # e.g. Python's default SIGINT handler raises KeyboardInterrupt


registry = Registry()
os.register_at_fork(after_in_child=registry._forget_inherited)
register = registry.register
unregister = registry.unregister
run = registry.run
run_all = registry.run_all
pending = registry.pending
