"""One exception tree for pybpf.

Every error a user can meet derives from BpfError, so `except BpfError` is
enough for a CLI to print one clean line and exit non-zero.
"""
import errno as _errno
import os as _os
import re as _re

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
        tail = verifier_tail(log, 3)
        detail = " | ".join(tail) if tail else "no verifier log"
        if insn is not None:
            detail += f"\n  failing instruction {insn_idx}: {insn}"
        if source:
            detail += f"\n  emitted at {source}"
        super().__init__("BPF_PROG_LOAD" + (f" {name}" if name else ""), err, detail)


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
