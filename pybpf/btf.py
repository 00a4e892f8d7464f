"""BTF: read the kernel's type information (Btf), and write our own (re-exported from
pybpf.btf_build on first use).

Reading is lazy: one pass records where each record starts, then a lookup decodes only the
records it touches, and a name is found with bytes.find() on the string section, not a dict
of every name (tests/perf/bench_btf.py). The reader never imports construct.
"""
import os
import struct
from array import array
from collections import namedtuple

from .btf_format import (FORMATS, INT_BOOL, INT_CHAR, INT_SIGNED, KIND, KINDS, LINKAGE, MAGIC,  # noqa: F401
                         MAX_TYPE_ID, MAX_VLEN, RECORDS, VERSION)
from .errors import BpfError, FeatureUnavailable

VMLINUX_PATH = "/sys/kernel/btf/vmlinux"
# Kinds whose third word is a size; in all the others it is a type id.
SIZED_KINDS = frozenset(("int", "struct", "union", "enum", "datasec", "float", "enum64"))
# Kinds resolve() looks through.
MODIFIER_KINDS = frozenset(("typedef", "const", "volatile", "restrict", "type_tag"))

_FMT = FORMATS
_HEADER = _FMT["btf_header"]
_TYPE_WORDS = _FMT["btf_type"].size // 4
# Record length in 32-bit words: fixed part per kind, plus per vlen item.
_FIXED_WORDS = tuple(_TYPE_WORDS + (_FMT[tail].size // 4 if tail else 0) for _, tail, _ in KINDS)
_ITEM_WORDS = tuple(_FMT[item].size // 4 if item else 0 for _, _, item in KINDS)
_POINTER_SIZE = struct.calcsize("P")


_WRITER = ("BtfBuilder", "map_btf", "load_btf")


def __getattr__(name):
    # The writer and LAYOUTS import construct, which lookups never need.
    if name == "LAYOUTS":
        globals()[name] = _construct_layouts()
        return globals()[name]
    if name in _WRITER:
        from . import btf_build
        globals().update((n, getattr(btf_build, n)) for n in _WRITER)
        return globals()[name]
    raise AttributeError(f"module 'pybpf.btf' has no attribute {name!r}")


def _construct_layouts():
    import construct
    fields = {"B": construct.Int8un, "H": construct.Int16un, "I": construct.Int32un, "i": construct.Int32sn}
    layouts = {}
    for name, record in RECORDS.items():
        layout = construct.Struct(*(field / fields[code] for field, code in record))
        assert layout.sizeof() == _FMT[name].size, name
        layouts[name] = layout
    return layouts


class _StepTable(dict):
    """info word -> record length in words, filled on first sight of each info value."""

    def __missing__(self, info):
        kind = (info >> 24) & 0x1F
        if kind == 0 or kind >= len(KINDS):
            raise BpfError(f"BTF: unknown type kind {kind} (info {info:#010x})")
        words = self[info] = _FIXED_WORDS[kind] + _ITEM_WORDS[kind] * (info & 0xFFFF)
        return words


Member = namedtuple("Member", "name type offset_bits bitfield_size")
Param = namedtuple("Param", "name type")
SecInfo = namedtuple("SecInfo", "type offset size")


class Field(namedtuple("Field", "offset_bits bit_size byte_offset size type")):
    """Where a (possibly nested) member lives in its outermost struct.

    offset_bits  bit offset from the start of the outer struct
    bit_size     width in bits (the bitfield width, or size * 8)
    byte_offset  offset_bits // 8
    size         sizeof(type): for a bitfield, the size of its storage type
    type         the member's Type, as declared (typedefs not resolved)
    """

    __slots__ = ()

    @property
    def is_bitfield(self):
        return self.bit_size != self.size * 8 or self.offset_bits % 8 != 0


class Type:
    """One decoded BTF type. Attributes by kind:

    every kind      id, kind ("struct", ...), name ("" when anonymous), kind_flag, vlen
    sized kinds     size                      (int struct union enum enum64 datasec float)
    others          type: the referenced id   (ptr typedef modifiers func func_proto var decl_tag)
    int             encoding (INT_SIGNED|INT_CHAR|INT_BOOL bits), bit_offset, bits
    array           type (element), index_type, nelems
    struct, union   members: (Member(name, type, offset_bits, bitfield_size), ...)
    enum, enum64    values: {name: value}, signed (the kind_flag)
    func            linkage ("static", "global", "extern")
    func_proto      type (return), params: (Param(name, type), ...)
    var             linkage ("static", "global", "extern")
    datasec         secinfos: (SecInfo(type, offset, size), ...)
    decl_tag        component_idx (-1: the type itself)
    fwd             kind_flag 1: a union, 0: a struct
    """

    def __init__(self, id, kind, name, kind_flag, vlen):
        self.id = id
        self.kind = kind
        self.name = name
        self.kind_flag = kind_flag
        self.vlen = vlen

    def __repr__(self):
        what = f"{self.kind} {self.name}" if self.name else self.kind
        tail = f" size={self.size}" if self.kind in SIZED_KINDS else f" type={getattr(self, 'type', 0)}"
        return f"<Type [{self.id}] {what}{tail}>"

    def __eq__(self, other):
        return isinstance(other, Type) and (self.id, self.kind, self.name) == (other.id, other.kind, other.name)

    def __hash__(self):
        return hash((self.id, self.kind, self.name))


VOID = Type(0, "void", "", 0, 0)
VOID.type = 0


class Btf:
    """A parsed BTF blob; for split BTF (a module's), `base` is the BTF it extends.

    Type ids of a split blob continue after its base's, and its string offsets
    continue after the base's strings, so lookups fall through to the base.
    """

    def __init__(self, data, base=None):
        data = bytes(data)
        if len(data) < _HEADER.size:
            raise BpfError(f"BTF: {len(data)} bytes is shorter than the {_HEADER.size}-byte header")
        magic, version, _flags, hdr_len, type_off, type_len, str_off, str_len = _HEADER.unpack_from(data)
        if magic != MAGIC:
            swapped = magic == ((MAGIC >> 8) | (MAGIC & 0xFF) << 8)
            raise BpfError(f"BTF: bad magic {magic:#06x}"
                           + (" (other byte order, not supported)" if swapped else ""))
        if version != VERSION:
            raise BpfError(f"BTF: version {version} not supported (knows {VERSION})")
        if hdr_len < _HEADER.size:
            raise BpfError(f"BTF: header length {hdr_len} is below {_HEADER.size}")
        self._t0, self._t1 = hdr_len + type_off, hdr_len + type_off + type_len
        self._s0, self._s1 = hdr_len + str_off, hdr_len + str_off + str_len
        if self._t1 > len(data) or self._s1 > len(data):
            raise BpfError(f"BTF: sections end past the {len(data)}-byte blob")
        if type_off % 4 or type_len % 4:
            raise BpfError("BTF: type section is not 4-byte aligned")
        if str_len and data[self._s1 - 1] != 0:
            raise BpfError("BTF: string section does not end with NUL")
        self._data = data
        self.base = base
        self._str_start = base._str_start + base._str_len if base else 0
        self._str_len = str_len
        self._offsets = None    # word index of each record, in id order
        self._name_words = None  # name_off of each record, in id order, as u32 bytes
        self._cache = {}        # id -> Type
        self._named = {}        # name -> ids

    # ---- construction -------------------------------------------------------

    @classmethod
    def from_bytes(cls, data, base=None):
        """Parse a BTF blob (base: the Btf a split blob extends)."""
        return cls(data, base)

    @classmethod
    def vmlinux(cls):
        """The running kernel's BTF, read once per process."""
        global _vmlinux
        if _vmlinux is None:
            _vmlinux = cls(_read_sysfs(VMLINUX_PATH, "vmlinux"))
        return _vmlinux

    @classmethod
    def load_module(cls, name):
        """A loaded module's split BTF, on top of vmlinux's (cached)."""
        if not name or "/" in name or name.startswith("."):
            raise BpfError(f"BTF: bad module name {name!r}")
        btf = _modules.get(name)
        if btf is None:
            vmlinux = cls.vmlinux()
            btf = _modules[name] = cls(_read_sysfs(os.path.join(os.path.dirname(VMLINUX_PATH), name),
                                                   f"module {name}"), base=vmlinux)
        return btf

    # ---- the index ------------------------------------------------------------

    def _index(self):
        """One pass over the type section: where each record starts, and its name offset."""
        if self._offsets is None:
            words = memoryview(self._data)[self._t0:self._t1].cast("I")
            offsets, names = array("I"), array("I")
            append, append_name, step = offsets.append, names.append, _StepTable()
            i, end = 0, len(words)
            try:
                while True:
                    append_name(words[i])   # IndexError here ends the walk: nothing half-appended
                    append(i)
                    i += step[words[i + 1]]
            except IndexError:
                pass
            if i != end:
                raise BpfError(f"BTF: type [{self.start_id + len(offsets) - 1}] runs past the end "
                               f"of the type section")
            if self.start_id + len(offsets) > MAX_TYPE_ID + 1:
                raise BpfError(f"BTF: {len(offsets)} types exceed the id space")
            self._name_words = names.tobytes()
            self._offsets = offsets
        return self._offsets

    @property
    def start_id(self):
        """The first type id of this blob: 1, or right after the base's."""
        return self.base.end_id if self.base else 1

    @property
    def end_id(self):
        """One past the last type id (counting the base's)."""
        return self.start_id + len(self._index())

    # ---- strings ----------------------------------------------------------------

    def _string(self, off):
        if off < self._str_start:
            return self.base._string(off)
        local = off - self._str_start
        if local >= self._str_len:
            raise BpfError(f"BTF: string offset {off} past the string section")
        p = self._s0 + local
        return self._data[p:self._data.index(b"\0", p, self._s1)].decode("utf-8", "replace")

    def _name_offsets(self, name):
        """Offsets of the string `name` here and in the base (split types may use either)."""
        needle = b"\0" + name.encode() + b"\0"
        found = self.base._name_offsets(name) if self.base else []
        if self._data.startswith(needle[1:], self._s0):   # a split blob's first string has no NUL before it
            found.append(self._str_start)
        p = self._s0
        while True:
            q = self._data.find(needle, p, self._s1)
            if q < 0:
                return found
            found.append(q + 1 - self._s0 + self._str_start)
            p = q + 1

    # ---- lookups --------------------------------------------------------------------

    def _ids_named(self, name):
        """Ids of all types called `name`, ascending, base first."""
        ids = self._named.get(name)
        if ids is not None:
            return ids
        ids = list(self.base._ids_named(name)) if self.base else []
        self._index()
        names = self._name_words
        for name_off in self._name_offsets(name):
            pattern = struct.pack("=I", name_off)
            p = names.find(pattern)
            while p >= 0:
                if p % 4 == 0:
                    ids.append(self.start_id + p // 4)
                p = names.find(pattern, p + 1)
        ids.sort()
        self._named[name] = ids = tuple(ids)
        return ids

    def find(self, name, kind=None):
        """The first type called `name` (optionally of `kind`: a kind name or a tuple of them).

        Raises FeatureUnavailable when there is none (a kernel without it)."""
        kinds = (kind,) if isinstance(kind, str) else kind
        if kinds is not None:
            unknown = [k for k in kinds if k not in KIND]
            if unknown:
                raise BpfError(f"BTF: unknown kind {unknown[0]!r} (kinds: {', '.join(KIND)})")
        if name:
            for type_id in self._ids_named(name):
                found = self.type_by_id(type_id)
                if kinds is None or found.kind in kinds:
                    return found
        what = " or ".join(kinds) if kinds else "type"
        raise FeatureUnavailable(f"BTF has no {what} named {name!r}")

    def type_by_id(self, type_id):
        """The Type with this id (0 is void)."""
        found = self._cache.get(type_id)
        if found is not None:
            return found
        if type_id == 0:
            return VOID
        if self.base and type_id < self.start_id:
            return self.base.type_by_id(type_id)
        offsets = self._index()
        i = type_id - self.start_id
        if not 0 <= i < len(offsets):
            raise BpfError(f"BTF: no type id {type_id} (ids run 1..{self.end_id - 1})")
        found = self._cache[type_id] = self._decode(type_id, self._t0 + 4 * offsets[i])
        return found

    def _decode(self, type_id, pos):
        data = self._data
        name_off, info, size_or_type = _FMT["btf_type"].unpack_from(data, pos)
        kind, vlen = KINDS[(info >> 24) & 0x1F][0], info & 0xFFFF
        t = Type(type_id, kind, self._string(name_off), info >> 31, vlen)
        if kind in SIZED_KINDS:
            t.size = size_or_type
        else:
            t.type = size_or_type
        pos += _FMT["btf_type"].size
        _DECODERS.get(kind, _decode_nothing)(self, t, data, pos)
        return t

    def resolve(self, type_or_id):
        """Skip typedef, const, volatile, restrict and type_tag."""
        t = self._type(type_or_id)
        for _ in range(64):
            if t.kind not in MODIFIER_KINDS:
                return t
            t = self.type_by_id(t.type)
        raise BpfError(f"BTF: type {type_or_id} is a loop of modifiers")

    def sizeof(self, type_or_name):
        """Size in bytes of a type (Type, id, or name of a struct/union/typedef/...)."""
        t = self.resolve(self.find(type_or_name) if isinstance(type_or_name, str) else type_or_name)
        if t.kind in SIZED_KINDS:
            return t.size
        if t.kind == "ptr":
            return _POINTER_SIZE
        if t.kind == "array":
            return t.nelems * self.sizeof(t.type)
        if t.kind == "var":
            return self.sizeof(t.type)
        raise BpfError(f"BTF: {t!r} has no size")

    def field(self, struct_name, path):
        """Field of `path` ("a.b.c") inside struct/union `struct_name` (a name or Type).

        Members of anonymous structs and unions are found as if they were the
        parent's own, as in C. Bitfields work with and without kind_flag."""
        outer = self._type(self.find(struct_name, ("struct", "union"))
                           if isinstance(struct_name, str) else struct_name)
        t, offset, member = outer, 0, None
        walked = []
        for part in path.split("."):
            t = self.resolve(t)
            if t.kind not in ("struct", "union"):
                raise BpfError(f"BTF: {_label(outer)}.{'.'.join(walked)} is a {t.kind}, not a struct or union")
            found = self._member(t, part, 0)
            if found is None:
                raise FeatureUnavailable(f"BTF: {_label(outer)} has no field "
                                         f"{'.'.join(walked + [part])!r}")
            member, extra = found
            offset += extra + member.offset_bits
            walked.append(part)
            t = self.type_by_id(member.type)
        size = self.sizeof(t)
        bits = member.bitfield_size
        if not bits:
            storage = self.resolve(t)
            if storage.kind == "int" and (storage.bit_offset or storage.bits != 8 * storage.size):
                # kind_flag 0 bitfield: the width lives in the INT itself
                offset, bits = offset + storage.bit_offset, storage.bits
            else:
                bits = 8 * size
        return Field(offset, bits, offset // 8, size, t)

    def _member(self, composite, name, depth):
        """(Member, bit offset of its anonymous container) or None; depth-first like C."""
        for m in composite.members:
            if m.name == name:
                return m, 0
        if depth < 32:
            for m in composite.members:
                if not m.name:
                    inner = self.resolve(m.type)
                    if inner.kind in ("struct", "union"):
                        found = self._member(inner, name, depth + 1)
                        if found is not None:
                            return found[0], found[1] + m.offset_bits
        return None

    def func_id(self, name):
        """Type id of FUNC `name`: the attach_btf_id of fentry/fexit/lsm programs."""
        return self.find(name, "func").id

    def enum_value(self, enum_name, enumerator):
        """The value of `enumerator` in enum `enum_name`."""
        t = self.find(enum_name, ("enum", "enum64"))
        try:
            return t.values[enumerator]
        except KeyError:
            raise FeatureUnavailable(f"BTF: enum {enum_name} has no {enumerator}") from None

    def _type(self, type_or_id):
        return type_or_id if isinstance(type_or_id, Type) else self.type_by_id(type_or_id)

    def __len__(self):
        """Number of types, void and the base's included (the next free id)."""
        return self.end_id

    def __repr__(self):
        return f"<Btf {len(self._data)} bytes{' split' if self.base else ''}>"


def _label(t):
    return f"{t.kind} {t.name}" if t.name else f"anonymous {t.kind} [{t.id}]"


_vmlinux = None
_modules = {}


def _read_sysfs(path, what):
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise FeatureUnavailable(f"no BTF for {what}: {path} is missing "
                                 "(kernel without CONFIG_DEBUG_INFO_BTF, or module not loaded)") from None
    except OSError as e:
        raise BpfError(f"cannot read {path}: {e.strerror}") from None


# ---- kind-specific decoders (fill a Type from the bytes after btf_type) ----------

def _decode_nothing(btf, t, data, pos):
    pass


def _decode_int(btf, t, data, pos):
    word, = _FMT["btf_int"].unpack_from(data, pos)
    t.encoding, t.bit_offset, t.bits = (word >> 24) & 0x0F, (word >> 16) & 0xFF, word & 0xFF


def _decode_array(btf, t, data, pos):
    t.type, t.index_type, t.nelems = _FMT["btf_array"].unpack_from(data, pos)


def _decode_members(btf, t, data, pos):
    fmt, s = _FMT["btf_member"], btf._string
    if t.kind_flag:
        t.members = tuple(Member(s(n), ty, off & 0xFFFFFF, off >> 24)
                          for n, ty, off in fmt.iter_unpack(data[pos:pos + fmt.size * t.vlen]))
    else:
        t.members = tuple(Member(s(n), ty, off, 0)
                          for n, ty, off in fmt.iter_unpack(data[pos:pos + fmt.size * t.vlen]))


def _decode_enum(btf, t, data, pos):
    fmt = _FMT["btf_enum"]
    t.signed = bool(t.kind_flag)
    t.values = {btf._string(n): v if t.signed else v & 0xFFFFFFFF
                for n, v in fmt.iter_unpack(data[pos:pos + fmt.size * t.vlen])}


def _decode_enum64(btf, t, data, pos):
    fmt = _FMT["btf_enum64"]
    t.signed = bool(t.kind_flag)
    values = {}
    for n, lo, hi in fmt.iter_unpack(data[pos:pos + fmt.size * t.vlen]):
        v = hi << 32 | lo
        values[btf._string(n)] = v - (1 << 64) if t.signed and v >> 63 else v
    t.values = values


def _decode_func(btf, t, data, pos):
    t.linkage = _linkage_name(t.vlen)


def _decode_func_proto(btf, t, data, pos):
    fmt = _FMT["btf_param"]
    t.params = tuple(Param(btf._string(n), ty) for n, ty in fmt.iter_unpack(data[pos:pos + fmt.size * t.vlen]))


def _decode_var(btf, t, data, pos):
    linkage, = _FMT["btf_var"].unpack_from(data, pos)
    t.linkage = _linkage_name(linkage)


def _decode_datasec(btf, t, data, pos):
    fmt = _FMT["btf_var_secinfo"]
    t.secinfos = tuple(SecInfo(*v) for v in fmt.iter_unpack(data[pos:pos + fmt.size * t.vlen]))


def _decode_decl_tag(btf, t, data, pos):
    t.component_idx, = _FMT["btf_decl_tag"].unpack_from(data, pos)


def _linkage_name(value):
    for name, number in LINKAGE.items():
        if number == value:
            return name
    return value


_DECODERS = {
    "int": _decode_int,
    "array": _decode_array,
    "struct": _decode_members,
    "union": _decode_members,
    "enum": _decode_enum,
    "enum64": _decode_enum64,
    "func": _decode_func,
    "func_proto": _decode_func_proto,
    "var": _decode_var,
    "datasec": _decode_datasec,
    "decl_tag": _decode_decl_tag,
}
