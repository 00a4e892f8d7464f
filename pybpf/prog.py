"""Load programs into the kernel, run them (BPF_PROG_TEST_RUN), read any loaded one back.

    prog = load(insns, "xdp", name="pass")       # a LoadedProgram: owns the fd

A load asks for no verifier log; only a failed one is retried with a log, and the
VerifierError names the failing instruction and the Python line that emitted it. Programs
with subprograms or DSL sources carry BTF func_info (callbacks need it) and line_info.
"""
import errno as _errno
import linecache
import os
import re
import sys
import warnings
from dataclasses import dataclass

from . import syscall
from .asm.disasm import Symbols, format_insn
from .asm.insn import Insn, InvalidInsn, decode, encode
from .asm.link import label_slots, link
from .errors import (ENOTSUPP, STATS_LINE, AssemblerError, BpfError, NotPermitted, SyscallError, VerifierError,
                     syscall_error, traceback_at)
from .fd import FdOwner
from .prepared import Prepared
from .uapi import OBJ_NAME_LEN, AttachType, Cmd, ProgType, member

LOG_SIZE_START = 64 << 10
LOG_SIZE_MAX = 16 << 20
LOG_STATS = 4  # BPF_LOG_STATS: the verifier's summary lines only
BPF_MAXINSNS = 4096  # unprivileged limit; root gets BPF_COMPLEXITY_LIMIT_INSNS
COMPLEXITY_LIMIT_INSNS = 1_000_000
_EAGAIN_RETRIES = 5  # the kernel returns EAGAIN when a load races a signal; libbpf retries too

# Program types whose BPF_PROG_TEST_RUN takes a context only: repeat, data and duration must be zero.
_CTX_ONLY_TEST_RUN = frozenset((ProgType.RAW_TRACEPOINT, ProgType.SYSCALL))

_INSN_LINE = re.compile(r"^(\d+): \(([0-9a-f]{2})\) (.*)$", re.M)
_INSN_MENTION = re.compile(r"\binsn (\d+)")
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.]")
_NOT_IDENTIFIER = re.compile(r"\W")
_FILE_LINE = re.compile(r"(.+):(\d+)\Z")  # an Insn.source the DSL wrote: "file.py:12"


# -- argument parsing -----------------------------------------------------------------------------

def prog_type_of(value):
    """ProgType for "xdp", "sched_cls", ProgType.XDP or 6."""
    return member(ProgType, value, "program type")


def attach_type_of(value):
    """AttachType for "cgroup_inet4_connect", AttachType.XDP or 37."""
    return member(AttachType, value, "attach type")


def _type_name(value):
    return value.name.lower() if isinstance(value, ProgType) else f"type {value}"


def object_name(name):
    """The kernel takes 15 chars of [A-Za-z0-9_.]; anything else would be EINVAL."""
    return _NAME_CHARS.sub("_", str(name))[:OBJ_NAME_LEN - 1]


def _fd_of(ref, insn):
    fd = getattr(ref, "fd", None)
    if not isinstance(fd, int) or fd < 0:
        raise AssemblerError(f"{insn.op.name}: map {ref!r} has no open fd (closed?)", insn.source)
    return fd


def instructions(program):
    """Linked Insn list for a DSL program, a list of Insn, or None for raw bytes.

    Label references are resolved here; map references are left to `patch_maps`.
    """
    if isinstance(program, (bytes, bytearray, memoryview)):
        return None
    if hasattr(program, "link") and callable(program.link):
        program = program.link()
    if isinstance(program, (list, tuple)):
        for i, insn in enumerate(program):
            if not isinstance(insn, (Insn, InvalidInsn)):
                raise AssemblerError(f"program element {i} is {type(insn).__name__}, not an Insn")
        return link(program)
    raise AssemblerError("program must be a list of Insn, a DSL program (with .link()) or bytes, "
                         f"not {type(program).__name__}")


def patch_maps(insns):
    """Write map fds into ld_map_fd / ld_map_value instructions whose ref is a map object."""
    out = []
    for insn in insns:
        ref = insn.ref
        if insn.op is not None and insn.op.name in ("ld_map_fd", "ld_map_value") and hasattr(ref, "fd"):
            fd = _fd_of(ref, insn)
            # ld_map_value keeps its value offset in the high half of imm.
            imm = fd if insn.op.name == "ld_map_fd" else fd | (insn.imm_hi << 32)
            insn = Insn(insn.op, insn.dst, insn.src, insn.off, imm,
                        label=insn.label, ref=ref, source=insn.source)
        out.append(insn)
    return out


