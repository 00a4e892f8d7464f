"""Timing shared by the throughput benchmarks: wall clock and CPU time, best of N runs."""
import resource
import time


def cpu_seconds():
    """CPU seconds of this process and its finished children: what load from others blurs less."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def timed(fn):
    """(wall seconds, CPU seconds) of one call."""
    start, cpu = time.perf_counter(), cpu_seconds()
    fn()
    return time.perf_counter() - start, cpu_seconds() - cpu


def rate(fn, items, repeat):
    """(items/s in wall-clock time, items/s in CPU time), each the best of `repeat` runs."""
    runs = [timed(fn) for _ in range(repeat)]
    return items / min(wall for wall, _ in runs), items / max(min(cpu for _, cpu in runs), 1e-9)
