#!/usr/bin/env bash
# The test entry point shared by the kernel matrix (vagrant/matrix.py, inside a
# virtme-ng guest) and the Vagrant VMs: mount what the BPF tests need, record
# what this kernel can do, run pytest as root.
#
#   vagrant/run-tests.sh [--python PY] [--junit-xml FILE] [--features-json FILE] [PYTEST_ARGS...]
#
# PY defaults to .venv/bin/python when the checkout has one, else python3.
# PYTEST_ARGS default to `-q -rs tests`.
set -euo pipefail
cd "$(dirname "$0")/.."

python=
junit=
features=
while (($#)); do
    case $1 in
        --python) python=$2; shift 2 ;;
        --junit-xml) junit=$2; shift 2 ;;
        --features-json) features=$2; shift 2 ;;
        --) shift; break ;;
        *) break ;;
    esac
done
if [[ -z $python ]]; then
    if [[ -x .venv/bin/python ]]; then python=.venv/bin/python; else python=python3; fi
fi
(($#)) || set -- -q -rs tests

if [[ $EUID -ne 0 ]]; then
    echo "run-tests.sh: the kernel tests need root: sudo $0" >&2
    exit 1
fi

# Minimal guests (virtme-ng) and some distributions lack these mounts; mount what is missing.
mounted() { awk -v field="$1" -v value="$2" '$field == value { found = 1 } END { exit !found }' /proc/mounts; }
need_mount() {  # fstype mountpoint
    mounted 3 "$1" && return 0
    mkdir -p "$2"
    mount -t "$1" "$1" "$2" || echo "run-tests.sh: warning: cannot mount $1 at $2" >&2
}
need_mount bpf /sys/fs/bpf
# Hybrid cgroup v1 hosts keep v1 hierarchies under /sys/fs/cgroup: put cgroup2 beside them.
if mounted 2 /sys/fs/cgroup; then need_mount cgroup2 /sys/fs/cgroup/unified; else need_mount cgroup2 /sys/fs/cgroup; fi
need_mount tracefs /sys/kernel/tracing
need_mount debugfs /sys/kernel/debug
ip link set lo up 2>/dev/null || true

echo "== kernel $(uname -r), python $("$python" -c 'import sys; print(sys.version.split()[0])')"
if [[ -n $features ]]; then
    "$python" -m pybpf.features --json >"$features" ||
        echo "run-tests.sh: warning: python -m pybpf.features --json failed" >&2
fi
exec "$python" -m pytest ${junit:+--junit-xml="$junit"} "$@"
