"""Resolve symbolic references into offsets, once, at link time.

Instructions name their targets by label (`Insn.ref = "loop"`) and carry the
labels they define (`Insn.label = "loop"`). Linking counts slots (ld_imm64
takes two) and writes pc-relative offsets:
    jumps and may_goto: off = target - (pc + 1)
    gotol:              imm = target - (pc + 1)
    call_local, ld_func: imm = target - (pc + 1)
Map references (`ref` with an `fd`) are left for the loader, which knows fds.
"""
from .errors import AssemblerError
from .insn import Insn

# Instruction kinds whose `ref` is a label, and the field that gets the offset.
_TARGET_FIELD = {"jmp": "off", "ja": "off", "may_goto": "off", "gotol": "imm"}
_IMM_TARGET_OPS = ("call_local", "ld_func")


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
        pc += insn.slots
    return slots


def target_field(insn):
    """Which field of `insn` holds a pc-relative target, or None."""
    op = insn.op
    if op is None:
        return None
    if op.name in _IMM_TARGET_OPS:
        return "imm"
    return _TARGET_FIELD.get(op.kind)


def link(insns):
    """Return new instructions with every label reference resolved.

    Raises AssemblerError naming the instruction's source when a label is
    unknown or an offset does not fit its field. Instructions without a label
    reference are passed through as they are.
    """
    slots = label_slots(insns)
    out, pc = [], 0
    append = out.append
    for insn in insns:
        if insn.ref.__class__ is str and (field := target_field(insn)):
            target = slots.get(insn.ref)
            if target is None:
                raise AssemblerError(f"unknown label {insn.ref!r}", insn.source)
            resolved = Insn(insn.op, insn.dst, insn.src, insn.off, insn.imm,
                            label=insn.label, ref=insn.ref, source=insn.source)
            delta = target - (pc + 1)
            # ld_func keeps its 32-bit offset in the low half; the second slot's imm stays 0
            setattr(resolved, field, delta & 0xFFFFFFFF if insn.op.slots == 2 else delta)
            if field == "off" and not -(1 << 15) <= resolved.off < (1 << 15):
                raise AssemblerError(f"jump to {insn.ref!r} is {resolved.off} slots away; "
                                     "more than a 16-bit offset can hold (use gotol)", insn.source)
            insn = resolved
        append(insn)
        pc += insn.slots
    return out
