"""TRex stateless profile: established-flow packet rate through cgnat.

Port 0 (facing cgnat's inside port) sends UDP from many subscriber endpoints to one server;
port 1 (facing cgnat's outside port) receives the translated packets. Each subscriber address
uses `ports_per_sub` source ports, so the flow count is subscribers x ports_per_sub, and after
the first packet of each flow every packet hits an established session.

Tunables (trex-console: start -f cgnat_stl_udp.py -t size=64,subs=65536,ports_per_sub=16 -m 10mpps):
  size           frame size without FCS: 64 .. 1514, or "imix" for 60/590/1514 at 28:16:4
  subs           subscribers, counted up from 100.64.0.1 (at most 4,194,302: RFC 6598 space)
  ports_per_sub  source ports per subscriber, from 1025 (a power of two)
  server         destination address (routed by cgnat's outside gateway to port 1)

Set cgnat's inside next hop MACs with `ports[].neighbours` if the TRex ports do not answer ARP
(TRex does answer ARP for the addresses configured in its port config).
"""

from trex_stl_lib.api import (
    IP,
    STLPktBuilder,
    STLProfile,
    STLStream,
    STLTXCont,
    STLVM,
    UDP,
    Ether,
    ip2int,
)

IMIX = [(60, 28), (590, 16), (1514, 4)]
FIRST_SUB = "100.64.0.1"


class CgnatUdp(object):
    def _stream(self, size, subs, ports_per_sub, server, pps_weight):
        base = Ether() / IP(src=FIRST_SUB, dst=server) / UDP(sport=1025, dport=5001)
        pad = "x" * max(0, size - len(base))
        # One flow counter walks every (subscriber, port) pair; its low bits are the source port and
        # the rest the subscriber, so all subs x ports_per_sub flows recur in a fixed cycle.
        shift = ports_per_sub.bit_length() - 1
        vm = STLVM()
        vm.var(name="flow", min_value=0, max_value=subs * ports_per_sub - 1, size=4, op="inc", step=1)
        vm.write_mask(fv_name="flow", pkt_offset="UDP.sport", pkt_cast_size=2, mask=ports_per_sub - 1, shift=0, add_value=1025)
        vm.write_mask(fv_name="flow", pkt_offset="IP.src", pkt_cast_size=4, mask=0xFFFFFFFF ^ (ports_per_sub - 1), shift=-shift, add_value=ip2int(FIRST_SUB))
        vm.fix_chksum()
        return STLStream(
            packet=STLPktBuilder(pkt=base / pad, vm=vm),
            mode=STLTXCont(percentage=pps_weight),
        )

    def get_streams(self, direction=0, size=64, subs=65536, ports_per_sub=16, server="198.51.100.10", **kwargs):
        subs, ports_per_sub = int(subs), int(ports_per_sub)
        if ports_per_sub < 1 or ports_per_sub & (ports_per_sub - 1):
            raise ValueError("ports_per_sub must be a power of two")
        if not 1 <= subs <= 4194302:
            raise ValueError("subs must be 1 .. 4194302 (RFC 6598 space)")
        if direction != 0:
            # Only the inside-facing port generates; replies are not needed for a pps test.
            return []
        if str(size) == "imix":
            total = sum(w for _, w in IMIX)
            return [self._stream(s, subs, ports_per_sub, server, 100.0 * w / total) for s, w in IMIX]
        return [self._stream(int(size), subs, ports_per_sub, server, 100)]


def register():
    return CgnatUdp()
