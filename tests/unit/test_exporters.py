"""JSON lines and the Prometheus exposition, parsed back strictly and scraped over real HTTP."""
import dataclasses
import http.client
import io
import json
import re
import socket

import pytest

from bpfhook.containers import classify
from bpfhook.exporters import JsonLines, event_object, exposition
from bpfhook.metrics_http import PrometheusServer
from bpfhook.report import Aggregator

JSON_FIELDS = {"ts", "event", "pid", "tid", "comm", "cgroup_id", "cgroup", "container", "pod", "namespace", "netns",
               "family", "saddr", "sport", "daddr", "dport", "oldstate", "newstate", "bytes_sent", "bytes_received"}


def ev(**over):
    e = {"ts_ns": 1_500_000_000, "event": "close", "pid": 7, "tid": 8, "comm": "curl", "cgroup_id": 100,
         "netns": 4026531840, "netns_is_inode": False, "owner_from_accept": False, "owner_from_close": False,
         "owner_from_proc": False, "family": "ipv4", "protocol": "tcp", "saddr": "10.77.1.2", "sport": 40000, "daddr": "10.77.1.1", "dport": 80,
         "oldstate": "LAST_ACK", "newstate": "CLOSE", "bytes_sent": 10, "bytes_received": 20,
         "duration_ns": 30, "sock": 1, "cookie": 0, "close_unseen": False, "failure": None, "retransmits": 0,
         "srtt_us": 0, "connect_us": 0, "resets_sent": 0, "resets_received": 0}
    e.update(over)
    return e


def test_json_lines_one_object_per_event():
    out = io.StringIO()
    sink = JsonLines(out)
    sink.write(ev(), classify("/bpfhook.lab/web"))
    sink.write(ev(event="connect", oldstate="", newstate=""), classify("/"))
    sink.write(ev(owner_from_close=True), classify("/"))
    sink.write(ev(event="existing", older=True, owner_from_proc=True), classify("/"))
    first, second, third, fourth = [json.loads(line) for line in out.getvalue().splitlines()]
    assert (first["owner_from"], third["owner_from"], fourth["owner_from"]) == (None, "close", "proc")
    assert JSON_FIELDS <= set(first)
    assert (first["ts"], first["container"], first["container_id"], first["cgroup"]) == (
        1.5, "web", "web", "/bpfhook.lab/web")
    assert (first["oldstate"], first["newstate"], first["bytes_sent"]) == ("LAST_ACK", "CLOSE", 10)
    assert (second["container"], second["container_kind"], second["oldstate"]) == (None, "host", None)
    assert out.getvalue().count("\n") == 4
    assert [o["close_unseen"] for o in (first, second, third, fourth)] == [False] * 4


def test_json_close_event_carries_connection_health():
    out = io.StringIO()
    JsonLines(out).write(ev(oldstate="SYN_SENT", failure="timeout", retransmits=2), classify("/"))
    JsonLines(out).write(ev(retransmits=3, srtt_us=250, connect_us=120, resets_sent=1, resets_received=2),
                         classify("/"))
    failed, ok = [json.loads(line) for line in out.getvalue().splitlines()]
    assert (failed["failure"], failed["retransmits"], failed["resets_sent"]) == ("timeout", 2, 0)
    assert (ok["failure"], ok["retransmits"], ok["srtt_us"], ok["connect_us"]) == (None, 3, 250, 120)
    assert (ok["resets_sent"], ok["resets_received"]) == (1, 2)
    assert json.loads(json.dumps(event_object(ev(close_unseen=True), classify("/"))))["close_unseen"] is True


@pytest.mark.parametrize("over", [
    {}, {"event": "connect", "oldstate": "", "newstate": ""}, {"owner_from_close": True},
    {"event": "existing", "older": True, "owner_from_proc": True}, {"owner_from_accept": True, "passive": True},
    {"comm": 'a"b\\c\u00e9\u2603\x01'}, {"family": "ipv6", "saddr": "::1", "daddr": "fe80::1"},
    {"ts_ns": 1_700_000_000_123_456_789, "bytes_sent": 2**64 - 1, "close_unseen": True},
    {"failure": "refused", "retransmits": 3, "srtt_us": 45, "connect_us": 2**32 - 1},
    {"resets_sent": 2**16 - 1, "resets_received": 1},
    {"ts_ns": 3}])
