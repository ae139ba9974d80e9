#!/usr/bin/env python3
"""Fragmented UDP for the cgnat lab: datagrams larger than the MTU, which the sending kernel
(or scapy) splits into IPv4 fragments and the receiving kernel reassembles.

  udp_frag.py echo --bind 198.51.100.10 --port 7001 [--lifetime 120]
      Echo every datagram back unchanged, except b"whoami", which is answered with the
      sender's address as "ip:port". Logs {"event": "datagram", "seen", "len", "sha256"}.
  udp_frag.py client --server 198.51.100.10 --port 7001 --size 10000 [--timeout 3]
      Send one --size datagram of random bytes and wait for the echo. Prints {"local",
      "sent", "sha256", "received", "received_sha256", "from"}; exits 0 only on a whole echo.
  udp_frag.py listen --server 198.51.100.10 --port 7001 [--wait 5] [--count 0] [--keepalive 0]
      Learn this socket's outside mapping from the echo server (printed as {"mapping": ...}),
      then report every datagram arriving on it within --wait, or until --count arrived:
      {"received": [{from, len, sha256}]}. With --keepalive S it sends b"keepalive" to the
      server every S seconds, so that short NAT timeouts keep the mapping; those echoes are
      not reported.
  udp_frag.py inject --src 198.51.100.10 --sport 7001 --dst 203.0.113.2 --dport 40000
                     --dst-mac 02:c6:00:00:01:01 [--iface eth0] [--size 4000] [--fragsize 1480]
                     [--order reverse]
      scapy: build one UDP datagram of --size bytes (valid UDP checksum over the whole of it),
      split it into IPv4 fragments and send them on --iface in the given order. Prints
      {"fragments", "order", "ip_id", "len", "sha256"}.

Every mode is bounded in time, prints JSON lines on stdout and exits by itself.
"""
import argparse
import hashlib
import json
import os
import random
import socket
import sys
import time

MAX_DATAGRAM = 65535


def emit(obj):
    print(json.dumps(obj), flush=True)


def sha(data):
    return hashlib.sha256(data).hexdigest()


def echo(args):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((args.bind, args.port))
    s.settimeout(0.5)
    emit({"event": "ready", "bind": f"{args.bind}:{args.port}"})
    deadline = time.monotonic() + args.lifetime
    while time.monotonic() < deadline:
        try:
            data, peer = s.recvfrom(MAX_DATAGRAM)
        except socket.timeout:
            continue
        seen = f"{peer[0]}:{peer[1]}"
        emit({"event": "datagram", "seen": seen, "len": len(data), "sha256": sha(data)})
        s.sendto(seen.encode() if data == b"whoami" else data, peer)
    return 0


def client(args):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((args.server, args.port))
    s.settimeout(args.timeout)
    local = s.getsockname()
    data = os.urandom(args.size)
    out = {"local": f"{local[0]}:{local[1]}", "sent": len(data), "sha256": sha(data),
           "received": None}
    # send() on a connected socket: the kernel fragments (DF is only set on what fits the MTU).
    s.send(data)
    try:
        got, peer = s.recvfrom(MAX_DATAGRAM)
        out.update(received=len(got), received_sha256=sha(got), **{"from": f"{peer[0]}:{peer[1]}"})
    except socket.timeout:
        out["error"] = f"no echo within {args.timeout} s"
    emit(out)
    return 0 if out["received"] == len(data) and out.get("received_sha256") == out["sha256"] else 1


def listen(args):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 0))
    s.settimeout(2)
    s.sendto(b"whoami", (args.server, args.port))
    try:
        data, _ = s.recvfrom(MAX_DATAGRAM)
    except socket.timeout:
        emit({"error": "no answer from the echo server"})
        return 1
    emit({"mapping": data.decode()})
    s.settimeout(0.1)
    seen = []
    now = time.monotonic()
    deadline = now + args.wait
    next_keepalive = now + args.keepalive
    while time.monotonic() < deadline and not (args.count and len(seen) >= args.count):
        if args.keepalive and time.monotonic() >= next_keepalive:
            s.sendto(b"keepalive", (args.server, args.port))
            next_keepalive += args.keepalive
        try:
            data, peer = s.recvfrom(MAX_DATAGRAM)
        except socket.timeout:
            continue
        if data == b"keepalive":
            continue
        seen.append({"from": f"{peer[0]}:{peer[1]}", "len": len(data), "sha256": sha(data)})
    emit({"received": seen})
    return 0


def inject(args):
    from scapy.all import IP, UDP, Ether, conf, fragment, sendp  # noqa: E402

    conf.verb = 0
    payload = os.urandom(args.size)
    ip_id = random.randint(1, 0xFFFF)
    dgram = IP(src=args.src, dst=args.dst, id=ip_id, flags=0, ttl=64) / UDP(
        sport=args.sport, dport=args.dport) / payload
    # Build once so the UDP checksum covers the whole datagram, then split.
    dgram = IP(bytes(dgram))
    frags = fragment(dgram, fragsize=args.fragsize)
    order = list(range(len(frags)))
    if args.order == "reverse":
        order.reverse()
    frames = [Ether(dst=args.dst_mac) / frags[i] for i in order]
    sendp(frames, iface=args.iface, inter=args.gap)
    emit({"fragments": len(frags), "order": order, "ip_id": ip_id, "len": len(payload),
          "sha256": sha(payload)})
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    e = sub.add_parser("echo")
    e.add_argument("--bind", required=True)
    e.add_argument("--port", type=int, required=True)
    e.add_argument("--lifetime", type=float, default=120, help="exit after this many seconds")
    c = sub.add_parser("client")
    c.add_argument("--server", required=True)
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--size", type=int, default=10000)
    c.add_argument("--timeout", type=float, default=3)
    li = sub.add_parser("listen")
    li.add_argument("--server", required=True)
    li.add_argument("--port", type=int, required=True)
    li.add_argument("--wait", type=float, default=5)
    li.add_argument("--count", type=int, default=0, help="stop after this many datagrams (0: wait it out)")
    li.add_argument("--keepalive", type=float, default=0, help="seconds between keepalives (0: none)")
    i = sub.add_parser("inject")
    i.add_argument("--src", required=True)
    i.add_argument("--sport", type=int, required=True)
    i.add_argument("--dst", required=True)
    i.add_argument("--dport", type=int, required=True)
    i.add_argument("--dst-mac", required=True, help="the next hop's MAC (cgnatd's outside port)")
    i.add_argument("--iface", default="eth0")
    i.add_argument("--size", type=int, default=4000, help="UDP payload bytes")
    i.add_argument("--fragsize", type=int, default=1480, help="IP payload bytes per fragment (multiple of 8)")
    i.add_argument("--order", choices=["forward", "reverse"], default="reverse")
    i.add_argument("--gap", type=float, default=0.01, help="seconds between fragments")
    args = p.parse_args()
    return {"echo": echo, "client": client, "listen": listen, "inject": inject}[args.mode](args)


if __name__ == "__main__":
    sys.exit(main())
