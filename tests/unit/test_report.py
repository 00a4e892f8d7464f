"""Aggregation of decoded events and the text report's layout."""
import dataclasses
import re

from bpfhook.containers import classify
from bpfhook.records import METRICS_FIELDS
from bpfhook.report import Aggregator, connection_line, human_bytes, human_duration, render, render_final

CGROUPS = {100: "/bpfhook.lab/web", 200: "/user.slice/user-0.slice/session-1.scope", 300: "/bpfhook.lab/db"}


def resolve(cgroup_id):
    return classify(CGROUPS.get(cgroup_id))


def ev(event="state", sock=1, ts_ns=0, cgroup_id=100, oldstate="", newstate="", **over):
    e = {"ts_ns": ts_ns, "event": event, "pid": 10, "tid": 10, "comm": "curl", "cgroup_id": cgroup_id,
         "netns": 4026531840, "netns_is_inode": False, "owner_from_accept": False, "family": "ipv4",
         "protocol": "tcp", "saddr": "10.77.1.2", "sport": 40000 + sock, "daddr": "10.77.1.1", "dport": 80,
         "oldstate": oldstate, "newstate": newstate, "bytes_sent": 0, "bytes_received": 0, "duration_ns": 0,
         "sock": sock, "cookie": 0, "close_unseen": False, "failure": None, "retransmits": 0, "srtt_us": 0,
         "connect_us": 0, "resets_sent": 0, "resets_received": 0}
    e.update(over)
    return e


def lifecycle(agg, sock, cgroup_id, start, end, sent, received):
    agg.add(ev("state", sock, start, cgroup_id, "CLOSE", "SYN_SENT"))
    agg.add(ev("state", sock, start + 1000, cgroup_id, "SYN_SENT", "ESTABLISHED"))
    agg.add(ev("state", sock, end, cgroup_id, "ESTABLISHED", "FIN_WAIT1"))
    agg.add(ev("state", sock, end + 10, cgroup_id, "FIN_WAIT1", "CLOSE"))
    agg.add(ev("close", sock, end + 10, cgroup_id, "FIN_WAIT1", "CLOSE", bytes_sent=sent, bytes_received=received,
               duration_ns=end + 10 - start))


def test_lifecycle_counts_once_and_keeps_bytes_and_duration():
    agg = Aggregator(resolve=resolve, clock=lambda: 0)
    lifecycle(agg, 1, 100, 1_000, 5_000_000, 300, 4096)
    agg.add(ev("state", 2, 2_000, 200, "CLOSE", "SYN_SENT"))
    s = agg.snapshot()
    assert [c["sock"] for c in s.active] == [2]
    assert (s.host_active, s.container_active, s.by_state) == (1, 0, {"SYN_SENT": 1})
    assert s.closed == 1 and s.duration_max_ns == 5_000_000 + 10 - 1_000
    web = next(t for t in s.cgroups if t.cgroup_id == 100)
    assert (web.opened, web.closed, web.active, web.bytes_sent, web.bytes_received) == (1, 1, 0, 300, 4096)
    assert s.transitions[("SYN_SENT", "ESTABLISHED")] == 1 and s.transitions[("FIN_WAIT1", "CLOSE")] == 2
    closed = s.recent[0]
    assert (closed["state"], closed["bytes_sent"], closed["duration_ns"]) == ("CLOSE", 300, 5_000_000 + 10 - 1_000)
    assert len(s.recent) == 2  # the closed one is not listed twice


def test_a_reused_sock_address_is_a_new_connection():
    agg = Aggregator(resolve=resolve)
    lifecycle(agg, 5, 100, 10, 20, 1, 1)
    agg.add(ev("state", 5, 30, 100, "CLOSE", "SYN_SENT"))
    s = agg.snapshot()
    assert [c["ts_ns"] for c in s.active] == [30] and s.cgroups[0].opened == 2


def test_connect_without_source_address_learns_it_later():
    agg = Aggregator(resolve=resolve)
    agg.add(ev("connect", 4, 0, 100, saddr="0.0.0.0", sport=0))
    agg.add(ev("state", 4, 1, 100, "CLOSE", "SYN_SENT", saddr="10.77.1.2", sport=50000))
    (conn,) = agg.snapshot().active
    assert (conn["saddr"], conn["sport"], conn["state"]) == ("10.77.1.2", 50000, "SYN_SENT")


