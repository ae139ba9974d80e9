#!/usr/bin/env python3
"""Write the system benchmark's traffic as a pcap file that dpdk-testpmd replays.

DPDK 22.11's testpmd cannot generate subscriber traffic by itself: `flowgen` always sends from
10.254.0.0:1000 (it varies only the destination address) and `txonly --txonly-multi-flow` derives
its 256 source addresses from the destination address. So the frames are built here and replayed
by testpmd through `net_pcap` (`rx_pcap=FILE,infinite_rx=1`): the PMD loads every frame into
memory once and hands out copies in a loop, so no file I/O happens during the measurement.

Each frame is one flow: UDP from a subscriber endpoint 100.64.x.y:port to a server, 64 bytes on
the wire (60 without the FCS), with valid IPv4 and UDP checksums, addressed to the device under
test's inside MAC. Flows are written in a shuffled order (fixed seed), so consecutive packets hit
unrelated sessions, as with many subscribers; the whole set repeats in that order.
"""

import argparse
import random
import struct

SUBNET = 0x6440_0000  # 100.64.0.0


def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def mac(text):
    b = bytes(int(x, 16) for x in text.replace("-", ":").split(":"))
    if len(b) != 6:
        raise argparse.ArgumentTypeError(f"bad MAC {text!r}")
    return b


def ipv4(text):
    parts = [int(x) for x in text.split(".")]
    if len(parts) != 4 or not all(0 <= p <= 255 for p in parts):
        raise argparse.ArgumentTypeError(f"bad IPv4 address {text!r}")
    return struct.unpack("!I", bytes(parts))[0]


def frame(dst_mac, src_mac, src, sport, dst, dport, payload_len):
    udp_len = 8 + payload_len
    ip_len = 20 + udp_len
    payload = bytes(payload_len)
    ip = struct.pack("!BBHHHBBHII", 0x45, 0, ip_len, 0, 0, 64, 17, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    pseudo = struct.pack("!IIBBH", src, dst, 0, 17, udp_len)
    udp = struct.pack("!HHHH", sport, dport, udp_len, 0) + payload
    c = csum(pseudo + udp) or 0xFFFF  # RFC 768: a computed zero is sent as all ones
    udp = udp[:6] + struct.pack("!H", c) + udp[8:]
    return dst_mac + src_mac + b"\x08\x00" + ip + udp


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--subscribers", type=int, default=4096, help="100.64.0.1 upwards")
    ap.add_argument("--ports-per-subscriber", type=int, default=16, help="source ports from 1025")
    ap.add_argument("--dst-mac", type=mac, required=True, help="the device under test's inside MAC")
    ap.add_argument("--src-mac", type=mac, default=mac("02:00:00:00:0a:01"))
    ap.add_argument("--server", type=ipv4, default=ipv4("198.51.100.10"))
    ap.add_argument("--server-port", type=int, default=5001)
    ap.add_argument("--seed", type=int, default=6)
    a = ap.parse_args()
    if not 1 <= a.subscribers <= (1 << 22) - 2:
        ap.error("--subscribers must be 1 .. 4194302 (100.64.0.0/10)")
    if not 1 <= a.ports_per_subscriber <= 64511:
        ap.error("--ports-per-subscriber must be 1 .. 64511")

    flows = [(s, p) for s in range(1, a.subscribers + 1) for p in range(a.ports_per_subscriber)]
    random.Random(a.seed).shuffle(flows)
    payload_len = 60 - 14 - 20 - 8
    with open(a.out, "wb") as f:
        # pcap global header: microsecond timestamps, Ethernet link type.
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for i, (s, p) in enumerate(flows):
            pkt = frame(a.dst_mac, a.src_mac, SUBNET + s, 1025 + p, a.server, a.server_port, payload_len)
            f.write(struct.pack("<IIII", i // 1_000_000, i % 1_000_000, len(pkt), len(pkt)))
            f.write(pkt)
    print(len(flows))


if __name__ == "__main__":
    main()
