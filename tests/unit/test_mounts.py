"""pybpf.mounts: the one mountinfo parser (made-up tables, and this machine's own)."""
import os

import pytest

from pybpf import mounts, sys as bsys, tracefs
from pybpf.errors import FeatureUnavailable

TABLE = mounts.parse("""\
22 1 0:21 / /sys rw,nosuid - sysfs sysfs rw
31 22 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw
50 31 0:38 /sub /mnt/bind\\040mount rw - cgroup2 cgroup2 rw
41 31 0:38 / /sys/fs/cgroup/with\\040space rw,relatime shared:9 master:2 - cgroup2 cgroup2 rw,nsdelegate
60 22 0:40 / /sys/fs/bpf rw - bpf bpf rw
61 60 0:41 / /sys/fs/bpf/inner rw - bpf bpf rw
70 22 0:12 / /sys/kernel/tracing rw - tracefs nodev rw

""".splitlines())


def test_fields_are_unescaped_and_optional_fields_skipped():
    assert TABLE[3] == mounts.Mount("/sys/fs/cgroup/with space", "cgroup2", "cgroup2", "/", "rw,relatime")
    assert TABLE[2].point == "/mnt/bind mount" and TABLE[2].root == "/sub"
    assert TABLE[6].source == "nodev" and len(TABLE) == 7  # the blank line is no mount
    assert mounts.unescape(r"a\134b\011c") == "a\\b\tc"


def test_find_prefers_a_mount_of_the_filesystem_root():
    assert mounts.find("cgroup2", TABLE) == "/sys/fs/cgroup/with space"
    assert mounts.find("cgroup2", TABLE[:3]) == "/mnt/bind mount"  # only a subtree: still found
    assert mounts.find("bpf", TABLE) == "/sys/fs/bpf"  # first among equals
    assert mounts.find("debugfs", TABLE) is None
    assert mounts.cgroup2_root(TABLE) == "/sys/fs/cgroup/with space"
    with pytest.raises(FeatureUnavailable, match="no cgroup2"):
        mounts.cgroup2_root(TABLE[:2])


def test_containing_picks_the_nearest_mount():
    assert mounts.containing("/sys/fs/bpf/inner/x", "bpf", TABLE) == "/sys/fs/bpf/inner"
    assert mounts.containing("/sys/fs/bpf/innerx", "bpf", TABLE) == "/sys/fs/bpf"  # not a prefix match
    assert mounts.containing("/sys/fs/bpf", "bpf", TABLE) == "/sys/fs/bpf"
    assert mounts.containing("/tmp", "bpf", TABLE) is None


def test_this_machine_agrees_with_proc_mounts():
    table = mounts.mounts()
    with open("/proc/self/mounts") as f:
        points = [line.split()[1].replace("\\040", " ") for line in f]
    assert [m.point for m in table] == points
    assert list(tracefs.mounts()) == [(m.point, m.fstype, m.source) for m in table]
    assert tracefs.find_mount("proc") == mounts.find("proc") == "/proc"
    assert bsys.mount_point("/proc/self", "proc") == "/proc"
    assert bsys.mount_point(os.getcwd(), "no-such-fs") is None
