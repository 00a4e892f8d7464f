"""Tracepoint format files: offsets come from the kernel's text, in record order."""
from pybpf import tracefs

FORMAT = """name: inet_sock_set_state
ID: 1234
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:28;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:36;\tsize:16;\tsigned:0;

print fmt: "family=%s"
"""


def test_parse_format_reads_names_offsets_sizes_and_sign_in_order():
    fields = tracefs.parse_format(FORMAT)
    assert list(fields) == ["common_type", "common_pid", "skaddr", "oldstate", "sport", "saddr", "saddr_v6"]
    assert fields["oldstate"] == tracefs.Field(16, 4, True)
    assert fields["saddr_v6"] == (36, 16, False)  # arrays by their name, without [16]
    assert fields["skaddr"].offset == 8
