"""Raw bpf(2) and perf_event_open(2) through cffi in ABI mode (no compiler).

CDEF copies include/uapi/linux/bpf.h with fixed-width types, as of the running 6.18 kernel: an
older kernel takes the larger attr as long as the fields it does not know are zero, and
new_attr() zero-fills it. Every fd is close-on-exec.
"""
import errno as _errno
import os
import zlib

from . import mounts
from .errors import ENOTSUPP, BpfError, SyscallError, syscall_error  # noqa: F401 -- syscall.ENOTSUPP stays
from .uapi import Cmd

# The one declaration text. pybpf/_ffi.py holds it pre-parsed (tools/gen_ffi.py writes it):
# importing that costs no pycparser run and none of its memory.
CDEF = """
long syscall(long number, ...);
int ioctl(int fd, unsigned long request, ...);
int mount(const char *source, const char *target, const char *fstype, unsigned long flags, const void *data);

union bpf_attr {
    struct {                                 /* BPF_MAP_CREATE */
        uint32_t map_type;
        uint32_t key_size;
        uint32_t value_size;
        uint32_t max_entries;
        uint32_t map_flags;
        uint32_t inner_map_fd;
        uint32_t numa_node;
        char     map_name[16];
        uint32_t map_ifindex;
        uint32_t btf_fd;
        uint32_t btf_key_type_id;
        uint32_t btf_value_type_id;
        uint32_t btf_vmlinux_value_type_id;
        uint64_t map_extra;
        int32_t  value_type_btf_obj_fd;
        int32_t  map_token_fd;
        uint64_t excl_prog_hash;
        uint32_t excl_prog_hash_size;
    };
    struct {                                 /* BPF_MAP_*_ELEM */
        uint32_t map_fd;
        uint64_t key;
        union {
            uint64_t value;
            uint64_t next_key;
        };
        uint64_t flags;
    };
    struct {                                 /* BPF_MAP_*_BATCH */
        uint64_t in_batch;
        uint64_t out_batch;
        uint64_t keys;
        uint64_t values;
        uint32_t count;
        uint32_t map_fd;
        uint64_t elem_flags;
        uint64_t flags;
    } batch;
    struct {                                 /* BPF_PROG_LOAD */
        uint32_t prog_type;
        uint32_t insn_cnt;
        uint64_t insns;
        uint64_t license;
        uint32_t log_level;
        uint32_t log_size;
        uint64_t log_buf;
        uint32_t kern_version;
        uint32_t prog_flags;
        char     prog_name[16];
        uint32_t prog_ifindex;
        uint32_t expected_attach_type;
        uint32_t prog_btf_fd;
        uint32_t func_info_rec_size;
        uint64_t func_info;
        uint32_t func_info_cnt;
        uint32_t line_info_rec_size;
        uint64_t line_info;
        uint32_t line_info_cnt;
        uint32_t attach_btf_id;
        union {
            uint32_t attach_prog_fd;
            uint32_t attach_btf_obj_fd;
        };
        uint32_t core_relo_cnt;
        uint64_t fd_array;
        uint64_t core_relos;
        uint32_t core_relo_rec_size;
        uint32_t log_true_size;
        int32_t  prog_token_fd;
        uint32_t fd_array_cnt;
        uint64_t signature;
        uint32_t signature_size;
        int32_t  keyring_id;
    };
    struct {                                 /* BPF_OBJ_PIN, BPF_OBJ_GET */
        uint64_t pathname;
        uint32_t bpf_fd;
        uint32_t file_flags;
        int32_t  path_fd;
    };
    struct {                                 /* BPF_PROG_ATTACH, BPF_PROG_DETACH */
        union {
            uint32_t target_fd;
            uint32_t target_ifindex;
        };
        uint32_t attach_bpf_fd;
        uint32_t attach_type;
        uint32_t attach_flags;
        uint32_t replace_bpf_fd;
        union {
            uint32_t relative_fd;
            uint32_t relative_id;
        };
        uint64_t expected_revision;
    };
    struct {                                 /* BPF_PROG_TEST_RUN */
        uint32_t prog_fd;
        uint32_t retval;
        uint32_t data_size_in;
        uint32_t data_size_out;
        uint64_t data_in;
        uint64_t data_out;
        uint32_t repeat;
        uint32_t duration;
        uint32_t ctx_size_in;
        uint32_t ctx_size_out;
        uint64_t ctx_in;
        uint64_t ctx_out;
        uint32_t flags;
        uint32_t cpu;
        uint32_t batch_size;
    } test;
    struct {                                 /* BPF_*_GET_*_ID */
        union {
            uint32_t start_id;
            uint32_t prog_id;
            uint32_t map_id;
            uint32_t btf_id;
            uint32_t link_id;
        };
        uint32_t next_id;
        uint32_t open_flags;
        int32_t  fd_by_id_token_fd;
    };
    struct {                                 /* BPF_OBJ_GET_INFO_BY_FD */
        uint32_t bpf_fd;
        uint32_t info_len;
        uint64_t info;
    } info;
    struct {                                 /* BPF_PROG_QUERY */
        union {
            uint32_t target_fd;
            uint32_t target_ifindex;
        };
        uint32_t attach_type;
        uint32_t query_flags;
        uint32_t attach_flags;
        uint64_t prog_ids;
        union {
            uint32_t prog_cnt;
            uint32_t count;
        };
        uint64_t prog_attach_flags;
        uint64_t link_ids;
        uint64_t link_attach_flags;
        uint64_t revision;
    } query;
    struct {                                 /* BPF_RAW_TRACEPOINT_OPEN */
        uint64_t name;
        uint32_t prog_fd;
        uint64_t cookie;
    } raw_tracepoint;
    struct {                                 /* BPF_BTF_LOAD */
        uint64_t btf;
        uint64_t btf_log_buf;
        uint32_t btf_size;
        uint32_t btf_log_size;
        uint32_t btf_log_level;
        uint32_t btf_log_true_size;
        uint32_t btf_flags;
        int32_t  btf_token_fd;
    };
    struct {                                 /* BPF_TASK_FD_QUERY */
        uint32_t pid;
        uint32_t fd;
        uint32_t flags;
        uint32_t buf_len;
        uint64_t buf;
        uint32_t prog_id;
        uint32_t fd_type;
        uint64_t probe_offset;
        uint64_t probe_addr;
    } task_fd_query;
    struct {                                 /* BPF_LINK_CREATE */
        union {
            uint32_t prog_fd;
            uint32_t map_fd;
        };
        union {
            uint32_t target_fd;
            uint32_t target_ifindex;
        };
        uint32_t attach_type;
        uint32_t flags;
        union {
            uint32_t target_btf_id;
            struct {
                uint64_t iter_info;
                uint32_t iter_info_len;
            };
            struct {
                uint64_t bpf_cookie;
            } perf_event;
            struct {
                uint32_t flags;
                uint32_t cnt;
                uint64_t syms;
                uint64_t addrs;
                uint64_t cookies;
            } kprobe_multi;
            struct {
                uint32_t target_btf_id;
                uint64_t cookie;
            } tracing;
            struct {
                uint32_t pf;
                uint32_t hooknum;
                int32_t  priority;
                uint32_t flags;
            } netfilter;
            struct {
                union {
                    uint32_t relative_fd;
                    uint32_t relative_id;
                };
                uint64_t expected_revision;
            } tcx;
            struct {
                uint64_t path;
                uint64_t offsets;
                uint64_t ref_ctr_offsets;
                uint64_t cookies;
                uint32_t cnt;
                uint32_t flags;
                uint32_t pid;
            } uprobe_multi;
            struct {
                union {
                    uint32_t relative_fd;
                    uint32_t relative_id;
                };
                uint64_t expected_revision;
            } netkit;
            struct {
                union {
                    uint32_t relative_fd;
                    uint32_t relative_id;
                };
                uint64_t expected_revision;
            } cgroup;
        };
    } link_create;
    struct {                                 /* BPF_LINK_UPDATE */
        uint32_t link_fd;
        union {
            uint32_t new_prog_fd;
            uint32_t new_map_fd;
        };
        uint32_t flags;
        union {
            uint32_t old_prog_fd;
            uint32_t old_map_fd;
        };
    } link_update;
    struct {
        uint32_t link_fd;
    } link_detach;
    struct {
        uint32_t type;
    } enable_stats;
    struct {
        uint32_t link_fd;
        uint32_t flags;
    } iter_create;
    struct {
        uint32_t prog_fd;
        uint32_t map_fd;
        uint32_t flags;
    } prog_bind_map;
    struct {
        uint32_t flags;
        uint32_t bpffs_fd;
    } token_create;
    struct {
        uint64_t stream_buf;
        uint32_t stream_buf_len;
        uint32_t stream_id;
        uint32_t prog_fd;
    } prog_stream_read;
};

struct bpf_prog_info {
    uint32_t type;
    uint32_t id;
    uint8_t  tag[8];
    uint32_t jited_prog_len;
    uint32_t xlated_prog_len;
    uint64_t jited_prog_insns;
    uint64_t xlated_prog_insns;
    uint64_t load_time;
    uint32_t created_by_uid;
    uint32_t nr_map_ids;
    uint64_t map_ids;
    char     name[16];
    uint32_t ifindex;
    uint32_t gpl_compatible:1;
    uint64_t netns_dev;
    uint64_t netns_ino;
    uint32_t nr_jited_ksyms;
    uint32_t nr_jited_func_lens;
    uint64_t jited_ksyms;
    uint64_t jited_func_lens;
    uint32_t btf_id;
    uint32_t func_info_rec_size;
    uint64_t func_info;
    uint32_t nr_func_info;
    uint32_t nr_line_info;
    uint64_t line_info;
    uint64_t jited_line_info;
    uint32_t nr_jited_line_info;
    uint32_t line_info_rec_size;
    uint32_t jited_line_info_rec_size;
    uint32_t nr_prog_tags;
    uint64_t prog_tags;
    uint64_t run_time_ns;
    uint64_t run_cnt;
    uint64_t recursion_misses;
    uint32_t verified_insns;
    uint32_t attach_btf_obj_id;
    uint32_t attach_btf_id;
};

struct bpf_map_info {
    uint32_t type;
    uint32_t id;
    uint32_t key_size;
    uint32_t value_size;
    uint32_t max_entries;
    uint32_t map_flags;
    char     name[16];
    uint32_t ifindex;
    uint32_t btf_vmlinux_value_type_id;
    uint64_t netns_dev;
    uint64_t netns_ino;
    uint32_t btf_id;
    uint32_t btf_key_type_id;
    uint32_t btf_value_type_id;
    uint32_t btf_vmlinux_id;
    uint64_t map_extra;
    uint64_t hash;
    uint32_t hash_size;
};

struct bpf_btf_info {
    uint64_t btf;
    uint32_t btf_size;
    uint32_t id;
    uint64_t name;
    uint32_t name_len;
    uint32_t kernel_btf;
};

struct bpf_link_info {
    uint32_t type;
    uint32_t id;
    uint32_t prog_id;
    union {
        struct {
            uint64_t tp_name;
            uint32_t tp_name_len;
            uint64_t cookie;
        } raw_tracepoint;
        struct {
            uint32_t attach_type;
            uint32_t target_obj_id;
            uint32_t target_btf_id;
            uint64_t cookie;
        } tracing;
        struct {
            uint64_t cgroup_id;
            uint32_t attach_type;
        } cgroup;
        struct {
            uint32_t netns_ino;
            uint32_t attach_type;
        } netns;
        struct {
            uint32_t ifindex;
        } xdp;
        struct {
            uint32_t map_id;
        } struct_ops;
        struct {
            uint32_t pf;
            uint32_t hooknum;
            int32_t  priority;
            uint32_t flags;
        } netfilter;
        struct {
            uint32_t type;
            union {
                struct {
                    uint64_t tp_name;
                    uint32_t name_len;
                    uint64_t cookie;
                } tracepoint;
                struct {
                    uint64_t config;
                    uint32_t type;
                    uint64_t cookie;
                } event;
            };
        } perf_event;
        struct {
            uint32_t ifindex;
            uint32_t attach_type;
        } tcx;
        struct {
            uint32_t ifindex;
            uint32_t attach_type;
        } netkit;
        struct {
            uint32_t map_id;
            uint32_t attach_type;
        } sockmap;
        uint8_t  _union_size[48];   /* the largest member, uprobe_multi, left out */
    };
};

struct perf_event_attr {
    uint32_t type;
    uint32_t size;
    uint64_t config;
    union {
        uint64_t sample_period;
        uint64_t sample_freq;
    };
    uint64_t sample_type;
    uint64_t read_format;
    uint64_t disabled:1, inherit:1, pinned:1, exclusive:1,
             exclude_user:1, exclude_kernel:1, exclude_hv:1, exclude_idle:1,
             mmap:1, comm:1, freq:1, inherit_stat:1,
             enable_on_exec:1, task:1, watermark:1, precise_ip:2,
             mmap_data:1, sample_id_all:1, exclude_host:1, exclude_guest:1,
             exclude_callchain_kernel:1, exclude_callchain_user:1, mmap2:1,
             comm_exec:1, use_clockid:1, context_switch:1, write_backward:1,
             namespaces:1, ksymbol:1, bpf_event:1, aux_output:1, cgroup:1,
             text_poke:1, build_id:1, inherit_thread:1, remove_on_exec:1,
             sigtrap:1, __reserved_1:26;
    union {
        uint32_t wakeup_events;
        uint32_t wakeup_watermark;
    };
    uint32_t bp_type;
    union {
        uint64_t bp_addr;
        uint64_t kprobe_func;
        uint64_t uprobe_path;
        uint64_t config1;
    };
    union {
        uint64_t bp_len;
        uint64_t kprobe_addr;
        uint64_t probe_offset;
        uint64_t config2;
    };
    uint64_t branch_sample_type;
    uint64_t sample_regs_user;
    uint32_t sample_stack_user;
    int32_t  clockid;
    uint64_t sample_regs_intr;
    uint32_t aux_watermark;
    uint16_t sample_max_stack;
    uint16_t __reserved_2;
    uint32_t aux_sample_size;
    uint32_t aux_action;
    uint64_t sig_data;
    uint64_t config3;
};
"""


