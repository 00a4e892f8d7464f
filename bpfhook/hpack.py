"""HPACK (RFC 7541): header compression for HTTP/2, the decoder whole, a plain encoder.

The Huffman code is canonical, so the table below holds only each symbol's
code length (Appendix B); codes for encoding and decoding both derive from it.
The encoder never adds to the dynamic table (literals without indexing): always
valid, with no state to keep in step with the peer.
"""
import functools

STATIC = [
    (":authority", ""), (":method", "GET"), (":method", "POST"), (":path", "/"), (":path", "/index.html"),
    (":scheme", "http"), (":scheme", "https"), (":status", "200"), (":status", "204"), (":status", "206"),
    (":status", "304"), (":status", "400"), (":status", "404"), (":status", "500"), ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"), ("accept-language", ""), ("accept-ranges", ""), ("accept", ""),
    ("access-control-allow-origin", ""), ("age", ""), ("allow", ""), ("authorization", ""),
    ("cache-control", ""), ("content-disposition", ""), ("content-encoding", ""), ("content-language", ""),
    ("content-length", ""), ("content-location", ""), ("content-range", ""), ("content-type", ""),
    ("cookie", ""), ("date", ""), ("etag", ""), ("expect", ""), ("expires", ""), ("from", ""), ("host", ""),
    ("if-match", ""), ("if-modified-since", ""), ("if-none-match", ""), ("if-range", ""),
    ("if-unmodified-since", ""), ("last-modified", ""), ("link", ""), ("location", ""), ("max-forwards", ""),
    ("proxy-authenticate", ""), ("proxy-authorization", ""), ("range", ""), ("referer", ""), ("refresh", ""),
    ("retry-after", ""), ("server", ""), ("set-cookie", ""), ("strict-transport-security", ""),
    ("transfer-encoding", ""), ("user-agent", ""), ("vary", ""), ("via", ""), ("www-authenticate", ""),
]
STATIC_NAMES = {}
for _i, (_name, _value) in enumerate(STATIC, 1):
    STATIC_NAMES.setdefault(_name, _i)

# Code length in bits of symbols 0..256 (256: EOS), 16 to a row.
HUFFMAN_LENGTHS = [int(n) for n in """
13 23 28 28 28 28 28 28 28 24 30 28 28 30 28 28  28 28 28 28 28 28 30 28 28 28 28 28 28 28 28 28
 6 10 10 12 13  6  8 11 10 10  8 11  8  6  6  6   5  5  5  6  6  6  6  6  6  6  7  8 15  6 12 10
13  6  7  7  7  7  7  7  7  7  7  7  7  7  7  7   7  7  7  7  7  7  7  7  8  7  8 13 19 13 14  6
15  5  6  5  6  5  6  6  6  5  7  7  6  6  6  5   6  7  6  5  5  6  7  7  7  7  7 15 11 14 13 28
20 22 20 20 22 22 22 23 22 23 23 23 23 23 24 23  24 24 22 23 24 23 23 23 23 21 22 23 22 23 23 24
22 21 20 22 22 23 23 21 23 22 22 24 21 22 23 23  21 21 22 21 23 22 23 23 20 22 22 22 23 22 22 23
26 26 20 19 22 23 22 25 26 26 26 27 27 26 24 25  19 21 26 27 27 26 27 24 21 21 26 26 28 27 27 27
20 24 20 21 22 21 21 23 22 22 25 25 24 24 26 23  26 27 26 26 27 27 27 27 27 28 27 27 27 27 27 26
30""".split()]
EOS = 256
DEFAULT_TABLE_SIZE = 4096
ENTRY_OVERHEAD = 32


class HpackError(ValueError):
    """A header block that does not decode."""


@functools.cache
def _codes():
    """(codes[symbol] = (code, length), decode {(length, code): symbol}) of the canonical code."""
    assert len(HUFFMAN_LENGTHS) == 257
    codes, code, previous = [None] * 257, -1, 0
    for sym in sorted(range(257), key=lambda s: (HUFFMAN_LENGTHS[s], s)):
        length = HUFFMAN_LENGTHS[sym]
        code = (code + 1) << (length - previous)
        previous = length
        codes[sym] = (code, length)
    return codes, {(n, c): s for s, (c, n) in enumerate(codes)}