def _slot_table(insns):
    """slot index -> Insn (ld_imm64 covers two slots; the verifier counts slots)."""
    table = []
    for insn in insns:
        table.extend([insn] * insn.slots)
    return table


# -- the verifier log ------------------------------------------------------------------------------

def failing_insn_index(log):
    """Index of the instruction the verifier stopped at: the last "N: (xx) ..." line,
    else an "insn N" the error message names (unreachable insn, jump out of range)."""
    found = None
    for match in _INSN_LINE.finditer(log):
        found = match
    if found is not None:
        return int(found.group(1)), found.group(0)
    for line in reversed([l for l in log.splitlines() if l.strip()][-3:]):
        mention = _INSN_MENTION.search(line)
        if mention:
            return int(mention.group(1)), None
    return None, None


def _insn_text(insn, kernel_line):
    """Kernel syntax for insn (pybpf.asm.disasm), else the verifier's own line."""
    if insn is not None:
        try:
            return format_insn(insn)
        except Exception:  # a formatter bug must never hide the verifier's message
            pass
    if kernel_line is not None:
        return kernel_line.split(" ", 1)[1]
    return repr(insn) if insn is not None else None


def stats_line(log):
    """The verifier's "processed N insns (limit ...) ..." line, or None."""
    found = [m.group(0) for m in STATS_LINE.finditer(log or "") if m.group(1).startswith("processed")]
    return found[-1] if found else None


# -- loading -----------------------------------------------------------------------------------------

def _bpf_prog_load(attr, log_level):
    """Run BPF_PROG_LOAD; returns (fd, errno, log). The log buffer grows until it fits."""
    size, buf = LOG_SIZE_START, None
    retries = _EAGAIN_RETRIES
    while True:
        if log_level:
            if buf is None or len(buf) < size:
                buf = syscall.ffi.new("char[]", size)
            attr.log_level, attr.log_size, attr.log_buf = log_level, size, syscall.address(buf)
            attr.log_true_size = 0
        else:
            attr.log_level, attr.log_size, attr.log_buf = 0, 0, 0
        try:
            fd = syscall.bpf(Cmd.PROG_LOAD, attr)
            err = 0
        except SyscallError as e:
            fd, err = None, e.errno
        if err == _errno.EAGAIN and retries:
            retries -= 1
            continue
        if err == _errno.ENOSPC and log_level and size < LOG_SIZE_MAX:
            size = min(LOG_SIZE_MAX, max(size * 4, attr.log_true_size))
            continue
        log = syscall.ffi.string(buf).decode(errors="replace") if log_level else ""
        return fd, err, log


def _load_error(err, log, slots, ptype, name, insn_cnt, expected_attach_type=None):
    label = f"BPF_PROG_LOAD {name or _type_name(ptype)}"
    kind = _type_name(ptype)
    if expected_attach_type is not None:  # a tracing kernel may take tp_btf and refuse fexit
        kind += f" ({attach_type_of(expected_attach_type).name.lower()})"
    if log.strip():
        idx, kernel_line = failing_insn_index(log)
        insn = slots[idx] if slots is not None and idx is not None and idx < len(slots) else None
        source = getattr(insn, "source", None)
        return VerifierError(err, log, idx, _insn_text(insn, kernel_line), source, name or None)
    if err in (_errno.EPERM, _errno.EACCES):
        if os.geteuid() != 0:
            return NotPermitted(label, err, "needs root (CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN)")
        return NotPermitted(label, err, f"the kernel refuses {kind} programs here "
                            "(lockdown, LSM policy, or the hook is not built in)")
    if err == _errno.E2BIG:
        if insn_cnt > BPF_MAXINSNS:
            return SyscallError(label, err, f"program too large: {insn_cnt} instructions "
                                f"(limit {COMPLEXITY_LIMIT_INSNS} as root, {BPF_MAXINSNS} unprivileged)")
        return SyscallError(label, err, "the kernel is too old for a load attribute set here")
    if err == _errno.EINVAL:
        return SyscallError(label, err, f"kernel rejected {_type_name(ptype)}: unknown to this kernel, "
                            "or it needs expected_attach_type / attach_btf_id, or the load flags are wrong")
    return SyscallError(label, err)