def _new_ffi():
    """The generated FFI when it was made from this very CDEF, else one parsed now (slow, same result)."""
    try:
        from . import _ffi
    except Exception:  # noqa: BLE001 -- missing, or a cffi backend that cannot read it: parse instead
        _ffi = None
    if _ffi is not None and _ffi.CDEF_CRC32 == zlib.crc32(CDEF.encode()):
        return _ffi.ffi
    import cffi

    parsed = cffi.FFI()
    parsed.cdef(CDEF)
    return parsed


ffi = _new_ffi()
lib = ffi.dlopen(None)

# (bpf, perf_event_open) per architecture; asm-generic numbers on aarch64.
_SYSCALLS = {
    "x86_64": (321, 298),
    "aarch64": (280, 241),
    "arm64": (280, 241),
}
_NR = _SYSCALLS.get(os.uname().machine)

ATTR_SIZE = ffi.sizeof("union bpf_attr")

# perf_event_open(2) and its ioctls (asm-generic _IO/_IOW encoding, same on both arches).
PERF_FLAG_FD_CLOEXEC = 1 << 3
PERF_TYPE_HARDWARE = 0
PERF_TYPE_SOFTWARE = 1
PERF_TYPE_TRACEPOINT = 2
PERF_COUNT_SW_CPU_CLOCK = 0
PERF_COUNT_SW_BPF_OUTPUT = 10
PERF_SAMPLE_RAW = 1 << 10
PERF_EVENT_IOC_ENABLE = 0x2400
PERF_EVENT_IOC_DISABLE = 0x2401
PERF_EVENT_IOC_SET_BPF = 0x40042408

