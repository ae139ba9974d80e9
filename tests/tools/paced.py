#!/usr/bin/env python3
"""Paced streams for the cgnat lab that run while something changes around them, and tell
afterwards whether the flow lost anything (and kept its translation).

  paced.py udp --server 198.51.100.10 --port 7000 --bind-port 45001 [--rate 300]
               [--duration 120] [--drain 2] [--tag t]
      One socket, one flow, against tests/tools/udp_echo.py's server: every 1/--rate seconds it
      sends "stream TAG SEQ" (SEQ from 0). The server answers each datagram with
      {"seen": ip:port, "echo": ...}; replies are matched to their SEQ, however late or out of
      order, so only a datagram whose reply never came counts as missing.
      Prints {"event": "started", "local"} once the first reply is back (the flow exists in the
      NAT), {"event": "progress", "sent", "answered", "t"} every second, and at the end (after
      --duration, or on SIGTERM/SIGINT: sending stops, replies are awaited --drain seconds more)
      {"event": "done", "local", "rate", "sent", "answered", "missing_count", "missing": [first 100
      SEQs], "missing_at": [their send times, seconds after the first], "duplicates",
      "sources": {seen: n}, "max_rtt_ms", "t_first", "t_last"} (t_first, t_last: wall-clock times,
      time.time(), of the first and last datagram sent).

  paced.py tcp --server 198.51.100.11 --port 9100 [--bind-port 45010] [--rate 1000000]
               [--duration 120] [--stall 5]
      One connection to tests/tools/tcp_stream.py's sink: random bytes at --rate bytes per second
      (in 16 KiB chunks on a fixed schedule), until --duration or SIGTERM/SIGINT; then it
      half-closes and reads the sink's answer {"peer", "bytes", "sha256"} (what arrived, and from
      where). A send or the answer blocked for --stall seconds is an error.
      Prints {"event": "connected", "local", "t"} once the first chunk is sent, {"event":
      "progress", "sent", "t"} every second, and at the end {"event": "done", "local", "sent",
      "sha256", "reply": {...} or null, "intact": bool, "retransmits" (the kernel's count for the
      connection), "error"?, "t_first", "t_last"}; intact: the sink got exactly the bytes sent.

Every mode is bounded in time (--duration), prints JSON lines on stdout and exits by itself.
"""
import argparse
import hashlib
import json
import os
import select
import signal
import socket
import struct
import sys
import time


def emit(obj):
    print(json.dumps(obj), flush=True)


def stop_on_signals():
    """A flag that SIGTERM and SIGINT set: the modes stop sending and report."""
    stop = {"now": False}

    def on_signal(_sig, _frame):
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop


def udp(args):
    stop = stop_on_signals()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if args.bind_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", args.bind_port))
    sock.connect((args.server, args.port))
    sock.setblocking(False)
    local = "%s:%d" % sock.getsockname()

    interval = 1.0 / args.rate
    prefix = f"stream {args.tag} "
    sent_at = []  # monotonic send time per SEQ
    answered = {}  # SEQ -> rtt seconds
    duplicates = 0
    sources = {}
    started = False
    t_first = t_last = None
    start = time.monotonic()
    next_send = start
    next_progress = start + 1.0
    end = start + args.duration
    drain_until = None

    def receive(timeout):
        nonlocal duplicates, started
        ready, _, _ = select.select([sock], [], [], max(0.0, timeout))
        if not ready:
            return
        while True:
            try:
                data = sock.recv(2048)
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionRefusedError:
                # An ICMP error for an earlier datagram; the datagram counts as missing.
                continue
            now = time.monotonic()
            try:
                reply = json.loads(data.decode())
                seq = int(reply["echo"][len(prefix):])
            except (ValueError, KeyError, TypeError):
                continue
            if not 0 <= seq < len(sent_at):
                continue
            if seq in answered:
                duplicates += 1
                continue
            answered[seq] = now - sent_at[seq]
            seen = reply.get("seen", "?")
            sources[seen] = sources.get(seen, 0) + 1
            if not started:
                started = True
                emit({"event": "started", "local": local})

    while True:
        now = time.monotonic()
        if drain_until is None and (stop["now"] or now >= end):
            drain_until = now + args.drain
        if drain_until is not None:
            if now >= drain_until or len(answered) == len(sent_at):
                break
            receive(drain_until - now)
            continue
        if now >= next_send:
            seq = len(sent_at)
            try:
                sock.send(f"{prefix}{seq}".encode())
            except (BlockingIOError, ConnectionRefusedError):
                pass  # not sent counts as missing: the SEQ is taken either way
            sent_at.append(now)
            wall = time.time()
            t_first = wall if t_first is None else t_first
            t_last = wall
            # Pace by the schedule, not by the last send, so the average rate holds.
            next_send += interval
            if next_send < now - 1.0:
                next_send = now
        if now >= next_progress:
            emit({"event": "progress", "sent": len(sent_at), "answered": len(answered), "t": time.time()})
            next_progress += 1.0
        receive(next_send - time.monotonic())

    missing = [s for s in range(len(sent_at)) if s not in answered]
    emit({
        "event": "done",
        "local": local,
        "rate": args.rate,
        "sent": len(sent_at),
        "answered": len(answered),
        "missing_count": len(missing),
        "missing": missing[:100],
        "missing_at": [round(sent_at[s] - start, 3) for s in missing[:100]],
        "duplicates": duplicates,
        "sources": sources,
        "max_rtt_ms": round(max(answered.values(), default=0) * 1000, 1),
        "t_first": t_first,
        "t_last": t_last,
    })
    return 0


