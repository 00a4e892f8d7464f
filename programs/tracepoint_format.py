"""Field offsets of a tracepoint record, read from tracefs at load time.

A tracepoint program's context is the raw record laid out as
<tracefs>/events/<category>/<name>/format says, and that layout changes
between kernels (fields are added, arrays move): offsets are read here, never
written into the programs.

    field:__u16 sport;	offset:24;	size:2;	signed:0;
"""
import os
import re

from pybpf import tracefs
from pybpf.errors import FeatureUnavailable

_FIELD = re.compile(r"^\s*field:(?P<decl>[^;]*);\s*offset:(?P<offset>\d+);\s*size:(?P<size>\d+);"
                    r"\s*signed:(?P<signed>\d+);", re.M)
_NAME = re.compile(r"(\w+)\s*(\[[^\]]*\])?\s*$")


def parse(text):
    """{field name: (offset, size, signed)} of a format file's text."""
    out = {}
    for m in _FIELD.finditer(text):
        name = _NAME.search(m["decl"])
        if name:
            out[name[1]] = (int(m["offset"]), int(m["size"]), m["signed"] == "1")
    return out


def fields(category, name=None):
    """{field name: (offset, size, signed)} of tracepoint category:name on this kernel."""
    category, name = tracefs.split_name(category, name)
    path = os.path.join(tracefs.root(), "events", category, name, "format")
    try:
        with open(path) as f:
            return parse(f.read())
    except FileNotFoundError:
        raise FeatureUnavailable(f"tracepoint {category}:{name} does not exist on this kernel "
                                 f"({path} is absent)") from None


def require(found, names, where):
    """The fields `names` of `found`, or FeatureUnavailable naming the missing ones."""
    missing = [n for n in names if n not in found]
    if missing:
        raise FeatureUnavailable(f"tracepoint {where} lacks field(s) {', '.join(missing)} on this kernel")
    return found
