"""The monitor's engine: the connection programs loaded, attached and read back; the command
around it is bpfhook.monitor_cli.

Every choice is probed, never read off the kernel version: a ring buffer, else a perf event
array; the state program (and beside it conn_destroy's) as tp_btf, else as a raw tracepoint;
accept attribution through the first of programs.accept.HOOKS the kernel takes. Loading a
program is its own probe: a tp_btf or fexit program needs no vmlinux BTF parse beyond the
cached offsets, where features.has("fexit") would parse it at every start.
"""
import collections
import contextlib
import time

from bpfhook import netns, procfs, records
from bpfhook.program_cache import CACHE_DIR, ProgramCache
from bpfhook.programs import accept as accept_program
from bpfhook.programs import (conn_common, conn_destroy, conn_state, connect, existing, live_conns, task_netns,
                              tcp_health)
from pybpf import attach, features
from bpfhook.timings import NoTimings
from pybpf.errors import BpfError, FeatureUnavailable, VerifierError
from pybpf.readers import open_reader
from pybpf.prog import load


class Monitor:
    """Everything the kernel side needs, owned together.

    cgroup_dir: cgroup2 directory the cgroup hooks (connect4/6, getpeername4/6) attach to
    events:     "auto" (probe), "ringbuf" or "perf"
    stream:     True: every event reaches read(); False: nothing is sent one by one, the
                report comes from the maps (stats(), recent(), connections())
    transitions: streaming, every TCP state transition is an event (True); False: a
                connection's opening and its close only (conn_common.Maps)
    ring_size:  the ring buffer's bytes (a power of two; conn_common.RINGBUF_SIZE by default)
    accept:     "auto" (the best of accept.HOOKS the kernel allows), or one of them; the
                chosen hook is .accept_hook, how it came about .accept_note
    state:      the same for the state program and conn_state.HOOKS (.state_hook, .state_note)
    slots:      conn_slots' size (conn_common.Maps); None: CONN_SLOTS where the kernel has BPF
                atomics (a slot is claimed with a compare-and-swap), else 0
    older:      enter the TCP connections open before the start into the table now
                (enter_older(); .older = how many, None where the kernel cannot; their owners
                from /proc in .older_owners)
    timings:    a bpfhook.timings.Timings to add the start-up phases to
    cache_dir:  where the programs built are kept for the next start (bpfhook.program_cache);
                None builds them every time
    """

    def __init__(self, cgroup_dir, events="auto", stream=True, accept="auto", state="auto", slots=None, older=True,
                 timings=None, cache_dir=CACHE_DIR, transitions=True, ring_size=conn_common.RINGBUF_SIZE):
        for what, choice, hooks in (("accept", accept, accept_program.HOOKS), ("state", state, conn_state.HOOKS)):
            if choice != "auto" and choice not in hooks:
                raise ValueError(f"{what} hook {choice!r}: expected auto or one of {', '.join(hooks)}")
        if events == "auto":
            events = "ringbuf" if features.has("map_type.ringbuf") else "perf"
        self.events_kind = events
        self.cgroup_dir = cgroup_dir
        self.notes = []  # what could not be attached, said once at start
        self._closed_baseline = 0  # stats[STAT_CLOSED_KEPT] when trim_closed last emptied the map of them
        self.older_owners = {}  # sock -> (pid, comm) of the older connections, from /proc (enter_older)
        self._live_walk, self._live_walk_failed = None, False  # refresh_live's iterator link
        self._task_walk, self._task_walk_failed = None, False  # _namespaces's iterator link
        self._gone = _Gone()
        self._missed = 0  # lost()'s "missed" last time
        self._spill_next = None  # each CPU's spill.next as of the last spilled()
        self._spill_lost = 0  # spilled events written over before spilled() read them
        self.programs = []  # loaded and attached, whose skipped runs lose events (lost())
        self.menders = []  # ... and programs/conn_destroy.py's, whose skipped runs lose nothing
        self._stack = contextlib.ExitStack()
        self.timings = timings = timings or NoTimings()
        try:
            with timings.phase("kernel offsets"):
                kernel = conn_common.KernelOffsets.load()
                if slots is None:
                    slots = conn_common.CONN_SLOTS if features.has("atomics") else 0
            with timings.phase("maps"):
                self.maps = self._stack.enter_context(conn_common.Maps(ringbuf=events == "ringbuf", stream=stream,
                                                                       slots=slots, transitions=transitions,
                                                                       ringbuf_size=ring_size))
                # Reader before programs: a perf array slot without its ring makes the output fail.
                # Records as bytes: records.decode_event decodes the EVENT at their start (perf
                # records carry tail padding).
                self.reader = self._stack.enter_context(open_reader(self.maps.events))
            self._programs = None if cache_dir is None else ProgramCache(
                {"kernel": [kernel.offsets, kernel.funcs], "ringbuf": events == "ringbuf", "stream": stream,
                 "slots": slots, "transitions": transitions}, cache_dir)
            self.state_hook, self.state_note = self._attach_first(self._raw_tracepoint_attempts(kernel, conn_state),
                                                                  conn_state.HOOKS if state == "auto" else (state,))
            self._attach_destroy(kernel)
            self.health = self._attach_health()
            self.accept_hook, self.accept_note = self._attach_first(
                self._accept_attempts(kernel), accept_program.HOOKS if accept == "auto" else (accept,))
            for version, hook in connect.HOOKS.items():
                prog = self._load(f"connect{version}", lambda: connect.build(self.maps, kernel, version),
                                  "cgroup_sock_addr", name=f"bh_{hook}",
                                  expected_attach_type=f"cgroup_inet{version}_connect")
                self._hold(prog)
                self._stack.enter_context(attach.cgroup(prog, hook, cgroup_dir))
            self._kernel = kernel
            self.older = self.enter_older() if older else None
        except BaseException:
            self._stack.close()
            raise

    def enter_older(self):
        """Enter the TCP connections open before we attached (programs/existing.py) into the
        table: how many; None (with a note) where the kernel has no TCP socket iterator. The
        constructor does it, unless told older=False (to say "attached" first).

        Their owners, unknown to the kernel, are looked up in /proc by socket inode, as `ss -p`
        does, into .older_owners: from here, connections() and read() give those still without an
        owner the pid and comm found (owner_from_proc; tid stays 0), the lowest pid when several
        hold one. A scan of every process's fds: for the command to do after it said it is
        attached."""
        try:
            with existing.listeners_map() as listeners:  # (the loaded program holds it from here)
                link = self._iterator("existing", lambda: existing.build(self.maps, self._kernel, listeners),
                                      existing.FUNC, {listeners.name: listeners})
            with link:
                output = b"".join(output for _, output in self._walk_every_netns(link))
        except BpfError as e:
            self.notes.append(f"connections open before the monitor started are not listed until they "
                              f"close: {str(e).splitlines()[0]}")
            return None
        entered = _records(records.OLDER_ENTERED_CODEC, output)
        self.older_owners = _owners_in_proc({e.sock: e.inode for e in entered if e.inode})
        return len(entered)

    def refresh_live(self):
        """Walk every network namespace's TCP sockets (programs/live_conns.py): the live
        connections' bytes_sent and bytes_received come up to now (the state program reads them
        at the close only), and connections() stops listing those whose close the programs
        missed (_Gone). For the reports: call it before connections() and the metrics. False
        where the kernel has no TCP socket iterator (noted once: live connections then count
        their bytes at their close)."""
        if not self.load_live_walk():
            return False
        started = time.monotonic_ns()  # (the clock of the programs' ktime_get_ns)
        try:
            walks = self._walk_every_netns(self._live_walk)
        except BpfError:
            return False  # this report keeps the bytes of the last walk
        seen = {key.sock for _, output in walks for key in _records(records.CONN_KEY_CODEC, output)}
        self._gone.walked(started, seen, {cookie for cookie, _ in walks if cookie is not None})
        return True

    def load_live_walk(self):
        """Load refresh_live's walk, unless loaded or refused before (the command does it at
        start, so that a refusal is noted with the other warnings). False where the kernel
        has no TCP socket iterator: noted once, and not asked again."""
        if self._live_walk is None and not self._live_walk_failed:
            try:
                self._live_walk = self._stack.enter_context(self._live_walk_link())
            except BpfError as e:
                self._live_walk_failed = True
                self.notes.append(f"live connections count their bytes at their close only: "
                                  f"{str(e).splitlines()[0]}")
        return self._live_walk is not None

    def _live_walk_link(self):
        """The live_conns iterator, loaded and attached (a step of its own, for tests to refuse)."""
        return self._iterator("live_conns", lambda: live_conns.build(self.maps, self._kernel), existing.FUNC)

    def _iterator(self, key, build, func, maps=None):
        """The iterator program build() makes (as _load) loaded and attached to the target of
        kernel function `func`: a Link that owns its program."""
        with self._load(key, build, "tracing", expected_attach_type="trace_iter",
                        attach_btf_id=self._kernel.func(func)[0], maps=maps) as prog:
            return attach.iterator(prog)

    def _load(self, key, build, prog_type, maps=None, **options):
        """pybpf.prog.load of the program build() makes (a DSL program over self.maps and
        `maps`), kept by the program cache under `key` (what tells it from the others built by
        other arguments). A verifier error is raised from the program built anew: it names the
        DSL line."""
        if self._programs is None:
            with self.timings.phase("build"):
                program = build()
            with self.timings.phase("load"):
                return load(program, prog_type, **options)
        with self.timings.phase("build"):
            prepared = self._programs.get(key, build)
        named = {m.name: m for m in self.maps.all}
        named.update(maps or {})
        with self.timings.phase("load"):
            try:
                return load(prepared, prog_type, maps=named, **options)
            except VerifierError:
                return load(build(), prog_type, **options)

    def _walk_every_netns(self, link):
        """Run the socket iterator `link` here, then in every other network namespace (an
        iterator walks the sockets of the namespace it was created in): [(the namespace's
        cookie or None, what the iterator wrote there)]."""
        walks = [(netns.cookie(), attach.run_iterator(link))]
        here = netns.own()
        for ino, path in self._namespaces().items():
            if ino == here:
                continue
            with contextlib.ExitStack() as inside:
                try:
                    inside.enter_context(netns.entered(path))
                except OSError:
                    continue  # the namespace went away meanwhile
                walks.append((netns.cookie(), attach.run_iterator(link)))
        return walks

    def _namespaces(self):
        """{inode: a path to it} of every network namespace in use (netns.host_namespaces): from
        the task walk (programs/task_netns.py), else from a scan of /proc, which costs a stat()
        per process. The walk's pids are the kernel's: only where /proc shows those (our pid
        namespace is the initial one)."""
        if self._task_walk is None and not self._task_walk_failed:
            try:
                if not netns.in_initial_pid_namespace():
                    raise FeatureUnavailable("/proc shows another pid namespace than the kernel's")
                self._task_walk = self._stack.enter_context(
                    self._iterator("task_netns", lambda: task_netns.build(self._kernel), task_netns.FUNC))
            except BpfError:
                self._task_walk_failed = True  # (the scan finds the same, slower)
        processes = None  # (the scan's)
        if self._task_walk is not None:
            try:
                output = attach.run_iterator(self._task_walk)
            except BpfError:
                pass  # this time, the scan
            else:
                processes = [(t.netns_ino, t.pid) for t in _records(records.TASK_NETNS_CODEC, output)]
        return netns.host_namespaces(processes)

    def _with_older_owners(self, decoded):
        """Decoded events or connections, those of older connections the kernel knows no owner
        of given the one enter_older() found in /proc."""
        owners = self.older_owners
        if owners:  # (nothing to do per event on a host that had none)
            for d in decoded:
                if d["older"] and not d["pid"] and d["sock"] in owners:
                    d["pid"], d["comm"] = owners[d["sock"]]
                    d["owner_from_proc"] = True
        return decoded

    def _raw_tracepoint_attempts(self, kernel, program):
        """{hook: attach(stack, held) -> how} for a program on a raw tracepoint: `program` is
        conn_state or conn_destroy (a module with build, HOOKS, RAW_TRACEPOINT, TP_BTF)."""
        name = f"bh_{program.__name__.rsplit('.', 1)[-1]}"

        def tp_btf(stack, held):
            btf_id, _nargs = kernel.func(program.TP_BTF)
            prog = self._load(f"{name}.typed", lambda: program.build(self.maps, kernel, typed=True), "tracing",
                              name=name, expected_attach_type="trace_raw_tp", attach_btf_id=btf_id)
            self._hold(prog, stack, held)
            stack.enter_context(attach.tracing(prog))
            return f"tp_btf {program.RAW_TRACEPOINT}"

        def raw_tracepoint(stack, held):
            prog = self._load(name, lambda: program.build(self.maps, kernel), "raw_tracepoint", name=name)
            self._hold(prog, stack, held)
            stack.enter_context(attach.raw_tracepoint(prog, program.RAW_TRACEPOINT))
            return f"raw tracepoint {program.RAW_TRACEPOINT}"

        return {"tp_btf": tp_btf, "raw_tracepoint": raw_tracepoint}

    def _attach_destroy(self, kernel):
        """programs/conn_destroy.py, through the state program's kind of hook (typed or not, as
        its build takes), into .menders; where the kernel refuses it, a note: the state
        program's skipped closes are then made good later and less well (_Gone)."""
        try:
            _hook, how = self._attach_first(self._raw_tracepoint_attempts(kernel, conn_destroy),
                                            (self.state_hook,), self.menders)
        except BpfError as e:
            self.notes.append("a close the kernel skips keeps the bytes of the last report and no duration: "
                              f"{str(e).splitlines()[0]}")
            return
        self.state_note += f"; skipped closes made good at {how}"

    def _attach_health(self):
        """programs/tcp_health.py on each of its tracepoints the kernel has: the names of those
        attached. One missing is a note naming the counters it costs, not a failure."""
        attached = []
        for tracepoint, (field, name) in tcp_health.TRACEPOINTS.items():
            try:
                prog = self._load(f"tcp_health.{tracepoint}", lambda: tcp_health.build(self.maps, tracepoint),
                                  "raw_tracepoint", name=name)
                self._stack.callback(prog.close)
                self._stack.enter_context(attach.raw_tracepoint(prog, tracepoint))
            except BpfError as e:
                self.notes.append(f"no {field.replace('_', ' ')} counts: tcp:{tracepoint}: {str(e).splitlines()[0]}")
                continue
            attached.append(tracepoint)
        return attached

    def _accept_attempts(self, kernel):
        """{hook: attach(stack, held) -> how} for accept attribution (accept.HOOKS)."""
        def fexit(stack, held):
            btf_id, _nargs = kernel.func(accept_program.FUNC)
            prog = self._load("accept.fexit", lambda: accept_program.build_fexit(self.maps, kernel), "tracing",
                              name="bh_accept", expected_attach_type="trace_fexit", attach_btf_id=btf_id)
            self._hold(prog, stack, held)
            stack.enter_context(attach.fexit(prog))
            return f"fexit {accept_program.FUNC}"

        def kretprobe(stack, held):
            if not features.has("kprobe_pmu"):
                raise FeatureUnavailable(features.probe("kprobe_pmu").detail)
            if "regs_rc" not in kernel.offsets:
                raise FeatureUnavailable("no PT_REGS_RC layout known for this architecture")
            prog = self._load("accept.kretprobe", lambda: accept_program.build_kretprobe(self.maps, kernel), "kprobe",
                              name="bh_accept")
            self._hold(prog, stack, held)
            stack.enter_context(attach.kretprobe(prog, accept_program.FUNC))
            return f"kretprobe {accept_program.FUNC}"

        def getpeername(stack, held):
            for version, hook in accept_program.GETPEERNAME_HOOKS.items():
                prog = self._load(f"accept.getpeername{version}",
                                  lambda: accept_program.build_getpeername(self.maps, kernel, version),
                                  "cgroup_sock_addr", name="bh_accept",
                                  expected_attach_type=f"cgroup_inet{version}_getpeername")
                self._hold(prog, stack, held)
                stack.enter_context(attach.cgroup(prog, hook, self.cgroup_dir))
            return "cgroup getpeername4/getpeername6 (accept() calls that take the peer's address)"

        def tracepoints(stack, held):
            for tracepoint in accept_program.TRACEPOINTS:
                try:
                    prog = self._load(f"accept.{tracepoint}",
                                      lambda: accept_program.build(self.maps, kernel, tracepoint),
                                      "tracepoint", name="bh_accept")
                    self._hold(prog, stack, held)
                    stack.enter_context(attach.tracepoint(prog, tracepoint))
                except FeatureUnavailable as e:
                    self.notes.append(f"accepted connections keep no process identity: {e}")
            return "tracepoints " + ", ".join(accept_program.TRACEPOINTS)

        return {"fexit": fexit, "kretprobe": kretprobe, "getpeername": getpeername, "tracepoint": tracepoints}

    def _attach_first(self, attempts, hooks, programs=None):
        """Attach through the first of `hooks` (names in `attempts`) the kernel takes:
        (hook, how it is attached, with why the better ones were passed over). The programs
        go to `programs` (.programs by default)."""
        passed_over = []
        for hook in hooks:
            with contextlib.ExitStack() as stack:
                held = []
                try:
                    how = attempts[hook](stack, held)
                except BpfError as e:
                    if hook == hooks[-1]:
                        raise
                    passed_over.append(f"{hook}: {str(e).splitlines()[0]}")
                    continue
                self._stack.enter_context(stack.pop_all())  # attached: owned with the rest
                (self.programs if programs is None else programs).extend(held)
                return hook, how + (f" ({'; '.join(passed_over)})" if passed_over else "")

    def _hold(self, prog, stack=None, held=None):
        """Keep `prog` until `stack` (the monitor's own by default) closes: a program stays
        loaded while attached, our fd is closed with the rest. lost() reads its misses."""
        (stack or self._stack).callback(prog.close)
        (self.programs if held is None else held).append(prog)

    def read(self, timeout):
        """Decoded events that arrived (waiting up to `timeout` seconds for the first)."""
        return self._with_older_owners([records.decode_event(r) for r in self.reader.read(timeout)])

    def spilled(self):
        """Decoded events the ring buffer refused with room left since the last call, oldest first
        on each CPU: emit() (programs/conn_common.py) keeps them in the "spill" map, RECENT_SLOTS a
        CPU. Rare (a few a second under load): read with the chores, not at every poll. Those
        written over before this read count in lost()["with_room"]."""
        if self.maps.spill is None:
            return []
        per_cpu = self.maps.spill.lookup(0)
        seen = self._spill_next or [0] * len(per_cpu)
        out = []
        for cpu, spill in enumerate(per_cpu):
            new = spill.next - seen[cpu]
            if new > records.RECENT_SLOTS:
                self._spill_lost += new - records.RECENT_SLOTS
                new = records.RECENT_SLOTS
            out += [spill.events[(spill.next - back) % records.RECENT_SLOTS] for back in range(new, 0, -1)]
            seen[cpu] = spill.next
        self._spill_next = seen
        return self._with_older_owners([records.decode_event(e) for e in out])

    def cgroup_metrics(self, connections=None):
        """{cgroup id: metrics dict}: the kernel's totals of what ended, the closes it missed
        that the walks found (_Gone), and the live connections (connections(), read now when
        not given): active, opened = closed + active."""
        return self._metrics(self.maps.metrics_cgroup, self.maps.cache_cgroup, "cgroup_id", connections)

    def netns_metrics(self, connections=None):
        """{netns cookie: metrics dict}, as cgroup_metrics()."""
        return self._metrics(self.maps.metrics_netns, self.maps.cache_netns, "netns", connections)

    def _metrics(self, table, cache, field, connections):
        connections = self.connections() if connections is None else connections
        totals = self.maps.metric_totals(table, cache, field)
        for key, ended in self._gone.ended(field).items():  # closes the programs missed
            m = totals.setdefault(key, records.zero_metrics())
            for name, value in ended.items():
                m[name] += value
        return with_live(totals, connections, field)

    def _stats_by_slot(self):
        """[slot][cpu]: every CPU's stats, in one lookup of the one-element table."""
        return list(zip(*self.maps.stats.lookup(0)))

    def stats(self):
        """The kernel's summaries: {"events", "duration_total_ns", "duration_max_ns",
        "transitions": {(oldstate, newstate): count}}, "closed_unseen": connections
        counted closed without their close (a run the kernel skipped; no duration): by the
        state program when a new socket took their entry, or found gone by the walks (_Gone,
        as of the last connections()); and "closed_at_destroy": closes the state program
        skipped, made good whole at the socket's destroy (programs/conn_destroy.py)."""
        per_cpu = self._stats_by_slot()
        transitions = {}
        for old in range(records.NSTATES):
            for new in range(records.NSTATES):
                count = sum(per_cpu[records.STAT_TRANSITIONS + old * records.NSTATES + new])
                if count:
                    transitions[(records.state_name(old), records.state_name(new))] = count
        return {"events": sum(per_cpu[records.STAT_EVENTS]) + sum(transitions.values()),
                "duration_total_ns": sum(per_cpu[records.STAT_DURATION_TOTAL]),
                "duration_max_ns": max(per_cpu[records.STAT_DURATION_MAX]),
                "transitions": transitions,
                "closed_unseen": sum(per_cpu[records.STAT_CLOSED_UNSEEN]) + len(self._gone.missed),
                "closed_at_destroy": sum(per_cpu[records.STAT_CLOSED_AT_DESTROY])}

    def recent(self):
        """The latest closes and UDP flows the programs remembered (decode_event dicts), oldest first."""
        out = [records.decode_event(e) for cpu in self.maps.recent.lookup(0) for e in cpu.events if e.kind]
        return sorted(out, key=lambda e: e["ts_ns"])

    def connections(self):
        """Live TCP connections, from their slots and from conns (records.decode_conn dicts): an
        ended one's slot is marked, its entry in conns is in state CLOSE (kept for reuse). Those
        whose close the programs missed are left out once refresh_live's walks tell (_Gone)."""
        closed = records.TCP_STATE_IDS["CLOSE"]
        live = self.maps.slot_entries() + [(k.sock, c) for k, c in self.maps.conns.items()]
        live = self._gone.left_out([records.decode_conn(sock, c) for sock, c in live if c.state != closed])
        return self._with_older_owners(live)

    def closed_kept(self):
        """Ended connections' entries conn_state keeps in conns for reuse, since the last trim
        (an upper bound: the LRU may have evicted some)."""
        return (self._closed_total() - self._closed_baseline) % 2**64

    def _closed_total(self):
        """stats[STAT_CLOSED_KEPT] summed over the CPUs (each drifts; the sum mod 2**64 is exact)."""
        return sum(self._stats_by_slot()[records.STAT_CLOSED_KEPT]) % 2**64

    def trim_closed(self, limit=None):
        """Delete the ended connections' entries once more than `limit` (a quarter of the map
        by default) may be kept: their addresses were not reused soon, and the LRU would evict
        an idle live connection as readily as one of them. Returns how many it deleted.

        An entry reused between our read and our delete loses its new connection: its close
        then counts in lost()["conns"], never silently."""
        limit = conn_common.CONNS_MAX // 4 if limit is None else limit
        total = self._closed_total()
        if (total - self._closed_baseline) % 2**64 <= limit:
            return 0
        self._closed_baseline = total
        closed = records.TCP_STATE_IDS["CLOSE"]
        stale = [k for k, v in self.maps.conns.items() if v.state == closed]
        for key in stale:
            self.maps.conns.delete(key)
        return len(stale)

    def lost(self):
        """Kernel-side drops: "events", all lost: "ring_full" (the buffer refused them full, or
        perf's own lost records), "with_room" (refused under half full, the kernel failing the
        reservation: kept in the spill map, and lost only when written over there before
        spilled() read them) and the "missed" ones; "conns": closes of connections the LRU map no
        longer held.

        missed: runs the kernel skipped because the same program was running on that CPU
        (bpf_prog_info.recursion_misses): no event exists for them. What they left in the table
        is mended later (an opening: found late; a close: ended when a new socket takes its
        address, or left out once the walks tell: _Gone). A skipped close is nearly always made
        good whole at its socket's destroy (programs/conn_destroy.py): counted in "made_good",
        not "missed" (only a skipped close leaves an entry live at the destroy)."""
        counts = self.maps.lost_counts()
        skipped = sum(prog.info(contents=False).recursion_misses for prog in self.programs)
        counts["made_good"] = sum(self._stats_by_slot()[records.STAT_CLOSED_AT_DESTROY])
        # Never less than before (a total): a close skipped a moment ago, not yet made good,
        # stays counted
        self._missed = counts["missed"] = max(self._missed, skipped - counts["made_good"])
        counts["ring_full"] = counts.pop("events") + self.reader.lost
        counts["with_room"] = self._spill_lost
        counts["events"] = counts["ring_full"] + counts["with_room"] + counts["missed"]
        return counts

    def close(self):
        self._stack.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Gone:
    """Followed connections whose close the programs missed (Monitor.lost()'s "missed"): the
    entry stays live until a new socket at its address ends it. The live walk meets every live
    one; an entry it did not meet in two walks running, in a namespace it walked, and that
    started well before the first, is gone. Two walks: before Linux 6.16 the kernel's TCP
    iterator can skip a socket when another in its hash bucket closes between two reads. Well
    before: connect() enters SYN_SENT a moment before its socket is hashed. Once gone, gone
    while its entry lasts (its namespace may be gone too, and walked no more).

    missed: the connections left_out() last left out; they count as closed with the bytes of
    the last walk that met them, as the state program will count them."""

    MARGIN_NS = 1_000_000_000

    def __init__(self):
        self._walk = None  # (started ns, socks met, cookies of the namespaces walked), until judged
        self._unmet = set()  # (sock, start_ns) of the entries the last judged walk did not meet
        self._gone = set()  # ... and the one before it, or gone before and still listed
        self.missed = []

    def walked(self, started_ns, met, netns_cookies):
        self._walk = (started_ns, met, netns_cookies)

    def left_out(self, connections):
        """connections (decode_conn dicts) but the gone ones; the first call after a walk
        judges it against them."""
        if self._walk is not None:
            started, met, walked = self._walk
            self._walk = None
            unmet = {(c["sock"], c["start_ns"]) for c in connections
                     if c["sock"] not in met and c["netns"] in walked and c["start_ns"] < started - self.MARGIN_NS}
            listed = {(c["sock"], c["start_ns"]) for c in connections}
            self._gone, self._unmet = (unmet & self._unmet) | (self._gone & listed), unmet
        kept, self.missed = [], []
        for c in connections:
            (self.missed if (c["sock"], c["start_ns"]) in self._gone else kept).append(c)
        return kept

    def ended(self, field):
        """{key of `field`: Counter of METRICS fields}: the missed connections as closes."""
        return _tally(self.missed, field, "closed")


