"""`bpfhook monitor`: its options, the per-event filter, and the command loop around the engine
(bpfhook.monitor.Monitor): start-up lines, periodic reports, JSON lines, Prometheus, the final report.

Bad syntax (numbers, HOST:PORT) is a usage error (exit 2, from argparse); a cgroup path that does
not exist is a runtime error (exit 1).
"""
import contextlib
import dataclasses
import json
import os
import sys
import threading
import time

from bpfhook import cgroups
from bpfhook.cli import host_port, pid_number, port_number, positive_float, ring_megabytes
from bpfhook.containers import ContainerError, Resolver, find
from bpfhook.doctor import MONITOR, missing_capabilities
from bpfhook.exporters import JsonLines, exposition, node_name
from bpfhook.monitor import Monitor
from bpfhook.programs.accept import HOOKS as ACCEPT_HOOKS
from bpfhook.programs.conn_common import RINGBUF_SIZE
from bpfhook.report import Aggregator, endpoint, render, render_final, summary_snapshot
from bpfhook.shutdown import Shutdown
from bpfhook.timings import Timings, since_exec
from pybpf import mounts
from pybpf.errors import BpfError

NEEDS_ROOT = True
INTERPRETER = "interpreter and imports"  # the timings phase before watch()
POLLS_SHUTDOWN = True  # the final report, then detach
POLL_SECONDS = 0.1  # the BPF side batches wakeups; we look at least this often
# Trimming ended entries and looking for lost events: a dozen syscalls, which at every poll
# would cost the host more than the monitor's whole idle loop
CHORES_SECONDS = 1.0


class MonitorError(BpfError):
    """Options that parse but cannot be used on this system."""


@dataclasses.dataclass(frozen=True)
class MonitorOptions:
    cgroup: str  # filesystem directory of the cgroup the cgroup hooks attach to
    metrics_interval: float
    show_containers: bool = False
    show_events: bool = False
    json: bool = False
    prometheus: tuple = None  # (host, port)
    container: str = None
    container_cgroup: str = None  # the cgroup --container names, when it exists at the start
    pid: int = None
    port: int = None
    duration: float = None
    accept: str = "auto"  # accept attribution hook: auto or one of programs.accept.HOOKS
    timings: bool = False  # say where the start-up time went
    transitions: bool = False  # stream every TCP state transition, not only openings and closes
    ring_size: int = RINGBUF_SIZE  # bytes


def add_arguments(parser):
    parser.add_argument("-c", "--cgroup", metavar="PATH",
                        help="cgroup2 directory to attach the cgroup hooks to (default: the cgroup2 mount)")
    parser.add_argument("-m", "--metrics-interval", metavar="SEC", type=positive_float, default=5.0,
                        help="seconds between reports (default 5)")
    parser.add_argument("-s", "--show-containers", action="store_true", help="name containers in the report")
    parser.add_argument("-e", "--show-events", action="store_true", help="print every connection event")
    parser.add_argument("--json", action="store_true", help="one JSON object per event on stdout, no text report")
    parser.add_argument("--prometheus", metavar="HOST:PORT", type=host_port,
                        help="serve Prometheus metrics on http://HOST:PORT/metrics")
    parser.add_argument("--container", metavar="NAME|ID",
                        help="only connections of this container: lab/docker/podman name, id or prefix, cgroup "
                             "path, Kubernetes namespace/pod[/container]")
    parser.add_argument("--pid", type=pid_number, help="only connections of this process")
    parser.add_argument("--port", type=port_number, help="only connections with this local or remote port")
    parser.add_argument("--duration", metavar="SEC", type=positive_float, help="stop after SEC seconds")
    parser.add_argument("--accept", choices=("auto",) + ACCEPT_HOOKS, default="auto",
                        help="how accepted connections get their process (default auto: the first of "
                        f"{', '.join(ACCEPT_HOOKS)} this kernel allows; tracepoint sees every accept() but slows "
                        "every system call on the host)")
    parser.add_argument("--transitions", action="store_true",
                        help="with -e/--json: an event at every TCP state transition (default: a connection's "
                        "opening and its close, which carries its bytes and duration)")
    parser.add_argument("--ring-size", metavar="MB", type=ring_megabytes, default=RINGBUF_SIZE,
                        help=f"streaming: the event ring buffer's size, a power of two (default "
                        f"{RINGBUF_SIZE >> 20}: most of a second of ~75,000 events/s)")
    parser.add_argument("--timings", action="store_true",
                        help="say where the start-up time went, phase by phase, and when the first event came")


