"""h2c and gRPC replay against independent implementations on loopback: nghttp2's nghttpd and
nghttp, and grpcio's server and client. Their conversations are recorded by a TCP proxy into a
pcapng (tests/kernel captures the real thing), replayed to a fresh server: identical; to a
changed one: exactly the changed answers differ."""
import contextlib
import socket
import subprocess
import time

from bpfhook import replay
from tests import oracles
from tests.capturing import server
from tests.pcapfiles import recorded_conversations, write


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def nghttpd(root):
    port = free_port()
    proc = subprocess.Popen([oracles.require("nghttpd"), "--no-tls", "-d", str(root), "-a", "127.0.0.1", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):  # up to 5 s to listen
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert proc.poll() is None, "nghttpd exited"
            time.sleep(0.05)
        yield port
    finally:
        proc.kill()
        proc.wait()


def test_h2c_against_nghttpd(tmp_path):
    nghttp = oracles.require("nghttp")
    root = tmp_path / "www"
    root.mkdir()
    (root / "a.json").write_text('{"hello": "world", "n": [1, 2]}\n')
    (root / "big.txt").write_text("".join(f"line {i}\n" for i in range(6000)))  # > 16 KiB frames, flow control
    with nghttpd(root) as port:
        def clients(proxy):  # three streams multiplexed on one connection, then a second connection
            urls = [f"http://127.0.0.1:{proxy}{p}" for p in ("/a.json", "/big.txt", "/missing")]
            subprocess.run([nghttp, "-n", *urls], check=False, timeout=30)
            subprocess.run([nghttp, "-n", urls[0]], check=True, timeout=30)
        path = write(tmp_path / "h2.pcapng", recorded_conversations(("127.0.0.1", port), clients))
        same = replay.replay(path, f"127.0.0.1:{port}", opts=replay.Options(speed=1.0, timeout=30))
        (root / "a.json").write_text('{"n": [1, 2], "hello": "there"}\n')
        changed = replay.replay(path, f"127.0.0.1:{port}", opts=replay.Options(speed=None, timeout=30))
    assert same["summary"] == dict(requests=4, identical=4, different=0, errors=0, uncompared=0), same
    assert {(e["protocol"], e["path"], e["status"]) for e in same["exchanges"]} == {
        ("h2", "/a.json", 200), ("h2", "/big.txt", 200), ("h2", "/missing", 404)}
    bad = [(e["path"], e["differences"]) for e in changed["exchanges"] if e["outcome"] != "identical"]
    assert bad == [("/a.json", ["body (JSON) differs", '  $.hello: "world" -> "there"'])] * 2


def grpc_server(address, *extra):
    return server([oracles.require("grpcio"), "tests/grpcpeer.py", "serve", address, *extra])


def test_grpc_against_grpcio(tmp_path):
    python = oracles.require("grpcio")
    port = free_port()
    with grpc_server(f"127.0.0.1:{port}"):
        def client(proxy):
            subprocess.run([python, "tests/grpcpeer.py", "call", f"127.0.0.1:{proxy}"], check=True, timeout=60)
        path = write(tmp_path / "grpc.pcapng", recorded_conversations(("127.0.0.1", port), client))
        same = replay.replay(path, f"127.0.0.1:{port}", opts=replay.Options(speed=1.0, timeout=30))
    variant = free_port()
    with grpc_server(f"127.0.0.1:{variant}", "--variant"):
        changed = replay.replay(path, f"127.0.0.1:{variant}", opts=replay.Options(speed=None, timeout=30))
    assert same["summary"]["identical"] == 4 and same["summary"]["requests"] == 4, same
    assert [e["protocol"] for e in same["exchanges"]] == ["grpc"] * 4
    different = [e["differences"] for e in changed["exchanges"] if e["outcome"] == "different"]
    assert changed["summary"]["different"] == 2 and changed["summary"]["errors"] == 0
    assert "trailer grpc-status: 0 -> 7" in different[1] and "trailer grpc-message added: no bob today" in different[1]
    assert different[0][0] == "body differs (12 B -> 12 B)"
    rows = {r["path"]: (r["requests"], r["different"]) for r in changed["paths"]}
    assert rows == {"POST /demo.Users/Get": (3, 2), "POST /demo.Users/List": (1, 0)}