def _records(codec, output):
    """The records an iterator wrote back to back (its output: bytes), decoded."""
    return codec.decode_many(output, len(output) // codec.size)


def _owners_in_proc(inodes):
    """{sock: (pid, comm)} of the processes holding the sockets `inodes` ({sock: socket inode})."""
    holders = procfs.socket_holders(procfs.all_pids(), set(inodes.values())) if inodes else {}
    comms = {pid: procfs.comm(pid) for pid in set(holders.values())}
    return {sock: (holders[inode], comms[holders[inode]]) for sock, inode in inodes.items() if inode in holders}


def _tally(connections, field, count):
    """{key of `field`: Counter of `count` (connections) and their bytes}."""
    out = collections.defaultdict(collections.Counter)
    for c in connections:
        out[c[field]].update({count: 1, "bytes_sent": c["bytes_sent"], "bytes_received": c["bytes_received"]})
    return out


def with_live(totals, connections, field):
    """Metrics dicts {key: records.decode_metrics dict} completed from the live connections:
    active = connections whose `field` is the key, opened = closed + active, and their bytes so
    far (as of Monitor.refresh_live) added to the ended ones'. The kernel keeps only what
    ended: one map update per close rather than one per open and per close."""
    live = _tally(connections, field, "active")
    out = {}
    for key in totals.keys() | live.keys():
        m = dict(totals.get(key) or records.zero_metrics())
        m["active"] = live[key]["active"]
        m["opened"] = m["closed"] + m["active"]
        for name in ("bytes_sent", "bytes_received"):
            m[name] += live[key][name]
        out[key] = m
    return out