def options_from(args):
    """Check what argparse cannot (the cgroup exists) and freeze the options."""
    cgroup = args.cgroup
    if cgroup is None:
        cgroup = cgroups.mount()
    if not os.path.isdir(cgroup):
        raise MonitorError(f"cgroup path {cgroup!r} does not exist (or is not a directory)")
    if mounts.containing(cgroup, "cgroup2") is None:  # (a v1 hierarchy has cgroup.procs too)
        v1 = mounts.containing(cgroup, "cgroup") is not None
        raise MonitorError(f"{cgroup!r} is {'in a cgroup v1 hierarchy' if v1 else 'not a cgroup2 directory'}: "
                           f"the hooks attach to cgroup2, mounted at {mounts.cgroup2_root()}")
    return MonitorOptions(
        cgroup=cgroup, metrics_interval=args.metrics_interval, show_containers=args.show_containers,
        show_events=args.show_events, json=args.json, prometheus=args.prometheus, container=args.container,
        container_cgroup=_container_cgroup(args.container), pid=args.pid, port=args.port, duration=args.duration,
        accept=args.accept, timings=args.timings, transitions=args.transitions, ring_size=args.ring_size,
    )


def _container_cgroup(spec):
    """The cgroup of the container spec names (bpfhook.containers.find); None when none does yet (the
    monitor then waits for one of that name); several is an error."""
    if spec is None:
        return None
    try:
        return find(spec).cgroup_path
    except ContainerError as e:
        if e.candidates:
            raise
        print(f"bpfhook monitor: no container {spec!r} now: watching for one by that name", file=sys.stderr)
        return None


def run(args):
    return watch(options_from(args), stop=args.shutdown)


@dataclasses.dataclass(frozen=True)
class EventFilter:
    """Which decoded events to keep: all given conditions must hold."""

    container: str = None  # name, id, short id or id prefix (Container.matches)
    pid: int = None
    port: int = None
    container_cgroup: str = None  # found at the start: its cgroup and those below it, whatever their names

    @classmethod
    def from_options(cls, options):
        return cls(container=options.container, pid=options.pid, port=options.port,
                   container_cgroup=options.container_cgroup)

    @property
    def passes_everything(self):
        return self.container is None and self.pid is None and self.port is None

    def __call__(self, event, container):
        """event: records.decode_event dict; container: its bpfhook.containers.Container."""
        if self.pid is not None and event["pid"] != self.pid:
            return False
        if self.port is not None and self.port not in (event["sport"], event["dport"]):
            return False
        if self.container_cgroup is not None:
            path = container.cgroup_path
            return path == self.container_cgroup or path.startswith(self.container_cgroup.rstrip("/") + "/")
        if self.container is not None and not container.matches(self.container):
            return False
        return True


def event_line(event, container):
    """One -e line."""
    mark = "[CTR]" if container.is_container else "     "
    states = f"{event['oldstate'] or '-'}->{event['newstate']}" if event["newstate"] else ""
    extra = ""
    if event["event"] == "close":
        duration = "close missed, found now" if event["close_unseen"] else f"{event['duration_ns'] / 1e6:.1f}ms"
        extra = f" sent {event['bytes_sent']} recv {event['bytes_received']} {duration}"
    return (f"{time.strftime('%H:%M:%S')} {event['event']:<7} {mark} {container.label:<16} "
            f"pid {event['pid']:<7} {event['comm'][:15]:<15} {event['family']} {event['protocol']} "
            f"{endpoint(event['saddr'], event['sport'])} -> {endpoint(event['daddr'], event['dport'])} "
            f"{states}{extra}")


