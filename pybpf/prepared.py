"""A program linked, encoded and described (BTF func_info/line_info) once, its maps named
rather than opened: what a tool keeps between runs so that a start skips the DSL build.

    prepared = prepare(program)                      # JSON-able: to_json() / from_json()
    prog = load(prepared, maps={"events": events})   # pybpf.prog.load fills in the map fds

A Prepared program carries no Python source locations: a verifier error on one names the
instruction only (rebuild and load the program itself to see the DSL line).
"""
import base64
import struct
from dataclasses import dataclass

from .errors import AssemblerError

_MAP_OPS = ("ld_map_fd", "ld_map_value")
_IMM = struct.Struct("<i")  # a slot's imm field, at byte 4


@dataclass(frozen=True)
class Prepared:
    code: bytes  # the encoded program, every map fd 0
    maps: tuple  # ((slot, map name), ...): the ld_map_fd / ld_map_value immediates to fill in
    btf: object  # pybpf.btf_build.ProgramBtf, or None (the program loads bare)
    name: str = None
    prog_type: str = None
    expected_attach_type: str = None
    license: str = None

    def code_with(self, maps):
        """The code with the fds of `maps` ({name: Map or fd}) written in."""
        code = bytearray(self.code)
        for slot, name in self.maps:
            try:
                found = maps[name]
            except (KeyError, TypeError):
                raise AssemblerError(f"prepared program {self.name!r} needs map {name!r}, not given") from None
            fd = found if isinstance(found, int) else found.fd
            if not isinstance(fd, int) or fd < 0:
                raise AssemblerError(f"prepared program {self.name!r}: map {name!r} has no open fd (closed?)")
            _IMM.pack_into(code, slot * 8 + 4, fd)
        return bytes(code)

    def to_json(self):
        btf = self.btf
        return {"code": _b64(self.code), "maps": [list(m) for m in self.maps],
                "btf": None if btf is None else {"data": _b64(btf.data), "func_info": _b64(btf.func_info),
                                                 "func_info_cnt": btf.func_info_cnt,
                                                 "line_info": _b64(btf.line_info),
                                                 "line_info_cnt": btf.line_info_cnt},
                "name": self.name, "prog_type": self.prog_type,
                "expected_attach_type": self.expected_attach_type, "license": self.license}

    @classmethod
    def from_json(cls, d):
        btf = d["btf"]
        if btf is not None:
            from .btf_build import ProgramBtf  # imports construct, as any load with BTF does

            btf = ProgramBtf(base64.b64decode(btf["data"]), base64.b64decode(btf["func_info"]),
                             btf["func_info_cnt"], base64.b64decode(btf["line_info"]), btf["line_info_cnt"])
        return cls(base64.b64decode(d["code"]), tuple((slot, name) for slot, name in d["maps"]), btf,
                   d["name"], d["prog_type"], d["expected_attach_type"], d["license"])


def prepare(program, btf=True):
    """Prepared form of a DSL program or Insn list whose map references are Map objects (or
    anything with a .name): linked, encoded, and its BTF made as load() would."""
    from .asm.insn import encode, make
    from .prog import instructions, program_btf

    functions = getattr(program, "functions", None)  # before instructions() replaces a DSL program
    insns = instructions(program)
    if insns is None:
        raise AssemblerError("prepare: raw bytecode names no maps; load it directly")
    maps, bare, slot = [], [], 0
    for insn in insns:
        if insn.op is not None and insn.op.name in _MAP_OPS and hasattr(insn.ref, "fd"):
            maps.append((slot, insn.ref.name))
            imm = 0 if insn.op.name == "ld_map_fd" else insn.imm_hi << 32
            insn = make(insn.op, insn.dst, insn.src, insn.off, imm)
        bare.append(insn)
        slot += insn.slots
    return Prepared(encode(bare), tuple(maps), program_btf(insns, functions) if btf else None,
                    *(_name_of(getattr(program, a, None)) for a in
                      ("name", "prog_type", "expected_attach_type", "license")))


def _name_of(value):
    """A program attribute as JSON keeps it: enums by name (load() takes names)."""
    return getattr(value, "name", value)


def _b64(data):
    return base64.b64encode(data).decode()
