"""Per-cgroup metrics as the monitor reports them: the kernel's totals of what ended, completed
from the live connections and their bytes so far, and the closes the programs missed (no
kernel needed)."""
from bpfhook.monitor import _Gone, with_live
from bpfhook.records import zero_metrics


def _live(cgroup_id, sent=0, received=0):
    return {"cgroup_id": cgroup_id, "bytes_sent": sent, "bytes_received": received}


def test_live_connections_make_active_and_opened_and_add_their_bytes_so_far():
    totals = {100: zero_metrics() | {"closed": 3, "bytes_sent": 10, "bytes_received": 20, "udp": 1, "connects": 4}}
    live = [_live(100, 1, 2), _live(100, 3, 4), _live(200, 5, 6)]
    out = with_live(totals, live, "cgroup_id")
    assert out[100] == zero_metrics() | {"closed": 3, "bytes_sent": 14, "bytes_received": 26, "udp": 1, "connects": 4,
                                         "active": 2, "opened": 5}
    # a cgroup with only live connections has no kernel totals yet
    assert out[200] == zero_metrics() | {"closed": 0, "bytes_sent": 5, "bytes_received": 6, "udp": 0, "active": 1,
                                         "opened": 1}
    assert totals[100]["bytes_sent"] == 10 and "active" not in totals[100]  # input left alone


def test_no_connections_and_no_totals_is_empty():
    assert with_live({}, [], "netns") == {}


S = 10**9  # ns


def _conn(sock, start_ns, netns=7, cgroup_id=100, sent=0, received=0):
    return {"sock": sock, "start_ns": start_ns, "netns": netns, "cgroup_id": cgroup_id, "bytes_sent": sent,
            "bytes_received": received}


def _socks(connections):
    return [c["sock"] for c in connections]


def test_an_entry_two_walks_did_not_meet_is_gone_and_counts_closed_while_its_entry_lasts():
    gone = _Gone()
    a, b = _conn(1, 0, sent=50, received=9), _conn(2, 0, sent=5)
    gone.walked(10 * S, met={2}, netns_cookies={7})
    assert _socks(gone.left_out([a, b])) == [1, 2]  # one walk is not enough
    assert gone.missed == [] and gone.ended("cgroup_id") == {}
    gone.walked(20 * S, met={2}, netns_cookies={7})
    assert _socks(gone.left_out([a, b])) == [2] and gone.missed == [a]
    assert gone.ended("cgroup_id") == {100: {"closed": 1, "bytes_sent": 50, "bytes_received": 9}}
    assert gone.ended("netns") == {7: {"closed": 1, "bytes_sent": 50, "bytes_received": 9}}
    # Its namespace walked no more (torn down with the container): still gone, counted once
    gone.walked(30 * S, met={2}, netns_cookies=set())
    assert _socks(gone.left_out([a, b])) == [2] and gone.ended("cgroup_id")[100]["closed"] == 1
    assert _socks(gone.left_out([a, b])) == [2] and gone.missed == [a]  # between walks: the same
    # A new socket at its address: the state program ended the entry and counted it closed
    new = _conn(1, 25 * S)
    assert _socks(gone.left_out([new, b])) == [1, 2] and gone.ended("cgroup_id") == {}
    gone.walked(40 * S, met={1, 2}, netns_cookies={7})
    assert _socks(gone.left_out([new, b])) == [1, 2] and gone.missed == []


def test_what_the_walks_cannot_judge_is_never_gone():
    gone = _Gone()
    elsewhere = _conn(1, 0, netns=8)  # a namespace the walk did not enter
    young = _conn(2, int(9.5 * S))  # started less than MARGIN_NS before the first walk
    for started in (10 * S, int(10.2 * S), int(10.4 * S)):
        gone.walked(started, met=set(), netns_cookies={7})
        assert _socks(gone.left_out([elsewhere, young])) == [1, 2]
    assert gone.missed == []
