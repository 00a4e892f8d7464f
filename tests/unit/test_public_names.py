"""What users import keeps working: every name the README uses, and every module path pybpf had
before the re-house (issue 26) with every name it defined (a moved module re-exports its new home)."""
import importlib
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Module -> the names it defined itself, as of main before the re-house (a240f96).
BEFORE = {
    "asm": "BinExpr CPUS Cond FuncRef MAX_STACK Mem Program Ptr Reg S32_MAX S32_MIN Stack StackSlot TYPES Type U32_MAX "
           "field_of s16 s32 s64 s8 u16 u32 u64 u8",
    "insn": "Insn InvalidInsn S16 decode encode",
    "isa": "ALU ALU64 ALU_OPS ATOMIC_OPS AluOp AtomicOp BY_NAME CALL CALL_HELPER CALL_KFUNC CALL_PSEUDO CLASS_NAMES "
           "DECODE DISCRIMINATOR END EXIT FETCH FIELDS FRAME_POINTER JA JCOND JMP JMP32 JMP_CONDS JmpCond K LD LDX "
           "LD_IMM64_PSEUDO MAX_REG MODE_ABS MODE_ATOMIC MODE_IMM MODE_IND MODE_MEM MODE_MEMSX MOV NEG OPS Op "
           "PSEUDO_BTF_ID PSEUDO_FUNC PSEUDO_MAP_FD PSEUDO_MAP_IDX PSEUDO_MAP_IDX_VALUE PSEUDO_MAP_VALUE SIZE_B "
           "SIZE_BITS SIZE_DW SIZE_H SIZE_SUFFIX SIZE_W ST STX UNKNOWN X decode_op lookup",
    "link": "label_slots link resolve",
    "helpers": "BY_ID BY_NAME HELPERS Helper lookup name_of",
    "helpers_table": "HELPERS",
    "text": "SYNTAXES assemble detect_syntax main parse",
    "disasm": "AUX_REG Loaded RAW SYNTAXES Symbols disassemble disassemble_json format_insn main parse_hex read_loaded",
    "prog": "BPF_MAXINSNS COMPLEXITY_LIMIT_INSNS ENOTSUPP LOG_SIZE_MAX LOG_SIZE_START LOG_STATS OBJ_NAME_LEN ProgInfo "
            "Program TestRunResult attach_type_of failing_insn_index function_slots instructions iter_ids load "
            "object_name patch_maps prog_info prog_type_of program_btf source_lines stats_line",
    "maps": "FD_VALUE_TYPES KEYLESS_TYPES LOCAL_STORAGE_TYPES Map MapError MapInfo PERCPU_TYPES ffi possible_cpus",
    "btf": "Btf Field INT_BOOL INT_CHAR INT_SIGNED KIND KINDS LINKAGE MAGIC MAX_TYPE_ID MAX_VLEN MODIFIER_KINDS Member "
           "Param RECORDS SIZED_KINDS SecInfo Type VERSION VMLINUX_PATH VOID BtfBuilder map_btf load_btf LAYOUTS",
    "btf_build": "BtfBuilder FUNC_INFO LINE_INFO LOG_SIZE MAX_LINE ProgramBtf load_btf map_btf program_btf",
    "attach": "Attachment CGROUP_HOOKS KPROBE_PMU Link PerfEventLink ProgAttachment XDP_FLAGS_REPLACE "
              "XDP_FLAGS_UPDATE_IF_NOEXIST XDP_MODES XdpNetlink attach_type cgroup cgroup2_root cgroup_path fentry "
              "fexit ffi ifindex iterator kprobe kretprobe link_create netns prog_fd raw_tracepoint run_iterator "
              "sk_lookup sockmap tc tracepoint tracing xdp",
    "tc": "CLSACT_PARENT ETH_P_ALL FILTER_HANDLE TCX TcFilter TcFilterRef attach find_filter remove_filter "
          "Attachment Link ifindex link_create prog_fd",
    "ringbuf": "BUSY_BIT DISCARD_BIT HEADER_SIZE RingBuffer",
    "perfbuf": "DATA_HEAD DATA_TAIL PERF_RECORD_LOST PERF_RECORD_SAMPLE PerfBuffer online_cpus",
    "events": "EventReader open_reader ordering",
    "features": "BAD_FD Feature RETURN_0 RETURN_MINUS_1 TP_BTF_PREFIX has main names probe report",
    "sys": "ATTR_SIZE CDEF ENOTSUPP PERF_COUNT_SW_BPF_OUTPUT PERF_COUNT_SW_CPU_CLOCK PERF_EVENT_IOC_DISABLE "
           "PERF_EVENT_IOC_ENABLE PERF_EVENT_IOC_SET_BPF PERF_FLAG_FD_CLOEXEC PERF_SAMPLE_RAW PERF_TYPE_HARDWARE "
           "PERF_TYPE_SOFTWARE PERF_TYPE_TRACEPOINT address bpf ensure_bpffs ffi get_fd_by_id get_next_id ioctl mount "
           "mount_point new_attr new_perf_attr obj_get obj_get_info_by_fd obj_pin perf_event_open syscall_error",
    "errors": "AssemblerError BpfError FeatureUnavailable InvalidArgument NotPermitted SyscallError VerifierError",
    "layout": "Codec ConstructCodec LayoutError RawCodec StructCodec codec size_of",
    "uapi": "AttachFlags AttachType Cmd LinkType MapFlags MapType OBJ_NAME_LEN ProgFlags ProgType QueryFlags StatsType "
            "TestRunFlags UpdateFlags member",
    "cleanup": "Registry SIGNALS pending register registry run run_all unregister",
    "mounts": "MOUNTINFO Mount cgroup2_root containing find mounts parse unescape",
    "tracefs": "Field TRACEFS_DIR find_mount mounts parse_format root split_name tracepoint_fields tracepoint_id",
}


@pytest.mark.filterwarnings("ignore:pybpf.prog.Program is now LoadedProgram:DeprecationWarning")
@pytest.mark.parametrize("module", sorted(BEFORE))
def test_every_module_path_keeps_its_names(module):
    mod = importlib.import_module(f"pybpf.{module}")
    assert [name for name in BEFORE[module].split() if not hasattr(mod, name)] == []


def _readme_names():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    dotted = {name for name in re.findall(r"(?<![/\w])pybpf(?:\.[A-Za-z_]\w*)+", text)
              if not name.endswith(".md")}  # docs/pybpf.md is the guide, not a module
    imports = set(re.findall(r"^from (pybpf[\w.]*) import ([\w, ]+)$", text, re.M))
    return sorted(dotted | {f"{module}.{name.strip()}" for module, names in imports for name in names.split(",")})


@pytest.mark.parametrize("dotted", _readme_names())
def test_every_name_the_readme_uses_resolves(dotted):
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):  # the longest importable prefix, then attributes
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for part in parts[cut:]:
            obj = getattr(obj, part)
        return
    pytest.fail(f"{dotted}: nothing importable")


@pytest.mark.parametrize("command", [
    ["-m", "pybpf.asm", "--help"], ["-m", "pybpf.text", "--help"], ["-m", "pybpf.disasm", "--help"],
    ["-m", "pybpf.features", "--help"],
])
def test_module_entry_points_run(command):
    done = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("usage: "), done.stderr



def test_the_loaded_programs_old_name_warns():
    from pybpf import prog

    with pytest.warns(DeprecationWarning, match="LoadedProgram"):
        from pybpf.prog import Program
    assert Program is prog.LoadedProgram
    with pytest.raises(AttributeError):
        prog.NoSuchName
