#!/usr/bin/env python3
"""Destination NAT backends and clients for the cgnat lab: which backend answered, and which
client address it saw.

  whoami.py server --listen 100.64.0.21:8001 [--listen 100.64.0.22:8002 ...] [--lifetime 1200]
      Serves on every --listen address. A connection whose first line is an HTTP GET is answered
      with HTTP/1.0 200 and the JSON body {"server": ip:port, "client": ip:port, "path": ...}
      (server: the listening address the request arrived on; client: the peer it saw); the
      server then waits (at most 5 s) for the client to close first, so the client side holds
      TIME_WAIT and never reuses that 4-tuple while the NAT may still remember it. Any other
      first line starts a line echo: every line is answered with one JSON line
      {"server", "client", "line"} until the client closes.
      Prints {"event": "ready", "listen": [...]} once every socket listens, then one line per
      GET {"event": "request", "server", "client", "path"} and per echo connection
      {"event": "hold", "server", "client"}.
  whoami.py get --to 203.0.113.101:80 [--count 1] [--parallel 1] [--tag t] [--timeout 60]
      --count new connections (each its own source port), at most --parallel at a time, each
      one GET /TAG/i. Prints {"ok": n, "results": [{"i", "local", "server", "client"}],
      "errors": [...]}; exits 0 only if every connection completed.
  whoami.py hold --to 203.0.113.101:80 [--interval 0.2] [--duration 60] [--reply-timeout 2]
      One long connection in line-echo mode: a line every --interval, each answer awaited
      --reply-timeout. Prints {"event": "connected", "local", "server", "client"} after the
      first answer, {"event": "echo", "seq", "t"} for each, on a failure (timeout, reset,
      close) {"event": "error", "seq", "error", "t"} and exit 1; after --duration or on
      SIGTERM {"event": "done", "round_trips"}.

Every mode is bounded in time, prints JSON lines on stdout and exits by itself.
"""
import argparse
import json
import selectors
import signal
import socket
import sys
import threading
import time


def emit(obj):
    print(json.dumps(obj), flush=True)


def addr(s):
    host, port = s.rsplit(":", 1)
    return host, int(port)


def fmt(a):
    return f"{a[0]}:{a[1]}"


# --- server ---------------------------------------------------------------------------------


def handle(conn, server, client, out_lock, deadline):
    conn.settimeout(max(1.0, min(30.0, deadline - time.monotonic())))
    f = conn.makefile("rb")
    try:
        first = f.readline(4096)
        if not first:
            return
        if first.startswith(b"GET "):
            parts = first.decode("latin-1").split()
            path = parts[1] if len(parts) > 1 else "/"
            while True:  # the request headers, up to the blank line
                line = f.readline(4096)
                if not line or line in (b"\r\n", b"\n"):
                    break
            body = (json.dumps({"server": server, "client": client, "path": path}) + "\n").encode()
            head = (
                "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode()
            # Logged before answering: once the client has its answer, the log has the line.
            with out_lock:
                emit({"event": "request", "server": server, "client": client, "path": path})
            conn.sendall(head + body)
            # Let the client close first (bounded).
            conn.settimeout(5.0)
            try:
                while conn.recv(4096):
                    pass
            except OSError:
                pass
            return
        with out_lock:
            emit({"event": "hold", "server": server, "client": client})
        line = first
        while line and time.monotonic() < deadline:
            reply = json.dumps({"server": server, "client": client,
                                "line": line.decode("utf-8", "replace").strip()}) + "\n"
            conn.sendall(reply.encode())
            line = f.readline(4096)
    except OSError:
        pass
    finally:
        try:
            f.close()
            conn.close()
        except OSError:
            pass


def server(args):
    sel = selectors.DefaultSelector()
    listening = []
    for spec in args.listen:
        host, port = addr(spec)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        s.listen(256)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, f"{host}:{port}")
        listening.append(f"{host}:{port}")
    out_lock = threading.Lock()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    emit({"event": "ready", "listen": listening})
    deadline = time.monotonic() + args.lifetime
    while not stop.is_set() and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.5):
            try:
                conn, peer = key.fileobj.accept()
            except (BlockingIOError, InterruptedError):
                continue
            conn.setblocking(True)
            threading.Thread(target=handle, args=(conn, key.data, fmt(peer), out_lock, deadline),
                             daemon=True).start()
    return 0


# --- clients --------------------------------------------------------------------------------


