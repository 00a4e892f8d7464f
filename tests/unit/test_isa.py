"""The instruction table and Insn encoding, checked against RFC 9669's numbers."""
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pybpf import isa
from pybpf.errors import AssemblerError
from pybpf.insn import Insn, InvalidInsn, decode, encode


def raw(code, dst=0, src=0, off=0, imm=0):
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


# Opcode bytes straight from RFC 9669's appendix, typed in independently of the table.
RFC_OPCODES = {
    ("add", "imm"): 0x07, ("add", "reg"): 0x0F, ("add32", "imm"): 0x04, ("add32", "reg"): 0x0C,
    ("sub", "imm"): 0x17, ("mul", "reg"): 0x2F, ("div", "imm"): 0x37, ("sdiv", "imm"): 0x37,
    ("or", "imm"): 0x47, ("and", "reg"): 0x5F, ("lsh", "imm"): 0x67, ("rsh", "reg"): 0x7F,
    ("neg", None): 0x87, ("neg32", None): 0x84, ("mod", "imm"): 0x97, ("smod32", "reg"): 0x9C,
    ("xor", "imm"): 0xA7, ("mov", "imm"): 0xB7, ("mov", "reg"): 0xBF, ("mov32", "imm"): 0xB4,
    ("arsh", "imm"): 0xC7, ("arsh32", "reg"): 0xCC, ("le16", None): 0xD4, ("be64", None): 0xDC,
    ("bswap32", None): 0xD7, ("movsx864", "reg"): 0xBF, ("movsx1632", "reg"): 0xBC,
    ("ja", None): 0x05, ("gotol", None): 0x06, ("jeq", "imm"): 0x15, ("jeq", "reg"): 0x1D,
    ("jgt", "imm"): 0x25, ("jge", "reg"): 0x3D, ("jset", "imm"): 0x45, ("jne", "reg"): 0x5D,
    ("jsgt", "imm"): 0x65, ("jsge", "reg"): 0x7D, ("jlt", "imm"): 0xA5, ("jle", "reg"): 0xBD,
    ("jslt", "imm"): 0xC5, ("jsle", "reg"): 0xDD, ("jeq32", "imm"): 0x16, ("jsle32", "reg"): 0xDE,
    ("call", None): 0x85, ("call_local", None): 0x85, ("exit", None): 0x95,
    ("lddw", None): 0x18, ("ld_map_fd", None): 0x18, ("ldabsw", None): 0x20, ("ldabsh", None): 0x28,
    ("ldabsb", None): 0x30, ("ldindw", None): 0x40, ("ldindb", None): 0x50,
    ("ldxw", None): 0x61, ("ldxh", None): 0x69, ("ldxb", None): 0x71, ("ldxdw", None): 0x79,
    ("ldxsw", None): 0x81, ("ldxsh", None): 0x89, ("ldxsb", None): 0x91,
    ("stw", "imm"): 0x62, ("sth", "imm"): 0x6A, ("stb", "imm"): 0x72, ("stdw", "imm"): 0x7A,
    ("stxw", "reg"): 0x63, ("stxh", "reg"): 0x6B, ("stxb", "reg"): 0x73, ("stxdw", "reg"): 0x7B,
    ("lock_add32", "reg"): 0xC3, ("lock_add", "reg"): 0xDB, ("lock_cmpxchg", "reg"): 0xDB,
}


@pytest.mark.parametrize("key,code", sorted(RFC_OPCODES.items(), key=str))
def test_opcodes_match_rfc(key, code):
    assert isa.lookup(*key).code == code


def test_every_row_round_trips_through_decode():
    for op in isa.OPS:
        insn = Insn(op, dst=1 if "dst" in op.uses else 0, src=2 if "src" in op.uses else 0,
                    off=-3 if "off" in op.uses else 0, imm=5 if "imm" in op.uses else 0)
        (back,) = decode(insn.encode(), strict=True)
        assert back == insn, op.name


def test_rows_are_unique_and_decodable():
    keys = {(op.code, op.fixed) for op in isa.OPS}
    assert len(keys) == len(isa.OPS)
    names = {(op.name, op.source) for op in isa.OPS}
    assert len(names) == len(isa.OPS)


def test_discriminating_fields():
    assert decode(raw(0x3F, 1, 2, off=1))[0].op.name == "sdiv"
    assert decode(raw(0x3F, 1, 2, off=0))[0].op.name == "div"
    assert decode(raw(0xDB, 1, 2, imm=0xF1))[0].op.name == "lock_cmpxchg"
    assert decode(raw(0xC3, 1, 2, imm=0x01))[0].op.name == "lock_fetch_add32"
    assert decode(raw(0x85, 0, 1, imm=4))[0].op.name == "call_local"
    assert decode(raw(0xBF, 1, 2, off=16))[0].op.name == "movsx1664"
    assert decode(raw(0xD4, 1, 0, imm=32))[0].op.name == "le32"