def load(program, prog_type=None, *, name=None, license=None, expected_attach_type=None, attach_btf_id=0,
         attach_btf_obj_fd=0, attach_prog_fd=0, kern_version=0, prog_flags=0, log_level=0,
         fd_array=None, ifindex=0, stats=False, btf=True, maps=None):
    """Load a program; returns a LoadedProgram that owns the fd.

    program:   list of Insn (labels linked, map refs patched), a DSL program (.link()), bytes, or
               a pybpf.prepared.Prepared, whose maps come from `maps` ({name: Map})
    prog_type: ProgType, its value, or its name ("xdp", "sched_cls", "BPF_PROG_TYPE_XDP");
               name, license ("GPL") and expected_attach_type default to the program's own
               attributes of those names (a DSL Program carries the first three)
    log_level: 1 or 2 asks for the verifier log on success too (.log); stats=True adds the
               verifier's summary (.stats). Without either, the log is fetched only on failure.
    fd_array:  fds (or objects with .fd) for ld_map_idx / kfunc module BTFs
    btf:       send BTF func_info/line_info when the program has subprograms or sources (default);
               False loads the bare code (callbacks then fail: the kernel wants func_info for them)

    Raises VerifierError (log, insn_idx, insn, source), NotPermitted, SyscallError, AssemblerError.
    """
    prog_type = _own(program, "prog_type", prog_type)
    if prog_type is None:
        raise BpfError("load: no prog_type given and the program carries none")
    ptype = prog_type_of(prog_type)
    name = _own(program, "name", name) or ""
    license = _own(program, "license", license) or "GPL"
    expected_attach_type = _own(program, "expected_attach_type", expected_attach_type)
    attach_btf_id = attach_btf_id or getattr(program, "attach_btf_id", 0)  # a DSL tp_btf program's target
    functions = getattr(program, "functions", None)  # before instructions() replaces a DSL program
    prepared = program if isinstance(program, Prepared) else None
    insns = None if prepared is not None else instructions(program)
    if prepared is not None:
        code, slots = prepared.code_with(maps), None
    elif insns is None:
        code, slots = bytes(program), None
        if len(code) % 8:
            raise AssemblerError(f"bytecode is {len(code)} bytes, not a multiple of 8")
    else:
        insns = patch_maps(insns)
        code, slots = encode(insns), _slot_table(insns)
    insn_cnt = len(code) // 8
    if not insn_cnt:
        raise AssemblerError("empty program: it needs at least an exit")

    ffi = syscall.ffi
    code_buf = ffi.from_buffer(code)
    license_buf = ffi.new("char[]", str(license).encode())
    attr = syscall.new_attr()
    attr.prog_type = int(ptype)
    attr.insn_cnt = insn_cnt
    attr.insns = syscall.address(code_buf)
    attr.license = syscall.address(license_buf)
    attr.kern_version = kern_version
    attr.prog_flags = int(prog_flags)
    attr.prog_name = object_name(name).encode()
    attr.prog_ifindex = ifindex
    if expected_attach_type is not None:
        attr.expected_attach_type = int(attach_type_of(expected_attach_type))
    attr.attach_btf_id = attach_btf_id
    if attach_prog_fd and attach_btf_obj_fd:
        raise BpfError("attach_prog_fd and attach_btf_obj_fd share one field: give only one")
    attr.attach_prog_fd = attach_prog_fd or attach_btf_obj_fd
    fds_buf = None
    if fd_array:
        fds_buf = ffi.new("int32_t[]", [f if isinstance(f, int) else f.fd for f in fd_array])
        attr.fd_array = syscall.address(fds_buf)

    if prepared is not None:
        info = prepared.btf if btf else None
    else:
        info = program_btf(insns, functions) if btf and insns is not None else None
    if info is not None:
        info_bufs = (ffi.from_buffer(info.func_info), ffi.from_buffer(info.line_info))
        btf_fd = _load_program_btf(info, attr, info_bufs)
    else:
        btf_fd = None
    try:
        wanted_log = int(log_level) | (LOG_STATS if stats else 0)
        fd, err, log = _bpf_prog_load(attr, wanted_log)
        if fd is None and not wanted_log:
            # The fast path failed: load again, this time with the verifier telling why.
            fd, err, log = _bpf_prog_load(attr, 1)
    finally:
        if btf_fd is not None:
            os.close(btf_fd)  # the program holds its own reference
    if fd is None:
        error = _load_error(err, log, slots, ptype, object_name(name), insn_cnt, expected_attach_type)
        entry = _source(error.source) if isinstance(error, VerifierError) and error.source else None
        if entry is not None:  # the traceback ends at the DSL line that emitted the failing instruction
            error.__traceback__ = traceback_at(entry[0], entry[1])
        raise error
    prog = LoadedProgram(fd, insns=insns, expected_attach_type=None if expected_attach_type is None
                   else attach_type_of(expected_attach_type))
    if wanted_log:
        prog.log, prog.stats = log, stats_line(log)
    return prog


