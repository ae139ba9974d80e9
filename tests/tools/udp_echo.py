#!/usr/bin/env python3
"""UDP helpers for the cgnat lab: an echo server that tells the client which source
address it saw, a client that reports those answers, and a one-way sender.

  udp_echo.py server --bind 198.51.100.10 --port 7000 [--lifetime 120]
  udp_echo.py client --server 198.51.100.10 --port 7000 [--bind-port 40000] [--count 3] [--timeout 2]
  udp_echo.py send --bind 198.51.100.10 --bind-port 6666 --to 203.0.113.1:100 ... [--count 1]
  udp_echo.py flows --server 198.51.100.10 --port 7000 --base-port 41000 --count 120 [--wait 1.5] [--tag x]

The server logs each datagram as {"event": "request", "seen", "len", "data"} (data: the
first 64 characters). `flows` opens --count sockets on consecutive source ports, sends one
datagram "flow TAG PORT" from each, as fast as it can, then collects the replies for --wait
seconds: {"replied": [{"port", "seen"}], "silent": [port, ...], "t_first", "t_last"}, where
t_first and t_last are the wall-clock times (time.time()) of the first and last datagram sent.

Every mode is bounded in time and count, prints JSON on stdout, and exits by itself.
"""
import argparse
import json
import select
import socket
import sys
import time


def server(args):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.bind, args.port))
    sock.settimeout(0.5)
    print(json.dumps({"event": "ready", "bind": f"{args.bind}:{args.port}"}), flush=True)
    deadline = time.monotonic() + args.lifetime
    while time.monotonic() < deadline:
        try:
            data, peer = sock.recvfrom(2048)
        except socket.timeout:
            continue
        seen = f"{peer[0]}:{peer[1]}"
        reply = json.dumps({"seen": seen, "echo": data.decode("utf-8", "replace")})
        sock.sendto(reply.encode(), peer)
        print(json.dumps({"event": "request", "seen": seen, "len": len(data),
                          "data": data[:64].decode("utf-8", "replace")}), flush=True)
    return 0


def client(args):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if args.bind_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", args.bind_port))
    sock.connect((args.server, args.port))
    sock.settimeout(args.timeout)
    local = sock.getsockname()
    replies = []
    lost = 0
    for i in range(args.count):
        msg = f"{args.message} {i}"
        sock.send(msg.encode())
        try:
            data = sock.recv(2048)
        except socket.timeout:
            lost += 1
            continue
        try:
            replies.append(json.loads(data.decode()))
        except ValueError:
            replies.append({"raw": data.decode("utf-8", "replace")})
    print(json.dumps({"local": f"{local[0]}:{local[1]}", "replies": replies, "lost": lost}))
    return 0 if replies else 1


def send(args):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.bind, args.bind_port))
    sent = 0
    for target in args.to:
        host, port = target.rsplit(":", 1)
        for _ in range(args.count):
            sock.sendto(b"unsolicited", (host, int(port)))
            sent += 1
            time.sleep(args.gap)
    print(json.dumps({"sent": sent}))
    return 0


def flows(args):
    socks = {}
    for port in range(args.base_port, args.base_port + args.count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", port))
        sock.setblocking(False)
        socks[port] = sock
    t_first = time.time()
    for port, sock in socks.items():
        sock.sendto(f"flow {args.tag} {port}".encode(), (args.server, args.port))
        time.sleep(args.gap)
    t_last = time.time()
    replied = {}
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline and len(replied) < len(socks):
        ready, _, _ = select.select([s for p, s in socks.items() if p not in replied], [], [], 0.1)
        for sock in ready:
            port = sock.getsockname()[1]
            try:
                data = sock.recv(2048)
            except BlockingIOError:
                continue
            try:
                replied[port] = json.loads(data.decode()).get("seen")
            except ValueError:
                replied[port] = None
    for sock in socks.values():
        sock.close()
    print(json.dumps({
        "replied": [{"port": p, "seen": replied[p]} for p in sorted(replied)],
        "silent": [p for p in sorted(socks) if p not in replied],
        "t_first": t_first,
        "t_last": t_last,
    }))
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("server")
    s.add_argument("--bind", required=True)
    s.add_argument("--port", type=int, default=7000)
    s.add_argument("--lifetime", type=float, default=300, help="exit after this many seconds")
    c = sub.add_parser("client")
    c.add_argument("--server", required=True)
    c.add_argument("--port", type=int, default=7000)
    c.add_argument("--bind-port", type=int, default=0, help="fixed local source port")
    c.add_argument("--count", type=int, default=3)
    c.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for each reply")
    c.add_argument("--message", default="hello")
    d = sub.add_parser("send")
    d.add_argument("--bind", required=True)
    d.add_argument("--bind-port", type=int, required=True)
    d.add_argument("--to", nargs="+", required=True, help="ip:port targets")
    d.add_argument("--count", type=int, default=1, help="datagrams per target")
    d.add_argument("--gap", type=float, default=0.002, help="seconds between datagrams")
    f = sub.add_parser("flows")
    f.add_argument("--server", required=True)
    f.add_argument("--port", type=int, default=7000)
    f.add_argument("--base-port", type=int, required=True, help="first local source port")
    f.add_argument("--count", type=int, required=True, help="flows, one source port each")
    f.add_argument("--wait", type=float, default=1.5, help="seconds to collect replies")
    f.add_argument("--gap", type=float, default=0.001, help="seconds between datagrams")
    f.add_argument("--tag", default="-", help="label part that tells this run's datagrams apart")
    args = p.parse_args()
    return {"server": server, "client": client, "send": send, "flows": flows}[args.mode](args)


if __name__ == "__main__":
    sys.exit(main())
