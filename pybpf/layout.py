"""Fast codecs derived from construct layouts (tests/perf/bench_events.py, bench_maps.py).

A C struct is defined once, as a construct Struct; construct's own parse is too slow for map
dumps and ring buffers. codec(layout) flattens a Struct of fixed-width ints, Bytes, Padding,
Arrays and nested Structs into struct.Struct formats giving the same values; anything else
keeps construct's parse/build behind the same interface.

    codec(Int32ul)   codec(8) (native int)   codec(6) (raw bytes)   codec(MyStruct)

offsetof(MyStruct, "field.sub") is a field's byte offset, for BPF programs that build records.
"""
import struct
import sys

import construct

from .errors import LayoutError


def offsetof(layout, path):
    """Byte offset of field `path` in a construct Struct, like C's offsetof: nested fields and
    array elements too ("addr.port", "events.3", "events[3]")."""
    from .asm.dsl import field_info  # the DSL's own reading of layouts (one walker); loads only here

    try:
        return field_info(layout, path).offset
    except LayoutError:
        raise
    except Exception as e:
        raise LayoutError(f"offsetof {path!r}: {getattr(e, 'message', e)}") from None


def size_of(layout):
    """Size in bytes of a fixed-size layout (construct object, Codec, or int size)."""
    if isinstance(layout, int):
        return layout
    if isinstance(layout, Codec):
        return layout.size
    try:
        return layout.sizeof()
    except construct.SizeofError as e:
        raise LayoutError(f"layout has no fixed size: {e}") from None


class Codec:
    """decode(buf) -> value, encode(value) -> bytes, for records of exactly `size` bytes."""

    size = 0

    def decode(self, buf):
        raise NotImplementedError

    def encode(self, value):
        raise NotImplementedError

    def decode_many(self, buf, count):
        """Decode `count` records packed back to back at the start of buf."""
        size = self.size
        view = memoryview(buf)
        return [self.decode(view[i * size:(i + 1) * size]) for i in range(count)]

    def _check(self, buf):
        if len(buf) != self.size:
            raise LayoutError(f"record is {len(buf)} bytes, layout wants {self.size}")


class RawCodec(Codec):
    """Bytes in, bytes out: for sizes with no better meaning."""

    def __init__(self, size):
        self.size = size

    def decode(self, buf):
        self._check(buf)
        return bytes(buf)

    def encode(self, value):
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise LayoutError(f"expected {self.size} bytes, got {type(value).__name__}")
        self._check(value)
        return bytes(value)

    def decode_many(self, buf, count):
        size, data = self.size, bytes(buf[:count * self.size])
        return [data[i:i + size] for i in range(0, count * size, size)]


class ConstructCodec(Codec):
    """construct's own parse/build, for layouts the flattener does not know."""

    def __init__(self, layout):
        self.layout = layout
        self.size = size_of(layout)

    def decode(self, buf):
        self._check(buf)
        return self.layout.parse(bytes(buf))

    def encode(self, value):
        try:
            return self.layout.build(value)
        except (construct.ConstructError, TypeError, KeyError) as e:
            raise LayoutError(f"cannot encode {value!r}: {e}") from None


# ---- the flattener ---------------------------------------------------------
# A layout compiles to a list of (byte order, struct code) pieces plus a tree
# that says how the flat value tuple regroups into Containers and lists:
#   _LEAF            one value
#   _NONE            no value; named Padding parses to None
#   ("struct", [(name or None, node), ...])
#   ("array", count, node)

_LEAF = "leaf"
_NONE = "none"


class _Unflattenable(Exception):
    pass


def _flatten(sub, pieces):
    """Append sub's struct pieces and return its tree node."""
    if isinstance(sub, construct.FormatField):
        order, code = sub.fmtstr[0], sub.fmtstr[1:]
        if len(code) != 1 or code in "?e":
            raise _Unflattenable(sub)
        pieces.append((order if sub.length > 1 else "", code))
        return _LEAF
    if isinstance(sub, construct.Bytes) and isinstance(sub.length, int):
        pieces.append(("", f"{sub.length}s"))
        return _LEAF
    if (isinstance(sub, construct.Padded) and isinstance(sub.length, int)
            and sub.subcon is construct.Pass and sub.pattern == b"\x00"):
        pieces.append(("", f"{sub.length}x"))
        return _NONE
    if isinstance(sub, construct.Array) and isinstance(sub.count, int) and not sub.discard:
        item_pieces = []
        node = _flatten(sub.subcon, item_pieces)
        pieces.extend(item_pieces * sub.count)
        return ("array", sub.count, node)
    if isinstance(sub, construct.Struct):
        fields = []
        for field in sub.subcons:
            name = field.name if isinstance(field, construct.Renamed) else None
            inner = field.subcon if isinstance(field, construct.Renamed) else field
            node = _flatten(inner, pieces)
            if name is None and node is not _NONE:
                raise _Unflattenable(field)      # an unnamed value construct would drop
            fields.append((name, node))
        return ("struct", fields)
    raise _Unflattenable(sub)


def _segments(pieces):
    """Group pieces into runs sharing one byte order: [(struct.Struct, offset)]."""
    runs, offset = [], 0
    order, codes = None, []
    for piece_order, code in pieces:
        if piece_order and order and piece_order != order:
            runs.append((order, codes))
            order, codes = None, []
        order = order or piece_order
        codes.append(code)
    runs.append((order, codes))
    segments = []
    for run_order, run_codes in runs:
        s = struct.Struct((run_order or "<") + "".join(run_codes))
        segments.append((s, offset))
        offset += s.size
    return segments


