"""The eBPF DSL: programs written as Python statements on a Program, giving Insn values.

    p = Program("count", prog_type="socket_filter")
    p.r6 = p.r1                              # r6 = r1
    p.r0 = p.r6.u32[0]                       # r0 = *(u32 *)(r6 + 0)
    with p.If(p.r0 > 100):
        p.r0 >>= 1
    p.exit()

Registers are attributes of the Program (so `p.r1 += 5` emits an add); their views pick the
instruction (p.w1: 32-bit, p.r1.s: signed, p.r1.u32[4]: memory). Program(cpu="v3") emits only
what kernels before 6.6 take. Each instruction keeps the "file.py:line" that emitted it, for
verifier errors and BTF line info.
"""
import os
import sys

from ..errors import AssemblerError
from . import helpers, isa
from .disasm import disassemble
from .insn import encode, make
from .link import link, resolve

MAX_STACK = 512
CPUS = ("v3", "v4")  # Program(cpu=...): the ISA generations the DSL emits for
S32_MIN, S32_MAX, U32_MAX = -(1 << 31), (1 << 31) - 1, (1 << 32) - 1


# -- source locations ------------------------------------------------------------

_getframe = sys._getframe
_LINES = {}  # (id(code), f_lasti) -> ("file.py:line", code): the code is kept so its id stays its own
_LINES_MAX = 1 << 16


def _source():
    """ "file.py:line" of the user's call: the first frame up whose code is not this module's
    (our frames share our globals). Remembered by the call's bytecode offset: f_lineno would
    scan the line table on every call."""
    f = _getframe(2)  # our caller is ours: f_back would build a frame object only to skip it
    try:
        while f.f_globals is _GLOBALS:
            f = f.f_back
    except AttributeError:  # no frame outside this module
        return None
    hit = _LINES.get((id(f.f_code), f.f_lasti))
    return hit[0] if hit is not None else _remember(f)


def _remember(frame):
    """The "file.py:line" of a frame not seen at this position before."""
    if len(_LINES) >= _LINES_MAX:
        _LINES.clear()
    code = frame.f_code
    where = f"{os.path.basename(code.co_filename)}:{frame.f_lineno}"
    _LINES[(id(code), frame.f_lasti)] = (where, code)
    return where


# -- access types ----------------------------------------------------------------

class Type:
    """A memory access type: u32 is a 4-byte unsigned load, s16 a sign-extending one, be16 a
    2-byte value in network order (big endian): loads and stores swap it to and from host order."""

    __slots__ = ("name", "size", "signed", "suffix", "network")

    def __init__(self, name, size, signed, network=False):
        self.name, self.size, self.signed, self.network = name, size, signed, network
        self.suffix = {1: "b", 2: "h", 4: "w", 8: "dw"}[size]

    def __repr__(self):
        return self.name


u8, u16, u32, u64 = Type("u8", 1, False), Type("u16", 2, False), Type("u32", 4, False), Type("u64", 8, False)
s8, s16, s32, s64 = Type("s8", 1, True), Type("s16", 2, True), Type("s32", 4, True), Type("s64", 8, True)
be16, be32, be64 = Type("be16", 2, False, True), Type("be32", 4, False, True), Type("be64", 8, False, True)
TYPES = {t.name: t for t in (u8, u16, u32, u64, s8, s16, s32, s64, be16, be32, be64)}
_BY_SIZE = {(t.size, t.signed): t for t in TYPES.values() if not t.network}
_NETWORK = {t.size: t for t in (be16, be32, be64)}


def _type(what):
    t = TYPES.get(what) if isinstance(what, str) else what
    if not isinstance(t, Type):
        raise AssemblerError(f"unknown access type {what!r} (one of {', '.join(TYPES)})", _source())
    return t


# -- opcode rows, looked up once (isa.row) ------------------------------------------

Kind, _row = isa.Kind, isa.row
_ALU = {(op.name, bits, src): _row(Kind.ALU, op.name, bits, src)
        for op in isa.ALU_OPS for bits in (64, 32) for src in ("imm", "reg")}
_JMP = {(c.name, bits, src): _row(Kind.JMP, c.name, bits, src)
        for c in isa.JMP_CONDS for bits in (64, 32) for src in ("imm", "reg")}
_LDX = {t: _row(Kind.LDXS if t.signed and t.size < 8 else Kind.LDX, None, 8 * t.size) for t in TYPES.values()}
_TO_NETWORK = {bits: _row(Kind.END, "be", bits) for bits in (16, 32, 64)}  # host -> big endian: a swap or nothing
_ST = {t: _row(Kind.ST, None, 8 * t.size, "imm") for t in TYPES.values()}
_STX = {t: _row(Kind.STX, None, 8 * t.size, "reg") for t in TYPES.values()}
_ATOMIC = {(op.name, bits): _row(Kind.ATOMIC, op.name, bits, "reg") for op in isa.ATOMIC_OPS for bits in (64, 32)}
_NEG = {bits: _row(Kind.NEG, "neg", bits) for bits in (64, 32)}
_END = {(name, bits): _row(kind, name, bits) for kind, name in ((Kind.END, "le"), (Kind.END, "be"), (Kind.BSWAP, "bswap"))
        for bits in (16, 32, 64)}
_MOVSX = {(width, bits): _row(Kind.MOVSX, f"s{width}", bits, "reg") for width, bits in ((8, 64), (16, 64), (32, 64),
                                                                                         (8, 32), (16, 32))}
_JA, _GOTOL, _MAY_GOTO, _EXIT = _row(Kind.JA), _row(Kind.GOTOL, bits=32), _row(Kind.MAY_GOTO), _row(Kind.EXIT)
_CALL, _CALL_LOCAL, _CALL_KFUNC = (_row(Kind.CALL, how) for how in ("helper", "local", "kfunc"))
_LDDW, _LD_MAP_FD, _LD_MAP_VALUE, _LD_FUNC = (_row(Kind.LD_IMM64, name)
                                              for name in ("lddw", "ld_map_fd", "ld_map_value", "ld_func"))

# Signed views turn these operations into their signed rows.
_SIGNED_ALU = {"div": "sdiv", "mod": "smod", "rsh": "arsh"}
_SIGNED_JMP = {"jgt": "jsgt", "jge": "jsge", "jlt": "jslt", "jle": "jsle"}
_INVERSE = {"jeq": "jne", "jne": "jeq", "jgt": "jle", "jle": "jgt", "jge": "jlt", "jlt": "jge",
            "jsgt": "jsle", "jsle": "jsgt", "jsge": "jslt", "jslt": "jsge"}
_COMMUTATIVE = {"add", "mul", "or", "and", "xor"}
# What an ALU name means for a register view of (bits, signed): name -> (imm row, reg row).
_ALU_ROWS = {(bits, signed): {op.name: (_ALU[(_SIGNED_ALU.get(op.name, op.name) if signed else op.name, bits, "imm")],
                                        _ALU[(_SIGNED_ALU.get(op.name, op.name) if signed else op.name, bits, "reg")])
                              for op in isa.ALU_OPS}
             for bits in (64, 32) for signed in (False, True)}
_JMP_ROWS = {bits: {c.name: (_JMP[(c.name, bits, "imm")], _JMP[(c.name, bits, "reg")]) for c in isa.JMP_CONDS}
             for bits in (64, 32)}
_MOV_IMM = {bits: _ALU[("mov", bits, "imm")] for bits in (64, 32)}
_MOV_REG = {bits: _ALU[("mov", bits, "reg")] for bits in (64, 32)}
_ADD_IMM = _ALU[("add", 64, "imm")]
_FP = isa.FRAME_POINTER
_NO_DST = (Kind.ST, Kind.STX, Kind.JMP, Kind.JA, Kind.GOTOL, Kind.MAY_GOTO, Kind.CALL, Kind.CALLX, Kind.EXIT,
           Kind.ATOMIC)  # kinds that write no register named by dst (p.let finds free ones by them)
_STOPS = (Kind.EXIT, Kind.JA, Kind.GOTOL)  # kinds after which the next instruction is not reached by falling through


_HELPERS = {}  # helper name or id -> (id, C name, fixed argument count, variadic)


def _helper_id(name):
    return (_HELPERS.get(name) or _helper(name))[0]


def _helper(name_or_id):
    """Look a helper up in pybpf.helpers (imported on first use) and remember what calls need."""
    h = helpers.lookup(name_or_id)
    variadic = h.signature.endswith("...)")
    _HELPERS[name_or_id] = found = (h.id, h.c_name, h.nargs - variadic, variadic)
    return found


# -- operands ----------------------------------------------------------------------

class _Indexer:
    """`base.u32[off]`: the memory at base + off, read by assigning it, written by assigning to it."""

    __slots__ = ("base", "type")

    def __init__(self, base, type):
        self.base, self.type = base, type

    def __getitem__(self, off):
        base = self.base
        return Mem(base._p, base._base_reg, base._base_off + off, self.type)

    def __setitem__(self, off, value):
        base = self.base
        if value is not _DONE:
            base._p._store(Mem(base._p, base._base_reg, base._base_off + off, self.type), value)