@pytest.mark.parametrize("cgroup", ["/", "/bpfhook.lab/web", "/docker/" + "ab" * 32, '/odd "name"\\'])
def test_json_lines_are_event_objects_as_json_writes_them(over, cgroup):
    """The template JsonLines fills writes what json.dumps of event_object writes, to the byte,
    again when its caches answer."""
    out = io.StringIO()
    sink, container = JsonLines(out), classify(cgroup)
    sink.write_many([(ev(**over), container)] * 2)
    expected = json.dumps(event_object(ev(**over), container), separators=(",", ":")) + "\n"
    assert out.getvalue() == expected * 2


def test_json_lines_follow_a_cgroup_ids_new_container():
    out = io.StringIO()
    sink = JsonLines(out)
    sink.write(ev(), classify("/bpfhook.lab/web"))
    sink.write(ev(), classify("/bpfhook.lab/db"))  # the same cgroup id, resolved anew
    assert [json.loads(line)["container"] for line in out.getvalue().splitlines()] == ["web", "db"]


@pytest.mark.parametrize("over, expected", [
    ({}, "out"), ({"event": "connect"}, "out"), ({"event": "accept"}, "in"), ({"passive": True}, "in"),
    ({"owner_from_accept": True}, "in"), ({"older": True}, None), ({"older": True, "passive": True}, "in"),
    ({"found_late": True}, None), ({"found_late": True, "owner_from_close": True}, None),
    ({"event": "state", "oldstate": "CLOSE", "newstate": "LISTEN"}, None)])
def test_json_direction(over, expected):
    assert event_object(ev(**over), classify("/"))["direction"] == expected


def test_event_object_takes_an_explicit_cgroup_path():
    assert event_object(ev(), classify(None), cgroup_path="/gone")["cgroup"] == "/gone"


# One sample line: name{label="value",...} number   (label values escaped: \\ \" \n)
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
SAMPLE = re.compile(rf"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{{({_LABEL}(?:,{_LABEL})*)\}})? (-?[0-9]+(?:\.[0-9]+)?(?:e-?[0-9]+)?)\Z")
HELP = re.compile(r"# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) \S.*\Z")
TYPE = re.compile(r"# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram)\Z")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def parse_exposition(text):
    """{(name, labels-tuple): value}, asserting every line is well formed and typed before use."""
    assert text.endswith("\n")
    typed, samples = {}, {}
    for line in text.splitlines():
        if m := HELP.match(line):
            continue
        if m := TYPE.match(line):
            assert m[1] not in typed, f"TYPE twice for {m[1]}"
            typed[m[1]] = m[2]
            continue
        m = SAMPLE.match(line)
        assert m, f"malformed line: {line!r}"
        family = next((m[1][:-len(s)] for s in HISTOGRAM_SUFFIXES
                       if m[1].endswith(s) and typed.get(m[1][:-len(s)]) == "histogram"), m[1])
        assert family in typed, f"sample before its TYPE: {line!r}"
        labels = tuple(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m[2] or ""))
        key = (m[1], labels)
        assert key not in samples, f"duplicate series {key}"
        samples[key] = float(m[3])
    return typed, samples


def _snapshot():
    paths = {100: "/bpfhook.lab/web", 200: '/system.slice/we"ird\\name.service'}
    agg = Aggregator(resolve=lambda cgid: classify(paths.get(cgid)))
    agg.add(ev(event="state", oldstate="CLOSE", newstate="SYN_SENT", sock=1, cgroup_id=100))
    agg.add(ev(event="close", oldstate="FIN_WAIT1", newstate="CLOSE", sock=1, cgroup_id=100, bytes_sent=1000,
               bytes_received=2000))
    agg.add(ev(event="state", oldstate="CLOSE", newstate="SYN_SENT", sock=2, cgroup_id=200))
    agg.set_lost(3)
    return agg.snapshot()


