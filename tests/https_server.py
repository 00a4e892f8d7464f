"""A small HTTPS server (Python's ssl and http.server) for the TLS tests and benchmark, run as
`python -c SERVER CERT KEY ADDRESS PORT` (in a lab container, a Docker container, on the host).

GET /bytes/N answers N bytes of a fixed pattern, any other GET "hello <path>", POST "got N
bytes" (201). HTTP/1.1 keep-alive; answers carry a fixed Date so that a replay's answers can be
compared byte for byte. It prints "ready" once it listens.
"""

SERVER = r"""
import http.server, socketserver, ssl, sys
PATTERN = bytes(range(256))

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version, sys_version = "bpfhook-test", ""
    disable_nagle_algorithm = True  # head and body go in two writes: no wait for a delayed ACK

    def date_time_string(self, timestamp=None):  # answers that replay can compare byte for byte
        return "Thu, 01 Jan 2026 00:00:00 GMT"

    def log_message(self, *args):
        pass

    def reply(self, body, status=200):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.startswith("/bytes/"):
            n = int(self.path.split("/")[2])
            self.reply((PATTERN * (n // 256 + 1))[:n])
        else:
            self.reply(b"hello " + self.path.encode())

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.reply(b"got %d bytes" % len(body), 201)

class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = allow_reuse_address = True

context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[1], sys.argv[2])
server = Server((sys.argv[3], int(sys.argv[4])), Handler)
server.socket = context.wrap_socket(server.socket, server_side=True)
print("ready", flush=True)
server.serve_forever()
"""


# Keep-alive load for the benchmark: `python -c LOAD HOST PORT CERT`; each "SECONDS" line on stdin
# runs GET /hello on one connection for that long and prints how many requests completed ("0":
# exactly one request).
LOAD = r"""
import socket, ssl, sys, time
host, port, cert = sys.argv[1], int(sys.argv[2]), sys.argv[3]
context = ssl.create_default_context(cafile=cert)
sock = context.wrap_socket(socket.create_connection((host, port)), server_hostname=host)
stream = sock.makefile("rb")
request = b"GET /hello HTTP/1.1\r\nHost: bench\r\n\r\n"
print("ready", flush=True)
for line in sys.stdin:
    deadline, done = time.monotonic() + float(line), 0
    while time.monotonic() < deadline or not done and not float(line):
        sock.sendall(request)
        length = 0
        while (header := stream.readline()) != b"\r\n":
            if header.lower().startswith(b"content-length:"):
                length = int(header.split(b":")[1])
        stream.read(length)
        done += 1
    print(done, flush=True)
"""