class _Addressable:
    """Something memory can be addressed from: a register, a stack slot, a typed pointer."""

    __slots__ = ()
    u8 = property(lambda self: _Indexer(self, u8))
    u16 = property(lambda self: _Indexer(self, u16))
    u32 = property(lambda self: _Indexer(self, u32))
    u64 = property(lambda self: _Indexer(self, u64))
    s8 = property(lambda self: _Indexer(self, s8))
    s16 = property(lambda self: _Indexer(self, s16))
    s32 = property(lambda self: _Indexer(self, s32))
    s64 = property(lambda self: _Indexer(self, s64))
    be16 = property(lambda self: _Indexer(self, be16), doc="network-order u16: `p.r5 = p.r2.be16[12]`")
    be32 = property(lambda self: _Indexer(self, be32))
    be64 = property(lambda self: _Indexer(self, be64))

    def mem(self, off, type):
        """The memory at this + off as `type` (a Type or its name: "u32")."""
        return Mem(self._p, self._base_reg, self._base_off + off, _type(type))

    def field(self, name):
        """The memory of field `name` ("a.b" for nested) of this object's layout, as the int of its
        size (a 4-byte array too)."""
        if not isinstance(self, _View):
            raise AssemblerError(f"{self!r} has no layout; use p.ptr(reg, layout) or p.stack.alloc(layout)",
                                 _source())
        path, info = self._member(name)
        return Mem(self._p, self._base_reg, self._base_off + self._rel(info), _scalar_type(info, path))


def _binary(name):
    def op(self, other):
        return BinExpr(self, name, other)
    return op


class _Operand:
    """What builds expressions: registers, memory (its value: `p.r0 = ev.pid + 1` loads, then
    adds) and expressions themselves."""

    __slots__ = ()
    __add__ = __radd__ = _binary("add")
    __sub__ = _binary("sub")
    __mul__ = __rmul__ = _binary("mul")
    __truediv__ = __floordiv__ = _binary("div")
    __mod__ = _binary("mod")
    __or__ = __ror__ = _binary("or")
    __and__ = __rand__ = _binary("and")
    __xor__ = __rxor__ = _binary("xor")
    __lshift__ = _binary("lsh")
    __rshift__ = _binary("rsh")


def _inplace(name):
    def op(self, other):
        self._p._alu(name, self, other)
        return self._p._mark_done(self)
    return op


def _compare(name):
    def op(self, other):
        return Cond(self, _SIGNED_JMP.get(name, name) if self.signed else name, other)
    return op


class Reg(_Addressable, _Operand):
    """A register view: number, width (64 or 32) and signedness pick the instructions."""

    # u8 .. s64 as slots shadow _Addressable's properties: a register's indexers are made once
    __slots__ = ("_p", "n", "bits", "signed", "_alu_rows", "u8", "u16", "u32", "u64", "s8", "s16", "s32", "s64")

    def __init__(self, p, n, bits, signed):
        self._p, self.n, self.bits, self.signed = p, n, bits, signed
        self._alu_rows = _ALU_ROWS[(bits, signed)]
        self.u8, self.u16, self.u32, self.u64 = (_Indexer(self, t) for t in (u8, u16, u32, u64))
        self.s8, self.s16, self.s32, self.s64 = (_Indexer(self, t) for t in (s8, s16, s32, s64))

    @property
    def _base_reg(self):
        return self

    _base_off = 0

    def __repr__(self):
        return f"{'w' if self.bits == 32 else 'r'}{self.n}{'.s' if self.signed else ''}"

    def _view(self, bits, signed):
        return self._p._views[self.n * 4 + (bits == 32) + 2 * signed]

    def set(self, value):
        """`reg = value` for a register held in a variable (p.let's): `t.set(p.r0 + 1)`."""
        self._p._assign(self, value)

    w = property(lambda self: self._view(32, self.signed),
                 lambda self, value: self._p._assign(self._view(32, self.signed), value),
                 doc="the 32-bit view (ALU32, JMP32)")
    s = property(lambda self: self._view(self.bits, True),
                 lambda self, value: self._p._assign(self._view(self.bits, True), value),
                 doc="the signed view (s>, s/, s%, s>>)")

    __iadd__ = _inplace("add")
    __isub__ = _inplace("sub")
    __imul__ = _inplace("mul")
    __itruediv__ = __ifloordiv__ = _inplace("div")
    __imod__ = _inplace("mod")
    __ior__ = _inplace("or")
    __iand__ = _inplace("and")
    __ixor__ = _inplace("xor")
    __ilshift__ = _inplace("lsh")
    __irshift__ = _inplace("rsh")

    __eq__ = _compare("jeq")
    __ne__ = _compare("jne")
    __gt__ = _compare("jgt")
    __ge__ = _compare("jge")
    __lt__ = _compare("jlt")
    __le__ = _compare("jle")
    __hash__ = object.__hash__

    def __neg__(self):
        return BinExpr(self, "neg", None)

    def __bool__(self):
        raise AssemblerError(f"{self!r} has no value while assembling; use p.If({self!r} ...) for a runtime test",
                             _source())


class Mem(_Operand):
    """`*(type *)(base + off)`: a value in memory. Assign it to a register to load,
    assign to it to store; `+=`, `|=`, `&=`, `^=` with a register are atomic."""

    __slots__ = ("_p", "base", "off", "type")

    def __init__(self, p, base, off, type):
        self._p, self.base, self.off, self.type = p, base, off, type

    def __repr__(self):
        sign = "+" if self.off >= 0 else "-"
        return f"*({self.type.name} *)(r{self.base.n} {sign} {abs(self.off)})"

    def set(self, value):
        """Store value here (for memory held in a variable: `counter.set(p.r2)`)."""
        self._p._store(self, value)

    def _atomic(name):
        def op(self, src):
            self._p._atomic(name, self, src)
            return _DONE
        return op

    __iadd__ = _atomic("add")
    __ior__ = _atomic("or")
    __iand__ = _atomic("and")
    __ixor__ = _atomic("xor")
    del _atomic



_DONE = object()  # what an atomic `mem += reg` leaves behind: nothing left to store
_LOADED = object()  # a call argument already in its register


class BinExpr(_Operand):
    """`reg <op> operand`, computed into the register it is assigned to; `reg & mask` is also a jset test."""

    __slots__ = ("left", "op", "right")

    def __init__(self, left, op, right):
        self.left, self.op, self.right = left, op, right

    # Expressions nest (the operators are _Operand's): `p.r0 = (p.r1 + p.r2) * 2` computes into
    # r0, borrowing a free callee-saved register (p.let) only where a right operand is itself an
    # expression.
    def __neg__(self):
        return BinExpr(self, "neg", None)

    def __repr__(self):
        return f"({self.left!r} {self.op} {self.right!r})" if self.op != "neg" else f"-{self.left!r}"

    def __invert__(self):
        if self.op != "and":
            raise AssemblerError(f"~ negates a test (p.r1 & mask, p.r1 > 5), not {self.op}", _source())
        return Cond(self.left, "jset", self.right, negated=True)

    def __bool__(self):
        raise AssemblerError("an expression has no value while assembling; assign it to a register", _source())


class Cond:
    """A runtime test (`p.r1 > 5`), used by p.If, p.While and p.jump_if. `~cond` is its negation."""

    __slots__ = ("reg", "name", "other", "negated")

    def __init__(self, reg, name, other, negated=False):
        self.reg, self.name, self.other, self.negated = reg, name, other, negated

    def __invert__(self):
        inverse = _INVERSE.get(self.name)
        if inverse is None:  # jset has no inverse opcode
            return Cond(self.reg, self.name, self.other, not self.negated)
        return Cond(self.reg, inverse, self.other)

    def __bool__(self):
        raise AssemblerError("a comparison of registers has no value while assembling; use p.If(...)",
                             _source())

    def __repr__(self):
        return f"{'!' if self.negated else ''}({self.reg!r} {self.name} {self.other!r})"


class FuncRef:
    """A subprogram by name: an operand of call_local, ld_func, and helper calls taking callbacks."""

    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return f"FuncRef({self.name!r})"


# -- layouts -----------------------------------------------------------------------
#
# A layout is a construct Struct, an object with .field(path) (pybpf.btf.Struct), or a callable
# layout(path). Paths name nested fields and array elements: "addr.port", "events.3" or "events[3]".

class FieldInfo:
    """Where a field lives: offset and size in bytes, signedness, whether it is a scalar (an int
    or a pointer: a load moves it), the layout of what it is (a struct or array: a view of it), and
    for a pointer, the layout of what it points at (pointer chains)."""

    __slots__ = ("offset", "size", "signed", "scalar", "layout", "pointee", "bitfield", "network")

    def __init__(self, offset, size, signed=False, scalar=True, layout=None, pointee=None, bitfield=False,
                 network=False):
        self.offset, self.size, self.signed, self.scalar = offset, size, signed, scalar
        self.layout, self.pointee, self.bitfield, self.network = layout, pointee, bitfield, network

    def __repr__(self):
        return f"FieldInfo(offset={self.offset}, size={self.size}, signed={self.signed}, scalar={self.scalar})"


