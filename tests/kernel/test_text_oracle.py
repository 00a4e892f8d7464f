"""Our bytes == llvm-mc's bytes for every LLVM-syntax form llvm-mc accepts.

llvm-mc assembles the corpus into an ELF object; the test reads .text out of
it with a small ELF64 reader and compares it, instruction by instruction, with
pybpf.assemble on the same text. Skips when no llvm-mc 19 or newer is present
(cpu v4, gotol and may_goto).
"""
import struct
import subprocess

from pybpf.text import assemble
from tests import oracles

CORPUS = """\
start:
  r1 = *(u32 *)(r2 + 4)
  r1 = *(u16 *)(r2 - 2)
  r1 = *(u8 *)(r10 - 1)
  r1 = *(u64 *)(r2 + 32767)
  w1 = *(u32 *)(r2 + 4)
  r1 = *(s8 *)(r2 + 1)
  r1 = *(s16 *)(r2 + 2)
  r1 = *(s32 *)(r2 - 4)
  *(u64 *)(r10 - 8) = r1
  *(u32 *)(r10 - 4) = w1
  *(u16 *)(r1 + 2) = r3
  *(u8 *)(r1 + 0) = r3
  *(u64 *)(r1 + 0) = 5
  *(u32 *)(r1 + 0) = -7
  *(u16 *)(r1 + 6) = 0x7fff
  *(u8 *)(r1 - 1) = 255
  r1 += r2
  r1 -= 3
  r1 *= r2
  r1 /= 3
  r1 s/= r2
  r1 s%= 3
  r1 %= r2
  r1 |= 0xff
  r1 &= r2
  r1 <<= 3
  r1 >>= r2
  r1 s>>= 3
  r1 ^= r2
  r1 = r2
  r1 = 0
  r1 = -1
  r1 = 0xffffffff
  w1 += w2
  w1 -= 3
  w1 *= w2
  w1 /= 3
  w1 s/= w2
  w1 s%= 3
  w1 %= w2
  w1 |= 0xff
  w1 &= w2
  w1 <<= 3
  w1 >>= w2
  w1 s>>= 3
  w1 ^= w2
  w1 = w2
  w1 = -1
  r1 = (s8)r2
  r1 = (s16)r2
  r1 = (s32)r2
  w1 = (s8)w2
  w1 = (s16)w2
  r1 = -r1
  w1 = -w1
  r1 = be16 r1
  r1 = be32 r1
  r1 = be64 r1
  r1 = le16 r1
  r1 = le32 r1
  r1 = le64 r1
  r1 = bswap16 r1
  r1 = bswap32 r1
  r1 = bswap64 r1
  r0 = 0x1234 ll
  r0 = 0x1122334455667788 ll
  r0 = -1 ll
  ld_pseudo r1, 1, 5
  lock *(u64 *)(r1 + 0) += r2
  lock *(u64 *)(r1 + 8) |= r2
  lock *(u64 *)(r1 - 8) &= r2
  lock *(u64 *)(r1 + 0) ^= r2
  lock *(u32 *)(r1 + 0) += w2
  lock *(u32 *)(r1 + 0) |= w2
  lock *(u32 *)(r1 + 0) &= w2
  lock *(u32 *)(r1 + 0) ^= w2
  r0 = atomic_fetch_add((u64 *)(r1 + 0), r0)
  r2 = atomic_fetch_or((u64 *)(r1 + 8), r2)
  r2 = atomic_fetch_and((u64 *)(r1 + 0), r2)
  r2 = atomic_fetch_xor((u64 *)(r1 + 0), r2)
  w0 = atomic_fetch_add((u32 *)(r1 + 0), w0)
  w2 = atomic_fetch_or((u32 *)(r1 + 0), w2)
  w2 = atomic_fetch_and((u32 *)(r1 + 0), w2)
  w2 = atomic_fetch_xor((u32 *)(r1 + 0), w2)
  r0 = xchg_64(r1 + 0, r0)
  w3 = xchg32_32(r1 + 4, w3)
  r0 = cmpxchg_64(r1 + 0, r0, r2)
  w0 = cmpxchg32_32(r1 + 0, w0, w2)
  if r1 == r2 goto +1
  if r1 != 5 goto -1
  if r1 > r2 goto start
  if r1 >= 0x10 goto start
  if r1 < r2 goto fn
  if r1 <= -1 goto fn
  if r1 & r2 goto +0
  if r1 s> r2 goto +3
  if r1 s>= 5 goto +3
  if r1 s< r2 goto +3
  if r1 s<= 5 goto +3
  if w1 == w2 goto +1
  if w1 != 5 goto -1
  if w1 s< 0x7fffffff goto fn
  if w1 & w2 goto start
  goto +2
  goto start
  gotol +3
  gotol fn
  may_goto +2
  call 1
  call 0x7
  call fn
  callx r2
  r0 = *(u8 *)skb[12]
  r0 = *(u16 *)skb[14]
  r0 = *(u32 *)skb[0x20]
  r0 = *(u8 *)skb[r2]
  r0 = *(u32 *)skb[r7]
  exit
fn:
  r0 = 1
  exit
"""


def elf_text(path):
    """The bytes of the .text section of an ELF64 little-endian object."""
    data = open(path, "rb").read()
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, "not an ELF64 LE object"
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def section(i):
        name, _type, _flags, _addr, offset, size = struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
        return name, offset, size

    _, str_off, _ = section(shstrndx)
    for i in range(shnum):
        name, offset, size = section(i)
        if data[str_off + name:data.index(b"\0", str_off + name)] == b".text":
            return data[offset:offset + size]
    raise AssertionError(".text not found")


def llvm_mc(tmp_path, text):
    src, obj = tmp_path / "in.s", tmp_path / "out.o"
    src.write_text(text)
    done = subprocess.run([oracles.require("llvm-mc"), "-triple", "bpfel", "-mcpu=v4", "-filetype=obj", str(src), "-o", str(obj)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return elf_text(obj)


def test_corpus_matches_llvm_mc(tmp_path):
    theirs = llvm_mc(tmp_path, CORPUS)
    ours = assemble(CORPUS, "llvm")
    lines = [line.strip() for line in CORPUS.splitlines() if line.strip() and not line.strip().endswith(":")]
    # Compare slot by slot so a mismatch names the statement.
    pc = 0
    for line in lines:
        width = 16 if line.endswith(" ll") or line.startswith("ld_pseudo") else 8
        assert ours[pc:pc + width].hex() == theirs[pc:pc + width].hex(), f"{line!r} at byte {pc}"
        pc += width
    assert ours == theirs