def watch(options, out=None, err=None, on_event=None, events="auto", stop=None):
    """Run the monitor until --duration, SIGINT/SIGTERM, or `stop` is set: the command line's
    Shutdown, or a threading.Event (then signals are taken here, in the main thread).

    out/err: streams for reports/events and for status lines (stdout/stderr);
    on_event(event, container): called for each event that passes the filters
    (the in-process hook the tests use). Returns the exit status."""
    out = out or sys.stdout
    err = err or sys.stderr
    started = time.monotonic()
    timings = Timings() if options.timings else None
    if timings is not None:
        timings.add(INTERPRETER, since_exec())
    own_signals = not isinstance(stop, Shutdown)
    interrupted = Shutdown(stop).install() if own_signals else stop
    try:
        resolve = Resolver()
        keep = EventFilter.from_options(options)
        aggregator = Aggregator(resolve, health=not keep.passes_everything)  # (else the maps have it)
        lock = threading.Lock()
        json_out = JsonLines(out) if options.json else None
        # Events one by one only for whoever looks at them; the report alone reads the maps.
        stream = bool(json_out or options.show_events or on_event or not keep.passes_everything)
        # Every transition streamed when asked for, and for a filtered text report (its transitions
        # come from the events); else openings and closes, the kernel counting the rest.
        transitions = options.transitions or (not keep.passes_everything and json_out is None)
        # Unfiltered JSON lines: the summary (and Prometheus) from the kernel's maps, as without
        # streaming, for they count every event; the events are written out, not also folded one
        # by one into a report (a third of the reader's time per event)
        from_maps = json_out is not None and keep.passes_everything and on_event is None
        written = 0  # events written out (from_maps: the summary's count)
        with contextlib.ExitStack() as stack:
            monitor = stack.enter_context(Monitor(options.cgroup, events=events, stream=stream, accept=options.accept,
                                                  older=False, timings=timings,
                                                  transitions=transitions, ring_size=options.ring_size))
            _say_started(monitor, options, started, err)
            first_event = timings is not None

            def snapshot():
                """What the reports show (call with the lock held)."""
                monitor.refresh_live()
                live = monitor.connections()
                if not stream or from_maps:
                    kernel = summary_snapshot(live, monitor.recent(), monitor.stats(), monitor.cgroup_metrics(live),
                                              resolve, monitor.lost())
                    return dataclasses.replace(kernel, events=written) if from_maps else kernel
                aggregator.set_live(live)
                if keep.passes_everything:  # the maps count everything; filtered views come from events
                    aggregator.set_cgroup_metrics(monitor.cgroup_metrics(live))
                    if not transitions:  # (not streamed: counted by the kernel)
                        aggregator.set_transitions(monitor.stats()["transitions"])
                lost = monitor.lost()
                aggregator.set_lost(lost["events"], lost["missed"], lost["made_good"])
                return aggregator.snapshot()

            def deliver(batch, show_events):
                """The events that pass the filters, to the report, the output and on_event."""
                nonlocal first_event, written
                if first_event and batch:
                    first_event = False
                    print(f"bpfhook monitor: first event {(time.monotonic() - started) * 1000:.1f} ms after "
                          "the start of the command", file=err, flush=True)
                if from_maps:
                    if batch:
                        with lock:
                            json_out.write_many([(event, resolve(event["cgroup_id"])) for event in batch])
                            written += len(batch)
                    return
                lines = []  # (event, container) for the JSON lines, written in one block
                with lock:
                    for event in batch:
                        container = resolve(event["cgroup_id"])
                        if not keep(event, container):
                            continue
                        if not _listener_close(event):
                            aggregator.add(event)
                        if json_out is not None:
                            lines.append((event, container))
                        elif show_events:
                            print(event_line(event, container), file=out)
                        if on_event is not None:
                            on_event(event, container)
                    if lines:
                        json_out.write_many(lines)

            shown = {}  # what the counters showed: they never go back
            node = node_name()

            def scrape():
                with lock:
                    return exposition(snapshot(), shown, node)

            if options.prometheus:
                from bpfhook.metrics_http import PrometheusServer  # http.server only when asked for

                server = stack.enter_context(PrometheusServer(*options.prometheus, scrape))
                host, port = server.address
                print(f"bpfhook monitor: Prometheus metrics on http://{host}:{port}/metrics", file=err, flush=True)
            deadline = started + options.duration if options.duration else None
            next_report = time.monotonic() + options.metrics_interval
            lost_said, next_chores = 0, 0.0
            older_pending = True
            while not interrupted:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    break
                wake = next_report if deadline is None else min(next_report, deadline)
                if stream:
                    deliver(monitor.read(max(min(wake - now, POLL_SECONDS), 0)), options.show_events)
                else:  # nothing comes one by one: wake for the next chore or report only
                    interrupted.wait(max(min(wake, next_chores) - now, 0))
                if older_pending:  # after the first poll: the first events are out before this walk
                    older_pending = False
                    with lock:
                        _say_older(monitor, options, err)
                if time.monotonic() >= next_chores:
                    next_chores = time.monotonic() + CHORES_SECONDS
                    if stream:  # (the few the ring refused with room left)
                        deliver(monitor.spilled(), options.show_events)
                    monitor.trim_closed()
                    lost = monitor.lost()["events"]
                    if lost > lost_said:
                        _say_lost(lost - lost_said, lost, json_out, out, err)
                        lost_said = lost
                if time.monotonic() >= next_report:
                    next_report += options.metrics_interval
                    if json_out is None:
                        with lock:
                            out.write(render(snapshot(), options.show_containers))
                        out.flush()
            if older_pending:  # (stopped before the first poll: its warnings are still said)
                with lock:
                    _say_older(monitor, options, err)
            deliver(monitor.read(0) + monitor.spilled(), show_events=False)  # what arrived while we were stopping
            with lock:
                final = snapshot()
            lost = monitor.lost()
            if json_out is None:
                out.write(render_final(final, options.show_containers))
            else:
                json_out.stream.write(_summary_json(final, lost) + "\n")
            out.flush()
        why = (f": {lost['ring_full']} the ring buffer refused full, {lost['with_room']} it refused with room "
               f"left, {lost['missed']} in runs the kernel skipped" if lost["events"] else "")
        print(f"bpfhook monitor: detached ({final.events} events, {lost['events']} lost{why})", file=err, flush=True)
        return 0
    finally:
        if own_signals:
            interrupted.restore()