_FIELDS = {}  # (id(layout), path) -> (layout, FieldInfo); the layout is kept so its id stays unique


def _own(obj, name):
    """obj's own attribute: construct's wrappers answer their subcon's attributes as theirs."""
    return getattr(obj, "__dict__", {}).get(name)


def _unwrap(sub):
    while _own(sub, "subcons") is None and _own(sub, "count") is None and _own(sub, "subcon") is not None:
        sub = sub.subcon  # Renamed, Aligned, Transformed, ... around a Struct or an Array
    return sub


def _construct_field(layout, path):
    offset, sub, walked = 0, layout, []
    for part in path.replace("[", ".").replace("]", "").split("."):
        inner = _unwrap(sub)
        if _own(inner, "subcons") is not None:
            for member in inner.subcons:
                if member.name == part:
                    sub = member
                    break
                offset += member.sizeof()
            else:
                raise AssemblerError(f"layout has no field {'.'.join(walked + [part])!r}")
        elif _own(inner, "count") is not None and part.isdigit():
            if int(part) >= inner.count:
                raise AssemblerError(f"{'.'.join(walked)}[{part}]: the array has {inner.count} elements")
            sub = inner.subcon
            offset += int(part) * sub.sizeof()
        else:
            raise AssemblerError(f"{path!r}: {'.'.join(walked) or 'the layout'} has no member {part!r} "
                                 "(a struct has fields, an array numbered elements)")
        walked.append(part)
    leaf = sub
    while _own(leaf, "fmtstr") is None and _own(leaf, "signed") is None and _own(leaf, "subcon") is not None \
            and _own(leaf, "count") is None:
        leaf = leaf.subcon
    fmt = getattr(leaf, "fmtstr", "")
    scalar = bool(fmt) or hasattr(leaf, "signed")
    signed = bool(getattr(leaf, "signed", False)) or (fmt[-1:] in "bhilq" and fmt != "")
    size = sub.sizeof()
    network = fmt[:1] == ">" and size > 1  # Int16ub & co: a field kept in network order
    return FieldInfo(offset, size, signed, scalar, None if scalar else sub, network=network)


def field_info(layout, path):
    """The FieldInfo of `path` in `layout` (see the section comment for both)."""
    key = (id(layout), path)
    hit = _FIELDS.get(key)
    if hit is not None:
        return hit[1]
    if hasattr(layout, "subcons") or hasattr(layout, "subcon"):
        info = _construct_field(layout, path)
    else:
        answer = layout.field(path) if hasattr(layout, "field") else layout(path)
        if isinstance(answer, FieldInfo):
            info = answer
        elif hasattr(answer, "byte_offset"):  # a pybpf.btf.Field
            info = FieldInfo(answer.byte_offset, answer.size, bitfield=answer.is_bitfield)
        else:
            info = FieldInfo(*(tuple(answer) + (False,))[:3])
    _FIELDS[key] = (layout, info)
    return info


def _scalar_type(info, name):
    if info.bitfield:
        raise AssemblerError(f"field {name!r} is a bitfield: load its storage and mask it", _source())
    type = _NETWORK.get(info.size) if info.network else _BY_SIZE.get((info.size, info.signed))
    if type is None:
        raise AssemblerError(f"field {name!r} is {info.size} bytes; a load or store moves 1, 2, 4 or 8"
                             + ("" if info.scalar else f": take its address (.addr({name!r})) or name a member"),
                             _source())
    return type


def field_of(layout, name):
    """(offset, Type) of field `name` in `layout`: a construct Struct, an object with
    `.field(name)` or a callable `layout(name)` (answering a pybpf.btf.Field, a FieldInfo,
    an (offset, size) or (offset, size, signed))."""
    try:
        info = field_info(layout, name)
    except AssemblerError as err:
        raise AssemblerError(err.message, err.where or _source()) from None
    return info.offset, _scalar_type(info, name)


def _sizeof(layout):
    return layout if isinstance(layout, int) else layout.sizeof()


def _is_set(obj, slot):
    try:
        object.__getattribute__(obj, slot)
    except AttributeError:
        return False
    return True


class _View(_Addressable):
    """Memory with a layout at base + offset: its fields by name (`v.pid`, `v["pid"]`), read by
    assigning them to a register, written by assigning to them. Fields that are structs or arrays
    are views themselves (`v.addr.port`, `v.comm[3]`); `v.addr("comm")` is a field's address."""

    __slots__ = ()
    _OWN = frozenset()  # attribute names that are the object's own, not fields

    def _member(self, name):
        layout = self.layout
        if layout is None:
            raise AssemblerError(f"{self!r} has no layout, so no field {name!r}; use p.ptr(reg, layout) "
                                 "or p.stack.alloc(layout)", _source())
        path = f"{self._path}.{name}" if self._path else str(name)
        try:
            info = field_info(layout, path)
        except AssemblerError as err:
            raise AssemblerError(err.message, err.where or _source()) from None
        except Exception as err:  # a BTF or user layout's own refusal
            raise AssemblerError(f"field {path!r}: {err}", _source()) from None
        return path, info

    def _get(self, name):
        path, info = self._member(name)
        if info.pointee is not None and getattr(self.layout, "chains", False):  # a context's kernel pointer
            return KernelRef(self._p, self._base_reg, info.pointee, ((self._base_off + self._rel(info), "direct"),),
                             trusted=bool(self._p.tp_btf))
        if info.scalar:
            return Mem(self._p, self._base_reg, self._base_off + self._rel(info), _scalar_type(info, path))
        return self._sub(path, info)

    def _put(self, name, value):
        if value is _DONE:  # `v.count += p.r1` stored atomically already
            return
        path, info = self._member(name)
        if not info.scalar:
            raise AssemblerError(f"field {path!r} is {info.size} bytes of struct or array: assign its "
                                 "members, or pass its address (.addr(...)) to a helper", _source())
        self._p._store(Mem(self._p, self._base_reg, self._base_off + self._rel(info), _scalar_type(info, path)),
                       value)

    def __getattr__(self, name):
        if name[:1] == "_":
            raise AttributeError(name)
        return self._get(name)

    def __setattr__(self, name, value):
        if name not in self._OWN:
            self._put(name, value)
        elif name[:1] == "_" or not _is_set(self, name):  # (set once, in __init__)
            object.__setattr__(self, name, value)
        else:  # `slot.size = p.r7` must not quietly replace the view's own attribute
            raise AssemblerError(f"{name!r} is the view's own attribute, not a field: write a field of that "
                                 f"name as v[{name!r}] = ...", _source())

    def __getitem__(self, name):
        return self._get(str(name))

    def __setitem__(self, name, value):
        self._put(str(name), value)

    def offsetof(self, name):
        """Offset of field `name` from the start of this view's memory."""
        return self._rel(self._member(name)[1])

    def _rel(self, info):
        """A field's offset from this view's start (field offsets count from the layout's)."""
        return info.offset - (field_info(self.layout, self._path).offset if self._path else 0)

    def _misuse(self, *_):
        raise AssemblerError(f"{self!r} is memory, not a number: name a field (v.count), an address "
                             "(v.addr('comm')) or an access (v.u64[8])", _source())

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __or__ = __and__ = _misuse
    __lshift__ = __rshift__ = __truediv__ = __floordiv__ = __mod__ = __xor__ = _misuse
    __lt__ = __le__ = __gt__ = __ge__ = _misuse
    __hash__ = object.__hash__


class Ptr(_View):
    """A register that points at memory with a known layout: `ev = p.ptr(p.r6, Event)`, then
    `ev.pid = p.r0`, `p.r1 = ev.addr("comm")`, `ev.field("sport")`."""

    __slots__ = ("_p", "_base_reg", "_base_off", "layout", "_path")
    _OWN = frozenset(__slots__)

    def __init__(self, p, reg, layout, off=0, path=""):
        self._p, self._base_reg, self.layout, self._base_off, self._path = p, reg, layout, off, path

    def __repr__(self):
        return f"Ptr({self._base_reg!r}{f', {self._path}' if self._path else ''})"

    def _sub(self, path, info):
        return Ptr(self._p, self._base_reg, self.layout, self._base_off + self._rel(info), path)

    def addr(self, name=None):
        """The address of field `name` (of this view without one): assign it to a register."""
        off = self._base_off + (self._rel(self._member(name)[1]) if name is not None else 0)
        return BinExpr(self._base_reg, "add", off) if off else self._base_reg