def test_passive_child_learns_its_peer_after_syn_recv():
    """At SYN_RECV the child socket has the listener's port and no peer yet."""
    agg = Aggregator(resolve=resolve)
    agg.add(ev("state", 5, 1, oldstate="LISTEN", newstate="SYN_RECV", sport=80, daddr="0.0.0.0", dport=0))
    agg.add(ev("state", 5, 2, oldstate="SYN_RECV", newstate="ESTABLISHED", sport=80, daddr="10.77.1.1", dport=51000))
    (conn,) = agg.snapshot().active
    assert (conn["sport"], conn["daddr"], conn["dport"]) == (80, "10.77.1.1", 51000)


def test_accept_moves_ownership_to_the_acceptor():
    agg = Aggregator(resolve=resolve)
    agg.add(ev("state", 7, 0, 200, "SYN_RECV", "ESTABLISHED", comm="swapper/0", pid=0))  # softirq: host
    agg.add(ev("accept", 7, 5, 300, comm="postgres", pid=4242))
    s = agg.snapshot()
    (conn,) = s.active
    assert (conn["pid"], conn["comm"], conn["container"].name, conn["state"]) == (4242, "postgres", "db", "ESTABLISHED")
    # closing charges the acceptor's cgroup
    agg.add(ev("close", 7, 100, 200, "ESTABLISHED", "CLOSE", bytes_sent=5, bytes_received=6, duration_ns=95))
    rows = {t.cgroup_id: t for t in agg.snapshot().cgroups}
    assert (rows[200].opened, rows[200].active, rows[200].closed) == (0, 0, 0)  # not the softirq's host cgroup
    assert (rows[300].opened, rows[300].active, rows[300].closed, rows[300].bytes_received) == (1, 0, 1, 6)


def test_accept_first_opens_as_established_in_the_acceptor():
    agg = Aggregator(resolve=resolve)
    agg.add(ev("accept", 9, 0, 300, comm="postgres"))
    s = agg.snapshot()
    assert s.by_state == {"ESTABLISHED": 1} and s.container_active == 1
    assert next(t for t in s.cgroups if t.cgroup_id == 300).opened == 1


def test_transitions_of_connections_older_than_the_monitor_are_not_opens():
    agg = Aggregator(resolve=resolve)
    agg.add(ev("state", 3, 0, 100, "ESTABLISHED", "CLOSE_WAIT"))
    s = agg.snapshot()
    assert s.active == [] and s.cgroups[0].opened == 0
    agg.add(ev("state", 3, 5, 100, "LAST_ACK", "CLOSE"))
    s = agg.snapshot()
    assert s.closed == 1 and s.cgroups[0].closed == 1 and s.recent[0]["duration_ns"] == 0


def test_map_snapshot_wins_over_event_counts_and_lost_is_kept():
    agg = Aggregator(resolve=resolve)
    lifecycle(agg, 1, 100, 0, 10, 1, 2)
    agg.set_cgroup_metrics({100: {"opened": 50, "closed": 48, "active": 2, "bytes_sent": 10**6,
                                  "bytes_received": 2 * 10**6, "udp": 0, "states": {}},
                            300: {"opened": 1, "closed": 0, "active": 1, "bytes_sent": 0, "bytes_received": 0,
                                  "udp": 3, "states": {}}})
    agg.set_lost(17)
    s = agg.snapshot()
    rows = {t.cgroup_id: t for t in s.cgroups}
    assert (rows[100].opened, rows[100].bytes_sent, rows[300].udp, rows[300].container.name) == (50, 10**6, 3, "db")
    assert [t.cgroup_id for t in s.cgroups] == [100, 300]  # busiest first
    assert s.lost == 17


def test_health_columns_show_failed_connects_retransmits_and_connect_time_quantiles():
    """FAILED sums the reasons; p50/p99 interpolate in the connect-time buckets as Prometheus'
    histogram_quantile does: 90 connects in (0, 100us], 10 in (1ms, 5ms]."""
    from bpfhook.records import zero_metrics
    buckets = [90, 0, 0, 10] + [0] * 8
    m = zero_metrics() | {"opened": 100, "closed": 100, "active": 0, "connects": 100, "failed_refused": 2,
                          "failed_timeout": 1, "failed_other": 1, "retransmits": 7, "connect_buckets": buckets}
    agg = Aggregator(resolve=resolve, clock=lambda: 1_700_000_000)
    agg.set_cgroup_metrics({100: m})
    t = agg.snapshot().cgroups[0]
    assert (t.failed(), t.connect_quantile(0.5), t.connect_quantile(0.99)) == (4, 100 * 50 / 90, 1000 + 4000 * 9 / 10)
    row = [line for line in render(agg.snapshot()).splitlines() if "/bpfhook.lab/web" in line][0]
    assert re.search(r" 4 +7 +56us +4\.6ms  /bpfhook\.lab/web", row), row