def huffman_encode(data):
    codes = _codes()[0]
    acc = bits = 0
    for byte in data:
        code, length = codes[byte]
        acc, bits = (acc << length) | code, bits + length
    pad = -bits % 8
    acc, bits = (acc << pad) | ((1 << pad) - 1), bits + pad  # padded with the EOS code's leading ones
    return acc.to_bytes(bits // 8, "big")


def huffman_decode(data):
    table = _codes()[1]
    out = bytearray()
    acc = n = 0
    for byte in data:
        for shift in range(7, -1, -1):
            acc, n = (acc << 1) | (byte >> shift) & 1, n + 1
            sym = table.get((n, acc))
            if sym is not None:
                if sym == EOS:
                    raise HpackError("EOS inside a Huffman string")
                out.append(sym)
                acc = n = 0
            elif n > 30:
                raise HpackError("bad Huffman code")
    if n > 7 or acc != (1 << n) - 1:
        raise HpackError("bad Huffman padding")
    return bytes(out)


def encode_int(value, prefix, flags=0):
    limit = (1 << prefix) - 1
    if value < limit:
        return bytes([flags | value])
    out, value = bytearray([flags | limit]), value - limit
    while value >= 128:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_int(data, pos, prefix):
    if pos >= len(data):
        raise HpackError("header block ends inside an integer")
    limit = (1 << prefix) - 1
    value, pos = data[pos] & limit, pos + 1
    if value < limit:
        return value, pos
    shift = 0
    while True:
        if pos >= len(data) or shift > 28:
            raise HpackError("bad integer")
        byte, pos = data[pos], pos + 1
        value += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def encode_str(text):
    raw = text.encode("latin-1")
    packed = huffman_encode(raw)
    if len(packed) < len(raw):
        return encode_int(len(packed), 7, 0x80) + packed
    return encode_int(len(raw), 7) + raw


def decode_str(data, pos):
    huffman = pos < len(data) and data[pos] & 0x80
    length, pos = decode_int(data, pos, 7)
    if pos + length > len(data):
        raise HpackError("header block ends inside a string")
    raw = bytes(data[pos:pos + length])
    return (huffman_decode(raw) if huffman else raw).decode("latin-1"), pos + length


class Decoder:
    """One direction's decoding state: the dynamic table, newest first."""

    def __init__(self, max_size=DEFAULT_TABLE_SIZE):
        self.max_size = self.size = max_size
        self.dynamic = []
        self.used = 0

    def _get(self, index):
        if 0 < index <= len(STATIC):
            return STATIC[index - 1]
        if 0 < index - len(STATIC) <= len(self.dynamic):
            return self.dynamic[index - len(STATIC) - 1]
        raise HpackError(f"header index {index} out of range")

    def _add(self, name, value):
        self.dynamic.insert(0, (name, value))
        self.used += len(name) + len(value) + ENTRY_OVERHEAD
        self._evict()

    def _evict(self):
        while self.used > self.size and self.dynamic:
            name, value = self.dynamic.pop()
            self.used -= len(name) + len(value) + ENTRY_OVERHEAD

    def decode(self, block):
        """[(name, value)] of a whole header block."""
        out, pos = [], 0
        while pos < len(block):
            byte = block[pos]
            if byte & 0x80:  # indexed field
                index, pos = decode_int(block, pos, 7)
                out.append(self._get(index))
            elif byte & 0xE0 == 0x20:  # dynamic table size update
                size, pos = decode_int(block, pos, 5)
                if size > self.max_size:
                    raise HpackError(f"table size {size} above the limit {self.max_size}")
                self.size = size
                self._evict()
            else:  # literal: with incremental indexing (01), without (0000), never indexed (0001)
                prefix = 6 if byte & 0x40 else 4
                index, pos = decode_int(block, pos, prefix)
                if index:
                    name = self._get(index)[0]
                else:
                    name, pos = decode_str(block, pos)
                value, pos = decode_str(block, pos)
                out.append((name, value))
                if byte & 0x40:
                    self._add(name, value)
        return out


def encode(headers):
    """A header block: static-table hits indexed, everything else a literal without indexing."""
    out = bytearray()
    for name, value in headers:
        try:
            out += encode_int(STATIC.index((name, value)) + 1, 7, 0x80)
            continue
        except ValueError:
            pass
        index = STATIC_NAMES.get(name, 0)
        out += encode_int(index, 4)
        if not index:
            out += encode_str(name)
        out += encode_str(value)
    return bytes(out)