class StackSlot(_View):
    """Bytes on the stack at r10 + offset. Assign it to a register for its address; with a layout,
    its fields by name (`val = p.stack.alloc(Value); val.count = 1`)."""

    __slots__ = ("_p", "_base_reg", "_base_off", "size", "layout", "_path")
    _OWN = frozenset(__slots__)

    def __init__(self, p, offset, size, layout, path=""):
        self._p, self._base_reg, self._base_off = p, p._views[40], offset
        self.size, self.layout, self._path = size, layout, path

    @property
    def offset(self):
        return self._base_off

    def __repr__(self):
        return f"StackSlot(r10 {self._base_off}, {self.size} bytes)"

    def _sub(self, path, info):
        # a struct or array inside the slot is a slot of its own: its address is r10 + its offset
        return StackSlot(self._p, self._base_off + self._rel(info), info.size, self.layout, path)

    def addr(self, name=None):
        """The stack slot of field `name`: assign it to a register for its address."""
        if name is None:
            return self
        return self._sub(*self._member(name))

    def cast(self, layout):
        """The same bytes seen through another layout (scratch space reused for another record)."""
        if _sizeof(layout) > self.size:
            raise AssemblerError(f"{self!r} is too small for a {_sizeof(layout)}-byte layout", _source())
        return StackSlot(self._p, self._base_off, self.size, layout)

    def zero(self):
        """Store zeros over the whole slot (the verifier wants stack bytes written before they are read)."""
        p, off, end = self._p, self._base_off, self._base_off + self.size
        for t in (u64, u32, u16, u8):
            while end - off >= t.size and off % t.size == 0:  # widest aligned stores first
                p._store(Mem(p, self._base_reg, off, t), 0)
                off += t.size