def test_exposition_is_strictly_well_formed():
    typed, samples = parse_exposition(exposition(_snapshot(), node="n1"))
    assert typed["bpfhook_connections_active"] == "gauge"
    assert typed["bpfhook_connections_opened_total"] == "counter"
    web = (("container", "web"), ("container_kind", "lab"), ("namespace", ""), ("pod", ""), ("node", "n1"))
    assert samples[("bpfhook_connections_opened_total", web)] == 1
    assert samples[("bpfhook_connections_closed_total", web)] == 1
    assert samples[("bpfhook_bytes_sent_total", web)] == 1000
    assert samples[("bpfhook_bytes_received_total", web)] == 2000
    assert samples[("bpfhook_connections_active", web)] == 0
    assert samples[("bpfhook_lost_events_total", (("node", "n1"),))] == 3
    service = (("container", ""), ("container_kind", "service"), ("namespace", ""), ("pod", ""), ("node", "n1"))
    assert samples[("bpfhook_connections_active", service)] == 1  # no cgroup path: bounded series


def test_labels_are_only_container_kind_namespace_pod_node_and_cgroups_of_one_label_set_fold():
    """Two service cgroups (no container) share the service series, summed; a counter name
    ends _total, a histogram's unit is seconds; every container has SERIES_PER_CONTAINER."""
    from bpfhook.exporters import SERIES_PER_CONTAINER
    from bpfhook.records import zero_metrics
    paths = {1: "/bpfhook.lab/web", 2: "/system.slice/a.service", 3: "/system.slice/b.service"}
    agg = Aggregator(resolve=lambda cgid: classify(paths[cgid]))
    m = zero_metrics() | {"opened": 2, "closed": 2, "active": 0, "connects": 2, "failed_refused": 1,
                          "connect_sum_us": 300, "connect_buckets": [1, 1] + [0] * 10}
    agg.set_cgroup_metrics({1: m, 2: m, 3: m})
    typed, samples = parse_exposition(exposition(agg.snapshot(), node="n1"))
    assert {k for _, labels in samples for k, _ in labels} <= {"container", "container_kind", "namespace", "pod",
                                                                "node", "le"}
    assert all(name.endswith("_total") for name, kind in typed.items() if kind == "counter")
    assert all(name.endswith("_seconds") for name, kind in typed.items() if kind == "histogram")
    service = (("container", ""), ("container_kind", "service"), ("namespace", ""), ("pod", ""), ("node", "n1"))
    web = (("container", "web"), ("container_kind", "lab"), ("namespace", ""), ("pod", ""), ("node", "n1"))
    assert samples[("bpfhook_connects_total", service)] == 4 and samples[("bpfhook_connects_total", web)] == 2
    assert samples[("bpfhook_connects_refused_total", service)] == 2
    assert samples[("bpfhook_connect_duration_seconds_bucket", web + (("le", "0.0001"),))] == 1
    assert samples[("bpfhook_connect_duration_seconds_bucket", web + (("le", "0.0005"),))] == 2
    assert samples[("bpfhook_connect_duration_seconds_bucket", web + (("le", "+Inf"),))] == 2
    assert samples[("bpfhook_connect_duration_seconds_count", web)] == 2
    assert samples[("bpfhook_connect_duration_seconds_sum", web)] == 0.0003
    assert sum(1 for _, labels in samples if labels[:5] == web) == SERIES_PER_CONTAINER == 41


