"""Writing BTF: a small encoder, construct layouts as BTF structs, BPF_BTF_LOAD, and the
func_info / line_info a program carries (program_btf).

Records are packed from pybpf.btf_format, the reader's definition. The builder checks what it
can without the kernel; the kernel's BTF verifier judges the rest, and load_btf() puts its
log in the error.
"""
import array
import re
import struct
from dataclasses import dataclass

import construct

from . import btf_format, syscall
from .errors import BpfError, NotPermitted, SyscallError, syscall_error
from .uapi import Cmd

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_SECTION = re.compile(r"[A-Za-z0-9_.]+\Z")
LOG_SIZE = 1 << 20

# construct FormatField letters -> (BTF kind, int encoding); size from struct.calcsize.
_FORMATS = {
    "b": ("int", btf_format.INT_SIGNED), "h": ("int", btf_format.INT_SIGNED), "i": ("int", btf_format.INT_SIGNED),
    "l": ("int", btf_format.INT_SIGNED), "q": ("int", btf_format.INT_SIGNED),
    "B": ("int", 0), "H": ("int", 0), "I": ("int", 0), "L": ("int", 0), "Q": ("int", 0),
    "?": ("int", btf_format.INT_BOOL), "c": ("int", btf_format.INT_CHAR),
    "e": ("float", 0), "f": ("float", 0), "d": ("float", 0),
}


_FIELDS = {name: [field for field, _ in fields] for name, fields in btf_format.RECORDS.items()}


def _pack(record, values):
    try:
        return btf_format.FORMATS[record].pack(*[values[f] for f in _FIELDS[record]])
    except struct.error as e:
        raise BpfError(f"BTF {record}: {e}") from None