def _say_started(monitor, options, started, err):
    """The start-up lines said once attached: how, where and in how long."""
    attached = time.monotonic() - started
    print(f"bpfhook monitor: attached in {attached:.3f}s "
          f"({monitor.events_kind}, cgroup hooks on {options.cgroup})", file=err, flush=True)
    timings = monitor.timings
    if options.timings:
        timings.add("attach and the rest", attached - sum(timings.phases.values()) + timings.phases[INTERPRETER])
    print(f"bpfhook monitor: connection states through {monitor.state_note}", file=err, flush=True)
    print(f"bpfhook monitor: accepted connections through {monitor.accept_note}", file=err, flush=True)


def _say_older(monitor, options, err):
    """After the first poll (the walks would delay the first events by their ~15 ms): the older
    connections entered, the live walk loaded, then the timings and what could not be had."""
    timings = monitor.timings
    with timings.phase("older connections"):
        older = monitor.enter_older()
        monitor.load_live_walk()  # now: a kernel without the walk is noted below
    if older is not None:
        print(f"bpfhook monitor: {older} TCP connections open before the start entered, "
              f"{len(monitor.older_owners)} with their owner from /proc (the rest: when accepted or "
              "closed)", file=err, flush=True)
    if options.timings:
        print(f"bpfhook monitor: timings: {timings.line()} (interpreter and imports: from the exec, to 10 ms; "
              f"build: the programs not kept from the last start; older connections: after the first poll)",
              file=err, flush=True)
    for note in monitor.notes:
        print(f"bpfhook monitor: warning: {note}", file=err, flush=True)
    for capability, lost in missing_capabilities(among=MONITOR):  # (what it needs to start, it had)
        print(f"bpfhook monitor: warning: {capability} is missing: {lost.removeprefix('monitor: ')}",
              file=err, flush=True)


def _listener_close(event):
    """A listening socket closing: a state event worth printing, but no connection to count."""
    return event["oldstate"] == "LISTEN" and event["newstate"] == "CLOSE"


def _say_lost(new, total, json_out, out, err):
    if json_out is not None:
        out.write(json.dumps({"ts": time.time(), "event": "lost", "lost": new, "lost_total": total}) + "\n")
        out.flush()
    print(f"bpfhook monitor: warning: {new} events lost ({total} in all): the ring buffer was full or failed a "
          "reservation, or the kernel skipped a program already running on that CPU", file=err, flush=True)


def _summary_json(snapshot, lost):
    return json.dumps({"ts": snapshot.time, "event": "summary", "events": snapshot.events,
                       "lost": lost["events"], "lost_ring_full": lost["ring_full"],
                       "lost_with_room": lost["with_room"], "lost_missed": lost["missed"], "lost_conns": lost["conns"],
                       "lost_made_good": lost["made_good"],
                       "closed": snapshot.closed, "active": len(snapshot.active)}, separators=(",", ":"))
