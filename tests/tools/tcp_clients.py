#!/usr/bin/env python3
"""Opens N concurrent TCP connections to the lab HTTP server's /whoami and reports, for
each, the local address and the peer address the server saw.

All connections are established first and held open until every one is up (a barrier),
so the NAT must hold N sessions at once. Bounded by --timeout overall.

  tcp_clients.py --server 198.51.100.10 --port 8080 --count 30 [--timeout 20]

Prints {"ok": n, "results": [{"local": ..., "seen": ...}], "errors": [...]}; exits 0 only
if every connection completed.
"""
import argparse
import json
import socket
import sys
import threading
import time


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", required=True)
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--count", type=int, default=30)
    p.add_argument("--timeout", type=float, default=20.0)
    args = p.parse_args()

    deadline = time.monotonic() + args.timeout
    barrier = threading.Barrier(args.count)
    results = []
    errors = []
    lock = threading.Lock()

    def one(i):
        sock = None
        try:
            sock = socket.create_connection((args.server, args.port), timeout=max(1.0, deadline - time.monotonic()))
            local = sock.getsockname()
            barrier.wait(timeout=max(0.1, deadline - time.monotonic()))
            sock.settimeout(max(1.0, deadline - time.monotonic()))
            sock.sendall(f"GET /whoami HTTP/1.0\r\nHost: {args.server}\r\n\r\n".encode())
            data = b""
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.0 200") and not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"bad response: {head[:40]!r}")
            with lock:
                results.append({"local": f"{local[0]}:{local[1]}", "seen": body.decode().strip()})
        except Exception as e:  # report every failure, the caller decides
            with lock:
                errors.append(f"conn {i}: {type(e).__name__}: {e}")
            try:
                barrier.abort()
            except threading.BrokenBarrierError:
                pass
        finally:
            if sock is not None:
                sock.close()

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(args.count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(0.1, deadline - time.monotonic()))
    hung = sum(1 for t in threads if t.is_alive())
    if hung:
        errors.append(f"{hung} connections still running at the deadline")
    with lock:
        print(json.dumps({"ok": len(results), "results": results, "errors": errors}))
    return 0 if len(results) == args.count else 1


if __name__ == "__main__":
    sys.exit(main())