class BtfBuilder:
    """Accumulates BTF types; every add_* returns the new type's id.

    With `base` (a pybpf.btf.Btf), the result is split BTF on top of it: ids
    continue after the base's and base types may be referenced by id.
    """

    def __init__(self, base=None):
        self.base = base
        self._first_id = len(base) if base is not None else 1
        self._str_start = base._str_start + base._str_len if base is not None else 0
        self._records = []
        self._strings = bytearray(b"" if base is not None else b"\0")
        self._string_offsets = {} if base is not None else {"": 0}
        self._ints = {}

    @property
    def next_id(self):
        return self._first_id + len(self._records)

    # ---- primitives ----------------------------------------------------------

    def _name(self, name, what, rule=_IDENTIFIER, optional=False):
        if not name:
            if optional:
                return 0
            raise BpfError(f"BTF {what} needs a name")
        if not isinstance(name, str) or not rule.match(name):
            raise BpfError(f"BTF {what} name {name!r} is not a valid identifier")
        return self.add_string(name)

    def add_string(self, text):
        """Offset of `text` in the string section, added once. Free text (file names and
        source lines for line_info); type names go through the add_* checks instead."""
        off = self._string_offsets.get(text)
        if off is None:
            if "\0" in text:
                raise BpfError(f"BTF string {text!r} contains a NUL byte")
            off = self._string_offsets[text] = self._str_start + len(self._strings)
            self._strings += text.encode() + b"\0"
        return off

    def _ref(self, type_id, what, void_ok=False):
        if not isinstance(type_id, int) or not (0 if void_ok else 1) <= type_id < self.next_id:
            raise BpfError(f"BTF {what}: type id {type_id!r} does not exist (next id {self.next_id})")
        return type_id

    def _add(self, kind, name_off, size_or_type, vlen=0, kind_flag=0, tail=None, items=()):
        if vlen > btf_format.MAX_VLEN:
            raise BpfError(f"BTF {kind}: {vlen} entries exceed {btf_format.MAX_VLEN}")
        if self.next_id > btf_format.MAX_TYPE_ID:
            raise BpfError(f"BTF: more than {btf_format.MAX_TYPE_ID} types")
        _, tail_record, item_record = btf_format.KINDS[btf_format.KIND[kind]]
        info = kind_flag << 31 | btf_format.KIND[kind] << 24 | vlen
        parts = [_pack("btf_type", dict(name_off=name_off, info=info, size_or_type=size_or_type))]
        if tail_record:
            parts.append(_pack(tail_record, tail))
        parts.extend(_pack(item_record, item) for item in items)
        self._records.append(b"".join(parts))
        return self.next_id - 1

    # ---- types ---------------------------------------------------------------

    def add_int(self, name, size, encoding=0, bits=None):
        """INT of `size` bytes (1, 2, 4, 8, 16); encoding: INT_SIGNED, INT_CHAR or INT_BOOL bits."""
        if size not in (1, 2, 4, 8, 16):
            raise BpfError(f"BTF int {name!r}: size {size} is not 1, 2, 4, 8 or 16")
        bits = 8 * size if bits is None else bits
        if not 0 < bits <= 8 * size:
            raise BpfError(f"BTF int {name!r}: {bits} bits do not fit {size} bytes")
        return self._add("int", self._name(name, "int", re.compile(r"[ -~]+\Z")), size,
                         tail=dict(bits=encoding << 24 | bits))

    def add_float(self, name, size):
        """FLOAT of `size` bytes (2, 4, 8, 12, 16)."""
        if size not in (2, 4, 8, 12, 16):
            raise BpfError(f"BTF float {name!r}: size {size} is not 2, 4, 8, 12 or 16")
        return self._add("float", self._name(name, "float", re.compile(r"[ -~]+\Z")), size)

    def add_ptr(self, type_id):
        """PTR to type_id (0: void *)."""
        return self._add("ptr", 0, self._ref(type_id, "ptr", void_ok=True))

    def add_array(self, type_id, nelems):
        """ARRAY of nelems elements (indexed by a 4-byte int added on first use)."""
        if not isinstance(nelems, int) or nelems < 0:
            raise BpfError(f"BTF array: bad element count {nelems!r}")
        index = self._int_type(4, 0)
        return self._add("array", 0, 0, tail=dict(type=self._ref(type_id, "array"), index_type=index,
                                                  nelems=nelems))

    def add_struct(self, name, size, members, kind="struct"):
        """STRUCT (or kind="union") of `size` bytes.

        members: (name, type_id, bit_offset) or (name, type_id, bit_offset, bitfield_size);
        any bitfield sets kind_flag so the width is stored in the member."""
        if kind not in ("struct", "union"):
            raise BpfError(f"BTF: {kind!r} is not struct or union")
        name_off = self._name(name, kind, optional=True)
        members = [tuple(m) + (0,) * (4 - len(m)) for m in members]
        kind_flag = int(any(m[3] for m in members))
        items = []
        for member, type_id, bit_offset, bitfield_size in members:
            if not 0 <= bit_offset <= 0xFFFFFF or not 0 <= bitfield_size <= 0xFF:
                raise BpfError(f"BTF {kind} {name}.{member}: offset {bit_offset} / width {bitfield_size} out of range")
            items.append(dict(name_off=self._name(member, f"{kind} {name} member", optional=True),
                              type=self._ref(type_id, f"{kind} {name}.{member}"),
                              offset=bitfield_size << 24 | bit_offset if kind_flag else bit_offset))
        return self._add(kind, name_off, size, len(items), kind_flag, items=items)

    def add_enum(self, name, values, size=4):
        """ENUM (32-bit values) from {name: value}; signed when any value is negative."""
        signed = any(v < 0 for v in values.values())
        for enumerator, v in values.items():
            if not -(1 << 31) <= v < (1 << 32) or (signed and v >= 1 << 31):
                raise BpfError(f"BTF enum {name}: {enumerator}={v} does not fit 32 bits")
        items = [dict(name_off=self._name(n, f"enum {name} value"), val=v - (1 << 32) if v >= 1 << 31 else v)
                 for n, v in values.items()]
        return self._add("enum", self._name(name, "enum", optional=True), size, len(items), int(signed),
                         items=items)

    def add_typedef(self, name, type_id):
        return self._add("typedef", self._name(name, "typedef"), self._ref(type_id, f"typedef {name}",
                                                                            void_ok=True))

    def add_func_proto(self, return_type, params=()):
        """FUNC_PROTO; params: (name, type_id) pairs (type 0 last: varargs)."""
        items = [dict(name_off=self._name(n, "parameter", optional=True),
                      type=self._ref(t, f"parameter {n}", void_ok=True)) for n, t in params]
        return self._add("func_proto", 0, self._ref(return_type, "return type", void_ok=True), len(items),
                         items=items)

    def add_func(self, name, proto_id, linkage="static"):
        """FUNC `name` of FUNC_PROTO proto_id; linkage "static", "global" or "extern"."""
        return self._add("func", self._name(name, "func"), self._ref(proto_id, f"func {name}"),
                         vlen=_linkage(linkage))

    def add_var(self, name, type_id, linkage="global"):
        """VAR; linkage "static", "global" (allocated) or "extern"."""
        return self._add("var", self._name(name, "var"), self._ref(type_id, f"var {name}"),
                         tail=dict(linkage=_linkage(linkage)))

    def add_datasec(self, name, size, secinfos):
        """DATASEC (".data", ".bss", ".maps", ...); secinfos: (var_id, offset, size)."""
        items = [dict(type=self._ref(t, f"datasec {name}"), offset=o, size=s) for t, o, s in secinfos]
        return self._add("datasec", self._name(name, "datasec", _SECTION), size, len(items), items=items)

    # ---- construct layouts -----------------------------------------------------

    def _int_type(self, size, encoding):
        key = (size, encoding)
        if key not in self._ints:
            prefix = {0: "u", btf_format.INT_SIGNED: "s", btf_format.INT_BOOL: "bool", btf_format.INT_CHAR: "char"}[encoding]
            name = prefix if encoding in (btf_format.INT_BOOL, btf_format.INT_CHAR) else f"{prefix}{8 * size}"
            self._ints[key] = self.add_int(name, size, encoding)
        return self._ints[key]

    def types_for_layout(self, layout, name):
        """Type id describing a construct layout, named `name`.

        A Struct becomes STRUCT `name` (nested Structs become `name_member`);
        anything else becomes TYPEDEF `name`. Understood: fixed-width ints and
        floats (FormatField, BytesInteger), Bytes, Array, Padding, nested Struct,
        and adapters that keep their subcon's size (Enum, FlagsEnum, Const, ...)."""
        sub = _unwrap(layout)
        if isinstance(sub, construct.Struct):
            return self._struct_for(sub, name)
        return self.add_typedef(name, self._type_for(sub, name))

    def _struct_for(self, layout, name):
        members, offset = [], 0
        for sc in layout.subcons:
            size = _sizeof(sc, f"{name}.{sc.name}")
            sub = _unwrap(sc)
            if not _is_padding(sub):
                if not sc.name:
                    raise BpfError(f"layout {name}: unnamed {type(sub).__name__} member at byte {offset}")
                members.append((sc.name, self._type_for(sub, f"{name}_{sc.name}"), 8 * offset))
            offset += size
        return self.add_struct(name, offset, members)

    def _type_for(self, sub, name):
        if isinstance(sub, construct.Struct):
            return self._struct_for(sub, name)
        if isinstance(sub, construct.FormatField):
            kind, encoding = _FORMATS.get(sub.fmtstr[-1], (None, 0))
            size = struct.calcsize(sub.fmtstr)
            if kind == "float":
                return self.add_float({2: "half", 4: "float", 8: "double"}[size], size)
            if kind == "int":
                return self._int_type(size, encoding)
        elif isinstance(sub, construct.BytesInteger) and isinstance(sub.length, int):
            if sub.length in (1, 2, 4, 8):
                return self._int_type(sub.length, btf_format.INT_SIGNED if sub.signed else 0)
            return self.add_array(self._int_type(1, 0), sub.length)
        elif isinstance(sub, construct.Bytes) and isinstance(sub.length, int):
            return self.add_array(self._int_type(1, 0), sub.length)
        elif isinstance(sub, construct.Array) and isinstance(sub.count, int):
            return self.add_array(self._type_for(_unwrap(sub.subcon), name), sub.count)
        raise BpfError(f"layout {name}: cannot describe {sub!r} in BTF "
                       "(fixed-width ints, floats, Bytes, Array, Padding and Struct only)")

    # ---- output ----------------------------------------------------------------

    def encode(self):
        """The BTF blob: header, types, strings."""
        types = b"".join(self._records)
        return _pack("btf_header", dict(magic=btf_format.MAGIC, version=btf_format.VERSION, flags=0,
                                        hdr_len=btf_format.FORMATS["btf_header"].size, type_off=0,
                                        type_len=len(types), str_off=len(types),
                                        str_len=len(self._strings))) + types + bytes(self._strings)


