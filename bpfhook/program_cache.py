"""The monitor's programs as built last time (pybpf.prepared), kept on tmpfs: a start loads
them without running the DSL (about a quarter of the start-up time, docs/benchmarks.md).

One file per configuration, valid while its key holds: the kernel's offsets and function ids
(KernelOffsets, itself keyed by boot and vmlinux BTF), the build options, and every source the
programs come from (path, size and mtime of each module of bpfhook and pybpf). Any
change there, a new boot, an unreadable or foreign file: the programs are built again and the
file rewritten (written whole to a temporary name, then renamed).
"""
import hashlib
import json
import os

import bpfhook
import pybpf
from pybpf.prepared import Prepared, prepare

CACHE_DIR = "/run/bpfhook"  # tmpfs: a boot's programs


def sources_digest(packages=(bpfhook, pybpf)):
    """Digest of the (path, size, mtime) of every module under `packages`."""
    h = hashlib.sha256()
    for package in packages:
        for top in package.__path__:
            for root, dirs, files in os.walk(top):
                dirs[:] = sorted(d for d in dirs if d != "__pycache__")
                for name in sorted(files):
                    if name.endswith(".py"):
                        st = os.stat(os.path.join(root, name))
                        h.update(f"{root}/{name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()


class ProgramCache:
    """{program key: Prepared} for one configuration."""

    def __init__(self, key, cache_dir=CACHE_DIR, name="monitor"):
        """key: JSON-able; what makes the programs what they are, besides their sources."""
        configuration = json.dumps(key, sort_keys=True)
        self.key = hashlib.sha256(f"{configuration}\0{sources_digest()}".encode()).hexdigest()
        # A file per configuration (a few: ring buffer or perf, streaming, slots, transitions),
        # rewritten when the sources change
        name = f"{name}-programs-{hashlib.sha256(configuration.encode()).hexdigest()[:16]}.json"
        self.path = os.path.join(cache_dir, name)
        self._programs = {}
        self.hits = self.misses = 0
        try:
            with open(self.path) as f:
                stored = json.load(f)
            if stored.get("key") == self.key:
                self._programs = {k: Prepared.from_json(v) for k, v in stored["programs"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass  # built again, and written anew

    def get(self, key, build):
        """The Prepared program of `key`; build() (a DSL program) when not kept, and the
        file written again."""
        found = self._programs.get(key)
        if found is not None:
            self.hits += 1
            return found
        self.misses += 1
        found = self._programs[key] = prepare(build())
        self._save()
        return found

    def _save(self):
        try:
            os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
            tmp = f"{self.path}.{os.getpid()}"
            with open(tmp, "w") as f:
                json.dump({"key": self.key, "programs": {k: p.to_json() for k, p in self._programs.items()}}, f)
            os.replace(tmp, self.path)
        except OSError:
            pass  # a read-only /run only costs the next start its build