def _own(program, attribute, given):
    """An argument the caller gave, else the program's attribute of that name (None for lists)."""
    return given if given is not None else getattr(program, attribute, None)


# -- BTF func_info / line_info ------------------------------------------------------------------------

def _identifier(name):
    name = _NOT_IDENTIFIER.sub("_", str(name)) or "main"
    return "_" + name if name[0].isdigit() else name


def function_slots(insns):
    """[(name, slot)] of the functions the kernel will find in a linked Insn list: slot 0, then
    every call_local / ld_func target (named by its label when it has one), as the verifier does."""
    starts, pc = {0}, 0
    for insn in insns:
        if insn.op is not None and insn.op.name in ("call_local", "ld_func"):
            delta = insn.imm & 0xFFFFFFFF
            starts.add(pc + 1 + delta - ((delta >> 31) << 32))
        pc += insn.slots
    names = {}
    for label, slot in label_slots(insns).items():
        names.setdefault(slot, label)
    return [(names.get(slot, "main" if slot == 0 else f"func_{slot}"), slot) for slot in sorted(starts)]


_paths = {}  # "file.py:12" -> the full path of that file
_paths_seen = [0]  # size of pybpf.asm's source table when _paths was last filled from it


def _source_path(where, file_name):
    """Full path of the file behind an Insn.source, which names only the base name.

    pybpf.asm keeps the code object behind each source it wrote ((id(code), lasti) ->
    (where, code)); its co_filename is exact where a base name alone may be ambiguous
    (programs/capture.py and bpfhook/capture.py). Unknown: the base name, which linecache
    still finds on sys.path."""
    path = _paths.get(where)
    if path is None:
        table = getattr(sys.modules.get("pybpf.asm.dsl"), "_LINES", None) or {}
        if len(table) != _paths_seen[0]:
            _paths_seen[0] = len(table)
            for value in list(table.values()):
                filename = getattr(value[-1], "co_filename", None) if isinstance(value, tuple) else None
                if filename:
                    _paths.setdefault(value[0], filename)
        path = _paths.get(where, file_name)
    return path


_SOURCES = {}  # Insn.source -> (path, line, text), or None when it is not "file.py:line"
_SOURCES_MAX = 1 << 16


def _source(where):
    entry = _SOURCES.get(where, False)
    if entry is False:
        match = _FILE_LINE.match(where)
        if match is None:
            entry = None
        else:
            path, line = _source_path(where, match.group(1)), int(match.group(2))
            entry = (path, line, linecache.getline(path, line).strip())
        if len(_SOURCES) >= _SOURCES_MAX:
            _SOURCES.clear()
        _SOURCES[where] = entry
    return entry


def source_lines(insns, function_starts=(0,)):
    """[(slot, file, line, text)] for line_info: one where the "file.py:line" source changes, and
    one at every function start (the verifier insists). Insns without a source continue the
    line before them; text is the stripped Python line (empty when the file is not readable)."""
    out, pc, last = [], 0, None
    starts = set(function_starts)
    for insn in insns:
        where = insn.source
        if where is not last and where != last and where is not None or pc in starts:
            entry = _source(where) if where is not None else None
            if entry is not None:
                out.append((pc, *entry))
                last = where
            elif pc in starts:
                out.append((pc, "", 0, ""))
                last = None
        pc += insn.slots
    return out


def program_btf(insns, functions=None):
    """pybpf.btf_build.ProgramBtf for a linked Insn list, or None when there is nothing to say.

    The functions are the ones the verifier will find (function_slots); `functions`, [(name,
    slot)] such as a DSL Program's .functions, names them. Without "file.py:line" sources, BTF
    is made only for several functions named that way: a bare Insn list loads as it always did."""
    names = dict((slot, name) for name, slot in functions or ())
    found = [(_identifier(names.get(slot, name)), slot) for name, slot in function_slots(insns)]
    lines = source_lines(insns, [slot for _, slot in found])
    if not any(file_name for _, file_name, _, _ in lines) and (functions is None or len(found) < 2):
        return None
    from .btf_build import program_btf as build  # imports construct: not for loads without BTF

    return build(found, lines)


