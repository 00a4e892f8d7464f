"""pybpf.consts is what tools/gen_consts.py makes of the uapi headers on this machine."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import gen_consts  # noqa: E402


def test_generated_module_matches_the_headers():
    if not os.path.exists("/usr/include/linux/bpf.h"):
        pytest.skip("no uapi headers here (apt-get install linux-libc-dev)")
    with open(os.path.join(ROOT, "pybpf", "consts.py")) as f:
        assert f.read() == gen_consts.render("/usr/include"), "run tools/gen_consts.py > pybpf/consts.py"


def test_generator_evaluates_enums_and_macros(tmp_path):
    linux = tmp_path / "linux"
    linux.mkdir()
    for header in gen_consts.HEADERS:
        (tmp_path / header).write_text("")
    (linux / "pkt_cls.h").write_text(
        "#define TC_ACT_OK 0\n#define TC_ACT_UNSPEC (-1)\n#define __TC_ACT_EXT_SHIFT 28\n"
        "#define __TC_ACT_EXT(local) ((local) << __TC_ACT_EXT_SHIFT)\n#define TC_ACT_JUMP __TC_ACT_EXT(1)\n")
    (linux / "in.h").write_text("enum {\n  IPPROTO_IP = 0, /* dummy */\n#define IPPROTO_IP IPPROTO_IP\n"
                                "  IPPROTO_ICMP = 1,\n  IPPROTO_IGMP,\n  IPPROTO_TCP = 6U,\n};\n")
    found = dict(gen_consts.constants(str(tmp_path)))
    assert found["linux/pkt_cls.h"] == [("TC_ACT_OK", 0), ("TC_ACT_UNSPEC", -1), ("TC_ACT_JUMP", 1 << 28)]
    assert found["linux/in.h"] == [("IPPROTO_IP", 0), ("IPPROTO_ICMP", 1), ("IPPROTO_IGMP", 2), ("IPPROTO_TCP", 6)]