def test_a_pod_container_is_labelled_with_namespace_pod_and_container():
    path = "/kubepods/besteffort/pod6a1f3c2e-9b7d-4e1a-8c3f-2d5e6f7a8b9c/" + "ab" * 32
    pod = dataclasses.replace(classify(path), name="web", pod="shop-7d9f", namespace="prod")
    agg = Aggregator(resolve=lambda cgid: pod)
    agg.add(ev(event="state", oldstate="CLOSE", newstate="SYN_SENT", sock=1, cgroup_id=300))
    _typed, samples = parse_exposition(exposition(agg.snapshot()))
    labels = dict(next(labels for (name, labels) in samples if name == "bpfhook_connections_active"))
    assert (labels["container"], labels["pod"], labels["namespace"], labels["container_kind"]) == (
        "web", "shop-7d9f", "prod", "pod")
    line = event_object(ev(event="connect", cgroup_id=300), pod)
    assert (line["container"], line["pod"], line["namespace"]) == ("web", "shop-7d9f", "prod")


def test_label_values_are_escaped():
    pod = dataclasses.replace(classify("/kubepods/besteffort/pod6a1f3c2e-9b7d-4e1a-8c3f-2d5e6f7a8b9c/" + "ab" * 32),
                              name='we"ird\\na\nme', pod="p", namespace="n")
    agg = Aggregator(resolve=lambda cgid: pod)
    agg.add(ev(event="state", oldstate="CLOSE", newstate="SYN_SENT", sock=1, cgroup_id=300))
    _typed, samples = parse_exposition(exposition(agg.snapshot()))
    labels = dict(next(labels for (name, labels) in samples if name == "bpfhook_connections_active"))
    assert labels["container"] == 'we\\"ird\\\\na\\nme'  # escaped, still one line


def test_a_counter_never_goes_back_from_one_scrape_to_the_next():
    """Live bytes drop out of a cgroup's count when a connection vanishes uncounted: the
    counter shows its last value until the count passes it; a gauge shows what is."""
    snapshot = _snapshot()
    web = next(t for t in snapshot.cgroups if t.cgroup_id == 100)
    shown = {}

    def scraped(bytes_sent, active):
        web.bytes_sent, web.active = bytes_sent, active
        samples = parse_exposition(exposition(snapshot, shown))[1]
        return [value for (name, labels), value in samples.items() if ("container", "web") in labels
                and name in ("bpfhook_bytes_sent_total", "bpfhook_connections_active")]
    assert scraped(1000, 2) == [2, 1000]
    assert scraped(700, 1) == [1, 1000]
    assert scraped(1500, 1) == [1, 1500]
    assert exposition(snapshot) == exposition(snapshot, None)  # (no dict: as it is)


def test_the_parser_rejects_malformed_text():
    for bad in ['x{a="b} 1\n', "# TYPE x counter\nx 1 2\n", "y 1\n", '# TYPE x counter\nx{a="1"} 1\nx{a="1"} 2\n']:
        with pytest.raises(AssertionError):
            parse_exposition(bad)


def _get(address, path):
    conn = http.client.HTTPConnection(*address, timeout=5)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.getheader("Content-Type"), r.read().decode()
    finally:
        conn.close()


def test_scrape_over_http():
    text = exposition(_snapshot())
    scrapes = []

    def render():
        scrapes.append(1)
        return text

    with PrometheusServer("127.0.0.1", 0, render) as server:
        status, ctype, body = _get(server.address, "/metrics")
        assert (status, body) == (200, text)
        assert ctype.startswith("text/plain; version=0.0.4")
        parse_exposition(body)
        status, _, body = _get(server.address, "/")
        assert status == 404 and "/metrics" in body
        assert _get(server.address, "/metrics?x=1")[0] == 200
        address = server.address
    assert len(scrapes) == 2
    with pytest.raises(OSError):  # closed: the port no longer answers
        socket.create_connection(address, timeout=1).close()
    with PrometheusServer(*address, render) as again:  # and it can be bound again at once
        assert again.address == address


def test_scrape_over_ipv6_loopback():
    with PrometheusServer("::1", 0, lambda: "# TYPE x counter\nx 1\n") as server:
        status, _, body = _get(server.address, "/metrics")
    assert (status, parse_exposition(body)[1]) == (200, {("x", ()): 1.0})
