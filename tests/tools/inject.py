#!/usr/bin/env python3
"""Injects malformed frames for the cgnat end-to-end tests (scapy sendp, run it in a
subscriber namespace). Each frame has exactly one fault, so cgnatd should count it under
one drop reason; every other field is valid (IPv4 header checksums are correct unless the
checksum is the fault).

  inject.py --iface eth0 --dst-mac 02:c6:00:00:00:01 --src-ip 100.64.0.11 \
            --dst-ip 198.51.100.10 --count 5 KIND...

Kinds: short (a frame under 14 bytes), ipv4_truncated, ipv4_bad_version, ipv4_bad_ihl,
ipv4_bad_total_length, ipv4_bad_checksum, udp_zero_length, ipv6, lldp.
Prints {"sent": {kind: count}}.

Linux pads a packet-socket frame shorter than the 14-byte Ethernet header with zeros to
60 bytes, so a "short" frame reaches cgnatd as a runt 802.3 frame (type/length 0), not as a
truncated one.
"""
import argparse
import ipaddress
import json
import struct
import sys

from scapy.all import Ether, Raw, conf, get_if_hwaddr, sendp  # noqa: E402


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4_header(src, dst, payload_len, *, version=4, ihl=5, total_len=None, proto=17,
                ttl=64, bad_checksum=False, ident=0x4242):
    total = 20 + payload_len if total_len is None else total_len
    hdr = struct.pack("!BBHHHBBH4s4s", (version << 4) | ihl, 0, total, ident, 0x4000, ttl, proto, 0,
                      ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    ck = csum(hdr)
    if bad_checksum:
        ck ^= 0x5A5A
    return hdr[:10] + struct.pack("!H", ck) + hdr[12:]


def udp(sport, dport, payload, *, length=None):
    ln = 8 + len(payload) if length is None else length
    # Checksum 0 = "none" for UDP over IPv4: keeps the length field the only possible fault.
    return struct.pack("!HHHH", sport, dport, ln, 0) + payload


def frames(kind, args):
    payload = b"cgnat-e2e"
    good_udp = udp(40999, 7000, payload)
    s, d = args.src_ip, args.dst_ip
    if kind == "short":
        return Raw(bytes.fromhex(args.dst_mac.replace(":", "")) + b"\x02\x00\x00\x00")
    eth = Ether(dst=args.dst_mac, src=args.src_mac, type=0x0800)
    if kind == "ipv4_truncated":
        # 10 bytes of IPv4: shorter than the minimum header.
        return eth / Raw(struct.pack("!BBHHH", 0x45, 0, 28, 1, 0) + b"\x40\x11")
    if kind == "ipv4_bad_version":
        return eth / Raw(ipv4_header(s, d, len(good_udp), version=6) + good_udp)
    if kind == "ipv4_bad_ihl":
        return eth / Raw(ipv4_header(s, d, len(good_udp), ihl=3) + good_udp)
    if kind == "ipv4_bad_total_length":
        # Alternate the two ways to be wrong: longer than the frame, shorter than the header.
        total = 1400 if args._toggle else 12
        args._toggle = not args._toggle
        return eth / Raw(ipv4_header(s, d, len(good_udp), total_len=total) + good_udp)
    if kind == "ipv4_bad_checksum":
        return eth / Raw(ipv4_header(s, d, len(good_udp), bad_checksum=True) + good_udp)
    if kind == "udp_zero_length":
        bad = udp(40999, 7000, payload, length=0)
        return eth / Raw(ipv4_header(s, d, len(bad)) + bad)
    if kind == "ipv6":
        eth.type = 0x86DD
        ip6 = struct.pack("!IHBB", 6 << 28, len(good_udp), 17, 64) + bytes(15) + b"\x01" + bytes(15) + b"\x02"
        return eth / Raw(ip6 + good_udp)
    if kind == "lldp":
        eth.type = 0x88CC
        # Chassis ID (MAC), Port ID (ifname), TTL, End.
        tlvs = (struct.pack("!HB", (1 << 9) | 7, 4) + bytes.fromhex(args.src_mac.replace(":", ""))
                + struct.pack("!HB", (2 << 9) | 5, 5) + b"eth0"
                + struct.pack("!HH", (3 << 9) | 2, 120) + b"\0\0")
        return eth / Raw(tlvs)
    raise SystemExit(f"unknown kind {kind}")


KINDS = ["short", "ipv4_truncated", "ipv4_bad_version", "ipv4_bad_ihl", "ipv4_bad_total_length",
         "ipv4_bad_checksum", "udp_zero_length", "ipv6", "lldp"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iface", default="eth0")
    p.add_argument("--dst-mac", required=True, help="the NAT's inside MAC")
    p.add_argument("--src-mac", help="defaults to the interface's MAC")
    p.add_argument("--src-ip", required=True)
    p.add_argument("--dst-ip", required=True)
    p.add_argument("--count", type=int, default=5)
    p.add_argument("kinds", nargs="+", choices=KINDS)
    args = p.parse_args()
    args.src_mac = args.src_mac or get_if_hwaddr(args.iface)
    args._toggle = True
    conf.verb = 0
    sent = {}
    for kind in args.kinds:
        pkts = [frames(kind, args) for _ in range(args.count)]
        sendp(pkts, iface=args.iface, inter=0.002)
        sent[kind] = len(pkts)
    print(json.dumps({"sent": sent}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
