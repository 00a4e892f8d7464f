"""Synthetic pcapng files for tests: TCP/UDP packets and Unix-socket records written with our Writer."""
import contextlib
import ipaddress
import struct

from bpfhook import flows, pcapng

CLIENT, SERVER = ("10.77.1.1", 40000), ("10.77.1.2", 8080)
T0 = 1_700_000_000_000_000_000
MS = 1_000_000


def ip_packet(src, dst, proto, l4):
    s, d = ipaddress.ip_address(src[0]), ipaddress.ip_address(dst[0])
    if s.version == 4:
        head = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0x4000, 64, proto, 0, s.packed, d.packed)
    else:
        head = struct.pack(">IHBB16s16s", 6 << 28, len(l4), proto, 64, s.packed, d.packed)
    return head + l4


def tcp(src, dst, seq, payload=b"", flags=flows.ACK, ack=0):
    return ip_packet(src, dst, 6, struct.pack(">HHIIHHHH", src[1], dst[1], seq % (1 << 32), ack,
                                              (5 << 12) | flags, 65535, 0, 0) + payload)


def udp(src, dst, payload):
    return ip_packet(src, dst, 17, struct.pack(">HHHH", src[1], dst[1], 8 + len(payload), 0) + payload)


def ethernet(packet):
    kind = 0x0800 if packet[0] >> 4 == 4 else 0x86DD
    return b"\x02" * 6 + b"\x04" * 6 + struct.pack(">H", kind) + packet + b"\0" * max(0, 46 - len(packet))


def write(path, packets, linktype=pcapng.LINKTYPE_RAW, comment="pid=7 comm=srv cgroup=/x container=web"):
    """packets: (ms, bytes) for the network interface, or (ms, UdsRecord args tuple) for the unix one
    (declared only when there are such records: one link type is what tcpreplay can send)."""
    with pcapng.Writer(str(path)) as w:
        net = w.interface(linktype, "web:net")
        if any(isinstance(data, tuple) for _ms, data in packets):
            unix = w.interface(pcapng.LINKTYPE_USER0, "web:unix")
        for ms, data in sorted(packets, key=lambda p: p[0]):  # a capture is in time order
            if isinstance(data, tuple):
                w.packet(unix, T0 + int(ms * MS), pcapng.encode_uds(*data), comment=comment)
            else:
                w.packet(net, T0 + int(ms * MS), data, comment=comment)
    return str(path)


def handshake(isn_c=1000, isn_s=5000, client=CLIENT, server=SERVER):
    return [(0, tcp(client, server, isn_c, flags=flows.SYN)),
            (1, tcp(server, client, isn_s, flags=flows.SYN | flows.ACK, ack=isn_c + 1)),
            (2, tcp(client, server, isn_c + 1, ack=isn_s + 1))]


def conversation(client, server, turns, isn_c=1000, isn_s=5000, start_ms=0, close=True):
    """(ms, packet) of one whole TCP connection: handshake at start_ms, then turns
    [(ms, "c" or "s", bytes)] as one segment each, then both FINs after the last turn."""
    pkts = [(start_ms + ms, p) for ms, p in handshake(isn_c, isn_s, client, server)]
    seq = {"c": isn_c + 1, "s": isn_s + 1}
    for ms, side, data in turns:
        src, dst = (client, server) if side == "c" else (server, client)
        pkts.append((ms, tcp(src, dst, seq[side], data)))
        seq[side] += len(data)
    if close:
        last = max((ms for ms, _s, _d in turns), default=start_ms) + 0.5
        pkts += [(last, tcp(client, server, seq["c"], flags=flows.FIN | flows.ACK)),
                 (last + 0.1, tcp(server, client, seq["s"], flags=flows.FIN | flows.ACK))]
    return pkts


def recorded_conversations(upstream, client, timeout=10):
    """Run client(port) against a recording TCP proxy in front of upstream (host, port); the
    pcapng packets of every connection it made, with the bytes and moments each side sent."""
    import socket
    import threading
    import time

    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    conns, threads, done = [], [], threading.Event()
    start = time.monotonic()

    def pump(src, dst, side, turns):
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                turns.append(((time.monotonic() - start) * 1e3, side, data))
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def accept():
        while not done.is_set():
            try:
                down, _ = listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            up = socket.create_connection(upstream, timeout=timeout)
            for sock in (down, up):
                sock.settimeout(timeout)  # not the listener's short accept timeout
            turns = []
            conns.append(((time.monotonic() - start) * 1e3, turns))
            for args in ((down, up, "c", turns), (up, down, "s", turns)):
                threads.append(threading.Thread(target=pump, args=args, daemon=True))
                threads[-1].start()
    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        client(listener.getsockname()[1])
    finally:
        done.set()
        acceptor.join(5)
        for t in threads:
            t.join(timeout)
        listener.close()
    pkts = []
    for n, (begun, turns) in enumerate(conns):
        merged = []
        for ms, side, data in sorted(turns, key=lambda t: t[0]):
            if merged and merged[-1][1] == side:
                merged[-1] = (merged[-1][0], side, merged[-1][2] + data)
            else:
                merged.append((ms, side, data))
        pkts += conversation((CLIENT[0], CLIENT[1] + n), SERVER, merged, isn_c=1000 + 7919 * n,
                             start_ms=begun)
    return pkts
