"""Per-cgroup metrics as the monitor reports them: the kernel's totals of what ended, completed
from the live connections and their bytes so far (no kernel needed)."""
from bpfhook.monitor import with_live


def _live(cgroup_id, sent=0, received=0):
    return {"cgroup_id": cgroup_id, "bytes_sent": sent, "bytes_received": received}


def test_live_connections_make_active_and_opened_and_add_their_bytes_so_far():
    totals = {100: {"closed": 3, "bytes_sent": 10, "bytes_received": 20, "udp": 1}}
    live = [_live(100, 1, 2), _live(100, 3, 4), _live(200, 5, 6)]
    out = with_live(totals, live, "cgroup_id")
    assert out[100] == {"closed": 3, "bytes_sent": 14, "bytes_received": 26, "udp": 1, "active": 2, "opened": 5}
    # a cgroup with only live connections has no kernel totals yet
    assert out[200] == {"closed": 0, "bytes_sent": 5, "bytes_received": 6, "udp": 0, "active": 1, "opened": 1}
    assert totals[100] == {"closed": 3, "bytes_sent": 10, "bytes_received": 20, "udp": 1}  # input left alone


def test_no_connections_and_no_totals_is_empty():
    assert with_live({}, [], "netns") == {}
