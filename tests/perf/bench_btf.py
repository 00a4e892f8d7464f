"""Cold BTF lookups: twenty field offsets in a fresh process, no cache files.

Ours is measured in a new interpreter each time, from before `import
pybpf.btf` to the twentieth Field (reading /sys/kernel/btf/vmlinux
included); the whole-process wall time is printed beside `python -c pass`
so interpreter start-up is visible rather than hidden. Peers, timed in the
same run: `bpftool btf dump file /sys/kernel/btf/vmlinux format raw` into
/dev/null (a full parse and print in C) and pahole, when installed.

    python3 tests/perf/bench_btf.py
"""
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VMLINUX = "/sys/kernel/btf/vmlinux"
RUNS = 7
TARGET = "< 100"

FIELDS = (
    ("sock", "__sk_common.skc_family"), ("sock", "__sk_common.skc_dport"), ("sock", "__sk_common.skc_num"),
    ("sock", "__sk_common.skc_daddr"), ("sock", "__sk_common.skc_rcv_saddr"), ("sock", "sk_protocol"),
    ("sock", "sk_type"), ("task_struct", "comm"), ("task_struct", "pid"), ("task_struct", "tgid"),
    ("task_struct", "nsproxy"), ("task_struct", "real_parent"), ("nsproxy", "net_ns"), ("net", "ns.inum"),
    ("sk_buff", "len"), ("sk_buff", "protocol"), ("tcp_sock", "snd_cwnd"), ("tcp_sock", "srtt_us"),
    ("inet_sock", "inet_sport"), ("socket", "sk"),
)

CHILD = f"""
import sys, time
t0 = time.perf_counter()
from pybpf.btf import Btf
btf = Btf.vmlinux()
offsets = [btf.field(s, f).offset_bits for s, f in {FIELDS!r}]
t1 = time.perf_counter()
assert len(offsets) == 20
print((t1 - t0) * 1e3)
"""


def _wall(argv, **kw):
    t0 = time.perf_counter()
    out = subprocess.run(argv, check=True, stdout=subprocess.PIPE, timeout=60, **kw).stdout
    return (time.perf_counter() - t0) * 1e3, out


def _median(fn):
    return statistics.median(fn() for _ in range(RUNS))


def measure():
    # Bytecode cached (in a scratch dir) as for any installed package; one warm-up run writes it.
    pycache = tempfile.mkdtemp(prefix="bench_btf_pyc")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(PYTHONPATH=ROOT, PYTHONPYCACHEPREFIX=pycache)
    _wall([sys.executable, "-c", CHILD], env=env, cwd=ROOT)
    inner, outer = [], []
    for _ in range(RUNS):
        wall, out = _wall([sys.executable, "-c", CHILD], env=env, cwd=ROOT)
        inner.append(float(out))
        outer.append(wall)
    figures = {
        "in_process_ms": statistics.median(inner),
        "process_ms": statistics.median(outer),
        "python_pass_ms": _median(lambda: _wall([sys.executable, "-c", "pass"])[0]),
        "bpftool_ms": None,
        "pahole_ms": None,
    }
    shutil.rmtree(pycache)
    bpftool = shutil.which("bpftool")
    if bpftool:
        figures["bpftool_ms"] = _median(lambda: _dump_ms([bpftool, "btf", "dump", "file", VMLINUX, "format", "raw"]))
    pahole = shutil.which("pahole")
    if pahole:
        figures["pahole_ms"] = _median(lambda: _dump_ms([pahole, "-F", "btf", "-C", "task_struct", VMLINUX]))
    return figures


def _dump_ms(argv):
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, timeout=60)
    return (time.perf_counter() - t0) * 1e3


def run():
    """{name: (ours, peer, unit, target)}; a missing peer is None."""
    f = measure()
    return {
        "btf cold 20 field offsets, in process (peer: bpftool raw dump)":
            (f["in_process_ms"], f["bpftool_ms"], "ms", TARGET),
        "btf cold 20 field offsets, whole process (peer: pahole -C task_struct)":
            (f["process_ms"], f["pahole_ms"], "ms", None),
        "python -c pass (interpreter start-up, for scale)":
            (f["python_pass_ms"], None, "ms", None),
    }


def main():
    for name, (ours, peer, unit, target) in run().items():
        peer_text = f"{peer:8.1f} {unit}" if peer is not None else "  missing"
        target_text = f"  target {target} {unit}" if target else ""
        print(f"{name:72s} ours {ours:8.1f} {unit}   peer {peer_text}{target_text}")


if __name__ == "__main__":
    main()