def map_btf(key_layout, value_layout, key_name="key", value_name="value"):
    """(btf_bytes, key_type_id, value_type_id) describing a map's key and value layouts."""
    builder = BtfBuilder()
    key_id = builder.types_for_layout(key_layout, key_name)
    value_id = builder.types_for_layout(value_layout, value_name)
    return builder.encode(), key_id, value_id


# struct bpf_func_info and struct bpf_line_info (uapi bpf.h): BPF_PROG_LOAD takes arrays of them.
FUNC_INFO = construct.Struct("insn_off" / construct.Int32un, "type_id" / construct.Int32un)
LINE_INFO = construct.Struct("insn_off" / construct.Int32un, "file_name_off" / construct.Int32un,
                             "line_off" / construct.Int32un, "line_col" / construct.Int32un)
# Both are native u32s only, so an array of them is a flat u32 array: one array("I") build for
# hundreds of line records instead of a struct pack per record.
assert all(sc.subcon is construct.Int32un for sc in FUNC_INFO.subcons + LINE_INFO.subcons)
assert array.array("I").itemsize == 4
MAX_LINE = (1 << 22) - 1  # line_col keeps the line in its top 22 bits, the column in the low 10


@dataclass(frozen=True)
class ProgramBtf:
    """What BPF_PROG_LOAD needs besides the code: the BTF blob and the info arrays over it."""

    data: bytes
    func_info: bytes  # packed bpf_func_info records
    func_info_cnt: int
    line_info: bytes  # packed bpf_line_info records
    line_info_cnt: int
    func_info_rec_size = FUNC_INFO.sizeof()
    line_info_rec_size = LINE_INFO.sizeof()


