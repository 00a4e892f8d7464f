"""One exception tree for pybpf.

Every error a user can meet derives from BpfError, so `except BpfError` is
enough for a CLI to print one clean line and exit non-zero.
"""
import errno as _errno
import os as _os
import re as _re
import sys as _sys
import types as _types

ENOTSUPP = 524  # kernel-internal errno that some bpf() paths let escape; strerror() does not know it

# The verifier's statistics lines: they close every log, failed or not, and say nothing about why.
STATS_LINE = _re.compile(r"^(processed \d+ insns|verification time \d+|stack depth [\d+]+).*$", _re.M)


class BpfError(Exception):
    """Base of every pybpf error."""


class InvalidArgument(BpfError, ValueError):
    """Input that cannot work (a bad size, name, flag, layout or instruction), refused before
    any system call. The base of every "your input is wrong" error, so callers can tell them
    from kernel and permission failures; a ValueError too, for code that expects one."""


class LayoutError(InvalidArgument):
    """Bytes or values that do not fit a layout (pybpf.layout)."""


class MapError(InvalidArgument):
    """A map argument the kernel would reject or that cannot mean anything (pybpf.maps)."""


class AssemblerError(InvalidArgument):
    """An instruction or program cannot be encoded or parsed.

    `where` is a human location: "file.py:12", "line 3, column 7", or "insn 5".
    """

    def __init__(self, message, where=None):
        self.message = message
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)
        # The traceback ends at the caller's line that asked for the bad thing (an IDE jumps
        # there), not inside pybpf: raising prepends pybpf's own frames before it.
        frame = _caller_frame()
        if frame is not None:
            self.__traceback__ = _types.TracebackType(None, frame, frame.f_lasti, frame.f_lineno)


def _caller_frame():
    """The first frame up the stack outside pybpf (None when there is none)."""
    f = _sys._getframe(2)
    while f is not None and (f.f_globals.get("__name__") or "").startswith("pybpf."):
        f = f.f_back
    return f


class _Here(Exception):
    pass


def traceback_at(path, line):
    """A traceback entry at `path`:`line` (a frame of a stub compiled as if it were that file), to
    end a traceback where the cause lies when no live frame is there: a verifier rejection found
    at load time points at the DSL line that emitted the instruction."""
    try:
        exec(compile("\n" * (line - 1) + "raise _Here", path, "exec"), {"_Here": _Here})
    except _Here as e:
        return e.__traceback__.tb_next
    return None


class SyscallError(BpfError, OSError):
    """A system call failed. Says which command and why."""

    def __init__(self, command, err, detail=None):
        self.command = command
        text = f"{command}: {_os.strerror(err)} ({_errno.errorcode.get(err, err)})"
        if detail:
            text += f": {detail}"
        OSError.__init__(self, err, text)

    def __str__(self):
        return self.strerror


class VerifierError(SyscallError):
    """The verifier rejected a program.

    log:      the full verifier log (the message quotes its last lines, statistics left out)
    insn_idx: index of the failing instruction, when the log names one
    insn:     that instruction in kernel syntax
    source:   "file.py:line" of the DSL call that emitted it, when known
    """

    def __init__(self, err, log, insn_idx=None, insn=None, source=None, name=None):
        self.log = log
        self.insn_idx = insn_idx
        self.insn = insn
        self.source = source
        self.name = name
        self.hint = verifier_hint(log)
        tail = verifier_tail(log, 3)
        detail = " | ".join(tail) if tail else "no verifier log"
        if insn is not None:
            detail += f"\n  failing instruction {insn_idx}: {insn}"
        if source:
            detail += f"\n  emitted at {source}"
        if self.hint:
            detail += f"\n  hint: {self.hint}"
        super().__init__("BPF_PROG_LOAD" + (f" {name}" if name else ""), err, detail)


# The verifier's common rejections, in the words of the DSL: (log pattern, one-line hint).
_HINTS = [(_re.compile(p), hint) for p, hint in (
    (r"invalid mem access '(map_value_or_null|\w*_or_null\w*)'",
     "check `p.r0 != 0` in `p.If` before using a map lookup's (or other _or_null) result"),
    (r"invalid mem access 'scalar'", "the register holds a number, not a pointer: load a pointer into it "
     "(calls clobber r1-r5: keep pointers in r6-r9)"),
    (r"R[1-5] !read_ok", "a register read after a call clobbered it: calls clobber r1-r5; keep values in r6-r9"),
    (r"R0 !read_ok|R0 is not set|R0 not set", "set r0 before exit: p.exit(0)"),
    (r"R\d+ !read_ok", "a register read before anything was written to it"),
    (r"invalid (indirect )?read from stack", "stack bytes read before they were written: slot.zero() or store "
     "every field first"),
    (r"invalid access to packet", "check `data + N <= data_end` in `p.If` before reading N bytes of the packet"),
    (r"invalid access to map value", "an offset or size outside the map value: check the index against the "
     "value size"),
    (r"unreachable insn", "an instruction no path reaches: a jump over it or code after exit"),
    (r"back-edge|infinite loop detected", "a loop the verifier cannot bound: use p.For with a constant stop or "
     "p.bpf_loop"),
    (r"unknown func|program of this type cannot use helper", "this helper is not available to this program type"),
    (r"cannot call GPL-restricted function", "the helper needs a GPL-compatible license (Program(license='GPL'))"),
    (r"expected=map_ptr|type=\w+ expected=map_ptr", "pass the map itself (the DSL loads its fd) as this argument"),
)]


def verifier_hint(log):
    """A one-line hint for a verifier log's reason to reject, in the DSL's words; None when unknown."""
    for line in reversed(verifier_tail(log or "", 3)):
        for pattern, hint in _HINTS:
            if pattern.search(line):
                return hint
    return None


class FeatureUnavailable(BpfError):
    """The running kernel lacks something a call needs (a hook, a map type)."""


class ElfError(BpfError):
    """A file that is no ELF pybpf.elf takes, or a symbol it does not hold."""


class SymbolNotFound(ElfError):
    """The ELF file holds no such symbol (a uprobe target)."""


class NotPermitted(SyscallError):
    """EPERM/EACCES: usually not root, or a locked-down kernel."""


def verifier_tail(log, count):
    """The last `count` non-empty lines of a verifier log, its statistics left out: why it stopped."""
    return [line for line in log.strip().splitlines() if line.strip() and not STATS_LINE.match(line)][-count:]


def syscall_error(command, err, detail=None):
    """The exception for a failed call: NotPermitted for EPERM/EACCES, SyscallError otherwise."""
    if err in (_errno.EPERM, _errno.EACCES):
        return NotPermitted(command, err, detail or "are you root? (needs CAP_BPF/CAP_SYS_ADMIN)")
    if err == ENOTSUPP:
        detail = "ENOTSUPP: not supported for this object or kernel" + (f"; {detail}" if detail else "")
    return SyscallError(command, err, detail)


def netlink_error(error, what):
    """syscall_error for a pyroute2 NetlinkError, naming what was asked of the kernel."""
    return syscall_error(what, error.code)