def test_health_from_events_is_what_the_maps_count_for_those_connections():
    """A filtered report has no map figures: its health columns come from the close events
    and the live connections, counted as the kernel counts them in METRICS."""
    agg = Aggregator(resolve=resolve)
    agg.add(ev("state", 1, 0, 100, "CLOSE", "SYN_SENT"))  # connects in 80 us, retransmits 2, aborts
    agg.add(ev("close", 1, 9, 100, "ESTABLISHED", "CLOSE", connect_us=80, retransmits=2, srtt_us=60,
               resets_sent=1))
    agg.add(ev("state", 2, 0, 100, "CLOSE", "SYN_SENT"))  # refused
    agg.add(ev("close", 2, 5, 100, "SYN_SENT", "CLOSE", failure="refused", resets_received=1))
    agg.add(ev("accept", 3, 0, 100, passive=True, owner_from_accept=True))  # served: no connect of ours
    agg.add(ev("close", 3, 7, 100, "LAST_ACK", "CLOSE", passive=True, connect_us=5, srtt_us=40))
    agg.add(ev("state", 4, 0, 100, "CLOSE", "SYN_SENT"))  # still open: 2 ms to connect, 1 retransmit
    live = dict(ev("connect", 4, 0, 100), state="ESTABLISHED", connect_us=2000, retransmits=1)
    agg.set_live([live])
    health = agg.snapshot().cgroups[0].health
    assert {name: health[name] for name in ("connects", "failed_refused", "failed_timeout", "retransmits",
                                            "resets_sent", "resets_received", "connect_sum_us", "rtt_sum_us")} == {
        "connects": 2, "failed_refused": 1, "failed_timeout": 0, "retransmits": 3, "resets_sent": 1,
        "resets_received": 1, "connect_sum_us": 2080, "rtt_sum_us": 100}
    assert health["connect_buckets"] == [1, 0, 0, 1] + [0] * 8  # 80 us <= 100 us; 1 ms < 2 ms <= 5 ms
    assert health["rtt_buckets"] == [0, 1, 1] + [0] * 9  # 40 and 60 us: (10, 50], (50, 100]
    assert agg.snapshot().cgroups[0].health == health  # the live part is not kept: counted again each time
    row = [line for line in render(agg.snapshot()).splitlines() if "/bpfhook.lab/web" in line][0]
    assert re.search(r" 1 +3 +100us +4\.9ms  /bpfhook\.lab/web", row), row
    unfiltered = Aggregator(resolve=resolve, health=False)  # the maps' figures come instead: not folded
    unfiltered.add(ev("close", 1, 9, 100, "ESTABLISHED", "CLOSE", connect_us=80, retransmits=2))
    unfiltered.set_live([live])
    assert unfiltered.snapshot().cgroups[0].health == {}


def test_udp_flows_are_counted_per_cgroup():
    agg = Aggregator(resolve=resolve)
    agg.add(ev("udp", 0, 0, 300, protocol="udp", bytes_sent=64, bytes_received=64))
    t = agg.snapshot().cgroups[0]
    assert (t.udp, t.bytes_sent, t.opened) == (1, 64, 0)


def test_recent_is_bounded():
    agg = Aggregator(resolve=resolve, recent=3)
    for sock in range(10):
        agg.add(ev("state", sock, sock, 100, "CLOSE", "SYN_SENT"))
    assert [c["sock"] for c in agg.snapshot().recent] == [7, 8, 9]


def _sample():
    agg = Aggregator(resolve=resolve, clock=lambda: 1_700_000_000)
    lifecycle(agg, 1, 100, 0, 12_300_000, 1500, 70_000)
    agg.add(ev("state", 2, 0, 200, "CLOSE", "SYN_SENT", comm="ssh", family="ipv6", saddr="::1", daddr="::1"))
    agg.add(ev("accept", 3, 0, 300, comm="postgres"))
    return agg.snapshot()


