"""A test HTTP/1.1 server on the standard library's http.server (independent of bpfhook's parser).

Keep-alive, pipelining (requests on a connection are answered in order), chunked
and JSON answers, and a --variant that changes two paths: /health answers 503,
/users/1 a different JSON body; /users/2 answers the same JSON with its keys
reordered (no difference). Every answer has its own Date and Server headers.
With --log, each accept, request and close is written with its CLOCK_MONOTONIC time.

    python tests/httpserver.py [--host H] [--port P] [--variant] [--log FILE] [--unix PATH]
prints its port (or the path) when ready, serves until stdin closes.
"""
import argparse
import http.server
import json
import os
import socket
import socketserver
import sys
import threading
import time

USERS = {1: {"id": 1, "name": "ann", "roles": ["admin", "dev"], "active": True},
         2: {"id": 2, "name": "bob", "roles": [], "active": False}}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # head and body are two writes: no delayed-ACK stall between them
    server_version = "bpfhook-test/%d" % os.getpid()  # differs per server: the diff ignores it

    def log_message(self, *args):
        pass

    def finish(self):
        super().finish()
        self.server.log("close", str(self.client_address))

    def _send(self, status, body, content_type="text/plain", chunked=False):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if chunked:
            for i in range(0, len(body), 7):
                piece = body[i:i + 7]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.wfile.write(body)

    def _json(self, value, status=200, chunked=False):
        self._send(status, json.dumps(value).encode(), "application/json", chunked)

    def do_GET(self):
        self.server.log("request", self.path)
        variant = self.server.variant
        path = self.path.split("?", 1)[0]
        if path == "/health":
            self._send(503 if variant else 200, b"ok\n")
        elif path.startswith("/users/") and path[7:].isdigit() and int(path[7:]) in USERS:
            user = dict(USERS[int(path[7:])])
            if variant and user["id"] == 1:
                user["roles"] = ["dev"]
            if variant and user["id"] == 2:
                user = dict(reversed(list(user.items())))  # the same value, keys in another order
            self._json(user)
        elif path == "/items":
            self._json([{"n": i, "sq": i * i} for i in range(20)], chunked=True)
        elif path == "/static.txt":
            self._send(200, b"line one\nline two\n" * 3)
        else:
            self._send(404, b"not found\n")

    def do_POST(self):
        self.server.log("request", self.path)
        length = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(length)
        self._json({"got": body.decode("latin-1"), "length": length}, status=201)


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, address, variant=False, log=None, family=socket.AF_INET):
        self.address_family = family
        self.variant, self._log, self._lock = variant, log, threading.Lock()
        super().__init__(address, Handler)

    def server_bind(self):  # no reverse DNS lookup (getfqdn): a lab netns has no DNS
        socketserver.TCPServer.server_bind(self)

    def get_request(self):
        conn, peer = super().get_request()
        self.log("accept", str(peer))
        return conn, peer

    def log(self, what, detail):
        if self._log:
            with self._lock:
                self._log.write(f"{time.monotonic():.6f} {what} {detail}\n")
                self._log.flush()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--unix")
    p.add_argument("--variant", action="store_true")
    p.add_argument("--log")
    args = p.parse_args()
    log = open(args.log, "a") if args.log else None
    if args.unix:
        server = Server(args.unix, args.variant, log, socket.AF_UNIX)
        ready = args.unix
    else:
        family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
        server = Server((args.host, args.port), args.variant, log, family)
        ready = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(ready, flush=True)
    sys.stdin.read()
    server.shutdown()


if __name__ == "__main__":
    main()
