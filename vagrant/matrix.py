#!/usr/bin/env python3
"""Run the kernel test suite on Debian's kernels, each booted with virtme-ng.

    python3 vagrant/matrix.py [--kernel 6.1|6.12|all] [--tests PATH ...] [-k EXPR] [--json]

Each kernel boots under qemu (KVM when the host offers it, TCG emulation
otherwise) with the host's root filesystem shared read-only, so the guest runs
the same python on this checkout (an overlay: the guest's writes never reach
the host). vagrant/run-tests.sh, the entry point the Vagrant VMs use too,
mounts bpffs/cgroup2/tracefs/debugfs, saves `python -m pybpf.features --json`
and runs pytest as root; its junit XML gives passed / failed / skipped (with
reasons) per kernel.

What it needs is installed on first use, as root: the Debian packages in
APT_PACKAGES, virtme-ng (PyPI) in a venv, and the kernel packages, which are
downloaded and unpacked into the cache rather than installed: the host's /boot
and bootloader stay untouched. Cache: $BPFHOOK_MATRIX_CACHE or
~/.cache/bpfhook-matrix.
"""
import argparse
import collections
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Under TCG the guest runs ~30x slower than the host; the waits the tests bound end early on success,
# so a generous factor costs nothing where things work.
TCG_SLOW_FACTOR = 10
CACHE = os.environ.get("BPFHOOK_MATRIX_CACHE") or os.path.expanduser("~/.cache/bpfhook-matrix")

# kernel -> apt package name pattern (POSIX and Python regex alike); the highest ABI/upload number that apt offers wins.
KERNELS = {
    "6.1": re.compile(r"linux-image-6\.1\.0-([0-9]+)-amd64"),
    "6.12": re.compile(r"linux-image-6\.12\.([0-9]+)\+deb12-amd64"),
}
# qemu; busybox for virtme-ng's initramfs; kmod (depmod) for the unpacked modules;
# udev, whose rules give the guest /dev/virtio-ports/* (virtme-ng's script I/O).
APT_PACKAGES = ("qemu-system-x86", "busybox-static", "kmod", "udev")
VIRTME_NG = "virtme-ng==1.42"
DEFAULT_TESTS = ("tests/kernel",)


class MatrixError(Exception):
    """A setup step that failed: said in one line, loudly."""


def log(message):
    print(f"matrix: {message}", file=sys.stderr, flush=True)


def run(argv, **kwargs):
    result = subprocess.run(argv, text=True, capture_output=True, **kwargs)
    if result.returncode:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise MatrixError(f"{' '.join(argv[:4])}... exited {result.returncode}: {' | '.join(tail)}")
    return result.stdout


# -- setup -------------------------------------------------------------------------------------------------

def apt_install(packages):
    missing = [p for p in packages
               if subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Status}", p], capture_output=True,
                                 text=True).stdout != "installed"]
    if not missing:
        return
    if os.geteuid():
        raise MatrixError(f"installing {' '.join(missing)} needs root")
    log(f"apt: installing {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update", "-q"], env=env)
    run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], env=env, stdin=subprocess.DEVNULL)


def virtme_bin():
    """The venv's bin directory, with vng and virtme-run (vng calls the latter through PATH)."""
    venv = os.path.join(CACHE, "venv")
    vng = os.path.join(venv, "bin", "vng")
    if not os.path.exists(vng):
        log(f"pip: installing {VIRTME_NG} into {venv}")
        run([sys.executable, "-m", "venv", venv])
        run([os.path.join(venv, "bin", "pip"), "install", "-q", VIRTME_NG])
    return os.path.dirname(vng)


def kernel_package(kernel):
    """The newest apt package of this kernel series, or raise saying it is not installable here."""
    pattern = KERNELS[kernel]
    for attempt in range(2):
        names = run(["apt-cache", "search", "--names-only", pattern.pattern]).split()
        numbers = {int(m.group(1)): m.group(0) for m in map(pattern.fullmatch, names) if m}
        if numbers:
            return numbers[max(numbers)]
        if attempt == 0 and os.geteuid() == 0:
            run(["apt-get", "update", "-q"])
    raise MatrixError(f"kernel {kernel}: no package matching {pattern.pattern} in the configured apt sources "
                      "(not installable here)")


def kernel_image(kernel):
    """Path of the vmlinuz unpacked (with its modules) from the kernel's .deb."""
    package = kernel_package(kernel)
    tree = os.path.join(CACHE, "kernels", package)
    release = package[len("linux-image-"):]
    vmlinuz = os.path.join(tree, "boot", f"vmlinuz-{release}")
    if not os.path.exists(vmlinuz):
        debs = os.path.join(CACHE, "debs")
        os.makedirs(debs, exist_ok=True)
        log(f"apt: downloading {package}")
        run(["apt-get", "download", package], cwd=debs)
        deb = next(os.path.join(debs, f) for f in os.listdir(debs) if f.startswith(package + "_"))
        staging = tree + ".partial"
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging)
        run(["dpkg-deb", "-x", deb, staging])
        os.replace(staging, tree)
        os.remove(deb)
    return vmlinuz


