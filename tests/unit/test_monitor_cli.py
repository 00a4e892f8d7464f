"""`bpfhook monitor` options: parsing, validation, one-line errors, and the event filter."""
import argparse
import os
import shutil
import subprocess
import sys

import pytest

from bpfhook import cgroups, cli, monitor_cli
from bpfhook.containers import classify
from bpfhook.cli import host_port
from bpfhook.monitor_cli import EventFilter, MonitorError, MonitorOptions, options_from
from pybpf import mounts

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ID = "b" * 64


def _bpfhook(*args, as_user=False):
    argv = [sys.executable, "-m", "bpfhook", *args]
    if as_user and os.geteuid() == 0:
        assert shutil.which("unshare"), "unshare (util-linux) is needed to drop root"
        argv = ["unshare", "--user", *argv]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=30)


def parse(*argv):
    return cli.build_parser().parse_args(["monitor", *argv])


def test_defaults_and_all_options():
    o = options_from(parse())
    assert o == MonitorOptions(cgroup=cgroups.mount(), metrics_interval=5.0)
    o = options_from(parse("-c", cgroups.mount(), "-m", "0.5", "-s", "-e", "--json", "--prometheus", "127.0.0.1:9100",
                           "--container", "web", "--pid", "42", "--port", "80", "--duration", "3",
                           "--accept", "getpeername"))
    assert o == MonitorOptions(cgroup=cgroups.mount(), metrics_interval=0.5, show_containers=True, show_events=True,
                               json=True, prometheus=("127.0.0.1", 9100), container="web", pid=42, port=80,
                               duration=3.0, accept="getpeername")


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:9100", ("127.0.0.1", 9100)), (":9100", ("0.0.0.0", 9100)), ("[::1]:0", ("::1", 0)),
    ("localhost:80", ("localhost", 80)),
])
def test_host_port(text, expected):
    assert host_port(text) == expected


@pytest.mark.parametrize("text", ["9100", "::1:80", "[zz]:80", "host:", "host:65536", "host:-1", "host:x"])
def test_bad_host_port(text):
    with pytest.raises(argparse.ArgumentTypeError):
        host_port(text)


@pytest.mark.parametrize("args, message", [
    (["-m", "0"], "argument -m/--metrics-interval: must be a positive number of seconds, got '0'"),
    (["-m", "nan"], "argument -m/--metrics-interval: must be a positive number"),
    (["-m", "x"], "argument -m/--metrics-interval: not a number: 'x'"),
    (["--duration", "-1"], "argument --duration: must be a positive number"),
    (["--pid", "0"], "argument --pid: pid must be 1..4194304, got 0"),
    (["--port", "70000"], "argument --port: port must be 1..65535, got 70000"),
    (["--port", "http"], "argument --port: not a port: 'http'"),
    (["--prometheus", "9100"], "argument --prometheus: expected HOST:PORT, got '9100'"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_usage_errors_are_one_line_exit_2(args, message):
    r = _bpfhook("monitor", *args)
    assert (r.returncode, r.stdout) == (2, "")
    assert len(r.stderr.splitlines()) == 1 and message in r.stderr, r.stderr


def test_missing_cgroup_is_a_runtime_error(tmp_path):
    with pytest.raises(MonitorError, match="does not exist"):
        options_from(parse("-c", str(tmp_path / "nope")))
    with pytest.raises(MonitorError, match="not a cgroup2 directory: the hooks attach to cgroup2, mounted at /"):
        options_from(parse("-c", str(tmp_path)))
    assert options_from(parse("-c", os.path.join(cgroups.mount(), "."))).cgroup  # a cgroup2 directory passes


def test_a_cgroup_v1_directory_is_refused_by_name():
    """A hybrid host's v1 hierarchies have cgroup.procs too, but no cgroup2 hook attaches there."""
    v1 = [m.point for m in mounts.mounts() if m.fstype == "cgroup"]
    if not v1:
        pytest.skip("no cgroup v1 hierarchy is mounted here")
    with pytest.raises(MonitorError, match=f"'{v1[0]}' is in a cgroup v1 hierarchy: the hooks attach to cgroup2"):
        options_from(parse("-c", v1[0]))


def test_not_root_is_one_line_exit_1():
    r = _bpfhook("monitor", as_user=True)
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == "bpfhook: error: 'monitor' needs root (run it with sudo)\n"


def ev(pid=10, sport=40000, dport=80):
    return {"pid": pid, "sport": sport, "dport": dport}


def test_filter():
    web = classify(f"/system.slice/docker-{ID}.scope")
    host = classify("/")
    everything = EventFilter.from_options(options_from(parse()))
    assert everything.passes_everything and everything(ev(), host)
    f = EventFilter.from_options(options_from(parse("--pid", "10", "--port", "80", "--container", ID[:12])))
    assert not f.passes_everything
    assert f(ev(), web)
    assert not f(ev(pid=11), web)
    assert not f(ev(dport=81), web)
    assert f(ev(sport=80, dport=5000), web)  # local or remote port
    assert not f(ev(), host)
    assert EventFilter(container="db")(ev(), classify("/bpfhook.lab/db"))
    assert not EventFilter(container="db")(ev(), classify("/bpfhook.lab/dbx"))
    assert EventFilter(port=443)(ev(dport=443), host) and not EventFilter(pid=1)(ev(), host)


def test_a_container_found_at_the_start_filters_by_its_cgroup_and_those_below():
    f = EventFilter(container="web", container_cgroup="/docker/" + ID)
    assert f(ev(), classify("/docker/" + ID)) and f(ev(), classify(f"/docker/{ID}/init"))
    assert not f(ev(), classify(f"/docker/{ID}x")) and not f(ev(), classify("/bpfhook.lab/web"))


def test_a_container_not_there_yet_is_watched_for_by_name(capsys):
    options = options_from(parse("--container", "no-such-container-xyz"))
    assert options.container_cgroup is None and options.container == "no-such-container-xyz"
    assert capsys.readouterr().err == ("bpfhook monitor: no container 'no-such-container-xyz' now: "
                                       "watching for one by that name\n")


def test_accept_choices_are_the_programs_hooks():
    from bpfhook.programs.accept import HOOKS

    assert [options_from(parse("--accept", hook)).accept for hook in ("auto",) + HOOKS] == ["auto", *HOOKS]
    assert f"the first of {', '.join(HOOKS)} this kernel allows" in " ".join(_bpfhook("monitor", "--help").stdout.split())


@pytest.mark.parametrize("text, expected", [("1", 1 << 20), ("8", 8 << 20), ("1024", 1 << 30)])
def test_ring_size_is_megabytes_in_a_power_of_two(text, expected):
    assert monitor_cli.ring_megabytes(text) == expected


@pytest.mark.parametrize("text", ["0", "3", "2048", "-4", "1.5", "lots"])
def test_a_ring_size_out_of_bounds_is_a_usage_error(text):
    with pytest.raises(argparse.ArgumentTypeError):
        monitor_cli.ring_megabytes(text)