class Stack:
    """The function's stack frame: `p.stack.alloc(16)` or `p.stack.alloc(layout)`."""

    def __init__(self, p):
        self._p = p
        self.used = 0

    def alloc(self, size_or_layout, align=8):
        """A new StackSlot of `size_or_layout` bytes (an int or a construct layout)."""
        if not isinstance(size_or_layout, int) and isinstance(size_or_layout, str):
            raise AssemblerError(f"stack.alloc takes a size or a layout, not {size_or_layout!r}", _source())
        size = _sizeof(size_or_layout)
        if size <= 0 or align not in (1, 2, 4, 8):
            raise AssemblerError(f"stack slot of {size} bytes aligned to {align}: size must be positive, "
                                 "align 1, 2, 4 or 8", _source())
        used = -(-(self.used + size) // align) * align
        if used > MAX_STACK:
            raise AssemblerError(f"stack frame would be {used} bytes; BPF allows {MAX_STACK}", _source())
        self.used = used
        return StackSlot(self._p, -used, size, None if isinstance(size_or_layout, int) else size_or_layout)


class KernelRef:
    """A chain through kernel pointers, `task.real_parent.tgid`: assign it to a register and each
    pointer on the way is loaded, with plain loads where the verifier trusts the pointers (tp_btf,
    iterators, a context's own fields) and bpf_probe_read_kernel through a stack scratch otherwise.
    A struct or array at the end is its address (for p.read_kernel_str and helpers)."""

    __slots__ = ("_p", "base", "steps", "layout", "path", "trusted")

    def __init__(self, p, base, layout, steps=(), path="", trusted=False):
        self._p, self.base, self.layout, self.steps, self.path, self.trusted = p, base, layout, steps, path, trusted

    def __repr__(self):
        name = getattr(self.layout, "name", "?")
        return f"KernelRef({self.base!r}{' -> ...' * len(self.steps)} {name}{'.' + self.path if self.path else ''})"

    def _info(self):
        return field_info(self.layout, self.path) if self.path else None

    def __getattr__(self, name):
        if name[:1] == "_":
            raise AttributeError(name)
        return self[name]

    def __getitem__(self, name):
        info = self._info()
        if info is not None and info.scalar and info.pointee is None:
            raise AssemblerError(f"{self!r} is a {info.size}-byte value, not a struct: no field {name!r}", _source())
        if info is not None and info.pointee is not None:  # through the pointer this chain ends at
            return KernelRef(self._p, self.base, info.pointee, self.steps + ((info.offset, self._how()),),
                             "", self.trusted)[name]
        path = f"{self.path}.{name}" if self.path else str(name)
        try:
            field_info(self.layout, path)
        except AssemblerError as err:
            raise AssemblerError(err.message, err.where or _source()) from None
        except Exception as err:  # BTF's own refusal: no such member
            raise AssemblerError(f"{getattr(self.layout, 'name', 'struct')}.{path}: {err}", _source()) from None
        return KernelRef(self._p, self.base, self.layout, self.steps, path, self.trusted)

    def _how(self):
        return "direct" if self.trusted else "probe"

    @property
    def size(self):
        """Bytes of what the chain ends at (a field, or the whole struct a pointer points at)."""
        info = self._info()
        return self.layout.sizeof() if info is None else info.size

    def __setattr__(self, name, value):
        if name in KernelRef.__slots__:
            object.__setattr__(self, name, value)
        else:
            raise AssemblerError(f"{self!r}: kernel memory is read-only to BPF programs", _source())

    def _misuse(self, *_):
        raise AssemblerError(f"{self!r} is kernel memory, not a number: assign it to a register first",
                             _source())

    __add__ = __radd__ = __sub__ = __mul__ = __or__ = __and__ = __lt__ = __gt__ = _misuse
    __hash__ = object.__hash__


# -- blocks ------------------------------------------------------------------------

class _Block:
    """A `with` block; the program keeps a stack of the open ones."""

    def __init__(self, p, source):
        self.p, self.source = p, source

    def __enter__(self):
        p = self.p
        p._blocks.append(self)
        p._at = self.source  # what a block emits is written on its `with` line
        try:
            self.enter()
        finally:
            p._at = None
        return self

    def __exit__(self, exc_type, exc, tb):
        blocks = self.p._blocks
        if exc_type is not None:  # the user's exception matters more than our bookkeeping
            if self in blocks:
                blocks.remove(self)
            return False
        if not blocks or blocks[-1] is not self:
            raise AssemblerError(f"{type(self).__name__.lstrip('_')} block closed out of order", self.source)
        blocks.pop()
        self.p._at = self.source
        try:
            self.leave()
        finally:
            self.p._at = None
        return False


class _If(_Block):
    def __init__(self, p, cond, source):
        self.p, self.source = p, source
        self.cond = p._test(cond)
        self.else_label = p._new_label("else")
        self.end_label = None

    def enter(self):
        self.p._jump(~self.cond, self.else_label)

    def leave(self):
        p = self.p
        p._pending.append(self.else_label)
        if self.end_label:
            p._pending.append(self.end_label)
        p._after_if = (self, len(p._code))


class _Else(_Block):
    """Else/Elif continue the If (or Elif) that closed right before them."""

    def __init__(self, p, cond, source):
        self.p, self.source = p, source
        self.cond = None if cond is None else p._test(cond)

    def enter(self):
        p = self.p
        prev, mark = p._after_if or (None, -1)
        p._after_if = None
        if prev is None or mark != len(p._code) or p._pending[-1:] != [prev.end_label or prev.else_label]:
            raise AssemblerError(f"{type(self).__name__.lstrip('_')} without an If block right before it",
                                 self.source)
        del p._pending[-2 if prev.end_label else -1:]
        self.end_label = prev.end_label or p._new_label("endif")
        # Skip the jump over the else branch when nothing falls through to it:
        # the verifier rejects unreachable instructions. Labels still pending
        # (an inner If's exit) are jump targets, so they need it.
        last = p._code[-1] if p._code else None
        if p._pending or last is None or last.op.kind not in _STOPS:
            p._emit(_JA, ref=self.end_label)
        p._pending.append(prev.else_label)
        if self.cond is not None:
            self.else_label = p._new_label("else")
            p._jump(~self.cond, self.else_label)

    def leave(self):
        p = self.p
        if self.cond is None:
            p._pending.append(self.end_label)
            return
        p._pending += (self.else_label, self.end_label)
        p._after_if = (self, len(p._code))


class _Elif(_Else):
    pass


class _Loop(_Block):
    def __init__(self, p, source):
        self.p, self.source = p, source
        self.top = p._new_label("loop")
        self.next = self.top  # where Continue goes
        self.end = p._new_label("endloop")


class _While(_Loop):
    def __init__(self, p, cond, source):
        super().__init__(p, source)
        self.cond = p._test(cond)

    def enter(self):
        self.p._place(self.top)
        self.p._jump(~self.cond, self.end)

    def leave(self):
        self.p._emit(_JA, ref=self.top)
        self.p._place(self.end)


class _For(_Loop):
    def __init__(self, p, reg, start, stop, step, source):
        super().__init__(p, source)
        if not isinstance(reg, Reg):
            raise AssemblerError(f"For counts in a register, not {reg!r}", source)
        if not isinstance(step, int) or step == 0:
            raise AssemblerError(f"For step must be a non-zero int, not {step!r}", source)
        self.reg, self.start, self.stop, self.step = reg, start, stop, step
        self.next = p._new_label("next")

    def enter(self):
        p, reg = self.p, self.reg
        p._assign(reg, self.start)
        p._pending.append(self.top)
        p._jump(reg >= self.stop if self.step > 0 else reg <= self.stop, self.end)

    def leave(self):
        p = self.p
        p._pending.append(self.next)
        p._alu("add", self.reg, self.step)
        p._emit(_JA, ref=self.top)
        p._pending.append(self.end)


class _Function(_Block):
    def __init__(self, p, name, source):
        super().__init__(p, source)
        self.name = name

    def enter(self):
        p = self.p
        if len(p._blocks) != 1:
            raise AssemblerError(f"function {self.name!r} must be defined outside other blocks", self.source)
        if self.name in p._functions:
            raise AssemblerError(f"function {self.name!r} defined twice", self.source)
        self.saved = (p._code, p._pending, p.stack, p._after_if, p._pc, p._here, p._refs)
        p._code, p._pending, p.stack, p._after_if, p._pc, p._here, p._refs = [], [], Stack(p), None, 0, {}, []
        p._functions[self.name] = p._code
        p.label(self.name)

    def leave(self):
        p = self.p
        code = p._code
        if p._pending:
            raise AssemblerError(f"function {self.name!r} ends with label {p._pending[-1]!r} on no instruction",
                                 self.source)
        if not code or code[-1].op.kind not in _STOPS:
            raise AssemblerError(f"function {self.name!r} must end with exit (or a jump)", self.source)
        p._function_slots[self.name] = (p._pc, p._here, p._refs)
        p._code, p._pending, p.stack, p._after_if, p._pc, p._here, p._refs = self.saved


class _Let:
    def __init__(self, p, count):
        self.p, self.count = p, count

    def __enter__(self):
        p, free = self.p, self.p._free_registers()
        if len(free) < self.count:
            p._fail(f"no free callee-saved register for {self.count} temporar{'y' if self.count == 1 else 'ies'}: "
                    f"r6-r9 are written by the code or held by p.let ({len(free)} left); split the expression")
        self.taken = free[:self.count]
        p._held.update(self.taken)
        regs = [p._views[n * 4] for n in self.taken]
        return regs[0] if self.count == 1 else regs

    def __exit__(self, *_):
        p = self.p
        p._held.difference_update(self.taken)
        writes, lent = p._writes(), p._lent.setdefault(id(p._code), {})
        for n in self.taken:
            lent[n] = writes.get(n, 0)  # every write so far was the borrower's
        return False


# -- the program ---------------------------------------------------------------------

class _RegAttr:
    """`p.r1` reads a register view; `p.r1 = x` assigns to it."""

    __slots__ = ("index",)

    def __init__(self, index):
        self.index = index

    def __get__(self, p, owner=None):
        return self if p is None else p._views[self.index]

    def __set__(self, p, value):
        p._assign(p._views[self.index], value)


class Program:
    """A program under construction.

    name, prog_type, license, expected_attach_type: optional, for the loader (pybpf.prog).
    tracepoint, raw_tracepoint, tp_btf: the attach target, which types p.ctx (and the program type)
    cpu:    "v4" (default: every instruction), "v3" (what kernels before 6.6 take: see
            the module doc) or "auto" (v4 where the running kernel has it)
    insns:  the unlinked Insn list (main code, then subprograms)
    link(): the Insn list with every label reference resolved
    bytes() / encode(): the bytecode
    maps:   the map objects the code references (ld_map_fd / ld_map_value)
    stack:  the frame: p.stack.alloc(16) or p.stack.alloc(Layout), fields by name
    ctx:    the context's fields by name (p.ctx.data); p.kernel(reg, "task_struct"): pointer chains
    """

    def __init__(self, name="", prog_type=None, license="GPL", cpu="v4", *, tracepoint=None, raw_tracepoint=None,
                 tp_btf=None, expected_attach_type=None):
        targets = [t for t in (tracepoint, raw_tracepoint, tp_btf) if t is not None]
        if len(targets) > 1:
            raise AssemblerError("name one attach target: tracepoint, raw_tracepoint or tp_btf", _source())
        # The attach target types the context (p.ctx) and, unless given, the program type.
        self.tracepoint, self.raw_tracepoint, self.tp_btf = tracepoint, raw_tracepoint, tp_btf
        if prog_type is None and targets:
            prog_type = "tracepoint" if tracepoint else "raw_tracepoint" if raw_tracepoint else "tracing"
        self.expected_attach_type = "trace_raw_tp" if tp_btf else expected_attach_type
        self._ctx_layout = None
        self.name, self.prog_type, self.license = name, prog_type, license
        if cpu == "auto":
            from .. import features

            cpu = "v4" if features.has("isa.v4") else "v3"
        if cpu not in CPUS:
            raise AssemblerError(f"cpu {cpu!r}: expected one of {', '.join(CPUS)} or auto", _source())
        self.cpu = cpu
        self._v3 = cpu == "v3"  # no cpu v4 instructions: lowered, or refused in _emit
        self._views = [Reg(self, n, bits, signed)
                       for n in range(isa.MAX_REG + 1) for signed in (False, True) for bits in (64, 32)]
        self._code = []  # the instructions of the function being written
        self._main = self._code
        self._functions = {}  # name -> its instructions, placed after the main code
        # Slots are counted as instructions are emitted, so linking need not scan for labels:
        self._pc = 0  # slots emitted in the function being written
        self._here = {}  # its labels -> slot from its start
        self._refs = []  # (index, slot) of its instructions that reference a label
        self._function_slots = {}  # name -> (its size in slots, its labels, its refs)
        self._pending = []  # labels waiting for the next instruction
        self._labels = set()
        self._blocks = []
        self._after_if = None  # (If/Elif block, code length) while an Else may still follow
        self._done_view, self._done_at = None, -1  # the in-place op `p.r1 += 1` just emitted
        self._serial = 0
        self._at = None  # the source of a statement that emits several instructions, found once
        self.stack = Stack(self)
        self._held = set()  # registers p.let lent out
        self._lent = {}  # id(function code) -> {register: its writes when last given back}

    # -- emission ---------------------------------------------------------------
    def _emit(self, op, dst=0, src=0, off=0, imm=0, ref=None):
        if self._v3 and op.cpu_v4:
            self._fail(f"{op.name} is a cpu v4 instruction (Linux 6.6); this program targets cpu {self.cpu}")
        pending = self._pending
        if pending:
            here, pc = self._here, self._pc
            for name in pending:
                here[name] = pc
            label = pending[0] if len(pending) == 1 else tuple(pending)
            pending.clear()
        else:
            label = None
        if ref is not None and ref.__class__ is str and op.target:
            self._refs.append((len(self._code), self._pc))
        source = self._at
        if source is None:  # _source(), inline: this is the hottest path of the DSL
            f = _getframe(2)  # _emit's caller is ours
            try:
                while f.f_globals is _GLOBALS:
                    f = f.f_back
                hit = _LINES.get((id(f.f_code), f.f_lasti))
                source = hit[0] if hit is not None else _remember(f)
            except AttributeError:  # no frame outside this module
                pass
        insn = make(op, dst, src, off, imm, label, ref, source)
        self._code.append(insn)
        self._pc += op.slots
        return insn

    def _fail(self, message):
        raise AssemblerError(message, _source())

    def _mark_done(self, view):
        self._done_view, self._done_at = view, len(self._code)
        return view

    def _new_label(self, kind):
        self._serial += 1
        return f".{kind}{self._serial}"

    def _place(self, name):
        self._pending.append(name)

    def _imm(self, value, bits, what):
        """An immediate operand, as the signed imm32 a decoder would read back.

        64-bit operations sign-extend imm32, so 2**31.. would not mean itself there."""
        if bits == 64:
            if not S32_MIN <= value <= S32_MAX:
                self._fail(f"{what}: {value:#x} does not fit a sign-extended 32-bit immediate; "
                           "load it into a register first")
        elif not S32_MIN <= value <= U32_MAX:
            self._fail(f"{what}: {value:#x} does not fit 32 bits")
        return value - (1 << 32) if value > S32_MAX else value

    def _dst(self, reg):
        if not isinstance(reg, Reg):
            self._fail(f"destination must be a register, not {reg!r}")
        if reg.n == _FP:
            self._fail("r10 is the read-only frame pointer")
        return reg

    # -- assignment: p.rN = value --------------------------------------------------
    def _assign(self, dst, value):
        if value is dst and self._done_view is dst and self._done_at == len(self._code):
            self._done_view = None  # the tail of `p.r1 += x`: already emitted
            return
        if dst.n == _FP:
            self._dst(dst)
        cls = type(value)
        if cls is int:
            self._mov_imm(dst, value)
            return
        if cls is Ptr:
            value = value.addr()
            cls = type(value)
        if cls is Reg:
            self._emit(_MOV_REG[32 if 32 in (dst.bits, value.bits) else 64], dst.n, value.n)
        elif cls is bool:
            self._mov_imm(dst, int(value))
        elif cls is Mem:
            t = value.type
            if t.signed and self._v3 and t.size < 8:  # ldxs: a plain load, then sign-extend
                self._emit(_LDX[_BY_SIZE[(t.size, False)]], dst.n, value.base.n, value.off)
                self._sign_extend(dst.n, 64, 8 * t.size)
            else:
                self._emit(_LDX[t], dst.n, value.base.n, value.off)
                if t.network:
                    self._emit(_TO_NETWORK[8 * t.size], dst.n)  # network to host is the same swap
        elif cls is BinExpr:
            self._assign_expr(dst, value)
        elif cls is StackSlot:
            self._emit(_MOV_REG[64], dst.n, _FP)
            self._emit(_ADD_IMM, dst.n, 0, 0, value.offset)
        elif cls is KernelRef:
            self._kernel_value(dst, value)
        elif cls is FuncRef:
            self.ld_func(dst, value)
        elif hasattr(value, "fd"):
            self.ld_map(dst, value)
        elif isinstance(value, int):  # IntEnum, IntFlag: pybpf's own constants and the user's
            self._mov_imm(dst, int(value))
        else:
            self._fail(f"cannot assign {value!r} to {dst!r}")

    def _mov_imm(self, dst, value):
        if S32_MIN <= value <= S32_MAX:
            self._emit(_MOV_IMM[dst.bits], dst.n, 0, 0, value)
        elif dst.bits == 32 or value <= U32_MAX and value >= 0:
            self._emit(_MOV_IMM[32], dst.n, 0, 0, self._imm(value, 32, "mov"))
        elif -(1 << 63) <= value < (1 << 64):
            self._emit(_LDDW, dst.n, 0, 0, value)
        else:
            self._fail(f"{value:#x} does not fit 64 bits")

    def _assign_expr(self, dst, expr):
        left, op, right = expr.left, expr.op, expr.right
        if type(left) is not Reg or op != "neg" and type(right) is not Reg and not isinstance(right, int):
            outer, self._at = self._at, self._at or _source()
            try:
                self._assign_tree(dst, expr)
            finally:
                self._at = outer
            return
        if op == "neg":
            if left.n != dst.n:
                self._assign(dst, left)
            self._emit(_NEG[32 if 32 in (dst.bits, left.bits) else 64], dst.n)
            return
        if isinstance(right, Reg) and right.n == dst.n and left.n != dst.n:
            if op not in _COMMUTATIVE:
                self._fail(f"{dst!r} = {left!r} {op} {right!r} would overwrite {right!r} before reading it")
            left, right = right, left
        view = dst._view(32 if 32 in (dst.bits, left.bits) else 64, left.signed or dst.signed)
        if left.n != dst.n:
            self._emit(_MOV_REG[view.bits], dst.n, left.n)
        self._alu(op, view, right)

    def _assign_tree(self, dst, expr):
        """dst = a nested expression: the left side computed into dst, then each operation applied;
        a right side that is itself an expression (or memory) goes through a borrowed register."""
        if type(expr) is not BinExpr:
            if not (type(expr) is Reg and expr.n == dst.n):
                self._assign(dst, expr)
            return
        left, op, right = expr.left, expr.op, expr.right
        if op == "neg":
            self._assign_tree(dst, left)
            self._emit(_NEG[dst.bits], dst.n)
            return
        simple = type(right) is Reg or isinstance(right, int)
        if not simple and op in _COMMUTATIVE and (type(left) is Reg or isinstance(left, int)):
            left, right, simple = right, left, True
        if simple:
            if type(right) is Reg and right.n == dst.n and not (type(left) is Reg and left.n == dst.n):
                if op not in _COMMUTATIVE or type(left) is not Reg and not isinstance(left, int):
                    self._fail(f"{dst!r} = {expr!r} would overwrite {right!r} before reading it")
                left, right = right, left
            self._assign_tree(dst, left)
            self._alu(op, dst, right)
            return
        with self.let() as temp:
            self._assign_tree(temp, right)
            self._assign_tree(dst, left)
            self._alu(op, dst, temp if dst.bits == 64 else temp.w)

    # -- borrowed registers ---------------------------------------------------------------
    def let(self, count=1):
        """`with p.let() as t:` (or `p.let(2) as (a, b)`): callee-saved registers, r9 down to r6,
        that this function's code has not written and no other let holds; they survive calls.
        Fails clearly when none is left; raw registers stay yours."""
        return _Let(self, count)

    def _writes(self):
        """{register: how many instructions of this function write it}."""
        count = {}
        for insn in self._code:
            if insn.op.kind not in _NO_DST:
                count[insn.dst] = count.get(insn.dst, 0) + 1
        return count

    def _free_registers(self):
        """r9..r6 that no one holds and that only borrowers wrote (their values are dead)."""
        writes, lent = self._writes(), self._lent.get(id(self._code), {})
        return [n for n in (9, 8, 7, 6) if n not in self._held and writes.get(n, 0) == lent.get(n, 0)]

    def _alu(self, name, dst, src):
        if type(dst) is not Reg or dst.n == _FP:
            self._dst(dst)
        rows = dst._alu_rows[name]
        if type(src) is Reg:
            self._emit(rows[1], dst.n, src.n)
        elif type(src) is int:
            if not S32_MIN <= src <= S32_MAX:
                src = self._imm(src, dst.bits, rows[0].operation)
            self._emit(rows[0], dst.n, 0, 0, src)
        elif isinstance(src, int):
            self._alu(name, dst, int(src))
        else:
            if dst.signed:
                name = _SIGNED_ALU.get(name, name)
            self._fail(f"{name}: operand must be a register or an int, not {src!r}")

    # -- memory ----------------------------------------------------------------------
    def _store(self, mem, value):
        t = mem.type
        if t.network:
            self._store_network(mem, value)
        elif type(value) is Reg:
            self._emit(_STX[t], mem.base.n, value.n, mem.off)
        elif type(value) is int:
            if t.size == 8:
                self._imm(value, 64, f"store to {mem!r}")
            elif not -(1 << (8 * t.size - 1)) <= value < (1 << (8 * t.size)):
                self._fail(f"{value} does not fit {mem!r}")
            elif value > S32_MAX:
                value -= 1 << 32
            self._emit(_ST[t], mem.base.n, 0, mem.off, value)
        elif isinstance(value, int):
            self._store(mem, int(value))
        else:
            self._fail(f"cannot store {value!r} to {mem!r}: store a register or an int")

    def _store_network(self, mem, value):
        """A store in network order: an int is swapped here; a register is swapped, stored and
        swapped back (keeping only its low mem.type.size bytes)."""
        size, host = mem.type.size, _BY_SIZE[(mem.type.size, False)]
        if isinstance(value, int) and not isinstance(value, bool):
            if not 0 <= value < (1 << (8 * size)):
                self._fail(f"{value} does not fit {mem.type.name}")
            self._store(Mem(self, mem.base, mem.off, host),
                        int.from_bytes(int(value).to_bytes(size, "big"), sys.byteorder))
        elif type(value) is Reg:
            self._emit(_TO_NETWORK[8 * size], self._dst(value).n)
            self._emit(_STX[host], mem.base.n, value.n, mem.off)
            self._emit(_TO_NETWORK[8 * size], value.n)
        else:
            self._fail(f"cannot store {value!r} to {mem!r}: store a register or an int")

    def mem(self, base, off, type):
        """`*(type *)(base + off)`; same as `base.u32[off]` for type u32."""
        return base.mem(off, type)

    def ptr(self, reg, layout):
        """View `reg` as a pointer to `layout`: its fields by name (`ev.pid = p.r0`)."""
        return Ptr(self, reg, layout)

    # -- typed contexts and kernel pointer chains -----------------------------------------------
    @property
    def ctx_layout(self):
        """The layout of this program's context: from the attach target (tracefs for a tracepoint,
        BTF for raw_tracepoint and tp_btf arguments) or the program type (xdp: xdp_md)."""
        if self._ctx_layout is None:
            from .. import kernel_types  # the running kernel's BTF and tracefs, asked only here

            try:
                if self.tracepoint:
                    self._ctx_layout = kernel_types.TracepointRecord(self.tracepoint)
                elif self.raw_tracepoint or self.tp_btf:
                    self._ctx_layout = kernel_types.RawTracepointArgs(self.raw_tracepoint or self.tp_btf)
                else:
                    self._ctx_layout = kernel_types.context(self.prog_type)
            except Exception as err:
                self._fail(f"no typed context: {err}")
        return self._ctx_layout

    @property
    def attach_btf_id(self):
        """The BTF id a tp_btf program names (its btf_trace_<name> typedef); 0 for others."""
        return self.ctx_layout.btf_id if self.tp_btf else 0

    def context(self, reg=None):
        """The context (r1 at the start, or the register you kept it in) with its fields by name:
        `p.context(p.r6).data`. Arguments that point at kernel structs chain
        (`p.ctx.p.real_parent.tgid`)."""
        return Ptr(self, self._views[4] if reg is None else reg, self.ctx_layout)

    ctx = property(context, doc="p.context() on r1: valid until a call or a move overwrites r1")

    def kernel(self, base, struct, trusted=None):
        """A chain from register `base`, a pointer to kernel struct `struct` (its name, or a
        pybpf.kernel_types.BtfStruct): `p.r0 = p.kernel(p.r6, "task_struct").real_parent.tgid`.
        trusted (default: tp_btf programs) reads with plain loads, else via probe_read_kernel."""
        if type(base) is not Reg:
            self._fail(f"a kernel pointer chain starts at a register, not {base!r}")
        if isinstance(struct, str):
            from .. import kernel_types  # the running kernel's BTF, asked only here

            try:
                struct = kernel_types.BtfStruct.named(struct)
            except Exception as err:
                self._fail(str(err))
        return KernelRef(self, base, struct, trusted=bool(self.tp_btf) if trusted is None else trusted)

    def task(self):
        """`bpf_get_current_task()` as a chain from r0: `p.r6 = p.task().real_parent.tgid`."""
        self.call("get_current_task")
        return self.kernel(self._views[0], "task_struct")

    def read_kernel(self, dst, src, size=None):
        """bpf_probe_read_kernel(dst, size, src): src a chain (size: what it ends at) or a register."""
        return self._read("probe_read_kernel", dst, src, size)

    def read_kernel_str(self, dst, src, size=None):
        """bpf_probe_read_kernel_str into stack slot dst (size: the slot's)."""
        return self._read("probe_read_kernel_str", dst, src, size)

    def read_user(self, dst, src, size=None):
        """bpf_probe_read_user(dst, size, src): src a register or a chain to a user pointer."""
        return self._read("probe_read_user", dst, src, size)

    def read_user_str(self, dst, src, size=None):
        """bpf_probe_read_user_str into stack slot dst: `p.read_user_str(name, p.ctx.filename)`."""
        return self._read("probe_read_user_str", dst, src, size)

    def _read(self, helper, dst, src, size):
        if size is None:
            size = src.size if type(src) is KernelRef and "kernel" in helper and not helper.endswith("_str") \
                else getattr(dst, "size", None)
        if size is None:
            self._fail(f"{helper}: give the size (the destination {dst!r} has none)")
        if isinstance(src, Mem) or type(src) is KernelRef:  # the pointer value: load it first
            outer, self._at = self._at, self._at or _source()
            try:
                self._assign(self._views[12], src)
            finally:
                self._at = outer
            src = self._views[12]
        return self.call(helper, dst, size, src)

    def _kernel_value(self, dst, ref):
        """dst = what chain `ref` ends at: each pointer on the way loaded into dst."""
        outer, self._at = self._at, self._at or _source()
        try:
            cur = ref.base
            for off, how in ref.steps:
                self._kernel_load(dst, cur, off, u64, how)
                cur = dst
            info = ref._info()
            if info is not None and (info.scalar or info.pointee is not None):
                self._kernel_load(dst, cur, info.offset, _scalar_type(info, ref.path), ref._how())
            else:  # a struct or array: its address
                off = info.offset if info is not None else 0
                if cur.n != dst.n:
                    self._emit(_MOV_REG[64], dst.n, cur.n)
                if off:
                    self._emit(_ADD_IMM, dst.n, 0, 0, off)
        finally:
            self._at = outer

    def _kernel_load(self, dst, base, off, type, how):
        if how == "direct":
            self._assign(dst, Mem(self, base, off, type))
            return
        scratch = self.stack.__dict__.get("scratch")
        if scratch is None:
            scratch = self.stack.scratch = self.stack.alloc(8)
        if base.n != 3:
            self._emit(_MOV_REG[64], 3, base.n)
        if off:
            self._emit(_ADD_IMM, 3, 0, 0, off)
        self._assign(self._views[4], scratch)
        self._mov_imm(self._views[8], type.size)
        self._emit(_CALL, imm=_helper_id("probe_read_kernel"))
        self._assign(dst, Mem(self, scratch._base_reg, scratch.offset, type))

    def _atomic(self, name, mem, src):
        if type(mem) is not Mem:
            self._fail(f"atomic {name}: the target must be memory (reg.u64[off]), not {mem!r}")
        if type(src) is not Reg:
            self._fail(f"atomic {name}: the operand must be a register, not {src!r}")
        if mem.type.size not in (4, 8) or mem.type.network:
            self._fail(f"atomic {name}: {mem!r} must be 4 or 8 bytes in host order")
        return self._emit(_ATOMIC[(name, mem.type.size * 8)], mem.base.n, src.n, mem.off)

    def atomic_add(self, mem, src, fetch=False):
        """`lock *mem += src`; with fetch, src receives the old value."""
        self._atomic("fetch_add" if fetch else "add", mem, src)

    def atomic_or(self, mem, src, fetch=False):
        self._atomic("fetch_or" if fetch else "or", mem, src)

    def atomic_and(self, mem, src, fetch=False):
        self._atomic("fetch_and" if fetch else "and", mem, src)

    def atomic_xor(self, mem, src, fetch=False):
        self._atomic("fetch_xor" if fetch else "xor", mem, src)

    def xchg(self, mem, src):
        """src = xchg(mem, src)."""
        self._atomic("xchg", mem, src)

    def cmpxchg(self, mem, src):
        """r0 = cmpxchg(mem, r0, src): store src if *mem == r0; r0 gets the old value."""
        self._atomic("cmpxchg", mem, src)

    # -- other ALU ------------------------------------------------------------------------
    def sdiv(self, dst, src):
        self._alu("sdiv", dst, src)

    def smod(self, dst, src):
        self._alu("smod", dst, src)

    def arsh(self, dst, src):
        self._alu("arsh", dst, src)

    def neg(self, dst):
        self._emit(_NEG[self._dst(dst).bits], dst.n)

    def _end(self, name, dst, bits):
        if bits not in (16, 32, 64):
            self._fail(f"{name}: width must be 16, 32 or 64, not {bits}")
        self._emit(_END[(name, bits)], self._dst(dst).n)

    def bswap(self, dst, bits):
        """Unconditional byte swap of the low `bits` (cpu v4; before it, the conversion to the
        byte order this host does not have, which swaps the same way)."""
        if self._v3:
            self._end("be" if sys.byteorder == "little" else "le", dst, bits)
        else:
            self._end("bswap", dst, bits)

    def le(self, dst, bits):
        """To little endian from host order (truncates to `bits`)."""
        self._end("le", dst, bits)

    def be(self, dst, bits):
        """To big endian from host order (truncates to `bits`)."""
        self._end("be", dst, bits)

    def movsx(self, dst, src, bits):
        """dst = (s`bits`) src, sign-extended to dst's width (cpu v4)."""
        self._dst(dst)
        if bits not in ((8, 16, 32) if dst.bits == 64 else (8, 16)):
            self._fail(f"movsx to {dst!r} from {bits} bits is not an instruction")
        if self._v3:  # before cpu v4: move, then sign-extend by shifts
            self._emit(_MOV_REG[dst.bits], dst.n, src.n)
            self._sign_extend(dst.n, dst.bits, bits)
        else:
            self._emit(_MOVSX[(bits, dst.bits)], dst.n, src.n)

    def _sign_extend(self, n, width, bits):
        """Register n (a `width`-bit view) = its low `bits` sign-extended: shift them to the top,
        then arithmetic-shift back."""
        self._emit(_ALU[("lsh", width, "imm")], n, 0, 0, width - bits)
        self._emit(_ALU[("arsh", width, "imm")], n, 0, 0, width - bits)

    # -- registers by number ----------------------------------------------------------
    def reg(self, n, bits=64):
        """Register `n` (0..10) as a view of `bits` (64 or 32)."""
        if type(n) is not int or not 0 <= n <= isa.MAX_REG or bits not in (32, 64):
            self._fail(f"no register r{n} of {bits} bits (r0..r{isa.MAX_REG}, 64 or 32 bits)")
        return self._views[n * 4 + (bits == 32)]

    # -- control flow -----------------------------------------------------------------
    def label(self, name):
        """Name the next instruction."""
        if not isinstance(name, str) or not name or name.startswith("."):
            self._fail(f"bad label {name!r}: a non-empty string not starting with '.' (reserved)")
        if name in self._labels:
            self._fail(f"label {name!r} defined twice")
        self._labels.add(name)
        self._pending.append(name)

    def _test(self, cond):
        cls = type(cond)
        if cls is Cond:
            return cond
        if cls is Reg:
            return cond != 0
        if cls is BinExpr and cond.op == "and":
            return Cond(cond.left, "jset", cond.right)
        self._fail(f"{cond!r} is not a runtime test: compare a register (p.r1 > 5) or mask one (p.r1 & 4)")

    def _jump(self, cond, target):
        reg, other = cond.reg, cond.other
        if cond.negated:  # not jset: jump over an unconditional jump when the bits are set
            skip = self._new_label("skip")
            self._jump(~cond, skip)
            self._emit(_JA, ref=target)
            self._place(skip)
            return
        if type(other) is int:
            if not S32_MIN <= other <= S32_MAX:
                other = self._imm(other, reg.bits, cond.name)
            self._emit(_JMP_ROWS[reg.bits][cond.name][0], reg.n, 0, 0, other, target)
        elif type(other) is Reg:
            if other.bits != reg.bits:
                self._fail(f"compare {reg!r} with {other!r}: both sides need the same width")
            self._emit(_JMP_ROWS[reg.bits][cond.name][1], reg.n, other.n, 0, 0, target)
        elif isinstance(other, int):
            self._jump(Cond(reg, cond.name, int(other)), target)
        else:
            self._fail(f"compare {reg!r} with a register or an int, not {other!r}")

    def jump_if(self, cond, label):
        """if cond goto label."""
        self._jump(self._test(cond), label)

    def goto(self, label, long=False):
        """goto label; long=True uses gotol (32-bit offset, cpu v4)."""
        if long:
            self._emit(_GOTOL, ref=label)
        else:
            self._emit(_JA, ref=label)

    def may_goto(self, label):
        self._emit(_MAY_GOTO, ref=label)

    def If(self, cond):
        """`with p.If(p.r1 > 5):` -- then optionally `with p.Elif(...)`, `with p.Else():`."""
        return _If(self, cond, _source())

    def Elif(self, cond):
        return _Elif(self, cond, _source())

    def Else(self):
        return _Else(self, None, _source())

    def While(self, cond):
        """`with p.While(p.r1 < 10):` -- a loop the verifier must see terminate."""
        return _While(self, cond, _source())

    def For(self, reg, start, stop=None, step=1):
        """`with p.For(p.r6, 100):` counts r6 from 0 (or start) while < stop (> stop for a negative step)."""
        if stop is None:
            start, stop = 0, start
        return _For(self, reg, start, stop, step, _source())

    def _loop(self, what):
        for block in reversed(self._blocks):
            if isinstance(block, _Loop):
                return block
            if isinstance(block, _Function):
                break
        self._fail(f"{what} outside a loop")

    def Break(self):
        self._emit(_JA, ref=self._loop("Break").end)

    def Continue(self):
        self._emit(_JA, ref=self._loop("Continue").next)

    def exit(self, value=None):
        """exit; with a value, set r0 first."""
        if value is not None:
            self._assign(self._views[0], value)
        self._emit(_EXIT)

    # -- calls ---------------------------------------------------------------------------
    def call(self, helper, *args):
        """Call a BPF helper by name or id, loading args into r1..r5; returns r0.

        Arguments are registers, ints, stack slots (their address), maps,
        FuncRefs (callbacks) or memory (loaded)."""
        try:
            helper_id, c_name, nargs, variadic = _HELPERS.get(helper) or _helper(helper)
        except AssemblerError as err:
            self._fail(err.message)
        if not (nargs <= len(args) <= 5 if variadic else len(args) == nargs):
            self._fail(f"{c_name} takes {nargs}{' or more' if variadic else ''} argument"
                       f"{'s' * (nargs != 1)}, got {len(args)}")
        outer = self._at
        if outer is None:
            self._at = _source()
        try:
            self._load_args(c_name, args)
            self._emit(_CALL, imm=helper_id)
        finally:
            self._at = outer
        return self._mark_done(self._views[0])

    def _load_args(self, what, args):
        for arg in args:
            if arg.__class__ is KernelRef:
                args = self._load_chains(what, args)
                break
        for i, arg in enumerate(args, 1):
            if arg is _LOADED:  # a chain, loaded first
                continue
            reads = arg.n if type(arg) is Reg else arg._base_reg.n if type(arg) is Ptr else \
                arg.base.n if type(arg) is Mem else 0
            if 1 <= reads < i and not (type(args[reads - 1]) is Reg and args[reads - 1].n == reads):
                self._fail(f"{what}: argument {i} reads r{reads}, which argument {reads} already overwrote")
            if type(arg) is Reg and arg.n == i:
                continue
            self._assign(self._views[i * 4], arg)

    def _load_chains(self, what, args):
        """Load the chain arguments first (reading through kernel pointers calls helpers, which
        clobber r1-r5); the arguments left to load, chains replaced by _LOADED."""
        chains = [i for i, arg in enumerate(args, 1) if type(arg) is KernelRef]
        for i in chains:
            if args[i - 1].base.n in chains and args[i - 1].base.n < i:
                self._fail(f"{what}: argument {i} reads r{args[i - 1].base.n}, which an earlier argument overwrote")
            self._assign(self._views[i * 4], args[i - 1])
        return [_LOADED if i in chains else arg for i, arg in enumerate(args, 1)]

    def call_local(self, func):
        """bpf-to-bpf call of a subprogram (its name or FuncRef); returns r0."""
        self._emit(_CALL_LOCAL, ref=self._func_name(func))
        return self._mark_done(self._views[0])

    def call_kfunc(self, btf_id, module=0):
        """Call kernel function `btf_id`; module indexes the fd_array of module BTFs (0: vmlinux)."""
        self._emit(_CALL_KFUNC, off=module, imm=btf_id)
        return self._mark_done(self._views[0])

    def bpf_loop(self, count, callback, ctx=0, flags=0):
        """bpf_loop(count, callback, ctx, flags): the callback is a subprogram (u32 index, void *ctx)."""
        return self.call("loop", count, self.fn(callback), ctx, flags)

    def _func_name(self, func):
        name = func.name if isinstance(func, FuncRef) else func
        if not isinstance(name, str):
            self._fail(f"a subprogram is named by a str or FuncRef, not {func!r}")
        return name

    def fn(self, func):
        """A FuncRef to a subprogram (for ld_func and callback arguments)."""
        return FuncRef(self._func_name(func))

    def function(self, name):
        """`with p.function("add"):` writes subprogram `add`; it is placed after the main code."""
        return _Function(self, name, _source())

    def subprogram(self, body=None, *, name=None):
        """Decorator: `@p.subprogram` runs `body()` inside p.function(body.__name__); gives its FuncRef."""
        def define(body):
            with _Function(self, name or body.__name__, _source()):
                body()
            return FuncRef(name or body.__name__)
        return define(body) if body is not None else define

    # -- pseudo loads -----------------------------------------------------------------------
    def ld_map(self, dst, map):
        """dst = the map (ld_map_fd); its fd is patched in by the loader."""
        self._emit(_LD_MAP_FD, self._dst(dst).n, 0, 0, 0, map)

    def ld_map_value(self, dst, map, offset=0):
        """dst = &map value[0] + offset (ld_map_value, array maps)."""
        self._emit(_LD_MAP_VALUE, self._dst(dst).n, 0, 0, (offset & U32_MAX) << 32, map)

    def ld_func(self, dst, func):
        """dst = address of a subprogram (callbacks for bpf_loop, timers, ...)."""
        self._emit(_LD_FUNC, self._dst(dst).n, 0, 0, 0, self._func_name(func))

    # -- results -------------------------------------------------------------------------------
    @property
    def insns(self):
        """Unlinked instructions: the main code, then each subprogram."""
        out = list(self._main)
        for code in self._functions.values():
            out += code
        return out

    @property
    def functions(self):
        """[(name, slot)] of every function, the main program first at slot 0: what BTF func_info
        records describe (the kernel wants them for callbacks such as bpf_loop's)."""
        out, slot = [(self.name or "main", 0)], sum(insn.slots for insn in self._main)
        for name, code in self._functions.items():
            out.append((name, slot))
            slot += sum(insn.slots for insn in code)
        return out

    def _check_closed(self):
        if self._blocks:
            block = self._blocks[-1]
            raise AssemblerError(f"{type(block).__name__.lstrip('_')} block is still open", block.source)
        if self._pending:
            name = self._pending[-1]
            what = "a block ends the program" if name.startswith(".") else f"label {name!r} marks no instruction"
            raise AssemblerError(f"{what}: the program needs an instruction after it (p.exit())",
                                 self._main[-1].source if self._main else None)

    def link(self):
        """Instructions with every label reference resolved (pybpf.link)."""
        self._check_closed()
        if self._code is not self._main or len(self._function_slots) != len(self._functions):
            return link(self.insns)  # a subprogram's body raised before it closed: let link() count
        # Labels and references were placed as the code was emitted: only the references need work.
        bodies = [(self._main, (self._pc, self._here, self._refs))]
        bodies += [(code, self._function_slots[name]) for name, code in self._functions.items()]
        labels, base = {}, 0
        for _, (size, here, _) in bodies:
            for name, pc in here.items():
                labels[name] = base + pc
            base += size
        out = self.insns
        index = base = 0
        for code, (size, _, refs) in bodies:
            for i, pc in refs:
                out[index + i] = resolve(out[index + i], base + pc, labels)
            index, base = index + len(code), base + size
        return out

    def bytes(self):
        """The bytecode of the linked program."""
        return encode(self.link())

    encode = bytes

    @property
    def maps(self):
        """Map objects referenced by the code, in first-use order."""
        seen = {}
        for insn in self.insns:
            if insn.op.kind is Kind.LD_IMM64 and insn.ref is not None and hasattr(insn.ref, "fd"):
                seen.setdefault(id(insn.ref), insn.ref)
        return list(seen.values())

    def __str__(self):
        """Kernel-syntax disassembly of the linked program (pybpf.disasm)."""
        return disassemble(self.link())

    def __repr__(self):
        return f"<Program {self.name or '?'}: {sum(i.slots for i in self.insns)} slots>"


for _n in range(isa.MAX_REG + 1):
    setattr(Program, f"r{_n}", _RegAttr(_n * 4))
    setattr(Program, f"w{_n}", _RegAttr(_n * 4 + 1))
del _n

_GLOBALS = globals()