_INFO_STRUCTS = {
    "prog": "struct bpf_prog_info *",
    "map": "struct bpf_map_info *",
    "btf": "struct bpf_btf_info *",
    "link": "struct bpf_link_info *",
}
_GET_FD_BY_ID = {"prog": Cmd.PROG_GET_FD_BY_ID, "map": Cmd.MAP_GET_FD_BY_ID,
                 "btf": Cmd.BTF_GET_FD_BY_ID, "link": Cmd.LINK_GET_FD_BY_ID}
_GET_NEXT_ID = {"prog": Cmd.PROG_GET_NEXT_ID, "map": Cmd.MAP_GET_NEXT_ID,
                "btf": Cmd.BTF_GET_NEXT_ID, "link": Cmd.LINK_GET_NEXT_ID}

# The variadic syscall() wants cdata arguments; casting once per command keeps hot paths cheap.
_LONG_CMD = {cmd: ffi.cast("long", cmd) for cmd in Cmd}
_LONG_SIZE = ffi.cast("long", ATTR_SIZE)


def _nr(index, name):
    if _NR is None:
        raise BpfError(f"{name}: no syscall number known for architecture {os.uname().machine!r} "
                       f"(pybpf knows {', '.join(sorted(_SYSCALLS))})")
    return _NR[index]