def _build(node, values):
    """Regroup the flat values iterator along the tree, like construct's parse."""
    if node is _LEAF:
        return next(values)
    if node is _NONE:
        return None
    if node[0] == "array":
        return construct.ListContainer([_build(node[2], values) for _ in range(node[1])])
    obj = construct.Container()
    for name, child in node[1]:
        value = _build(child, values)
        if name is not None:
            obj[name] = value
    return obj


def _flat_values(node, obj, out):
    """Walk obj along the tree, appending leaf values in struct order."""
    if node is _LEAF:
        out.append(obj)
    elif node is _NONE:
        pass
    elif node[0] == "array":
        if len(obj) != node[1]:
            raise LayoutError(f"array has {len(obj)} items, layout wants {node[1]}")
        for item in obj:
            _flat_values(node[2], item, out)
    else:
        for name, child in node[1]:
            if name is not None:
                try:
                    value = obj[name]
                except KeyError:
                    raise LayoutError(f"missing field {name!r}") from None
                _flat_values(child, value, out)


class StructCodec(Codec):
    """A construct layout flattened to struct.Struct segments."""

    def __init__(self, layout):
        pieces = []
        self.layout = layout
        self.tree = _flatten(layout, pieces)
        self.segments = _segments(pieces)
        self.size = sum(s.size for s, _ in self.segments)
        if self.size != size_of(layout):
            raise _Unflattenable(layout)
        valued = [code for _, code in pieces if not code.endswith("x")]
        # Bytes fields: struct.pack pads/truncates silently where construct refuses.
        self._bytes_fields = [(i, int(code[:-1])) for i, code in enumerate(valued) if code.endswith("s")]
        self._single = self.segments[0][0] if len(self.segments) == 1 else None
        self._counts = [len(s.unpack(bytes(s.size))) for s, _ in self.segments]
        # The common case, a struct of scalar fields (and unnamed padding), decodes with one zip.
        flat = isinstance(self.tree, tuple) and self.tree[0] == "struct" and all(
            node is _LEAF or (node is _NONE and name is None) for name, node in self.tree[1])
        self._names = [name for name, node in self.tree[1] if node is _LEAF] if flat else None

    def _unpack(self, buf):
        if self._single is not None:
            return self._single.unpack(buf)
        out = ()
        for s, offset in self.segments:
            out += s.unpack_from(buf, offset)
        return out

    def decode(self, buf):
        if len(buf) != self.size:
            self._check(buf)
        values = self._unpack(buf)
        if self._names is not None:
            return construct.Container(zip(self._names, values))
        if self.tree is _LEAF:
            return values[0]
        return _build(self.tree, iter(values))

    def values_from(self, buf):
        """The fields of a flat struct (scalars and bytes, unnamed padding) at the start of `buf`
        (longer buffers: a perf record's tail padding), as a tuple in layout order (.names): the
        hot path's decode, with no Container to build."""
        if self._names is None or self._single is None:
            raise LayoutError("values_from() takes a flat struct of one segment")
        return self._single.unpack_from(buf)

    @property
    def names(self):
        """The field names of a flat struct, in layout order (None for others)."""
        return None if self._names is None else tuple(self._names)

    def decode_many(self, buf, count):
        s = self._single
        if s is None:
            return super().decode_many(buf, count)
        view = memoryview(buf)[:count * self.size]
        if self._names is not None:
            names, container = self._names, construct.Container
            return [container(zip(names, values)) for values in s.iter_unpack(view)]
        if self.tree is _LEAF:
            return [values[0] for values in s.iter_unpack(view)]
        tree = self.tree
        return [_build(tree, iter(values)) for values in s.iter_unpack(view)]

    def encode(self, value):
        if self.tree is _LEAF:
            values = [value]
        else:
            values = []
            try:
                _flat_values(self.tree, value, values)
            except TypeError as e:
                raise LayoutError(f"cannot encode {value!r}: {e}") from None
        for index, want in self._bytes_fields:
            if isinstance(values[index], (bytes, bytearray)) and len(values[index]) != want:
                raise LayoutError(f"bytes field is {len(values[index])} bytes, layout wants {want}")
        try:
            if self._single is not None:
                return self._single.pack(*values)
            out, start = bytearray(), 0
            for (s, _), count in zip(self.segments, self._counts):
                out += s.pack(*values[start:start + count])
                start += count
            return bytes(out)
        except struct.error as e:
            raise LayoutError(f"cannot encode {value!r}: {e}") from None



_NATIVE_INTS = {1: "B", 2: "H", 4: "L", 8: "Q"}


def codec(layout):
    """The fastest codec for a layout: a construct object, an int size, or a Codec."""
    if isinstance(layout, Codec):
        return layout
    if isinstance(layout, int):
        if layout <= 0:
            raise LayoutError(f"size must be positive, got {layout}")
        code = _NATIVE_INTS.get(layout)
        if code is None:
            return RawCodec(layout)
        order = "<" if sys.byteorder == "little" else ">"
        return StructCodec(construct.FormatField(order, code))
    if not isinstance(layout, construct.Construct):
        raise LayoutError(f"not a layout: {layout!r} (want a construct object or a size in bytes)")
    try:
        return StructCodec(layout)
    except _Unflattenable:
        return ConstructCodec(layout)