def _load_program_btf(info, attr, buffers):
    """Load the program's BTF and point attr at it and at `buffers` (func_info, line_info cdata,
    kept alive by the caller); returns the BTF fd, or None when the kernel takes no BTF (the
    program then loads without it: only callbacks need func_info)."""
    from .btf_build import load_btf  # imports construct: not for loads without BTF

    try:
        fd = load_btf(info.data)
    except SyscallError:
        return None
    attr.prog_btf_fd = fd
    attr.func_info_rec_size, attr.func_info, attr.func_info_cnt = (
        info.func_info_rec_size, syscall.address(buffers[0]), info.func_info_cnt)
    if info.line_info_cnt:
        attr.line_info_rec_size, attr.line_info, attr.line_info_cnt = (
            info.line_info_rec_size, syscall.address(buffers[1]), info.line_info_cnt)
    return fd


# -- reading programs back ------------------------------------------------------------------------

@dataclass(frozen=True)
class ProgInfo:
    """What BPF_OBJ_GET_INFO_BY_FD tells about a program (ours or anyone's)."""

    id: int
    name: str
    type: object  # ProgType, or an int for a type newer than pybpf
    tag: str  # 16 hex digits, as bpftool prints it
    xlated: bytes  # the instructions after the verifier's rewrites (empty without permission)
    jited: bytes  # native code (empty when not JIT-ed or not permitted)
    map_ids: tuple
    load_time_ns: int  # CLOCK_BOOTTIME at load
    created_by_uid: int
    run_time_ns: int  # zero unless BPF stats are enabled (kernel.bpf_stats_enabled)
    run_cnt: int
    recursion_misses: int
    verified_insns: int
    gpl_compatible: bool
    btf_id: int
    ifindex: int
    attach_btf_id: int
    attach_btf_obj_id: int

    def insns(self):
        """The xlated instructions decoded (pybpf.insn.decode)."""
        return decode(self.xlated)


def _prog_type(value):
    try:
        return ProgType(value)
    except ValueError:
        return value


def prog_info(fd, contents=True):
    """ProgInfo for any program fd: two BPF_OBJ_GET_INFO_BY_FD calls (sizes, then contents).
    contents=False: the first call only, for the counters a monitor polls (run_cnt,
    run_time_ns, recursion_misses); xlated, jited and map_ids stay empty."""
    ffi = syscall.ffi
    info = sizes = syscall.obj_get_info_by_fd(fd, "prog")
    xlated = jited = map_ids = None
    if contents:
        info = ffi.new("struct bpf_prog_info *")
        xlated = ffi.new("uint8_t[]", sizes.xlated_prog_len) if sizes.xlated_prog_len else None
        jited = ffi.new("uint8_t[]", sizes.jited_prog_len) if sizes.jited_prog_len else None
        map_ids = ffi.new("uint32_t[]", sizes.nr_map_ids) if sizes.nr_map_ids else None
        if xlated is not None:
            info.xlated_prog_len, info.xlated_prog_insns = sizes.xlated_prog_len, syscall.address(xlated)
        if jited is not None:
            info.jited_prog_len, info.jited_prog_insns = sizes.jited_prog_len, syscall.address(jited)
        if map_ids is not None:
            info.nr_map_ids, info.map_ids = sizes.nr_map_ids, syscall.address(map_ids)
        syscall.obj_get_info_by_fd(fd, info)
    return ProgInfo(
        id=info.id,
        name=ffi.string(info.name).decode(errors="replace"),
        type=_prog_type(info.type),
        tag=bytes(info.tag).hex(),
        xlated=bytes(ffi.buffer(xlated, info.xlated_prog_len)) if xlated is not None else b"",
        jited=bytes(ffi.buffer(jited, info.jited_prog_len)) if jited is not None else b"",
        map_ids=tuple(map_ids[i] for i in range(min(info.nr_map_ids, sizes.nr_map_ids))) if map_ids else (),
        load_time_ns=info.load_time,
        created_by_uid=info.created_by_uid,
        run_time_ns=info.run_time_ns,
        run_cnt=info.run_cnt,
        recursion_misses=info.recursion_misses,
        verified_insns=info.verified_insns,
        gpl_compatible=bool(info.gpl_compatible),
        btf_id=info.btf_id,
        ifindex=info.ifindex,
        attach_btf_id=info.attach_btf_id,
        attach_btf_obj_id=info.attach_btf_obj_id,
    )