def new_attr():
    """A zeroed `union bpf_attr *`; the kernel insists unused bytes are zero."""
    return ffi.new("union bpf_attr *")


def address(cdata):
    """The address of a cdata pointer/array as the u64 the kernel's attr fields want."""
    return int(ffi.cast("uintptr_t", cdata))


def bpf(cmd, attr, size=None):
    """bpf(cmd, attr, size) -> the non-negative result; raises SyscallError naming BPF_<cmd>."""
    cmd = Cmd(cmd)
    nr = _NR[0] if _NR else _nr(0, "bpf")
    ret = lib.syscall(nr, _LONG_CMD[cmd], attr, _LONG_SIZE if size is None else ffi.cast("long", size))
    if ret < 0:
        raise syscall_error(f"BPF_{cmd.name}", ffi.errno)
    return ret


def new_perf_attr():
    """A zeroed `struct perf_event_attr *` with .size filled in."""
    attr = ffi.new("struct perf_event_attr *")
    attr.size = ffi.sizeof(attr[0])
    return attr


def perf_event_open(attr, pid, cpu, group_fd=-1, flags=PERF_FLAG_FD_CLOEXEC):
    """perf_event_open(2) -> fd (close-on-exec unless flags drop PERF_FLAG_FD_CLOEXEC)."""
    if not attr.size:
        attr.size = ffi.sizeof(attr[0])
    ret = lib.syscall(_nr(1, "perf_event_open"), attr, ffi.cast("int", pid), ffi.cast("int", cpu),
                      ffi.cast("int", group_fd), ffi.cast("unsigned long", flags))
    if ret < 0:
        raise syscall_error(f"perf_event_open(type={attr.type}, config={attr.config}, pid={pid}, cpu={cpu})",
                            ffi.errno)
    return ret


