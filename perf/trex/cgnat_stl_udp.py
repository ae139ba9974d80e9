"""TRex stateless profile: established-flow packet rate through cgnat.

Port 0 (facing cgnat's inside port) sends UDP from many subscriber endpoints to one server; port 1
(facing cgnat's outside port) receives the translated packets. The flows are every pair of
`--subs` subscriber addresses (from 100.64.0.1) and `--ports-per-sub` source ports (from 1025):
TRex's tuple generator walks the addresses and, each time they wrap, the next port. After the
first packet of each flow every packet hits an established session. Its `limit_flows` is set to
subs × ports-per-sub: TRex's default of 100,000 would wrap the generator early and send only the
first 100,000 flows, whatever the tunables ask for.

Tunables (current TRex, argparse style):
    start -f cgnat_stl_udp.py -p 0 -m 10mpps -t --size 60 --subs 65536 --ports-per-sub 16
Older TRex versions pass `-t size=60,subs=65536,ports_per_sub=16` as keyword arguments; both work.

  size           frame size without FCS, 60 .. 1514, or "imix" (60/590/1514 at 28:16:4 by packets).
                 TRex counts frames without the 4-byte FCS, so the default 60 puts 64-byte frames on
                 the wire: the same frames as pktgen's `SIZE = 64` (pktgen counts the FCS) and the
                 64-byte UDP of perf/RESULTS.md.
  subs           subscriber addresses, 1 .. 4194302 (RFC 6598 space from 100.64.0.1)
  ports-per-sub  source ports per subscriber, 1 .. 64511
  server         destination address (routed by cgnat's outside gateway towards port 1)

The UDP checksum is sent as zero (allowed for UDP over IPv4, RFC 768) because the field engine
rewrites the source after the checksum was computed; the IPv4 header checksum is fixed per packet.
"""

import argparse

from trex_stl_lib.api import (
    IP,
    STLPktBuilder,
    STLScVmRaw,
    STLStream,
    STLTXCont,
    STLVmFixIpv4,
    STLVmTupleGen,
    STLVmWrFlowVar,
    UDP,
    Ether,
)

FIRST_SUB = 0x64400001  # 100.64.0.1
IMIX = [(60, 28), (590, 16), (1514, 4)]


def int2ip(v):
    return ".".join(str((v >> s) & 0xFF) for s in (24, 16, 8, 0))


def parse(tunables, kwargs):
    p = argparse.ArgumentParser(prog="cgnat_stl_udp.py")
    p.add_argument("--size", default="60")
    p.add_argument("--subs", type=int, default=65536)
    p.add_argument("--ports-per-sub", type=int, default=16)
    p.add_argument("--server", default="198.51.100.10")
    if isinstance(tunables, list):
        args = p.parse_args(tunables)
    else:
        # Older TRex: tunables arrive as keyword arguments.
        args = p.parse_args([])
        args.size = str(kwargs.get("size", args.size))
        args.subs = int(kwargs.get("subs", args.subs))
        args.ports_per_sub = int(kwargs.get("ports_per_sub", args.ports_per_sub))
        args.server = kwargs.get("server", args.server)
    if not 1 <= args.subs <= 4194302:
        raise ValueError("subs must be 1 .. 4194302 (100.64.0.0/10)")
    if not 1 <= args.ports_per_sub <= 64511:
        raise ValueError("ports-per-sub must be 1 .. 64511")
    if args.subs * args.ports_per_sub > 0xFFFFFFFF:
        # The tuple generator counts flows in 32 bits (limit_flows).
        raise ValueError("subs x ports-per-sub must be at most 4294967295 flows")
    return args


class CgnatUdp(object):
    def stream(self, size, args, pps):
        base = Ether() / IP(src=int2ip(FIRST_SUB), dst=args.server, ttl=64) / UDP(sport=1025, dport=5001, chksum=0)
        if not 60 <= size <= 1514:
            raise ValueError("size must be 60 .. 1514 bytes (without FCS)")
        pad = "x" * max(0, size - len(base))
        vm = STLScVmRaw([
            STLVmTupleGen(
                name="flow",
                ip_min=int2ip(FIRST_SUB),
                ip_max=int2ip(FIRST_SUB + args.subs - 1),
                port_min=1025,
                port_max=1025 + args.ports_per_sub - 1,
                limit_flows=args.subs * args.ports_per_sub,
            ),
            STLVmWrFlowVar(fv_name="flow.ip", pkt_offset="IP.src"),
            STLVmWrFlowVar(fv_name="flow.port", pkt_offset="UDP.sport"),
            STLVmFixIpv4(offset="IP"),
        ])
        return STLStream(packet=STLPktBuilder(pkt=base / pad, vm=vm), mode=STLTXCont(pps=pps))

    def get_streams(self, tunables=None, direction=0, **kwargs):
        args = parse(tunables, kwargs)
        if direction != 0:
            # Only the inside-facing port sends; a packet-rate test needs no replies.
            return []
        if args.size == "imix":
            # Relative rates: -m scales the sum.
            return [self.stream(s, args, w) for s, w in IMIX]
        return [self.stream(int(args.size), args, 1)]


def register():
    return CgnatUdp()
