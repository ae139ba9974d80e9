"""TRex advanced-stateful (ASTF) profile: new TCP connections per second through cgnat.

Clients (TRex port 0, facing cgnat's inside) open HTTP-like TCP connections from subscriber
addresses in 100.64.0.0/10 to a server address served by TRex port 1 (facing cgnat's outside).
Each connection sends a request, reads the response and closes: every connection is a new
session in cgnat (SYN, established, FIN both ways). The ASTF server side creates its flows from
the SYN it receives, so it works with the translated (pool) client addresses.

Run: trex-console: start -f cgnat_astf_http.py -m 100000  (cps multiplier), then read
`cgnatctl stats` (sessions_created rate, drops) on the cgnat box.
"""

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

HTTP_REQ = (
    b"GET /1k HTTP/1.1\r\nHost: 198.51.100.10\r\nConnection: close\r\n"
    b"User-Agent: trex-cgnat\r\nAccept: */*\r\n\r\n"
)
HTTP_RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 1024\r\nConnection: close\r\n\r\n" + b"x" * 1024


class CgnatHttp(object):
    def get_profile(self, clients_start="100.64.0.1", clients_end="100.79.255.254", server="198.51.100.10", **kwargs):
        client = ASTFProgram()
        client.send(HTTP_REQ)
        client.recv(len(HTTP_RESP))
        server_prog = ASTFProgram()
        server_prog.recv(len(HTTP_REQ))
        server_prog.send(HTTP_RESP)

        ip_gen = ASTFIPGen(
            glob=ASTFIPGenGlobal(ip_offset="1.0.0.0"),
            dist_client=ASTFIPGenDist(ip_range=[clients_start, clients_end], distribution="seq"),
            dist_server=ASTFIPGenDist(ip_range=[server, server], distribution="seq"),
        )
        template = ASTFTemplate(
            client_template=ASTFTCPClientTemplate(program=client, ip_gen=ip_gen, port=80, cps=1),
            server_template=ASTFTCPServerTemplate(program=server_prog, assoc=ASTFAssociationRule(port=80)),
        )
        return ASTFProfile(default_ip_gen=ip_gen, templates=template)


def register():
    return CgnatHttp()
