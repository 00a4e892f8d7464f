"""The Prometheus endpoint: /metrics served by a ThreadingHTTPServer in a daemon thread.

Kept apart from bpfhook.exporters so that http.server (and what it imports) loads
only when `--prometheus` asks for a server.
"""
import http.server
import socket
import socketserver
import threading

from .exporters import CONTENT_TYPE


class PrometheusServer:
    """Serves render() on http://HOST:PORT/metrics from a daemon thread.

    render: callable returning the exposition text (called per scrape, in the
            server thread: it must be safe to call there)
    Port 0 picks a free port; `address` tells which.
    """

    def __init__(self, host, port, render):
        handler = type("Handler", (_MetricsHandler,), {"render": staticmethod(render)})
        server = _HTTPServer6 if ":" in host else _HTTPServer
        self.httpd = server((host, port), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                       name="prometheus", daemon=True)  # short poll: quick close()
        self.thread.start()

    @property
    def address(self):
        return self.httpd.server_address[:2]

    def close(self):
        """Stop serving and release the port; waits for the serving thread."""
        if self.thread is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join(timeout=5)
            self.thread = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _HTTPServer(http.server.ThreadingHTTPServer):
    def server_bind(self):
        """Like HTTPServer's, without its reverse DNS lookup (getfqdn): a host without DNS would stall."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


class _MetricsHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    render = None

    def do_GET(self):
        if self.path.split("?", 1)[0] != "/metrics":
            self._reply(404, "text/plain; charset=utf-8", b"not found: try /metrics\n")
            return
        self._reply(200, CONTENT_TYPE, self.render().encode())

    def _reply(self, status, content_type, body):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # scrapes are not news
        pass
