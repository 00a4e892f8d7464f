"""The kernel matrix's junit reading, the feature table and the perf harness's table logic."""
import os
import subprocess
import sys

import pytest

from tests.conftest import load_script

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


matrix = load_script("vagrant/matrix.py", "bpfhook_matrix")
feature_table = load_script("tools/feature_table.py", "bpfhook_feature_table")
perf_run = load_script("tests/perf/run.py", "bpfhook_perf_run")

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="5">
<testcase classname="tests.kernel.test_attach" name="test_kprobe[kprobe]" time="1.0"/>
<testcase classname="tests.kernel.test_attach" name="test_fentry_fexit[fentry]" time="1.0"/>
<testcase classname="tests.kernel.test_lab" name="test_up" time="1.0">
  <failure message="assert 'x' in ''&#10;second line">trace</failure></testcase>
<testcase classname="tests.kernel.test_prog" name="test_lirc" time="0.1">
  <skipped type="pytest.skip" message="lirc_mode2 does not load here: EINVAL">x</skipped></testcase>
<testcase classname="tests.kernel.test_prog" name="test_lirc2" time="0.1">
  <skipped type="pytest.skip" message="lirc_mode2 does not load here: EINVAL">x</skipped></testcase>
</testsuite></testsuites>
"""


def test_junit_summary_counts_and_reasons(tmp_path):
    path = tmp_path / "junit.xml"
    path.write_text(JUNIT)
    summary = matrix.junit_summary(str(path))
    assert (summary["passed"], summary["failed"], summary["skipped"]) == (2, 1, 2)
    assert summary["failures"] == ["tests.kernel.test_lab::test_up: assert 'x' in ''"]
    assert summary["skip_reasons"] == {"lirc_mode2 does not load here: EINVAL": 2}


def test_kernel_package_patterns_pick_the_real_names():
    assert matrix.KERNELS["6.1"].fullmatch("linux-image-6.1.0-54-amd64")
    assert not matrix.KERNELS["6.1"].fullmatch("linux-image-6.1.0-54-cloud-amd64")
    assert matrix.KERNELS["6.12"].fullmatch("linux-image-6.12.117+deb12-amd64")
    assert not matrix.KERNELS["6.12"].fullmatch("linux-image-6.12.117+deb12-amd64-unsigned")


def test_matrix_rejects_an_unknown_kernel():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "vagrant", "matrix.py"), "--kernel", "4.9"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "invalid choice: '4.9'" in proc.stderr


def _features(**available):
    return {name.replace("__", "."): {"available": value, "detail": ""} for name, value in available.items()}


def test_choice_takes_the_first_option_the_kernel_has():
    options = [(("link.tcx",), "tcx link"), (("prog_type.sched_cls",), "cls_bpf")]
    assert feature_table.choice(_features(link__tcx=True, prog_type__sched_cls=True), options) == "tcx link"
    assert feature_table.choice(_features(link__tcx=False, prog_type__sched_cls=True), options) == "cls_bpf"
    assert feature_table.choice(_features(link__tcx=None), options) == \
        "unavailable (no link.tcx, prog_type.sched_cls)"


def test_feature_table_has_a_column_per_kernel_and_names_missing_ones():
    results = [dict(kernel="6.1", image="vmlinuz-6.1.0-54-amd64", features=_features(kprobe_pmu=True)),
               dict(kernel="6.12", error="kernel 6.12: not installable here")]
    columns, missing = feature_table.matrix_columns(results)
    text = feature_table.markdown([("host", _features(kprobe_pmu=False))] + columns, missing)
    assert "| `kprobe_pmu` | no | yes |" in text
    assert "| feature | host | Debian 6.1.0-54-amd64 |" in text
    assert "6.12: kernel 6.12: not installable here" in text


@pytest.mark.parametrize("target, unit, value, met", [
    (0.2, "s", 0.1, True), (0.2, "s", 0.3, False), (1000, "insn/s", 999, False), (">= 1,000", "x", 1000, True),
    ("< 0.2", "s", 0.2, False), (None, "s", 1, None), ("about 3", "s", 1, None),
])
def test_targets(target, unit, value, met):
    assert perf_run.meets(value, perf_run.normal_target(target, unit)) is met


def test_tables_say_missing_peers_and_reasons():
    rows = [dict(bench="maps", figure="dump", ours=0.5, peer=None, unit="s", target="<= 0.2", ratio=None, ok=False),
            dict(bench="events", figure="rec/s", ours=2e6, peer="no peer tool", unit="rec/s", target=None,
                 ratio=None, ok=None)]
    text = perf_run.text_table(rows)
    assert "missing" in text.splitlines()[2] and "NO" in text.splitlines()[2]
    assert "no peer tool" in text.splitlines()[3]
    page = perf_run.markdown(rows, ["maps", "events"], perf_run.machine())
    assert "load average" in page
    assert "`python tests/perf/run.py --markdown maps events`" in page
    assert "| maps | dump | 0.500 | missing | s |  | <= 0.2 | NO |" in page