def test_render_layout():
    text = render(_sample(), show_containers=True)
    lines = text.splitlines()
    assert lines[0] == lines[2] == "=" * 100 and lines[-1] == "=" * 100
    assert re.fullmatch(r"CONNECTION METRICS REPORT  \d{4}-\d\d-\d\d \d\d:\d\d:\d\d", lines[1])
    assert "Active connections: 2 (host: 1, container: 1)" in lines
    i = lines.index("By state:")
    assert lines[i + 1:i + 3] == ["  SYN_SENT         1", "  ESTABLISHED      1"]
    i = lines.index("Recent connections (last 3):")
    web, ssh, db = lines[i + 1:i + 4]
    assert web.startswith("  [CTR] web ") and "10.77.1.2:40001 -> 10.77.1.1:80" in web
    assert "CLOSE" in web and "1.5KiB" in web and "68.4KiB" in web and "12.3ms" in web
    assert ssh.startswith("        user 0 session 1 ") and "[::1]:40002 -> [::1]:80" in ssh and "SYN_SENT" in ssh
    assert db.startswith("  [CTR] db ") and "<-" in db and "postgres" in db
    i = lines.index("Cgroup-based metrics:")
    assert "CONTAINER" in lines[i + 1] and "OPENED" in lines[i + 1]
    assert re.match(r"  \[CTR\] web +lab +web +1 +1 +0 +1\.5KiB +68\.4KiB +0 +0 +50us +99us  /bpfhook\.lab/web \(id 100\)",
                    lines[i + 2]), lines[i + 2]
    assert lines[-2] == "Lost events: 0"


def test_a_pod_container_is_shown_whole_as_namespace_pod_container():
    path = "/kubepods/besteffort/pod6a1f3c2e-9b7d-4e1a-8c3f-2d5e6f7a8b9c/" + "ab" * 32
    web = dataclasses.replace(classify(path), name="web", pod="shop-7d9f4c8b6-x2x9q", namespace="production")
    agg = Aggregator(resolve=lambda cgid: web)
    lifecycle(agg, 1, 400, 0, 10_000, 10, 20)
    lines = render(agg.snapshot(), show_containers=True).splitlines()
    label = "production/shop-7d9f4c8b6-x2x9q/web"
    recent = lines[lines.index("Recent connections (last 1):") + 1]
    assert recent.startswith(f"  [CTR] {label} pid 10 ")
    i = lines.index("Cgroup-based metrics:")
    assert lines[i + 1].startswith("        CONTAINER" + " " * (len(label) - len("CONTAINER")) + " KIND")
    assert lines[i + 2].startswith(f"  [CTR] {label} pod      {'ab' * 6} ")


def test_render_without_containers_and_with_losses():
    s = _sample()
    text = render(s)
    assert "CONTAINER" not in text and "/bpfhook.lab/db (id 300)" in text
    agg = Aggregator()
    agg.set_lost(5, missed=2)
    text = render(agg.snapshot())
    assert ("Lost events: 5  (2 skipped by the kernel: the program was already running on that CPU; 3 dropped: "
            "the ring buffer was full): the figures above may be incomplete") in text
    agg.set_lost(1, missed=1)
    assert "Lost events: 1  (1 skipped by the kernel: the program was already running on that CPU): " in render(
        agg.snapshot())
    assert "Active connections: 0 (host: 0, container: 0)" in text and text.count("(none)") == 3
    agg.set_lost(0, missed=0, made_good=2)  # skipped closes made good are no loss, and said so
    assert render(agg.snapshot()).splitlines()[-2] == (
        "Lost events: 0  (closes the kernel skipped, made good at the socket's destroy: 2)")


def test_final_report():
    text = render_final(_sample())
    assert "FINAL CONNECTION METRICS REPORT" in text
    assert "closed connections: 1" in text and "max 12.3ms" in text
    assert re.search(r"  SYN_SENT +-> ESTABLISHED +1", text)


def test_final_report_mean_duration_leaves_out_the_closes_the_programs_missed():
    """Counted closed once the walks find them gone, they have no duration (monitor._Gone)."""
    s = dataclasses.replace(_sample(), closed=4, closed_unseen=3)
    assert "closed connections: 4 (3 whose close was missed)  duration mean 12.3ms" in render_final(s)
    assert "closed connections: 1  duration mean 12.3ms" in render_final(_sample())


def test_human_units():
    assert [human_bytes(n) for n in (0, 1023, 1024, 5 * 2**20)] == ["0B", "1023B", "1.0KiB", "5.0MiB"]
    assert [human_duration(n) for n in (0, 999, 1_500_000, 2_000_000_000)] == ["-", "1us", "1.5ms", "2.00s"]


def test_a_closed_inbound_connection_points_at_its_server_end():
    """A recent close carries `passive` (the kernel's F_PASSIVE): the server's end reads <-."""
    def line(**over):
        return connection_line(dict(ev("close", state="CLOSE", container=classify("/")), **over))
    assert " <- " in line(passive=True) and " -> " in line(passive=False) and " -> " in line()


