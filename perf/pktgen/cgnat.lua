-- pktgen-dpdk script: UDP from a range of subscriber endpoints through cgnat.
--
-- Port 0 faces cgnat's inside port, port 1 its outside port. Source addresses walk
-- 100.64.0.1 .. 100.64.63.254 and source ports 1025 .. 1040 (about 262K flows); every packet
-- after the first of a flow hits an established session.
--
-- Run: pktgen -l 0-4 -n 4 -a <pci0> -a <pci1> -- -P -m "[1:2].0,[3:4].1" -f cgnat.lua
-- Set CGNAT_INSIDE_MAC below to cgnat's inside port MAC (`cgnatctl ports`).

package.path = package.path .. ";?.lua;test/?.lua;app/?.lua;"
require "Pktgen"

local CGNAT_INSIDE_MAC = "02:00:00:00:00:01"
local SERVER = "198.51.100.10"
local size = 64

pktgen.set("0", "size", size)
pktgen.set_proto("0", "udp")

-- Range mode: every field below walks from min to max by inc, wrapping.
pktgen.dst_mac("0", "start", CGNAT_INSIDE_MAC)
pktgen.dst_mac("0", "inc", "00:00:00:00:00:00")
pktgen.dst_mac("0", "min", CGNAT_INSIDE_MAC)
pktgen.dst_mac("0", "max", CGNAT_INSIDE_MAC)

pktgen.src_ip("0", "start", "100.64.0.1")
pktgen.src_ip("0", "inc", "0.0.0.1")
pktgen.src_ip("0", "min", "100.64.0.1")
pktgen.src_ip("0", "max", "100.64.63.254")

pktgen.dst_ip("0", "start", SERVER)
pktgen.dst_ip("0", "inc", "0.0.0.0")
pktgen.dst_ip("0", "min", SERVER)
pktgen.dst_ip("0", "max", SERVER)

pktgen.src_port("0", "start", 1025)
pktgen.src_port("0", "inc", 1)
pktgen.src_port("0", "min", 1025)
pktgen.src_port("0", "max", 1040)

pktgen.dst_port("0", "start", 5001)
pktgen.dst_port("0", "inc", 0)
pktgen.dst_port("0", "min", 5001)
pktgen.dst_port("0", "max", 5001)

pktgen.pkt_size("0", "start", size)
pktgen.pkt_size("0", "inc", 0)
pktgen.pkt_size("0", "min", size)
pktgen.pkt_size("0", "max", size)

pktgen.set_range("0", "on")
pktgen.set("0", "rate", 100)
pktgen.start("0")
printf("cgnat.lua: port 0 sending %d-byte UDP through cgnat; 'stop 0' to end\n", size)
