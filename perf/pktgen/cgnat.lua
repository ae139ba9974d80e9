-- pktgen-dpdk script: UDP from a range of subscriber endpoints through cgnat.
--
-- Port 0 faces cgnat's inside port, port 1 its outside port (it only receives). In range mode
-- every field with a non-zero increment steps once per packet and wraps at its maximum on its
-- own. The source addresses walk 100.64.0.1 .. 100.64.63.255 (16383 addresses) and the source
-- ports 1025 .. 1040 (16 ports); the counts are coprime, so the (address, port) pairs repeat only
-- after 16383 x 16 = 262,128 packets: that many flows, each an established session after its
-- first packet.
--
-- Run: pktgen -l 0-4 -n 4 -a <pci0> -a <pci1> -- -P -m "[1:2].0,[3:4].1" -f cgnat.lua
-- Set CGNAT_INSIDE_MAC below to cgnat's inside port MAC (`cgnatctl ports`). pktgen answers no
-- ARP, so cgnat needs its MAC as a static neighbour if replies are routed back to it
-- (`ports[].neighbours`, see perf/HARDWARE.md); this script only measures in2out.

package.path = package.path .. ";?.lua;test/?.lua;app/?.lua;"
require "Pktgen"

local CGNAT_INSIDE_MAC = "02:00:00:00:00:01"
local SERVER = "198.51.100.10"
local SIZE = 64

-- pktgen 21.x and later keep the range setters in pktgen.range; older versions at the top level,
-- with the same arguments.
local range = pktgen.range or pktgen

local function field(setter, start, inc, min, max)
    setter("0", "start", start)
    setter("0", "inc", inc)
    setter("0", "min", min)
    setter("0", "max", max)
end

pktgen.set("0", "size", SIZE)
pktgen.set_proto("0", "udp")

range.dst_mac("0", "start", CGNAT_INSIDE_MAC)
field(range.src_ip, "100.64.0.1", "0.0.0.1", "100.64.0.1", "100.64.63.255")
field(range.dst_ip, SERVER, "0.0.0.0", SERVER, SERVER)
field(range.src_port, 1025, 1, 1025, 1040)
field(range.dst_port, 5001, 0, 5001, 5001)
field(range.pkt_size, SIZE, 0, SIZE, SIZE)

pktgen.set_range("0", "on")
pktgen.set("0", "rate", 100)
pktgen.start("0")
printf("cgnat.lua: port 0 sending %d-byte UDP from 262,128 subscriber flows; 'stop 0' to end\n", SIZE)
