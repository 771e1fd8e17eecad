"""Known, bounded traffic for the collector's network-namespace tests.

    traffic.py PROCESS_NAME MODE ARGS...

The process first renames itself (prctl PR_SET_NAME) so that the collector's process
attribution has a distinct, known name to report. Every mode prints `ready` once it
listens (servers) and `local_port=N` once connected (clients), then exits when done.
"""
import ctypes
import socket
import struct
import sys

PR_SET_NAME = 15


def say(line):
    print(line, flush=True)


def tcp_server(port, reply, count):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    s.listen(16)
    say("ready")
    for _ in range(count):
        c, _ = s.accept()
        got = 0
        while True:
            data = c.recv(65536)
            if not data:
                break
            got += len(data)
        c.sendall(b"r" * reply)
        c.close()
        say(f"served={got}")


def tcp_client(host, port, send, family=None):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    c = socket.socket(family, socket.SOCK_STREAM)
    c.connect((host, port))
    say(f"local_port={c.getsockname()[1]}")
    c.sendall(b"s" * send)
    c.shutdown(socket.SHUT_WR)
    got = 0
    while True:
        data = c.recv(65536)
        if not data:
            break
        got += len(data)
    c.close()
    say(f"received={got}")


def udp_echo(port, count):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    say("ready")
    for _ in range(count):
        data, peer = s.recvfrom(65536)
        s.sendto(data, peer)


def udp_client(host, port, count, size):
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.settimeout(5)
    c.connect((host, port))
    say(f"local_port={c.getsockname()[1]}")
    for _ in range(count):
        c.send(b"u" * size)
        c.recv(65536)
    say("done")


def udp_spray(host, first_port, count):
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for port in range(first_port, first_port + count):
        c.sendto(b"x", (host, port))
    say("done")


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def icmp_echo(host, count, size):
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    s.settimeout(5)
    for seq in range(count):
        payload = b"p" * size
        header = struct.pack("!BBHHH", 8, 0, 0, 0x4242, seq)
        packet = struct.pack("!BBHHH", 8, 0, checksum(header + payload), 0x4242, seq) + payload
        s.sendto(packet, (host, 0))
        while True:
            data, _ = s.recvfrom(65536)
            if data[20] == 0:  # echo reply
                break
    say("done")


def dns_name(query):
    labels, pos = [], 12
    while query[pos]:
        n = query[pos]
        labels.append(query[pos + 1 : pos + 1 + n].decode())
        pos += 1 + n
    return ".".join(labels), pos + 5


def resolver(address, port, answer, count):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((address, port))
    say("ready")
    for _ in range(count):
        query, peer = s.recvfrom(512)
        _, end = dns_name(query)
        header = query[:2] + struct.pack("!HHHHH", 0x8180, 1, 1, 0, 0)
        rr = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton(answer)
        s.sendto(header + query[12:end] + rr, peer)


def dns_then_tcp(resolver_ip, name, port, send):
    q = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    q.settimeout(5)
    qname = b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0"
    q.sendto(struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1), (resolver_ip, 53))
    response, _ = q.recvfrom(512)
    ip = socket.inet_ntoa(response[-4:])
    say(f"resolved={ip}")
    tcp_client(ip, port, send)


def main():
    name, mode, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    ctypes.CDLL(None).prctl(PR_SET_NAME, name.encode(), 0, 0, 0)
    ints = lambda xs: [int(x) for x in xs]
    if mode == "tcp-server":
        tcp_server(*ints(args))
    elif mode == "tcp-client":
        tcp_client(args[0], *ints(args[1:]))
    elif mode == "udp-echo":
        udp_echo(*ints(args))
    elif mode == "udp-client":
        udp_client(args[0], *ints(args[1:]))
    elif mode == "udp-spray":
        udp_spray(args[0], *ints(args[1:]))
    elif mode == "icmp-echo":
        icmp_echo(args[0], *ints(args[1:]))
    elif mode == "resolver":
        resolver(args[0], int(args[1]), args[2], int(args[3]))
    elif mode == "dns-then-tcp":
        dns_then_tcp(args[0], args[1], *ints(args[2:]))
    else:
        sys.exit(f"unknown mode {mode}")


main()