def kvm_usable():
    """KVM only when the CPU shows virtualization: a /dev/kvm without vmx/svm (nested, partial) makes qemu abort."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    with open("/proc/cpuinfo") as f:
        flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    return "vmx" in flags or "svm" in flags


# -- one kernel ----------------------------------------------------------------------------------------------

def junit_summary(path):
    """{passed, failed, skipped, failures: [test], skip_reasons: {reason: count}} from pytest's junit XML."""
    counts = collections.Counter()
    failures, reasons = [], collections.Counter()
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome = next((child for child in case if child.tag in ("failure", "error", "skipped")), None)
        if outcome is None:
            counts["passed"] += 1
        elif outcome.tag == "skipped":
            counts["skipped"] += 1
            reasons[(outcome.get("message") or "").removeprefix("Skipped: ").strip()] += 1
        else:
            counts["failed"] += 1
            failures.append(f"{name}: {(outcome.get('message') or outcome.tag).splitlines()[0][:200]}")
    return dict(passed=counts["passed"], failed=counts["failed"], skipped=counts["skipped"],
                failures=failures, skip_reasons=dict(reasons.most_common()))


def boot(argv, env, console, timeout):
    """Exit status of the vng command, or None when it ran out of time (then qemu and all are killed)."""
    with open(console, "w") as f:
        # Its own process group: vng -> virtme-run -> qemu all go when we kill it.
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        finally:
            if proc.returncode is None:  # timed out or interrupted
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def console_tail(console, lines):
    with open(console, errors="replace") as f:
        return " | ".join(f.read().strip().splitlines()[-lines:])


def run_kernel(kernel, tests, keyword, kvm, timeout, cpus, memory):
    started = time.monotonic()
    result = dict(kernel=kernel, status="error")
    try:
        vmlinuz = kernel_image(kernel)
        result["image"] = os.path.basename(vmlinuz)
        out = os.path.join(CACHE, "results", kernel)
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        junit, features = os.path.join(out, "junit.xml"), os.path.join(out, "features.json")
        pytest_args = ["-q", "-rs", "-p", "no:cacheprovider", *tests] + (["-k", keyword] if keyword else [])
        # Tests scale the upper bounds of their waits by BPFHOOK_SLOW (tests/conftest.py slow_factor).
        guest = " ".join(["env", f"BPFHOOK_SLOW={1 if kvm else TCG_SLOW_FACTOR}",
                          "vagrant/run-tests.sh", "--python", sys.executable, "--junit-xml", junit,
                          "--features-json", features, "--", *map(shlex.quote, pytest_args)])
        bin_dir = virtme_bin()
        argv = [os.path.join(bin_dir, "vng"), "--run", vmlinuz, "--user", "root", "--cpus", str(cpus),
                "--memory", memory, "--overlay-rwdir", ROOT, "--rwdir", out, "--cwd", ROOT, "--exec", guest]
        if not kvm:
            argv.insert(3, "--disable-kvm")
        env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", PYTHONDONTWRITEBYTECODE="1")
        log(f"{kernel}: booting {result['image']} ({'kvm' if kvm else 'tcg'}), running {' '.join(pytest_args)}")
        console = os.path.join(out, "console.log")
        result["console"] = console
        result["exit"] = boot(argv, env, console, timeout)
        if os.path.exists(features):  # written before pytest starts: there even when the tests time out
            with open(features) as f:
                try:
                    result["features"] = json.load(f)
                except ValueError:
                    pass
        if result["exit"] is None:
            raise MatrixError(f"{kernel}: no result within {timeout} s; progress: {console_tail(console, 1)}")
        if not os.path.exists(junit):
            raise MatrixError(f"{kernel}: the guest wrote no junit XML (exit {result['exit']}): "
                              f"{console_tail(console, 5)}")
        result.update(junit_summary(junit))
        result["status"] = "failed" if result["failed"] or result["exit"] not in (0, 1) else "ok"
    except MatrixError as e:
        result["error"] = str(e)
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


# -- the command ---------------------------------------------------------------------------------------------

def print_report(results):
    for r in results:
        head = f"== kernel {r['kernel']} ({r.get('image', '?')}): {r['status']} in {r['seconds']:.0f} s"
        if "error" in r:
            print(f"{head}\n   ERROR: {r['error']}")
            continue
        # key=value, not pytest's "N passed, N failed": CI logs are judged by their closing test
        # line, and this report must not be mistaken for the main suite's.
        print(f"{head}: passed={r['passed']} failed={r['failed']} skipped={r['skipped']}")
        for failure in r["failures"]:
            print(f"   FAILED {failure}")
        for reason, count in r["skip_reasons"].items():
            print(f"   skipped {count:3d}: {reason}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", choices=[*KERNELS, "all"], default="all")
    parser.add_argument("--tests", nargs="+", default=list(DEFAULT_TESTS), metavar="PATH",
                        help="pytest paths or node ids, relative to the checkout (default: tests/kernel)")
    parser.add_argument("-k", dest="keyword", help="pytest -k expression")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto",
                        help="auto: KVM when the CPU exposes vmx/svm, TCG emulation otherwise")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per kernel (default 1800)")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--memory", default="4G")
    args = parser.parse_args(argv)

    # SIGTERM (CI's timeout, kill) unwinds like ^C, so boot() takes qemu down with it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    kvm = {"auto": kvm_usable(), "kvm": True, "tcg": False}[args.accel]
    kernels = list(KERNELS) if args.kernel == "all" else [args.kernel]
    try:
        apt_install(APT_PACKAGES)
    except MatrixError as e:
        log(f"ERROR: {e}")
        return 2
    results = [run_kernel(k, args.tests, args.keyword, kvm, args.timeout, args.cpus, args.memory) for k in kernels]
    if args.json:
        json.dump(results, sys.stdout, indent=1)
        print()
    else:
        print_report(results)
    return 0 if all(r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