def program_btf(functions, lines=()):
    """ProgramBtf for a program's functions and source lines.

    functions: [(name, slot)], strictly ascending, the main program first at slot 0; each
               becomes a static FUNC `int name(void)` (static functions' arguments are
               not checked against BTF, only the scalar return)
    lines:     [(slot, file_name, line, text)], strictly ascending slots; the verifier wants
               one at every function start. Line numbers past 2**22 - 1 are clamped.
    """
    slots = [slot for _, slot in functions]
    if not slots or slots[0] != 0 or any(a >= b for a, b in zip(slots, slots[1:])):
        raise BpfError(f"program BTF: function slots {slots} must start at 0 and ascend")
    line_slots = [line[0] for line in lines]
    if any(a >= b for a, b in zip(line_slots, line_slots[1:])):
        raise BpfError("program BTF: line_info slots must ascend strictly")
    builder = BtfBuilder()
    proto = builder.add_func_proto(builder.add_int("int", 4, btf_format.INT_SIGNED))
    func_info = []
    for name, slot in functions:
        func_info += (slot, builder.add_func(name, proto))  # FUNC_INFO field order
    string = builder.add_string
    line_info = []
    for slot, file_name, line, text in lines:  # LINE_INFO field order
        line_info += (slot, string(file_name), string(text), min(line, MAX_LINE) << 10)
    return ProgramBtf(builder.encode(), array.array("I", func_info).tobytes(), len(functions),
                      array.array("I", line_info).tobytes(), len(lines))


def load_btf(data):
    """BPF_BTF_LOAD -> fd (the caller closes it).

    On failure, loads again with a log buffer so the SyscallError carries the
    kernel BTF verifier's reason (full text in its .log)."""
    blob = syscall.ffi.from_buffer(bytes(data))
    attr = syscall.new_attr()
    attr.btf = syscall.address(blob)
    attr.btf_size = len(blob)
    try:
        return syscall.bpf(Cmd.BTF_LOAD, attr)
    except NotPermitted:
        raise
    except SyscallError as e:
        first = e.errno
    log = syscall.ffi.new("char[]", LOG_SIZE)
    attr.btf_log_buf = syscall.address(log)
    attr.btf_log_size = LOG_SIZE
    attr.btf_log_level = 1
    try:
        return syscall.bpf(Cmd.BTF_LOAD, attr)
    except SyscallError:
        pass
    text = syscall.ffi.string(log).decode("utf-8", "replace")
    lines = [line for line in text.splitlines() if line.strip()]
    error = syscall_error("BPF_BTF_LOAD", first, " | ".join(lines[-2:]) or "no BTF log")
    error.log = text
    raise error


def _linkage(linkage):
    if linkage not in btf_format.LINKAGE:
        raise BpfError(f"BTF linkage {linkage!r} is not one of {', '.join(btf_format.LINKAGE)}")
    return btf_format.LINKAGE[linkage]


def _unwrap(sc):
    """Strip names and adapters that do not change the wire size."""
    while isinstance(sc, (construct.Renamed, construct.Adapter, construct.Const, construct.Default)):
        sc = sc.subcon
    return sc


def _is_padding(sub):
    return isinstance(sub, construct.Padded) and isinstance(sub.subcon, type(construct.Pass))


def _sizeof(sc, what):
    try:
        return sc.sizeof()
    except construct.SizeofError:
        raise BpfError(f"layout {what}: no fixed size, BTF needs one") from None
