"""bpfhook analyze: what a capture holds, flow by flow.

Flows and Unix-socket conversations (bpfhook.flows) with bytes, packets,
duration and reassembly problems; top talkers; totals per process and per
container (from the packets' pid/comm/container comments); HTTP/1.x
exchanges found in the streams (method, path, status, latency from the end
of the request to the first byte of the response).
"""
import collections
import json

from bpfhook import flows, http1

NEEDS_ROOT = False


# -- HTTP/1.x ------------------------------------------------------------------------------------

def http_exchanges(flow):
    """[{flow, method, path, status, latency_ms}] for a stream flow that carries HTTP/1.x."""
    if not flow.streams:
        return []
    c2s, s2c = flow.streams[flows.C2S], flow.streams[flows.S2C]
    requests, _end = http1.requests(c2s.contiguous())
    responses = http1.responses(s2c.contiguous(), [r.method for r in requests])
    out = []
    for i, request in enumerate(requests):
        status, latency = None, None
        if i < len(responses):
            status = responses[i].status
            latency = (s2c.ts_at(responses[i].start) - c2s.ts_at(request.end - 1)) / 1e6
        out.append(dict(flow=flow.id, method=request.method, path=request.target, status=status,
                        latency_ms=None if latency is None else round(latency, 3)))
    return out


# -- the report ----------------------------------------------------------------------------------

def _process(meta):
    return f"{meta.get('pid', '?')}/{meta.get('comm', '?')}"


def report(path, top=10):
    """Everything analyze prints, as one JSON-able dict."""
    cap = flows.read(path)
    rows, http = [], []
    talkers = collections.defaultdict(lambda: [0, 0, 0])  # bytes, packets, flows
    processes = collections.defaultdict(lambda: [0, 0, 0])
    containers = collections.defaultdict(lambda: [0, 0, 0])
    for f in cap.flows:
        rows.append(dict(id=f.id, kind=f.kind, client=f.client, server=f.server, packets=f.packets,
                         bytes=f.bytes, start_ns=f.first_ns, duration_s=round(f.duration, 6),
                         pid=f.meta.get("pid"), comm=f.meta.get("comm"), container=f.meta.get("container"),
                         cgroup=f.meta.get("cgroup"), problems=f.problems(), duplicate=f.duplicate,
                         tls=f.tls or None, twin=f.twin or None))
        if f.tls == "ciphertext":
            continue  # its plaintext twin stands for it below: counted once
        http += http_exchanges(f)
        talker = str(f.client_addr[0]) if f.client_addr else f.client
        for table, key in ((talkers, talker), (processes, _process(f.meta)),
                           (containers, f.meta.get("container", "?"))):
            table[key][0] += f.total_bytes
            table[key][1] += f.total_packets
            table[key][2] += 1

    def ranked(table, name):
        best = sorted(table.items(), key=lambda kv: (-kv[1][0], kv[0]))[:top]
        return [{name: key, "bytes": b, "packets": p, "flows": n} for key, (b, p, n) in best]

    return dict(file=str(path), records=cap.packets, ignored=cap.ignored, torn_tail_bytes=cap.truncated,
                drops=cap.drops, flows=rows, http=http, top_talkers=ranked(talkers, "client"),
                processes=ranked(processes, "process"), containers=ranked(containers, "container"))


_TLS_NOTES = {"plaintext": "TLS plaintext (capture --tls)", "ciphertext": "TLS; its plaintext is flow {twin}"}


def _table(header, rows):
    rows = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _size(n):
    for unit in ("B", "KB", "MB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def text(r, top):
    out = [f"{r['file']}: {r['records']} records ({r['ignored']} not TCP/UDP/UDS), {len(r['flows'])} flows, "
           f"{len(r['http'])} HTTP requests, drops {r['drops']}"
           + (f", torn tail of {r['torn_tail_bytes']} bytes" if r["torn_tail_bytes"] else "")]
    rows = [(f["id"], f["kind"], f"{f['client']} -> {f['server']}",
             f"{f['packets']['c2s']}/{f['packets']['s2c']}", f"{_size(f['bytes']['c2s'])}/{_size(f['bytes']['s2c'])}",
             f"{f['duration_s']:.3f}s", f"{f['pid'] or '?'}/{f['comm'] or '?'}", f["container"] or "?",
             "; ".join(f["problems"] + (["duplicate of the server end"] if f["duplicate"] else [])
                       + ([_TLS_NOTES[f["tls"]].format(twin=f["twin"])] if f["tls"] else [])))
            for f in r["flows"]]
    out += ["", "flows", _table(("ID", "KIND", "CLIENT -> SERVER", "PKTS c/s", "BYTES c/s", "DURATION",
                                 "PROCESS", "CONTAINER", "NOTES"), rows)]
    if r["http"]:
        shown = r["http"][:max(top, 1) * 10]
        out += ["", f"HTTP requests ({len(r['http'])}{'' if len(shown) == len(r['http']) else ', first ' + str(len(shown))})",
                _table(("FLOW", "METHOD", "PATH", "STATUS", "LATENCY"),
                       [(h["flow"], h["method"], h["path"], h["status"] or "-",
                         "-" if h["latency_ms"] is None else f"{h['latency_ms']:.1f} ms") for h in shown])]
    for title, key, name in (("top talkers", "top_talkers", "client"), ("per process", "processes", "process"),
                             ("per container", "containers", "container")):
        out += ["", title, _table((name.upper(), "BYTES", "PACKETS", "FLOWS"),
                                  [(t[name], _size(t["bytes"]), t["packets"], t["flows"]) for t in r[key]])]
    return "\n".join(out)


def add_arguments(parser):
    parser.add_argument("file", metavar="FILE.pcapng")
    parser.add_argument("--json", action="store_true", help="one JSON document")
    parser.add_argument("--top", type=int, default=10, metavar="N", help="rows in the top-N tables (default 10)")


def run(args):
    r = report(args.file, args.top)
    print(json.dumps(r, indent=1) if args.json else text(r, args.top))
    return 0