def ioctl(fd, request, arg=0):
    """ioctl(fd, request, arg) -> result; arg is an int or a cdata pointer."""
    if not isinstance(arg, ffi.CData):
        arg = ffi.cast("unsigned long", arg)
    ret = lib.ioctl(fd, request, arg)
    if ret < 0:
        raise syscall_error(f"ioctl(fd {fd}, {request:#x})", ffi.errno)
    return ret


def obj_get_info_by_fd(fd, kind):
    """BPF_OBJ_GET_INFO_BY_FD. kind is "prog", "map", "btf" or "link", or a prepared
    info struct pointer (e.g. with map_ids/nr_map_ids set for the kernel to fill).
    Returns the filled struct pointer."""
    info = ffi.new(_INFO_STRUCTS[kind]) if isinstance(kind, str) else kind
    attr = new_attr()
    attr.info.bpf_fd = fd
    attr.info.info_len = ffi.sizeof(info[0])
    attr.info.info = address(info)
    bpf(Cmd.OBJ_GET_INFO_BY_FD, attr)
    return info


def _path(path):
    return ffi.new("char[]", os.fsencode(path))


def obj_pin(fd, path):
    """BPF_OBJ_PIN: pin fd at path (which must be on a bpffs mount)."""
    cpath = _path(path)
    attr = new_attr()
    attr.pathname = address(cpath)
    attr.bpf_fd = fd
    try:
        bpf(Cmd.OBJ_PIN, attr)
    except SyscallError as e:
        raise syscall_error(f"BPF_OBJ_PIN {path}", e.errno) from None


def obj_get(path, flags=0):
    """BPF_OBJ_GET: a new fd for the object pinned at path (flags: MapFlags.RDONLY/WRONLY)."""
    cpath = _path(path)
    attr = new_attr()
    attr.pathname = address(cpath)
    attr.file_flags = flags
    try:
        return bpf(Cmd.OBJ_GET, attr)
    except SyscallError as e:
        raise syscall_error(f"BPF_OBJ_GET {path}", e.errno) from None


def mount_point(path, fstype):
    """The mount point of the nearest `fstype` mount at or above path (pybpf.mounts), or None."""
    return mounts.containing(path, fstype)


def mount(fstype, target, source=None):
    """mount -t fstype source target (source defaults to the fs type, as `mount -t bpf bpf` does)."""
    if lib.mount((source or fstype).encode(), os.fsencode(target), fstype.encode(), 0, ffi.NULL) != 0:
        raise syscall_error(f"mount -t {fstype} {source or fstype} {target}", ffi.errno)


def ensure_bpffs(directory="/sys/fs/bpf"):
    """Make sure directory lies on a bpffs, mounting one at /sys/fs/bpf when it is missing.

    Pins only work on bpffs; a fresh VM or container often lacks the mount.
    """
    if mount_point(directory, "bpf"):
        return
    root = "/sys/fs/bpf"
    if not os.path.realpath(directory).startswith(root):
        raise BpfError(f"{directory} is not on a bpffs mount (mount -t bpf bpf <dir>)")
    mount("bpf", root)


def get_fd_by_id(kind, id, flags=0):
    """BPF_{PROG,MAP,BTF,LINK}_GET_FD_BY_ID -> fd."""
    attr = new_attr()
    attr.start_id = id
    attr.open_flags = flags
    return bpf(_GET_FD_BY_ID[kind], attr)


def get_next_id(kind, start=0):
    """BPF_*_GET_NEXT_ID: the first id above start, or None when there is none."""
    attr = new_attr()
    attr.start_id = start
    try:
        bpf(_GET_NEXT_ID[kind], attr)
    except SyscallError as e:
        if e.errno == _errno.ENOENT:
            return None
        raise
    return attr.next_id
