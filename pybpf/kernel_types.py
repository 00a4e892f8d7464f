"""Layouts of kernel types for the DSL: BTF structs (fields by name, pointers that chain),
program contexts by program type, tracepoint records (tracefs) and raw tracepoint arguments (BTF).

The DSL (pybpf.asm.dsl) asks this module only when a program names a kernel type: the pure
half stays free of the kernel otherwise.
"""
from .asm.dsl import FieldInfo
from .btf import Btf
from .btf_format import INT_SIGNED
from .errors import FeatureUnavailable
from .features import TP_BTF_PREFIX
from .tracefs import tracepoint_fields

# Program type -> the uapi struct its context is (what the verifier rewrites accesses of).
CONTEXTS = {
    "xdp": "xdp_md", "kprobe": "pt_regs",
    "socket_filter": "__sk_buff", "sched_cls": "__sk_buff", "sched_act": "__sk_buff", "cgroup_skb": "__sk_buff",
    "sk_skb": "__sk_buff", "lwt_in": "__sk_buff", "lwt_out": "__sk_buff", "lwt_xmit": "__sk_buff",
    "flow_dissector": "__sk_buff",
    "cgroup_sock_addr": "bpf_sock_addr", "cgroup_sock": "bpf_sock", "sock_ops": "bpf_sock_ops",
    "sk_msg": "sk_msg_md", "cgroup_sockopt": "bpf_sockopt", "cgroup_sysctl": "bpf_sysctl",
    "sk_lookup": "bpf_sk_lookup", "perf_event": "bpf_perf_event_data", "sk_reuseport": "sk_reuseport_md",
}


class BtfStruct:
    """A BTF struct or union as a DSL layout: `.field("a.b")`, "arr.3" for array elements, and
    for a pointer field the BtfStruct it points at (pointer chains)."""

    def __init__(self, btf, type):
        self.btf, self.type = btf, btf.resolve(type)
        self.name = self.type.name
        self._fields = {}

    @classmethod
    def named(cls, name, btf=None):
        btf = btf or Btf.vmlinux()
        return cls(btf, btf.find(name, ("struct", "union")))

    def sizeof(self):
        return self.btf.sizeof(self.type)

    def __repr__(self):
        return f"<BtfStruct {self.type.kind} {self.name}>"

    def field(self, path):
        info = self._fields.get(path)
        if info is None:
            info = self._fields[path] = self._walk(path)
        return info

    def _walk(self, path):
        btf, t, bits, bitfield = self.btf, self.type, 0, False
        for part in path.replace("[", ".").replace("]", "").split("."):
            t = btf.resolve(t)
            if t.kind == "array" and part.isdigit():
                if int(part) >= t.nelems:
                    raise FeatureUnavailable(f"{self.name}.{path}: the array has {t.nelems} elements")
                bits += int(part) * 8 * btf.sizeof(t.type)
                t = btf.type_by_id(t.type)
                continue
            if t.kind not in ("struct", "union"):
                raise FeatureUnavailable(f"{self.name}.{path}: {part!r} is inside a {t.kind}, not a struct")
            found = btf._member(t, part, 0)
            if found is None:
                raise FeatureUnavailable(f"BTF: struct {self.name} has no field {path!r}")
            member, extra = found
            bits += extra + member.offset_bits
            bitfield = bool(member.bitfield_size)
            t = btf.type_by_id(member.type)
        size, leaf = btf.sizeof(t), btf.resolve(t)
        scalar = leaf.kind in ("int", "enum", "enum64", "ptr")
        signed = (leaf.kind == "int" and bool(leaf.encoding & INT_SIGNED)) or \
            (leaf.kind in ("enum", "enum64") and bool(leaf.kind_flag))
        pointee = None
        if leaf.kind == "ptr":
            target = btf.resolve(leaf.type)
            if target.kind in ("struct", "union"):
                pointee = BtfStruct(btf, target)
        return FieldInfo(bits // 8, size, signed, scalar, None if scalar else self, pointee,
                         bitfield or bits % 8 != 0)


def context(prog_type, btf=None):
    """The BtfStruct of a program type's context (xdp: xdp_md), or FeatureUnavailable."""
    name = CONTEXTS.get(str(prog_type).lower().removeprefix("bpf_prog_type_"))
    if name is None:
        raise FeatureUnavailable(f"no typed context for {prog_type} programs (typed: {', '.join(sorted(CONTEXTS))})")
    return BtfStruct.named(name, btf)


class TracepointRecord:
    """A tracepoint's record (its tracefs format) as a DSL layout: ctx.filename, ctx.id."""

    def __init__(self, name):
        self.name = name
        self.fields = tracepoint_fields(name)
        self.size = max((f.offset + f.size for f in self.fields.values()), default=0)

    def sizeof(self):
        return self.size

    def field(self, path):
        f = self.fields.get(path)
        if f is None:
            raise FeatureUnavailable(f"tracepoint {self.name} has no field {path!r} "
                                     f"(fields: {', '.join(self.fields)})")
        return FieldInfo(f.offset, f.size, f.signed, f.size in (1, 2, 4, 8))


class RawTracepointArgs:
    """A raw tracepoint's (or tp_btf's) arguments as a DSL layout: u64 slots of the context, named
    and typed by the btf_trace_<name> prototype; pointers to structs chain (ctx.p.real_parent)."""

    chains = True  # an argument that points at a kernel struct reads on through it (p.ctx.p.real_parent)

    def __init__(self, name, btf=None):
        self.btf = btf = btf or Btf.vmlinux()
        self.name = name
        typedef = btf.find(TP_BTF_PREFIX + name, "typedef")
        self.btf_id = typedef.id
        proto = btf.resolve(btf.type_by_id(btf.resolve(typedef).type))
        names = [param.name for param in proto.params]
        try:  # the typedef's prototype has no parameter names; the kernel's __bpf_trace_<name> has them
            func = btf.type_by_id(btf.find("__bpf_trace_" + name, "func").type)
            if len(func.params) == len(names):
                names = [param.name for param in func.params]
        except FeatureUnavailable:
            pass
        self.args = {}
        for i, param in enumerate(proto.params[1:]):  # the first is the tracepoint's void *__data
            param = param._replace(name=names[i + 1])
            leaf = btf.resolve(param.type)
            pointee = None
            if leaf.kind == "ptr":
                target = btf.resolve(leaf.type)
                pointee = BtfStruct(btf, target) if target.kind in ("struct", "union") else None
            signed = leaf.kind == "int" and bool(leaf.encoding & INT_SIGNED)
            self.args[param.name or f"arg{i}"] = FieldInfo(8 * i, 8, signed, True, None, pointee)

    def sizeof(self):
        return 8 * len(self.args)

    def field(self, path):
        info = self.args.get(path)
        if info is None:
            raise FeatureUnavailable(f"raw tracepoint {self.name} has no argument {path!r} "
                                     f"(arguments: {', '.join(self.args)})")
        return info