def total_retrans(sock):
    """struct tcp_info's tcpi_total_retrans (linux/tcp.h: 8 bytes of u8 fields, then u32s; it is
    the 24th), or None."""
    try:
        return struct.unpack_from("I", sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104), 100)[0]
    except (OSError, struct.error):
        return None


def tcp(args):
    stop = stop_on_signals()
    out = {"event": "done", "local": None, "sent": 0, "sha256": None, "reply": None,
           "intact": False, "retransmits": None, "t_first": None, "t_last": None}
    digest = hashlib.sha256()
    chunk_size = 16384
    interval = chunk_size / args.rate
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if args.bind_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("0.0.0.0", args.bind_port))
        sock.settimeout(args.stall)
        sock.connect((args.server, args.port))
        out["local"] = "%s:%d" % sock.getsockname()
        start = time.monotonic()
        end = start + args.duration
        next_send = start
        next_progress = start + 1.0
        while not stop["now"] and time.monotonic() < end:
            now = time.monotonic()
            if now < next_send:
                time.sleep(min(next_send - now, 0.05))
                continue
            data = os.urandom(chunk_size)
            sock.sendall(data)  # raises socket.timeout after --stall seconds blocked
            digest.update(data)
            out["sent"] += len(data)
            wall = time.time()
            out["t_first"] = out["t_first"] or wall
            out["t_last"] = wall
            if out["sent"] == len(data):
                # Connected, and the data is on its way.
                emit({"event": "connected", "local": out["local"], "t": wall})
            # On a fixed schedule (the average rate holds), without bursting after a long stall.
            next_send = max(next_send + interval, now - 1.0)
            if now >= next_progress:
                emit({"event": "progress", "sent": out["sent"], "t": wall})
                next_progress += 1.0
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
        out["reply"] = json.loads(reply.decode()) if reply.strip() else None
    except (OSError, ValueError) as e:
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        out["retransmits"] = total_retrans(sock)
        sock.close()
    out["sha256"] = digest.hexdigest()
    r = out["reply"] or {}
    out["intact"] = r.get("bytes") == out["sent"] and r.get("sha256") == out["sha256"]
    emit(out)
    return 0 if out["intact"] and "error" not in out else 1


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    u = sub.add_parser("udp")
    u.add_argument("--server", required=True)
    u.add_argument("--port", type=int, default=7000)
    u.add_argument("--bind-port", type=int, default=0, help="fixed local source port")
    u.add_argument("--rate", type=float, default=300, help="datagrams per second")
    u.add_argument("--duration", type=float, default=120, help="seconds of sending at most")
    u.add_argument("--drain", type=float, default=2, help="seconds to wait for late replies")
    u.add_argument("--tag", default="-")
    t = sub.add_parser("tcp")
    t.add_argument("--server", required=True)
    t.add_argument("--port", type=int, required=True)
    t.add_argument("--bind-port", type=int, default=0, help="fixed local source port")
    t.add_argument("--rate", type=float, default=1000000, help="bytes per second")
    t.add_argument("--duration", type=float, default=120, help="seconds of sending at most")
    t.add_argument("--stall", type=float, default=5, help="seconds a send or the answer may block")
    args = p.parse_args()
    return {"udp": udp, "tcp": tcp}[args.mode](args)


if __name__ == "__main__":
    sys.exit(main())
