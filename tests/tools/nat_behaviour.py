#!/usr/bin/env python3
"""NAT behaviour probes for the cgnat lab (RFC 4787 filtering and hairpinning).

  nat_behaviour.py responder --addr 198.51.100.10 --other-addr 198.51.100.11 --port 7100 [--lifetime 60]
      On each datagram from P: reply from addr:port ("same"), from addr:port+1 ("other_port")
      and from other-addr:port ("other_addr"), each carrying its label.
  nat_behaviour.py probe --server 198.51.100.10 --port 7100 [--wait 2]
      Send one datagram and report which labelled replies came back within the wait.
  nat_behaviour.py listen --server 198.51.100.10 --port 7000 [--wait 8]
      Learn this socket's outside endpoint from the udp_echo server (printed as {"mapping": ...}),
      then report every datagram that arrives on the same socket within the wait.
  nat_behaviour.py send --to 203.0.113.2:40000 [--count 3]
      Send labelled datagrams from an ephemeral port.

Every mode is bounded in time, prints JSON lines on stdout and exits by itself.
"""
import argparse
import json
import socket
import time


def responder(args):
    socks = {}
    for label, addr, port in (
        ("same", args.addr, args.port),
        ("other_port", args.addr, args.port + 1),
        ("other_addr", args.other_addr, args.port),
    ):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, port))
        socks[label] = s
    main = socks["same"]
    main.settimeout(0.5)
    print(json.dumps({"event": "ready"}), flush=True)
    deadline = time.monotonic() + args.lifetime
    while time.monotonic() < deadline:
        try:
            _, peer = main.recvfrom(2048)
        except socket.timeout:
            continue
        for label, s in socks.items():
            s.sendto(label.encode(), peer)
        print(json.dumps({"event": "probe", "seen": f"{peer[0]}:{peer[1]}"}), flush=True)
    return 0


def probe(args):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 0))
    s.settimeout(0.2)
    s.sendto(b"probe", (args.server, args.port))
    got = {}
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        try:
            data, peer = s.recvfrom(2048)
        except socket.timeout:
            continue
        got[data.decode("utf-8", "replace")] = f"{peer[0]}:{peer[1]}"
    print(json.dumps({"received": got}))
    return 0


def listen(args):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 0))
    s.settimeout(2)
    s.sendto(b"who am i", (args.server, args.port))
    try:
        data, _ = s.recvfrom(2048)
    except socket.timeout:
        print(json.dumps({"error": "no answer from the echo server"}), flush=True)
        return 1
    print(json.dumps({"mapping": json.loads(data.decode())["seen"]}), flush=True)
    s.settimeout(0.2)
    seen = []
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        try:
            data, peer = s.recvfrom(2048)
        except socket.timeout:
            continue
        seen.append({"from": f"{peer[0]}:{peer[1]}", "data": data.decode("utf-8", "replace")})
    print(json.dumps({"received": seen}), flush=True)
    return 0


def send(args):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 0))
    host, port = args.to.rsplit(":", 1)
    for i in range(args.count):
        s.sendto(f"hairpin {i}".encode(), (host, int(port)))
        time.sleep(0.1)
    print(json.dumps({"sent": args.count, "local_port": s.getsockname()[1]}))
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    r = sub.add_parser("responder")
    r.add_argument("--addr", required=True)
    r.add_argument("--other-addr", required=True)
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--lifetime", type=float, default=60)
    pr = sub.add_parser("probe")
    pr.add_argument("--server", required=True)
    pr.add_argument("--port", type=int, required=True)
    pr.add_argument("--wait", type=float, default=2)
    li = sub.add_parser("listen")
    li.add_argument("--server", required=True)
    li.add_argument("--port", type=int, required=True)
    li.add_argument("--wait", type=float, default=8)
    se = sub.add_parser("send")
    se.add_argument("--to", required=True)
    se.add_argument("--count", type=int, default=3)
    args = p.parse_args()
    return {"responder": responder, "probe": probe, "listen": listen, "send": send}[args.mode](args)


if __name__ == "__main__":
    raise SystemExit(main())