def get_one(target, path, timeout, bind):
    src = (bind, 0) if bind else None
    sock = socket.create_connection(target, timeout=timeout, source_address=src)
    try:
        local = sock.getsockname()
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {target[0]}\r\n\r\n".encode())
        data = b""
        length = None
        while True:
            if length is None and b"\r\n\r\n" in data:
                head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
                if not head.startswith("HTTP/1.0 200") and not head.startswith("HTTP/1.1 200"):
                    raise RuntimeError(f"bad response: {head[:40]!r}")
                for h in head.split("\r\n")[1:]:
                    k, _, v = h.partition(":")
                    if k.strip().lower() == "content-length":
                        length = int(v.strip())
            if length is not None and len(data.split(b"\r\n\r\n", 1)[1]) >= length:
                break
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        v = json.loads(body.decode())
        return {"local": fmt(local), "server": v["server"], "client": v["client"]}
    finally:
        sock.close()


def get(args):
    target = addr(args.to)
    deadline = time.monotonic() + args.timeout
    results, errors = [], []
    lock = threading.Lock()
    todo = list(range(args.count))

    def worker():
        while True:
            with lock:
                if not todo:
                    return
                i = todo.pop(0)
            left = deadline - time.monotonic()
            if left <= 0:
                with lock:
                    errors.append(f"conn {i}: not started before the deadline")
                continue
            try:
                r = get_one(target, f"/{args.tag}/{i}", min(args.conn_timeout, left), args.bind)
                r["i"] = i
                with lock:
                    results.append(r)
            except Exception as e:  # report every failure, the caller decides
                with lock:
                    errors.append(f"conn {i}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(max(1, args.parallel))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(0.1, deadline - time.monotonic() + 1))
    hung = sum(1 for t in threads if t.is_alive())
    if hung:
        errors.append(f"{hung} client threads still running at the deadline")
    with lock:
        results.sort(key=lambda r: r["i"])
        print(json.dumps({"ok": len(results), "results": results, "errors": errors}), flush=True)
        return 0 if len(results) == args.count else 1


def hold(args):
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    deadline = time.monotonic() + args.duration
    seq = 0
    try:
        s = socket.create_connection(addr(args.to), timeout=5)
    except OSError as e:
        emit({"event": "error", "seq": seq, "error": f"{type(e).__name__}: {e}", "t": time.time()})
        return 1
    local = fmt(s.getsockname())
    f = s.makefile("rb")
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            s.settimeout(args.reply_timeout)
            s.sendall(f"hold {seq}\n".encode())
            line = f.readline(4096)
            if not line:
                raise ConnectionError("connection closed by the server")
            v = json.loads(line.decode())
            if v.get("line") != f"hold {seq}":
                raise ValueError(f"round trip {seq}: answer {v!r} does not echo the line")
            if seq == 0:
                emit({"event": "connected", "local": local, "server": v["server"],
                      "client": v["client"]})
            emit({"event": "echo", "seq": seq, "t": time.time()})
            seq += 1
            stop.wait(args.interval)
    except (OSError, ValueError) as e:
        emit({"event": "error", "seq": seq, "error": f"{type(e).__name__}: {e}", "t": time.time()})
        s.close()
        return 1
    s.close()
    emit({"event": "done", "round_trips": seq})
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("server")
    s.add_argument("--listen", action="append", required=True, help="ip:port, repeatable")
    s.add_argument("--lifetime", type=float, default=300, help="exit after this many seconds")
    g = sub.add_parser("get")
    g.add_argument("--to", required=True, help="ip:port")
    g.add_argument("--count", type=int, default=1)
    g.add_argument("--parallel", type=int, default=1)
    g.add_argument("--tag", default="whoami", help="first path element of every request")
    g.add_argument("--bind", default=None, help="source address")
    g.add_argument("--timeout", type=float, default=60, help="seconds for all connections")
    g.add_argument("--conn-timeout", type=float, default=5, help="seconds for one connection")
    h = sub.add_parser("hold")
    h.add_argument("--to", required=True, help="ip:port")
    h.add_argument("--interval", type=float, default=0.2)
    h.add_argument("--duration", type=float, default=60)
    h.add_argument("--reply-timeout", type=float, default=2)
    args = p.parse_args()
    return {"server": server, "get": get, "hold": hold}[args.mode](args)


if __name__ == "__main__":
    sys.exit(main())
