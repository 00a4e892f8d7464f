"""Resolve symbolic references into offsets, once, at link time.

Instructions name their targets by label (`Insn.ref = "loop"`) and carry the
labels they define (`Insn.label = "loop"`). Linking counts slots (ld_imm64
takes two) and writes pc-relative offsets into the row's `target` field:
    jumps and may_goto: off = target - (pc + 1)
    gotol:              imm = target - (pc + 1)
    call_local, ld_func: imm = target - (pc + 1)
Map references (`ref` with an `fd`) are left for the loader, which knows fds.
"""
from ..errors import AssemblerError
from .insn import make


def label_slots(insns):
    """Map each label to the slot index of the instruction carrying it."""
    slots, pc = {}, 0
    for insn in insns:
        label = insn.label
        if label is not None:
            for name in (label if isinstance(label, (tuple, list)) else (label,)):
                if name in slots:
                    raise AssemblerError(f"label {name!r} defined twice", insn.source)
                slots[name] = pc
        op = insn.op
        pc += 1 if op is None else op.slots  # an InvalidInsn is one slot
    return slots


def resolve(insn, pc, labels):
    """A copy of `insn`, at slot `pc`, with its label reference turned into an offset.

    `insn.op.target` names the field; `labels` maps names to slots."""
    op, ref = insn.op, insn.ref
    target = labels.get(ref)
    if target is None:
        raise AssemblerError(f"unknown label {ref!r}", insn.source)
    delta = target - (pc + 1)
    resolved = make(op, insn.dst, insn.src, insn.off, insn.imm, insn.label, ref, insn.source)
    if op.target == "off":
        if not -(1 << 15) <= delta < (1 << 15):
            raise AssemblerError(f"jump to {ref!r} is {delta} slots away; "
                                 "more than a 16-bit offset can hold (use gotol)", insn.source)
        resolved.off = delta
    else:  # ld_func keeps its 32-bit offset in the low half; the second slot's imm stays 0
        resolved.imm = delta & 0xFFFFFFFF if op.slots == 2 else delta
    return resolved


def link(insns):
    """Return new instructions with every label reference resolved.

    Raises AssemblerError naming the instruction's source when a label is
    defined twice or unknown, or an offset does not fit its field.
    Instructions without a label reference are passed through as they are.
    """
    slots = label_slots(insns)
    out, pc = [], 0
    append = out.append
    for insn in insns:
        op = insn.op
        if op is None:  # InvalidInsn: raw bytes, one slot
            append(insn)
            pc += 1
            continue
        if insn.ref.__class__ is str and op.target is not None:
            insn = resolve(insn, pc, slots)
        append(insn)
        pc += op.slots
    return out
