"""Capture a lab container's HTTP server under trafficgen load, then replay it for real: against
the same server (no difference), and against a variant that changes the status of one path and
the JSON body of another (exactly those requests differ, --fail-on-diff exits 1, --json names them)."""
import collections
import json
import subprocess
import sys

from bpfhook import analyze
from tests.capturing import capture, http_server
from tests.conftest import ROOT

PATHS = ["/health", "/users/1", "/users/2", "/items", "/static.txt"]


def bpfhook(*argv, timeout=120):
    return subprocess.run([sys.executable, "-m", "bpfhook", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def trafficgen(target, requests, keep_alive):
    paths = [arg for p in PATHS for arg in ("--path", p)]
    r = bpfhook("trafficgen", "--target", target, "--type", "http", "--requests", str(requests),
                "--keep-alive", str(keep_alive), *paths)
    assert r.returncode == 0 and f": {requests} requests, 0 errors" in r.stdout, r.stdout + r.stderr


def test_capture_then_replay_same_and_variant(lab, tmp_path):
    c = lab(ipv6=False)
    out = tmp_path / "web.pcapng"
    with http_server("--host", "0.0.0.0", "--port", "8080", spawn=c.spawn):
        with capture(c, out):
            trafficgen(f"{c.ipv4}:8080", 40, keep_alive=5)  # 8 keep-alive connections
            trafficgen(f"{c.ipv4}:8080", 10, keep_alive=1)  # 10 new connections
        captured = [(h["path"], h["status"]) for h in analyze.report(str(out))["http"]]
        assert len(captured) == 50 and all(status == 200 for _p, status in captured), captured
        # the same server, by container name: nothing differs
        r = bpfhook("replay", str(out), "--to", f"{c.name}:8080", "--speed", "max", "--fail-on-diff", "--json")
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr
        same = json.loads(r.stdout)
        assert same["summary"] == dict(requests=50, identical=50, different=0, errors=0, uncompared=0)
        assert same["flows"] == 18

    with http_server("--host", "0.0.0.0", "--port", "8081", "--variant", spawn=c.spawn):
        r = bpfhook("replay", str(out), "--to", f"{c.ipv4}:8081", "--fail-on-diff", "--json", "--speed", "4")
        text = bpfhook("replay", str(out), "--to", f"{c.ipv4}:8081", "--speed", "max")
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    different = [(e["path"], e["differences"][0]) for e in doc["exchanges"] if e["outcome"] == "different"]
    expected = collections.Counter(p for p, _s in captured if p in ("/health", "/users/1"))
    assert collections.Counter(p for p, _d in different) == expected
    assert {d for _p, d in different} == {"status 200 -> 503", "body (JSON) differs"}
    assert doc["summary"]["errors"] == 0 and doc["summary"]["identical"] == 50 - sum(expected.values())
    rows = {row["path"]: row["different"] for row in doc["paths"]}
    assert rows == {f"GET {p}": expected.get(p, 0) for p in PATHS}
    assert text.returncode == 0 and "GET /health" in text.stdout and "status 200 -> 503" in text.stdout
    assert '$.roles[0]: "admin" -> "dev"' in text.stdout
