"""`bpfhook monitor` stopped by SIGTERM or SIGKILL leaves no program or link behind."""
import os
import signal

import pytest

from pybpf import syscall as bpfsys
from tests.conftest import eventually, slow_factor
from tests.kernel.monitor_helpers import (ACCEPT_NOTE, HEALTH_PROGRAMS, MONITOR_PROGRAMS, best_accept_hook, our_prog_ids,
                                          spawn_monitor, wait_attached)

# Loaded after the start-up lines, held until the end: the live walk and the task walk
WALKS = {"bh_live_conns", "bh_task_netns"}
ACCEPT_PROGRAMS = {"fexit": 1, "kretprobe": 1, "getpeername": 2, "tracepoint": 2}


def _link_ids(progs):
    """Ids of links holding one of the programs `progs` (by id)."""
    ids, current = set(), bpfsys.get_next_id("link", 0)
    while current is not None:
        try:
            fd = bpfsys.get_fd_by_id("link", current)
        except OSError:  # gone meanwhile
            fd = None
        if fd is not None:
            try:
                if bpfsys.obj_get_info_by_fd(fd, "link").prog_id in progs:
                    ids.add(current)
            finally:
                os.close(fd)
        current = bpfsys.get_next_id("link", current)
    return ids


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_shutdown_leaves_nothing_attached(sig):
    progs_before = our_prog_ids()
    walks_before = our_prog_ids(WALKS)
    p = spawn_monitor("-m", "60")
    try:
        accept_line = wait_attached(p)
        progs_running = our_prog_ids() - progs_before
        links_running = _link_ids(progs_running)
        assert eventually(lambda: len(our_prog_ids(WALKS) - walks_before) == len(WALKS))
        progs_running |= our_prog_ids(WALKS) - walks_before
    finally:
        p.send_signal(sig)
        out, err = p.communicate(timeout=15 * slow_factor())
    hook = best_accept_hook()
    assert f"through {ACCEPT_NOTE[hook]}" in accept_line
    # state, destroy, connect4, connect6, the accept hook's, and tcp_health's
    expected = 4 + ACCEPT_PROGRAMS[hook] + len(HEALTH_PROGRAMS)
    assert len(progs_running) == expected + len(WALKS) and len(links_running) == expected
    if sig == signal.SIGTERM:
        assert p.returncode == 0, err
        assert "FINAL CONNECTION METRICS REPORT" in out and "detached" in err
    else:
        assert p.returncode == -signal.SIGKILL
    # the kernel frees programs after an RCU grace period
    everything = MONITOR_PROGRAMS | HEALTH_PROGRAMS | WALKS
    eventually(lambda: not (our_prog_ids(everything) & progs_running or _link_ids(progs_running)), timeout=10)
    assert not our_prog_ids(everything) & progs_running
    assert not _link_ids(progs_running)
