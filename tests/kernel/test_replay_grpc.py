"""gRPC (HTTP/2 cleartext) captured for real, over TCP and over a Unix socket, from grpcio's
client and server in a lab container; replayed to fresh grpcio servers on this machine: identical;
to a variant: the two changed calls differ (a body, and a grpc-status in the trailers)."""
import socket
import subprocess

from bpfhook import replay
from tests import oracles
from tests.capturing import capture, server


def grpc_server(*addresses, spawn=subprocess.Popen):
    return server([oracles.require("grpcio"), "tests/grpcpeer.py", "serve", *addresses], spawn)


def call(python, address):
    r = subprocess.run([python, "tests/grpcpeer.py", "call", address], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "StatusCode.NOT_FOUND" in r.stdout, r.stdout + r.stderr


def test_grpc_over_tcp_and_unix_socket(lab, tmp_path):
    python = oracles.require("grpcio")
    c = lab(ipv6=False)
    out, sock = tmp_path / "grpc.pcapng", tmp_path / "grpc.sock"
    with grpc_server("0.0.0.0:50051", f"unix:{sock}", spawn=c.spawn):
        with capture(c, out):
            call(python, f"{c.ipv4}:50051")
            call(python, f"unix:{sock}")
    for extra, outcome in (((), "identical"), (("--variant",), "different")):
        fresh = tmp_path / f"fresh{len(extra)}.sock"
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        with grpc_server(f"127.0.0.1:{port}", f"unix:{fresh}", *extra):
            tcp = replay.replay(str(out), f"127.0.0.1:{port}", opts=replay.Options(speed=1.0, timeout=30))
            unix = replay.replay(str(out), str(fresh), opts=replay.Options(speed=None, timeout=30))
        for report, kind in ((tcp, "tcp"), (unix, "unix-stream")):
            grpc = [e for e in report["exchanges"] if e["protocol"] == "grpc"]
            assert len(grpc) == 4 and {e["kind"] for e in grpc} == {kind}, report["exchanges"]
            assert report["summary"]["errors"] == 0, report["exchanges"]
            if outcome == "identical":
                assert all(e["outcome"] == "identical" for e in grpc), grpc
            else:
                diffs = [e["differences"] for e in grpc if e["outcome"] == "different"]
                assert len(diffs) == 2 and "trailer grpc-status: 0 -> 7" in diffs[1], diffs
