"""pybpf.prepared and bpfhook.program_cache without the kernel: a prepared program loads the
very bytes the DSL program does, and the cache keeps it only while its key holds."""
import json
import os

import pytest

from bpfhook import program_cache
from pybpf import prog
from pybpf.asm import Program
from pybpf.errors import AssemblerError
from pybpf.insn import encode
from pybpf.prepared import Prepared, prepare


class FakeMap:
    """Stands in for pybpf.maps.Map: a name and an fd."""

    def __init__(self, name, fd):
        self.name, self.fd = name, fd


def a_program(events, counts):
    p = Program("bh_test", prog_type="tracing")
    slot = p.stack.alloc(8)
    p.call("map_lookup_elem", counts, slot)
    with p.If(p.r0 != 0):
        p.ld_map_value(p.r1, counts, 16)
    p.call("ringbuf_query", events, 0)
    p.r0 = 0
    p.exit()
    return p


def test_prepared_code_is_the_programs_with_fds_in():
    events, counts = FakeMap("events", 11), FakeMap("counts", 12)
    expected = encode(prog.patch_maps(prog.instructions(a_program(events, counts))))
    prepared = prepare(a_program(FakeMap("events", -1), FakeMap("counts", -1)))
    assert [name for _, name in prepared.maps] == ["counts", "counts", "events"]
    assert prepared.code_with({"events": events, "counts": 12}) == expected
    assert (prepared.name, prepared.prog_type) == ("bh_test", "tracing")
    assert prepared.btf is not None and prepared.btf.line_info_cnt  # the DSL's source lines


def test_prepared_survives_json():
    prepared = prepare(a_program(FakeMap("events", 3), FakeMap("counts", 4)))
    again = Prepared.from_json(json.loads(json.dumps(prepared.to_json())))
    assert again == prepared


def test_prepared_wants_every_map_open():
    prepared = prepare(a_program(FakeMap("events", 3), FakeMap("counts", 4)))
    with pytest.raises(AssemblerError, match="needs map 'events'"):
        prepared.code_with({"counts": 4})
    with pytest.raises(AssemblerError, match="map 'counts' has no open fd"):
        prepared.code_with({"counts": FakeMap("counts", -1), "events": 3})


def test_raw_bytecode_cannot_be_prepared():
    with pytest.raises(AssemblerError, match="raw bytecode"):
        prepare(b"\x95" + bytes(7))


def built(calls):
    def build():
        calls.append(1)
        return a_program(FakeMap("events", 3), FakeMap("counts", 4))
    return build


def test_cache_builds_once_per_key(tmp_path):
    calls = []
    first = program_cache.ProgramCache({"option": 1}, str(tmp_path)).get("p", built(calls))
    again = program_cache.ProgramCache({"option": 1}, str(tmp_path))
    assert again.get("p", built(calls)) == first and calls == [1] and again.hits == 1
    other = program_cache.ProgramCache({"option": 2}, str(tmp_path))  # another configuration, another file
    other.get("p", built(calls))
    assert calls == [1, 1] and other.path != again.path
    assert program_cache.ProgramCache({"option": 1}, str(tmp_path)).get("p", built(calls)) and calls == [1, 1]


def test_cache_is_invalidated_by_a_source_change(tmp_path, monkeypatch):
    calls = []
    program_cache.ProgramCache({}, str(tmp_path)).get("p", built(calls))
    monkeypatch.setattr(program_cache, "sources_digest", lambda: "another")
    program_cache.ProgramCache({}, str(tmp_path)).get("p", built(calls))
    assert calls == [1, 1]


def test_sources_digest_follows_a_module(tmp_path):
    package = type("package", (), {"__path__": [str(tmp_path)]})
    (tmp_path / "a.py").write_text("x = 1\n")
    before = program_cache.sources_digest((package,))
    (tmp_path / "a.py").write_text("x = 22\n")
    assert program_cache.sources_digest((package,)) != before


def test_a_damaged_cache_file_is_rebuilt(tmp_path):
    calls = []
    cache = program_cache.ProgramCache({}, str(tmp_path))
    cache.get("p", built(calls))
    with open(cache.path, "w") as f:
        f.write("{not json")
    assert program_cache.ProgramCache({}, str(tmp_path)).get("p", built(calls)) is not None
    assert calls == [1, 1]
    assert json.load(open(cache.path))["key"] == cache.key
    assert not [n for n in os.listdir(tmp_path) if n != os.path.basename(cache.path)]  # no temporary left
