#!/usr/bin/env python3
"""Every BPF program the tools load, as the kernel receives it, for before/after comparisons.

Runs the monitor (every event kind, stream/report, every transition or openings and closes,
slots/conns, state and accept hook the kernel takes), capture (a lab container, several option sets, --tls among them) and mirror --method bpf (several
filters, to lo), and records each BPF_PROG_LOAD at the syscall: program type, expected attach type,
name and instruction bytes, with map fds replaced by map names (fds differ between runs).
Feature probes load programs too; they are recorded the same way.

    sudo python3 tools/dump_programs.py OUT.json
    python3 tools/dump_programs.py --compare BEFORE.json AFTER.json
"""
import argparse
import contextlib
import hashlib
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PROG_LOAD = 5
PSEUDO_MAP_FD, PSEUDO_MAP_VALUE = 1, 2
LD_IMM64 = 0x18


def _syscall_module():
    try:
        import pybpf.syscall as module  # after the re-house
    except ImportError:
        import pybpf.sys as module
    return module


def _map_name(module, fd):
    info = module.ffi.new("struct bpf_map_info *")
    attr = module.new_attr()
    attr.info.bpf_fd = fd
    attr.info.info_len = module.ffi.sizeof(info[0])
    attr.info.info = module.address(info)
    module.bpf(15, attr)  # BPF_OBJ_GET_INFO_BY_FD
    return module.ffi.string(info.name).decode()


class Recorder:
    """Wraps the syscall module's cffi lib: PROG_LOAD calls are written down, all calls go through."""

    def __init__(self, module):
        self.module, self.lib, self.loads = module, module.lib, []
        self.bpf_nr = module._nr(0, "bpf")

    def __getattr__(self, name):
        return getattr(self.lib, name)

    def syscall(self, nr, *args):
        if int(nr) == self.bpf_nr and int(args[0]) == PROG_LOAD:
            self.record(args[1])
        return self.lib.syscall(nr, *args)

    def record(self, attr):
        ffi = self.module.ffi
        code = bytearray(ffi.buffer(ffi.cast("char *", attr.insns), attr.insn_cnt * 8))
        maps = []
        for i in range(0, len(code) - 8, 8):
            if code[i] == LD_IMM64 and code[i + 1] >> 4 in (PSEUDO_MAP_FD, PSEUDO_MAP_VALUE):
                fd = int.from_bytes(code[i + 4:i + 8], "little")
                maps.append(f"{i // 8}:{_map_name(self.module, fd)}")
                code[i + 4:i + 8] = bytes(4)
        self.loads.append({
            "name": ffi.string(attr.prog_name).decode(), "type": attr.prog_type,
            "expected_attach_type": attr.expected_attach_type, "attach_btf_id": attr.attach_btf_id,
            "insns": attr.insn_cnt, "maps": maps, "code": code.hex(),
        })


def _monitors(cgroup):
    from bpfhook import monitor
    from bpfhook.programs import accept, conn_state
    from pybpf.errors import BpfError

    for events in ("ringbuf", "perf"):
        for stream, transitions in ((False, True), (True, True), (True, False)):
            for slots in (None, 0):
                for state in conn_state.HOOKS:
                    for hook in accept.HOOKS:
                        try:
                            m = monitor.Monitor(cgroup, events=events, stream=stream, accept=hook, state=state,
                                                slots=slots, transitions=transitions)
                        except (BpfError, ValueError):
                            continue  # a hook this kernel does not take
                        with m:
                            m.refresh_live()


def _captures(target):
    from bpfhook import capture, pcapng

    for options in ({}, {"uds": True}, {"both_directions": True, "snaplen": 128},
                    {"ip_proto": 6, "port": 8080}, {"uds": True, "pid": 1},
                    {"net": False, "tls": True}, {"net": False, "tls": True, "pid": 1}):
        path = f"/tmp/dump-programs-{os.getpid()}.pcapng"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        c = capture.Capture(target, **options)
        try:
            with pcapng.Writer(path) as writer:
                c.start(writer)
        finally:
            c.close()
            os.unlink(path)


def _mirrors(source, observer="lo"):
    """(lo: an observer whose ifindex, which the program holds, is the same in every run)"""
    from bpfhook import mirror

    for text in (None, "tcp", "udp/53", "8080", "icmp"):
        packet_filter = mirror.PacketFilter.parse(text) if text else None
        with mirror.mirror(source, observer, method="bpf", packet_filter=packet_filter):
            pass


def dump(out):
    from bpfhook import capture, cgroups
    from bpfhook.lab import Lab

    module = _syscall_module()
    recorder = Recorder(module)
    module.lib = recorder
    lab = None
    try:
        lab = Lab.up(f"dp{os.getpid() % 100000}")
        _monitors(cgroups.mount())
        _captures(capture.resolve_target(lab.name))
        _mirrors(lab.name)
    finally:
        module.lib = recorder.lib
        if lab is not None:
            lab.down()
    with open(out, "w") as f:
        json.dump(recorder.loads, f, indent=0)
    print(f"{len(recorder.loads)} program loads written to {out}")


def _key(load):
    return (load["name"], load["type"], load["expected_attach_type"], load["attach_btf_id"], load["code"],
            tuple(load["maps"]))


def compare(before, after):
    with open(before) as f:
        a = sorted(map(_key, json.load(f)))
    with open(after) as f:
        b = sorted(map(_key, json.load(f)))
    if a == b:
        digest = hashlib.sha256(json.dumps(a).encode()).hexdigest()[:16]
        print(f"identical: {len(a)} program loads, {sum(len(k[4]) // 16 for k in a)} instructions (sha256 {digest})")
        return 0
    only_a, only_b = [k for k in a if k not in b], [k for k in b if k not in a]
    for k in only_a:
        print(f"only before: {k[0]} type {k[1]} ({len(k[4]) // 16} insns)")
    for k in only_b:
        print(f"only after:  {k[0]} type {k[1]} ({len(k[4]) // 16} insns)")
    return 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", help="write the dump here")
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args()
    if args.compare:
        return compare(*args.compare)
    if not args.out:
        parser.error("give OUT.json or --compare BEFORE AFTER")
    dump(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
