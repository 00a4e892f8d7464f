"""A gRPC server and client on grpcio (Debian's python3-grpcio, run by /usr/bin/python3): an
independent HTTP/2 and gRPC implementation for replay tests. Raw bytes, no protobuf.

    serve ADDRESS... [--variant]  prints "ready", serves until stdin closes (ADDRESS: host:port, unix:/path)
    call ADDRESS                makes the calls of CALLS and prints one line per answer
--variant changes two methods: Get(b"1") answers other bytes, Get(b"2") answers PERMISSION_DENIED.
"""
import sys
from concurrent import futures

import grpc

GET, LIST = "/demo.Users/Get", "/demo.Users/List"
USERS = {b"1": b"\x0a\x03ann\x10\x01", b"2": b"\x0a\x03bob\x10\x02"}


def get(request, context):
    variant = context.variant
    if variant and request == b"2":
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "no bob today")
    if request not in USERS:
        context.abort(grpc.StatusCode.NOT_FOUND, f"no user {request!r}")
    return b"\x0a\x03ANN\x10\x01" if variant and request == b"1" else USERS[request]


def list_users(request, context):
    yield from (USERS[k] for k in sorted(USERS))


def serve(addresses, variant):
    def wrap(fn):
        def handler(request, context):
            context.variant = variant
            return fn(request, context)
        return handler
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("demo.Users", {
        "Get": grpc.unary_unary_rpc_method_handler(wrap(get)),
        "List": grpc.unary_stream_rpc_method_handler(wrap(list_users))})])
    for address in addresses:
        if not server.add_insecure_port(address):
            sys.exit(f"cannot listen on {address}")
    server.start()
    print("ready", flush=True)
    sys.stdin.read()
    server.stop(0)


def call(address):
    with grpc.insecure_channel(address) as channel:
        get_ = channel.unary_unary(GET)
        for key in (b"1", b"2", b"9"):
            try:
                print("get", key, get_(key, timeout=5))
            except grpc.RpcError as err:
                print("get", key, err.code())
        print("list", list(channel.unary_stream(LIST)(b"", timeout=5)))


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve([a for a in sys.argv[2:] if a != "--variant"], "--variant" in sys.argv)
    else:
        call(sys.argv[2])
