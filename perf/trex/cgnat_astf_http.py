"""TRex advanced-stateful (ASTF) profile: new TCP connections per second through cgnat.

Clients (TRex port 0, facing cgnat's inside) open HTTP-like TCP connections from subscriber
addresses 100.64.0.1 .. to a server address played by TRex port 1 (facing cgnat's outside). Each
connection sends a request, reads a 1 KiB response and closes: every connection is a new session in
cgnat (SYN, established, FIN both ways), and with endpoint-independent mapping a new mapping too,
since TRex picks a new source port per connection.

NAT in the path needs nothing special here: ASTF's server side builds its TCP state from the SYN it
receives (whatever source address and port cgnat gave it) and answers that, and the client side sees
its own addresses again after cgnat's reverse translation.

Run (trex-console, TRex started with --astf):
    start -f cgnat_astf_http.py -m 100000 -t --clients 65536
-m is connections per second (the template's cps is 1). Older TRex versions pass tunables as
`-t clients=65536`; both work. Read `cgnatctl stats --watch` on the cgnat box (sessions_created
rate, drops) and TRex's client/server TCP counters (connection attempts vs established).
"""

import argparse

from trex.astf.api import (
    ASTFAssociationRule,
    ASTFIPGen,
    ASTFIPGenDist,
    ASTFIPGenGlobal,
    ASTFProfile,
    ASTFProgram,
    ASTFTCPClientTemplate,
    ASTFTCPServerTemplate,
    ASTFTemplate,
)

FIRST_SUB = 0x64400001  # 100.64.0.1
HTTP_REQ = (
    b"GET /1k HTTP/1.1\r\nHost: 198.51.100.10\r\nConnection: close\r\n"
    b"User-Agent: trex-cgnat\r\nAccept: */*\r\n\r\n"
)
HTTP_RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 1024\r\nConnection: close\r\n\r\n" + b"x" * 1024


def int2ip(v):
    return ".".join(str((v >> s) & 0xFF) for s in (24, 16, 8, 0))


class CgnatHttp(object):
    def get_profile(self, tunables=None, **kwargs):
        p = argparse.ArgumentParser(prog="cgnat_astf_http.py")
        p.add_argument("--clients", type=int, default=65536, help="subscriber addresses from 100.64.0.1")
        p.add_argument("--server", default="198.51.100.10")
        if isinstance(tunables, list):
            args = p.parse_args(tunables)
        else:
            # Older TRex: tunables arrive as keyword arguments.
            args = p.parse_args([])
            args.clients = int(kwargs.get("clients", args.clients))
            args.server = kwargs.get("server", args.server)
        if not 1 <= args.clients <= 4194302:
            raise ValueError("clients must be 1 .. 4194302 (100.64.0.0/10)")

        client = ASTFProgram()
        client.send(HTTP_REQ)
        client.recv(len(HTTP_RESP))
        server = ASTFProgram()
        server.recv(len(HTTP_REQ))
        server.send(HTTP_RESP)
        server.wait_for_peer_close()

        ip_gen = ASTFIPGen(
            glob=ASTFIPGenGlobal(ip_offset="1.0.0.0"),
            dist_client=ASTFIPGenDist(
                ip_range=[int2ip(FIRST_SUB), int2ip(FIRST_SUB + args.clients - 1)], distribution="seq"
            ),
            dist_server=ASTFIPGenDist(ip_range=[args.server, args.server], distribution="seq"),
        )
        template = ASTFTemplate(
            client_template=ASTFTCPClientTemplate(program=client, ip_gen=ip_gen, port=80, cps=1),
            server_template=ASTFTCPServerTemplate(program=server, assoc=ASTFAssociationRule(port=80)),
        )
        return ASTFProfile(default_ip_gen=ip_gen, templates=template)


def register():
    return CgnatHttp()
