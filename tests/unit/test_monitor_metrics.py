"""Per-cgroup metrics as the monitor reports them: the kernel's totals of what ended, completed
from the live connections (no kernel needed)."""
from bpfhook.monitor import with_live


def test_live_connections_make_active_and_opened():
    totals = {100: {"closed": 3, "bytes_sent": 10, "bytes_received": 20, "udp": 1}}
    live = [{"cgroup_id": 100}, {"cgroup_id": 100}, {"cgroup_id": 200}]
    out = with_live(totals, live, "cgroup_id")
    assert out[100] == {"closed": 3, "bytes_sent": 10, "bytes_received": 20, "udp": 1, "active": 2, "opened": 5}
    # a cgroup with only live connections has no kernel totals yet
    assert out[200] == {"closed": 0, "bytes_sent": 0, "bytes_received": 0, "udp": 0, "active": 1, "opened": 1}
    assert totals[100] == {"closed": 3, "bytes_sent": 10, "bytes_received": 20, "udp": 1}  # input left alone


def test_no_connections_and_no_totals_is_empty():
    assert with_live({}, [], "netns") == {}