@pytest.mark.parametrize("bad,why", [
    (raw(0x3F, 1, 2, off=2), "off=2"),  # div with an off that is neither 0 nor 1
    (raw(0xDB, 1, 2, imm=0x02), "imm=2"),  # no atomic op 0x02
    (raw(0xD4, 1, 0, imm=24), "imm=24"),  # no 24-bit byte swap
    (raw(0xFF), "unknown opcode"),
    (raw(0x07, 11, 0, imm=1), "out of range"),  # r11
    (raw(0x07, 1, 3, imm=1), "reserved field src"),  # K form with a src register
    (raw(0x0F, 1, 2, imm=9), "reserved field imm"),  # X form with an imm
    (raw(0x95, 1), "reserved field dst"),  # exit with a register
    (raw(0x05, 0, 0, off=1, imm=1), "reserved field imm"),  # ja with imm
    (raw(0xB7, 1, 0, off=1, imm=1), "reserved field off"),  # mov imm with off
])
def test_invalid_instructions_are_reported_not_raised(bad, why):
    (insn,) = decode(bad)
    assert isinstance(insn, InvalidInsn)
    assert why in insn.reason
    with pytest.raises(AssemblerError):
        decode(bad, strict=True)


def test_decoding_goes_on_after_garbage():
    code = raw(0xFF) + raw(0xB7, 0, 0, imm=2) + raw(0x95) + b"\x01\x02"
    insns = decode(code)
    assert [type(i).__name__ for i in insns] == ["InvalidInsn", "Insn", "Insn", "InvalidInsn"]
    assert encode(insns) == code


def test_ld_imm64_second_slot_must_be_clean():
    good = raw(0x18, 1, 0, imm=0x55667788) + raw(0, imm=0x11223344)
    (insn,) = decode(good)
    assert insn.imm == 0x1122334455667788 and insn.encode() == good
    bad = raw(0x18, 1, 0, imm=1) + raw(0x07, imm=2)
    assert isinstance(decode(bad)[0], InvalidInsn)
    assert isinstance(decode(raw(0x18, 1))[0], InvalidInsn)  # no second slot at all


def test_ld_map_value_splits_fd_and_offset():
    insn = Insn("ld_map_value", dst=1, imm=7 | (16 << 32))
    code = insn.encode()
    assert struct.unpack("<BBhiBBhi", code) == (0x18, 0x21, 0, 7, 0, 0, 0, 16)
    assert (insn.imm_lo, insn.imm_hi) == (7, 16)


@pytest.mark.parametrize("kwargs,message", [
    (dict(op="add", dst=11, imm=1), "dst register r11"),
    (dict(op="ldxw", dst=1, src=2, off=1 << 15), "offset 32768"),
    (dict(op="mov", dst=1, imm=1 << 32), "does not fit 32 bits"),
    (dict(op="mov", dst=1, imm=-(1 << 31) - 1), "does not fit 32 bits"),
    (dict(op="lddw", dst=1, imm=1 << 64), "does not fit 64 bits"),
    (dict(op="exit", imm=1), "reserved field imm"),
])
def test_encoding_rejects_out_of_range(kwargs, message):
    with pytest.raises(AssemblerError, match=message):
        Insn(**kwargs, source="prog.py:7").encode()
    with pytest.raises(AssemblerError, match="prog.py:7"):
        Insn(**kwargs, source="prog.py:7").encode()


def test_unsigned_immediates_are_accepted_as_their_signed_bits():
    assert Insn("mov", dst=1, imm=0xFFFFFFFF).encode() == Insn("mov", dst=1, imm=-1).encode()


def test_fixed_fields_come_from_the_row():
    assert Insn("sdiv", dst=1, imm=3).off == 1
    assert Insn("lock_xchg", dst=1, src=2).imm == 0xE1
    assert Insn("ld_map_fd", dst=1, imm=3).src == isa.PSEUDO_MAP_FD


slots = st.binary(min_size=8, max_size=8)


@settings(max_examples=3000, deadline=None)
@given(st.lists(slots, min_size=1, max_size=8))
def test_any_bytes_decode_and_reencode_identically(chunks):
    code = b"".join(chunks)
    assert encode(decode(code)) == code
