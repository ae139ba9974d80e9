#!/usr/bin/env python3
"""TCP helpers for the cgnat lab: a bulk upload checked by sha256 on the receiving side, and a
long-lived connection that keeps exchanging data.

  tcp_stream.py sink --bind 198.18.0.2 --port 9000 [--lifetime 120]
      For each connection: read to EOF, then answer one JSON line
      {"peer": ip:port, "bytes": n, "sha256": ...} (also printed on stdout) and close.
  tcp_stream.py upload --server 198.18.0.2 --port 9000 --size 4194304 [--timeout 60]
      Send --size random bytes (Linux defaults: DF set, path MTU discovery on), half-close,
      and print {"local", "sent", "sha256", "reply"} with the sink's answer.
  tcp_stream.py echo --bind 198.51.100.11 --port 7200 [--lifetime 120]
      Echo every byte back, on any number of connections.
  tcp_stream.py chat --server 198.51.100.11 --port 7200 [--size 1024] [--interval 0.3] [--duration 60]
      One connection; every --interval send --size bytes and wait for the same bytes back.
      Prints {"event": "connected", "local": ...}, then {"event": "echo", "seq": i, "t": ...}
      for each complete round trip; on a failure {"event": "error", ...} and exit 1. Stops
      after --duration or on SIGTERM (prints {"event": "done", ...}).

Every mode is bounded in time, prints JSON lines on stdout and exits by itself.
"""
import argparse
import hashlib
import json
import os
import signal
import socket
import sys
import threading
import time


def emit(obj):
    print(json.dumps(obj), flush=True)


def listener(bind, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((bind, port))
    s.listen(16)
    s.settimeout(0.5)
    return s


def serve(args, handle):
    srv = listener(args.bind, args.port)
    emit({"event": "ready", "bind": f"{args.bind}:{args.port}"})
    deadline = time.monotonic() + args.lifetime
    while time.monotonic() < deadline:
        try:
            conn, peer = srv.accept()
        except socket.timeout:
            continue
        # Every connection is bounded by the server's own lifetime.
        conn.settimeout(max(1.0, deadline - time.monotonic()))
        threading.Thread(target=handle, args=(conn, peer), daemon=True).start()
    return 0


def sink(args):
    def handle(conn, peer):
        h = hashlib.sha256()
        n = 0
        try:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                h.update(chunk)
                n += len(chunk)
            line = {"event": "upload", "peer": f"{peer[0]}:{peer[1]}", "bytes": n,
                    "sha256": h.hexdigest()}
            conn.sendall((json.dumps(line) + "\n").encode())
            emit(line)
        except OSError as e:
            emit({"event": "error", "peer": f"{peer[0]}:{peer[1]}", "bytes": n,
                  "error": f"{type(e).__name__}: {e}"})
        finally:
            conn.close()

    return serve(args, handle)


def upload(args):
    data = os.urandom(args.size)
    digest = hashlib.sha256(data).hexdigest()
    deadline = time.monotonic() + args.timeout
    s = socket.create_connection((args.server, args.port), timeout=args.timeout)
    local = s.getsockname()
    out = {"local": f"{local[0]}:{local[1]}", "sent": 0, "sha256": digest}
    try:
        view = memoryview(data)
        while out["sent"] < len(data):
            s.settimeout(max(0.1, deadline - time.monotonic()))
            out["sent"] += s.send(view[out["sent"]:out["sent"] + 65536])
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while not reply.endswith(b"\n"):
            s.settimeout(max(0.1, deadline - time.monotonic()))
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
        out["reply"] = json.loads(reply.decode()) if reply.strip() else None
    except (OSError, ValueError) as e:
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        s.close()
    emit(out)
    return 0 if "error" not in out else 1


def echo(args):
    def handle(conn, peer):
        try:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                conn.sendall(chunk)
        except OSError:
            pass
        finally:
            conn.close()

    return serve(args, handle)


def chat(args):
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    deadline = time.monotonic() + args.duration
    s = socket.create_connection((args.server, args.port), timeout=5)
    local = s.getsockname()
    emit({"event": "connected", "local": f"{local[0]}:{local[1]}"})
    seq = 0
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            msg = (f"{seq:08d}".encode() * (args.size // 8 + 1))[:args.size]
            s.settimeout(args.reply_timeout)
            s.sendall(msg)
            got = b""
            while len(got) < len(msg):
                chunk = s.recv(len(msg) - len(got))
                if not chunk:
                    raise ConnectionError("connection closed by the server")
                got += chunk
            if got != msg:
                raise ValueError(f"round trip {seq}: echo differs from what was sent")
            emit({"event": "echo", "seq": seq, "bytes": len(got), "t": time.time()})
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
    for name in ("sink", "echo"):
        sp = sub.add_parser(name)
        sp.add_argument("--bind", required=True)
        sp.add_argument("--port", type=int, required=True)
        sp.add_argument("--lifetime", type=float, default=120, help="exit after this many seconds")
    u = sub.add_parser("upload")
    u.add_argument("--server", required=True)
    u.add_argument("--port", type=int, required=True)
    u.add_argument("--size", type=int, default=4 * 1024 * 1024)
    u.add_argument("--timeout", type=float, default=60, help="seconds for the whole upload")
    c = sub.add_parser("chat")
    c.add_argument("--server", required=True)
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--size", type=int, default=1024, help="bytes per round trip")
    c.add_argument("--interval", type=float, default=0.3)
    c.add_argument("--duration", type=float, default=60)
    c.add_argument("--reply-timeout", type=float, default=5, help="seconds to wait for each echo")
    args = p.parse_args()
    return {"sink": sink, "upload": upload, "echo": echo, "chat": chat}[args.mode](args)


if __name__ == "__main__":
    sys.exit(main())