def test_a_connection_older_than_the_monitor_has_no_direction_unless_known_passive():
    """passive: waiting to be accepted, or accepted before on a port a listener still has."""
    def line(**over):
        return connection_line(dict(ev("close", state="CLOSE", container=classify("/")), **over))
    assert " -- " in line(older=True) and " <- " in line(older=True, passive=True)
    assert " <- " in line(older=True, passive=True, accepted_before=True)


def test_an_active_connection_no_longer_live_is_dropped_and_its_late_close_counts_once():
    """Streamed, a lost close would leave its connection listed (and held) for good: the live
    connections from the maps drop it. A close still on its way counts when it comes."""
    agg = Aggregator(resolve=resolve)
    for sock in (1, 2):
        agg.add(ev("state", sock, 0, 100, "CLOSE", "SYN_SENT"))
    agg.set_live([{"sock": 2, "bytes_sent": 0, "bytes_received": 0}])
    s = agg.snapshot()
    assert [c["sock"] for c in s.active] == [2]
    assert (s.cgroups[0].opened, s.cgroups[0].active, s.cgroups[0].closed) == (2, 1, 0)
    agg.add(ev("state", 1, 30, 100, "SYN_SENT", "CLOSE"))
    agg.add(ev("close", 1, 30, 100, "SYN_SENT", "CLOSE", duration_ns=30))
    t = agg.snapshot().cgroups[0]
    assert (t.opened, t.active, t.closed) == (2, 1, 1) and agg.closed == 1


def test_a_close_the_kernel_skipped_counts_with_its_bytes_and_no_duration():
    """close_unseen: sent when a new socket took the entry of a connection whose close run was
    skipped; its ts is when it was found, not when it closed."""
    agg = Aggregator(resolve=resolve)
    lifecycle(agg, 1, 100, 0, 12_300_000, 1500, 70_000)
    agg.add(ev("state", 2, 0, 100, "CLOSE", "SYN_SENT"))
    agg.add(ev("close", 2, 10**12, 100, "ESTABLISHED", "CLOSE", bytes_sent=7, bytes_received=8, close_unseen=True))
    s = agg.snapshot()
    t = s.cgroups[0]
    assert (t.opened, t.active, t.closed, t.bytes_sent, t.bytes_received) == (2, 0, 2, 1507, 70_008)
    assert (s.closed, s.closed_unseen, s.duration_total_ns, s.duration_max_ns) == (2, 1, 12_300_010, 12_300_010)
    assert "closed connections: 2 (1 whose close was missed)  duration mean 12.3ms" in render_final(s)


def test_live_bytes_show_on_active_connections_and_the_close_counts_them_once():
    agg = Aggregator(resolve=resolve)
    agg.add(ev("state", 1, 0, 100, "CLOSE", "SYN_SENT"))
    agg.add(ev("state", 1, 10, 100, "SYN_SENT", "ESTABLISHED"))
    agg.set_live([{"sock": 1, "bytes_sent": 30, "bytes_received": 40},
                  {"sock": 9, "bytes_sent": 1, "bytes_received": 1}])  # (one it does not list)
    s = agg.snapshot()
    assert [(c["sock"], c["bytes_sent"], c["bytes_received"]) for c in s.active] == [(1, 30, 40)]
    assert (s.cgroups[0].bytes_sent, s.cgroups[0].bytes_received) == (30, 40)  # (a filtered view's too)
    unfiltered = Aggregator(resolve=resolve)  # the maps' figures count live bytes already: not twice
    unfiltered.add(ev("state", 1, 0, 100, "CLOSE", "SYN_SENT"))
    unfiltered.set_live([{"sock": 1, "bytes_sent": 30, "bytes_received": 40}])
    from_maps = dict.fromkeys(METRICS_FIELDS, 0) | {"opened": 1, "active": 1, "bytes_sent": 30, "bytes_received": 40}
    unfiltered.set_cgroup_metrics({100: from_maps})
    row = unfiltered.snapshot().cgroups[0]
    assert (row.bytes_sent, row.bytes_received) == (30, 40)
    agg.add(ev("state", 1, 20, 100, "ESTABLISHED", "FIN_WAIT1"))
    agg.add(ev("close", 1, 30, 100, "FIN_WAIT1", "CLOSE", bytes_sent=50, bytes_received=60, duration_ns=30))
    t = agg.snapshot().cgroups[0]
    assert (t.closed, t.bytes_sent, t.bytes_received) == (1, 50, 60)
