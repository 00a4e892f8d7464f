"""Where a command's start-up time goes, phase by phase: `monitor --timings`."""
import contextlib
import os
import time


def since_exec():
    """Seconds since this process was started (exec'd), to the kernel's 10 ms clock tick."""
    with open("/proc/self/stat") as f:
        started_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    return time.clock_gettime(time.CLOCK_BOOTTIME) - started_ticks / os.sysconf("SC_CLK_TCK")


class Timings:
    """Seconds per phase, summed over each phase's spans, in the order first met."""

    def __init__(self):
        self.phases = {}

    @contextlib.contextmanager
    def phase(self, name):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - started)

    def add(self, name, seconds):
        self.phases[name] = self.phases.get(name, 0.0) + seconds

    def line(self):
        return ", ".join(f"{name} {seconds * 1000:.1f} ms" for name, seconds in self.phases.items())


class NoTimings:
    """Timings that keep nothing (the default)."""

    @staticmethod
    def phase(name):
        return contextlib.nullcontext()

    @staticmethod
    def add(name, seconds):
        pass
