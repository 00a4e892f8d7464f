"""bpfhook mirror without root: argument parsing, --filter syntax, the BPF program's shape, non-root refusal."""
import os
import shutil
import subprocess
import sys

import pytest

from bpfhook import cli, mirror
from bpfhook.mirror import MirrorError, PacketFilter
from bpfhook.programs import mirror as program
from pybpf.errors import FeatureUnavailable

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse(*argv):
    return cli.build_parser().parse_args(["mirror", *argv])


def test_defaults():
    args = parse("--from", "web", "--to", "observer")
    assert (args.source, args.observer, args.direction, args.method, args.filter, args.keep, args.remove,
            args.qdisc) == ("web", "observer", "both", "mirred", None, False, False, None)


def test_keep_and_remove_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as e:
        parse("--from", "a", "--to", "b", "--keep", "--remove")
    assert e.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize("bad", [["--to", "b"], ["--from", "a", "--direction", "sideways"],
                                 ["--from", "a", "--method", "pcap"]])
def test_usage_errors_are_one_line(bad, capsys):
    with pytest.raises(SystemExit):
        parse(*bad)
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize("text, proto, port", [
    ("tcp", "tcp", None), ("UDP/53", "udp", 53), ("8080", None, 8080), ("icmp", "icmp", None),
    ("sctp/9", "sctp", 9), ("icmpv6", "icmpv6", None),
])
def test_filter_syntax(text, proto, port):
    f = PacketFilter.parse(text)
    assert (f.proto, f.port) == (proto, port)
    assert PacketFilter.parse(str(f)) == f


@pytest.mark.parametrize("text, message", [
    ("gre", "protocol must be"), ("tcp/0", "1..65535"), ("tcp/65536", "1..65535"), ("tcp/http", "1..65535"),
    ("icmp/7", "icmp has no ports"), ("", "protocol must be"),
])
def test_bad_filters(text, message):
    with pytest.raises(MirrorError, match=message):
        PacketFilter.parse(text)


def test_program_without_filter_is_clone_and_continue():
    p = program.build(7)
    insns = p.link()
    calls = [i for i in insns if i.op.name == "call"]
    assert [c.imm for c in calls] == [13]  # bpf_clone_redirect
    assert any(i.op.name == "mov" and i.dst == 2 and i.imm == 7 for i in insns)  # the observer's ifindex
    assert insns[-1].op.name == "exit" and insns[-2].imm == -1  # TCX_NEXT / TC_ACT_UNSPEC


def test_program_filters_check_bounds_before_reads():
    """Every packet read (r2/r8 based) comes after a data_end comparison."""
    insns = program.build(3, "tcp", 80).link()
    first_check = next(n for n, i in enumerate(insns) if i.op.name == "jgt" and i.src == 3)
    reads = [n for n, i in enumerate(insns) if i.op.kind in ("ldx",) and i.src in (2, 8)]
    assert reads and min(reads) > first_check


def test_non_root_gets_one_line():
    """As root, drop it the way tests/unit/test_cli.py does: a user namespace without mappings."""
    argv = [sys.executable, "-m", "bpfhook", "mirror", "--from", "lo", "--to", "lo"]
    if os.geteuid() == 0:
        assert shutil.which("unshare"), "unshare (util-linux) is needed to drop root"
        argv = ["unshare", "--user", *argv]
    p = subprocess.run(argv, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 1
    assert p.stderr.count("\n") == 1 and "needs root" in p.stderr


def test_qdisc_option():
    assert parse("--from", "a", "--to", "b").qdisc is None
    assert parse("--from", "a", "--to", "b", "--qdisc", "prio").qdisc == "prio"


@pytest.mark.parametrize("requested, directions, kernel, chosen", [
    (None, ("ingress", "egress"), {"clsact", "prio"}, "clsact"),
    (None, ("egress",), {"prio"}, "prio"),  # a kernel without clsact: the classic root prio
    ("prio", ("ingress", "egress"), {"clsact", "prio"}, "prio"),  # egress on prio, ingress on clsact
    ("clsact", ("egress",), {"prio"}, "clsact"),  # asked for: the kernel's answer will say no
])
def test_choose_qdisc(requested, directions, kernel, chosen):
    """The kernel is a set of qdisc kinds here: kernels without clsact cannot be made on this machine."""
    assert mirror.choose_qdisc(requested, directions, kernel.__contains__) == chosen


@pytest.mark.parametrize("requested, directions, kernel, error, message", [
    (None, ("ingress", "egress"), {"prio"}, MirrorError, "only egress"),
    (None, ("egress",), set(), FeatureUnavailable, "neither the clsact nor the prio"),
    ("htb", ("egress",), {"clsact"}, MirrorError, "clsact or prio"),
])
def test_choose_qdisc_refusals(requested, directions, kernel, error, message):
    with pytest.raises(error, match=message):
        mirror.choose_qdisc(requested, directions, kernel.__contains__)