def iter_ids():
    """Ids of every program loaded in the system, ascending."""
    current = syscall.get_next_id("prog", 0)
    while current is not None:
        yield current
        current = syscall.get_next_id("prog", current)


class Loaded:
    """A loaded program's xlated code and what names its operands (read_loaded)."""

    def __init__(self, id, name, code, symbols, map_ids, map_names):
        self.id, self.name, self.code = id, name, code
        self.symbols, self.map_ids, self.map_names = symbols, map_ids, map_names


def _jited_ksyms(fd):
    count = syscall.obj_get_info_by_fd(fd, "prog").nr_jited_ksyms
    if not count:
        return ()
    info = syscall.ffi.new("struct bpf_prog_info *")
    addresses = syscall.ffi.new("uint64_t[]", count)
    info.nr_jited_ksyms, info.jited_ksyms = count, syscall.address(addresses)
    syscall.obj_get_info_by_fd(fd, info)
    return tuple(addresses[i] for i in range(min(count, info.nr_jited_ksyms)))


def _map_name(map_id):
    try:
        fd = syscall.get_fd_by_id("map", map_id)
    except BpfError:
        return None  # gone since, or not ours to open: the id alone still names it
    try:
        return syscall.ffi.string(syscall.obj_get_info_by_fd(fd, "map").name).decode(errors="replace")
    finally:
        os.close(fd)


def read_loaded(prog_id=None, path=None):
    """The xlated instructions of a loaded program (any loader's) by id or bpffs pin.

    Returns a Loaded whose `symbols` make disassemble() print what bpftool
    prints: map[id:N], helper and subprogram calls named through /proc/kallsyms.
    """
    if (prog_id is None) == (path is None):
        raise BpfError("read_loaded: give a program id or a pinned path")
    try:
        fd = syscall.get_fd_by_id("prog", prog_id) if path is None else syscall.obj_get(path)
    except SyscallError as e:
        if e.errno == _errno.ENOENT:
            raise BpfError(f"no BPF program {'with id ' + str(prog_id) if path is None else 'pinned at ' + path}") from None
        raise
    try:
        info = prog_info(fd)
        ksyms = _jited_ksyms(fd)
    finally:
        os.close(fd)
    if not info.xlated:
        raise BpfError(f"program {info.id} ({info.name or 'no name'}): the kernel shows no instructions "
                       "(needs CAP_SYS_ADMIN, or kernel.kptr_restrict/bpf_jit_harden hide them)")
    names = {map_id: _map_name(map_id) for map_id in info.map_ids}
    return Loaded(info.id, info.name, info.xlated, Symbols.load_kallsyms(ksyms), info.map_ids,
                  {k: v for k, v in names.items() if v is not None})


@dataclass(frozen=True)
class TestRunResult:
    retval: int  # the program's return value as the kernel reports it: u32
    data_out: bytes
    ctx_out: bytes
    duration_ns: int  # mean time of one run

    __test__ = False  # not a pytest class


