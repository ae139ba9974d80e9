#!/usr/bin/env python3
"""HTTP server for the cgnat lab.

  GET /file    the generated file (random bytes, --size long, written to --file)
  GET /whoami  the client address the server saw, as "ip:port"

Every request is logged as a JSON line (client address, path, bytes) to --log, so a test
or the demo can tell which translated address a download came from. On start it prints
one JSON line {"event": "ready", "sha256": ...} on stdout. It exits after --lifetime seconds.
"""
import argparse
import hashlib
import http.server
import json
import os
import socketserver
import sys
import threading


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256


def make_handler(file_path, log):
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, fmt, *args):  # silence the default stderr access log
            pass

        def record(self, nbytes):
            line = json.dumps({"client": f"{self.client_address[0]}:{self.client_address[1]}",
                               "path": self.path, "bytes": nbytes})
            with lock:
                log.write(line + "\n")
                log.flush()

        def do_GET(self):
            if self.path == "/whoami":
                body = f"{self.client_address[0]}:{self.client_address[1]}\n".encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.record(len(body))
            elif self.path == "/file":
                size = os.path.getsize(file_path)
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(size))
                self.end_headers()
                with open(file_path, "rb") as f:
                    while True:
                        chunk = f.read(65536)
                        if not chunk:
                            break
                        self.wfile.write(chunk)
                self.record(size)
            else:
                self.send_error(404)

    return Handler


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bind", required=True)
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--file", required=True, help="path of the file served at /file (generated)")
    p.add_argument("--size", type=int, default=8 * 1024 * 1024, help="bytes of random data")
    p.add_argument("--log", required=True, help="JSON-lines request log")
    p.add_argument("--lifetime", type=float, default=300, help="exit after this many seconds")
    args = p.parse_args()

    with open(args.file, "wb") as f:
        f.write(os.urandom(args.size))
    with open(args.file, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()

    with open(args.log, "a") as log:
        srv = Server((args.bind, args.port), make_handler(args.file, log))
        timer = threading.Timer(args.lifetime, srv.shutdown)
        timer.daemon = True
        timer.start()
        print(json.dumps({"event": "ready", "bind": f"{args.bind}:{args.port}", "sha256": digest,
                          "size": args.size}), flush=True)
        srv.serve_forever(poll_interval=0.2)
        srv.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
