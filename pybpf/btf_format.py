"""BTF's on-disk format, defined once for the reader (pybpf.btf) and the writer (pybpf.btf_build).

Byte order is the host's, as it is for the kernel's BTF.
"""
import struct

MAGIC = 0xEB9F
VERSION = 1
MAX_TYPE_ID = 0x000FFFFF
MAX_VLEN = 0xFFFF

# record -> ((field, struct code), ...); codes are native byte order.
RECORDS = {
    "btf_header": (("magic", "H"), ("version", "B"), ("flags", "B"), ("hdr_len", "I"),
                   ("type_off", "I"), ("type_len", "I"), ("str_off", "I"), ("str_len", "I")),
    "btf_type": (("name_off", "I"), ("info", "I"), ("size_or_type", "I")),
    "btf_int": (("bits", "I"),),
    "btf_array": (("type", "I"), ("index_type", "I"), ("nelems", "I")),
    "btf_member": (("name_off", "I"), ("type", "I"), ("offset", "I")),
    "btf_enum": (("name_off", "I"), ("val", "i")),
    "btf_param": (("name_off", "I"), ("type", "I")),
    "btf_var": (("linkage", "I"),),
    "btf_var_secinfo": (("type", "I"), ("offset", "I"), ("size", "I")),
    "btf_decl_tag": (("component_idx", "i"),),
    "btf_enum64": (("name_off", "I"), ("val_lo32", "I"), ("val_hi32", "I")),
}

# kind number -> (name, record after btf_type, record repeated vlen times).
KINDS = (
    ("unknown", None, None),
    ("int", "btf_int", None),
    ("ptr", None, None),
    ("array", "btf_array", None),
    ("struct", None, "btf_member"),
    ("union", None, "btf_member"),
    ("enum", None, "btf_enum"),
    ("fwd", None, None),
    ("typedef", None, None),
    ("volatile", None, None),
    ("const", None, None),
    ("restrict", None, None),
    ("func", None, None),
    ("func_proto", None, "btf_param"),
    ("var", "btf_var", None),
    ("datasec", None, "btf_var_secinfo"),
    ("float", None, None),
    ("decl_tag", "btf_decl_tag", None),
    ("type_tag", None, None),
    ("enum64", None, "btf_enum64"),
)
KIND = {name: number for number, (name, _, _) in enumerate(KINDS)}

INT_SIGNED, INT_CHAR, INT_BOOL = 1, 2, 4
LINKAGE = {"static": 0, "global": 1, "extern": 2}

# record -> struct.Struct: what the reader unpacks and the writer packs.
FORMATS = {name: struct.Struct("=" + "".join(code for _, code in fields)) for name, fields in RECORDS.items()}