class LoadedProgram(FdOwner):
    """A loaded program. Owns its fd: close() it, use `with`, or let it be collected.

    fd, name, type (ProgType), tag (hex), id; insns (linked Insn list when pybpf loaded it, else None);
    log / stats (verifier log and summary line, when asked for at load); expected_attach_type
    (AttachType it was loaded with, None when not given or not loaded by pybpf).
    """

    def __init__(self, fd, insns=None, expected_attach_type=None):
        self._own(fd)
        self.insns = insns
        self.expected_attach_type = expected_attach_type
        self.log = None
        self.stats = None
        try:
            basic = syscall.obj_get_info_by_fd(fd, "prog")
        except BaseException:
            self.close()
            raise
        self.id = basic.id
        self.name = syscall.ffi.string(basic.name).decode(errors="replace")
        self.type = _prog_type(basic.type)
        self.tag = bytes(basic.tag).hex()

    @classmethod
    def from_id(cls, prog_id):
        """Open a program by id (BPF_PROG_GET_FD_BY_ID); needs root."""
        return cls(syscall.get_fd_by_id("prog", prog_id))

    @classmethod
    def from_pinned(cls, path):
        """Open a program pinned in bpffs, whoever loaded it."""
        self = cls(syscall.obj_get(path))
        self.pinned = os.fspath(path)
        return self

    @classmethod
    def from_fd(cls, fd):
        """Wrap a duplicate of an existing program fd (the caller keeps its own)."""
        return cls(os.dup(fd))

    @property
    def what(self):
        return f"program {self.name or self.id}"

    def info(self, contents=True):
        return prog_info(self._live_fd(), contents)

    def test_run(self, data_in=b"", ctx_in=None, repeat=1, data_size_out=None, ctx_size_out=None,
                 flags=0, cpu=0):
        """BPF_PROG_TEST_RUN -> TestRunResult(retval (u32), data_out, ctx_out, duration_ns).

        data_out is sized len(data_in) + 4096 unless data_size_out says otherwise; ctx_out
        defaults to len(ctx_in). raw_tracepoint and syscall programs take a ctx only and run
        once; a syscall program's ctx_out is the ctx as it left it."""
        ffi = syscall.ffi
        attr = syscall.new_attr()
        test = attr.test
        test.prog_fd = self._live_fd()
        data_in = bytes(data_in)
        data_buf = ffi.from_buffer(data_in) if data_in else None  # the kernel only reads data_in
        if data_buf is not None:
            test.data_in, test.data_size_in = syscall.address(data_buf), len(data_in)
        out_size = (len(data_in) + 4096 if data_in else 0) if data_size_out is None else data_size_out
        data_out = ffi.new("uint8_t[]", out_size) if out_size else None
        if data_out is not None:
            test.data_out, test.data_size_out = syscall.address(data_out), out_size
        ctx_out = ctx_buf = None
        if ctx_in is not None:
            ctx_in = bytes(ctx_in)
            # A copy: syscall programs write their ctx back into ctx_in.
            ctx_buf = ffi.new("uint8_t[]", ctx_in) if ctx_in else None
            test.ctx_in, test.ctx_size_in = (syscall.address(ctx_buf), len(ctx_in)) if ctx_in else (0, 0)
        ctx_size = (len(ctx_in) if ctx_in else 0) if ctx_size_out is None else ctx_size_out
        if self.type == ProgType.SYSCALL and ctx_buf is not None:
            ctx_out, ctx_size = ctx_buf, len(ctx_in)
        elif ctx_size and self.type not in _CTX_ONLY_TEST_RUN:
            ctx_out = ffi.new("uint8_t[]", ctx_size)
            test.ctx_out, test.ctx_size_out = syscall.address(ctx_out), ctx_size
        # raw_tracepoint and syscall programs run once and reject repeat, even repeat=1.
        test.repeat = 0 if self.type in _CTX_ONLY_TEST_RUN and repeat <= 1 else repeat
        test.flags, test.cpu = int(flags), cpu
        try:
            syscall.bpf(Cmd.PROG_TEST_RUN, attr)
        except SyscallError as e:
            detail = None
            if e.errno == _errno.ENOSPC:
                detail = (f"output needs {test.data_size_out} data / {test.ctx_size_out} ctx bytes; "
                          "pass a larger data_size_out / ctx_size_out")
            elif e.errno in (ENOTSUPP, _errno.EOPNOTSUPP):
                detail = f"{_type_name(self.type)} programs cannot be test-run"
            elif e.errno == _errno.EINVAL:
                detail = f"bad input for a {_type_name(self.type)} program (packet too short? ctx layout?)"
            raise syscall_error(f"BPF_PROG_TEST_RUN {self.name or self.id}", e.errno, detail) from None
        return TestRunResult(
            retval=test.retval,
            data_out=bytes(ffi.buffer(data_out, min(test.data_size_out, out_size))) if data_out is not None else b"",
            ctx_out=bytes(ffi.buffer(ctx_out, ctx_size if ctx_out is ctx_buf else min(test.ctx_size_out, ctx_size)))
            if ctx_out is not None else b"",
            duration_ns=test.duration,
        )

    def __repr__(self):
        state = "closed" if self.fd < 0 else f"fd={self.fd}"
        return f"<LoadedProgram {self.name or '?'} {_type_name(self.type)} id={self.id} tag={self.tag} {state}>"


def __getattr__(name):
    if name == "Program":
        warnings.warn("pybpf.prog.Program is now LoadedProgram (pybpf.asm.Program is the DSL's builder); "
                      "the old name goes in the next release", DeprecationWarning, stacklevel=2)
        return LoadedProgram
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
