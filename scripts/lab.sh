#!/usr/bin/env bash
# The standard cgnat lab: network namespaces on one machine, no NIC needed.
#
#   cgn-sub1 100.64.0.11/24 (+ .21, .22) ─┐
#   cgn-sub2 100.64.0.12/24 (+ .23, .24) ─┼─ bridge in netns cgn-access ── veth ── cgn-in  (DPDK port 0, inside, 100.64.0.1)
#   cgnatd (root ns) ─── cgn-out (DPDK port 1, outside, 192.0.2.1) ── veth ── cgn-inet 192.0.2.2/24
#   cgn-inet: servers 198.51.100.10 and 198.51.100.11 (and .20, reached under MASQUERADE);
#             route 203.0.113.0/24 (the pool, and the destination NAT addresses) via 192.0.2.1
#   cgn-inet (router, far0 198.18.0.1/24, MTU 1400) ── veth ── cgn-far 198.18.0.2/24 (MTU 1500)
#
# The secondary inside addresses 100.64.0.21-.24 (same /24, so the subscribers' own traffic keeps
# 100.64.0.11/.12 as its source) host the destination NAT backends of config/lab.yaml and
# lab-2workers.yaml: 100.64.0.11:8000, .21:8001, .22:8002 in cgn-sub1, .23:8003, .24:8004 in
# cgn-sub2 (started by the end-to-end runner, not by this script); 100.64.0.24 is also the host
# behind the 1:1 static NAT address 203.0.113.50. The destination NAT addresses 203.0.113.50 and
# .100-.103 lie in 203.0.113.0/24 but outside the pool (.1-.6).
#
# cgnatd attaches with net_af_packet to the root-namespace veth ends cgn-in and cgn-out.
# cgn-far is two routed hops behind cgnatd (default route via cgn-inet). cgn-inet forwards, and its
# end of that link has MTU 1400: a 1500-byte packet with DF from a subscriber makes cgn-inet send
# ICMP frag-needed (mtu 1400) to the pool address, which cgnatd must translate back (RFC 5508).
#
# Usage: scripts/lab.sh up|down|status|start|stop|wait
#   up      create the lab (tears leftovers down first; cleans up if it fails halfway)
#   down    remove the lab's namespaces and links (safe when nothing exists)
#   status  show what exists and whether cgnatd runs
#   start   run cgnatd in the background with config/lab.yaml (pid and log under .lab/)
#   stop    stop that cgnatd (SIGTERM, then SIGKILL) and remove its DPDK runtime files
#   wait    wait (bounded) until cgn-sub1 can ping 198.51.100.10 through cgnatd
#
# Environment: CGNATD (binary, default target/release/cgnatd), CGNAT_CONFIG (default
# config/lab.yaml), CGNAT_FILE_PREFIX (default cgnat-lab), WAIT_SECS (default 30).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LAB_DIR="$ROOT/.lab"
PID_FILE="$LAB_DIR/cgnatd.pid"
LOG_FILE="$LAB_DIR/cgnatd.log"
CGNATD=${CGNATD:-$ROOT/target/release/cgnatd}
CGNAT_CONFIG=${CGNAT_CONFIG:-$ROOT/config/lab.yaml}
CGNAT_FILE_PREFIX=${CGNAT_FILE_PREFIX:-cgnat-lab}
WAIT_SECS=${WAIT_SECS:-30}

NAMESPACES=(cgn-sub1 cgn-sub2 cgn-access cgn-inet cgn-far)
ROOT_LINKS=(cgn-in cgn-out)

# Fixed, locally administered MACs make captures and neighbour tables readable.
MAC_CGN_IN=02:c6:00:00:00:01
MAC_CGN_OUT=02:c6:00:00:01:01

log() { echo "lab: $*"; }
die() {
    echo "lab: error: $*" >&2
    exit 1
}

need_root() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (network namespaces, veth, DPDK)"
}

ns_exists() { ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "$1"; }
link_exists() { ip link show dev "$1" >/dev/null 2>&1; }

# Checksum and segmentation offloads off: veth otherwise hands out TCP/UDP packets with
# partial checksums (and GSO super-frames) that a DPDK af_packet port forwards as they
# are, so the far side would drop them. rx/gro are switched off where the driver lets us.
offloads_off() {
    local ns=$1 dev=$2
    local -a run=()
    [[ -n "$ns" ]] && run=(ip netns exec "$ns")
    "${run[@]}" ethtool -K "$dev" tx off tso off gso off >/dev/null 2>&1 ||
        die "ethtool -K $dev tx off tso off gso off failed${ns:+ in $ns}"
    "${run[@]}" ethtool -K "$dev" rx off >/dev/null 2>&1 || true
    "${run[@]}" ethtool -K "$dev" gro off >/dev/null 2>&1 || true
}

# IPv6 off inside a namespace we own (per-namespace sysctls): no RS/DAD/MLD noise on the wire.
ns_quiet() {
    local ns=$1
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.default.disable_ipv6=1
    ip -n "$ns" link set lo up
}

lab_down() {
    local ns dev
    for ns in "${NAMESPACES[@]}"; do
        if ns_exists "$ns"; then
            ip netns del "$ns"
        fi
    done
    # Deleting cgn-access/cgn-inet removes the veth peers too (also cgn-inet's far0 and cgn-far's
    # eth0); this catches half-built leftovers in the root namespace.
    for dev in "${ROOT_LINKS[@]}"; do
        if link_exists "$dev"; then
            ip link del "$dev"
        fi
    done
}

lab_up() {
    need_root
    lab_down
    # Any failure from here on (set -e or die) exits the script: undo the half-built lab.
    trap 'echo "lab: up failed, cleaning up" >&2; lab_down' EXIT

    local ns
    for ns in "${NAMESPACES[@]}"; do
        ip netns add "$ns"
        ns_quiet "$ns"
    done

    # Access side: a bridge in cgn-access joins both subscribers and the uplink to cgn-in.
    ip -n cgn-access link add br0 type bridge stp_state 0 forward_delay 0
    ip -n cgn-access link set br0 up
    # With br_netfilter loaded, the bridge validates IPv4/IPv6 headers and silently drops the
    # malformed frames the end-to-end tests inject; cgnatd must see them. Per-namespace sysctls.
    local f
    for f in arptables ip6tables iptables; do
        if ip netns exec cgn-access test -e "/proc/sys/net/bridge/bridge-nf-call-$f"; then
            ip netns exec cgn-access sysctl -qw "net.bridge.bridge-nf-call-$f=0"
        fi
    done
    local sub
    for sub in sub1 sub2; do
        ip -n cgn-access link add "$sub" type veth peer name eth0 netns "cgn-$sub"
        ip -n cgn-access link set "$sub" master br0 up
        offloads_off cgn-access "$sub"
        offloads_off "cgn-$sub" eth0
    done
    ip netns exec cgn-sub1 ip addr add 100.64.0.11/24 dev eth0
    ip netns exec cgn-sub2 ip addr add 100.64.0.12/24 dev eth0
    # Destination NAT backends: secondary addresses in the same /24 (added after the primary, so
    # the kernel marks them secondary). The connected route and the default route pick the
    # primary as source, so a subscriber's own connections still leave from .11/.12; a backend's
    # replies leave from the address they were sent to, through the same default route.
    local a
    for a in 100.64.0.21 100.64.0.22; do
        ip -n cgn-sub1 addr add "$a/24" dev eth0
    done
    for a in 100.64.0.23 100.64.0.24; do
        ip -n cgn-sub2 addr add "$a/24" dev eth0
    done
    for sub in sub1 sub2; do
        ip -n "cgn-$sub" link set eth0 up
        ip -n "cgn-$sub" route add default via 100.64.0.1
    done

    ip link add cgn-in address "$MAC_CGN_IN" type veth peer name uplink netns cgn-access
    ip -n cgn-access link set uplink master br0 up
    offloads_off cgn-access uplink

    # Outside: cgn-out peered straight into cgn-inet.
    ip link add cgn-out address "$MAC_CGN_OUT" type veth peer name eth0 netns cgn-inet
    offloads_off cgn-inet eth0
    ip -n cgn-inet addr add 192.0.2.2/24 dev eth0
    ip -n cgn-inet link set eth0 up
    # Server addresses live on lo: the dummy driver is not available on every kernel.
    ip -n cgn-inet addr add 198.51.100.10/32 dev lo
    ip -n cgn-inet addr add 198.51.100.11/32 dev lo
    # The server subscribers reach under MASQUERADE (the configs' SNAT rule for 198.51.100.20/32).
    ip -n cgn-inet addr add 198.51.100.20/32 dev lo
    ip -n cgn-inet route add 203.0.113.0/24 via 192.0.2.1

    # Beyond cgn-inet: cgn-far, reached through cgn-inet as a router. The cgn-inet end (far0) has
    # MTU 1400 and cgn-far keeps 1500, so the path from the subscribers has a bottleneck in the
    # middle. Only small packets (ACKs, ICMP) flow from cgn-far towards cgn-inet: veth drops
    # frames longer than the receiving end's MTU. ICMP errors are not rate limited in the two
    # routers' namespaces, so every traceroute probe gets its answer.
    ip -n cgn-inet link add far0 type veth peer name eth0 netns cgn-far
    offloads_off cgn-inet far0
    offloads_off cgn-far eth0
    ip -n cgn-inet link set far0 mtu 1400
    ip -n cgn-inet addr add 198.18.0.1/24 dev far0
    ip -n cgn-inet link set far0 up
    ip -n cgn-far addr add 198.18.0.2/24 dev eth0
    ip -n cgn-far link set eth0 up
    ip -n cgn-far route add default via 198.18.0.1
    ip netns exec cgn-inet sysctl -qw net.ipv4.ip_forward=1
    ip netns exec cgn-inet sysctl -qw net.ipv4.icmp_ratelimit=0
    ip netns exec cgn-far sysctl -qw net.ipv4.icmp_ratelimit=0

    # Root-namespace ends belong to DPDK: no address, no IPv6, promiscuous. Forwarding and
    # ARP replies are switched off per interface so the root kernel, which sees the same
    # frames, can never route subscriber traffic anywhere else or answer for cgnatd.
    local dev
    for dev in "${ROOT_LINKS[@]}"; do
        sysctl -qw "net.ipv6.conf.$dev.disable_ipv6=1"
        sysctl -qw "net.ipv4.conf.$dev.forwarding=0"
        sysctl -qw "net.ipv4.conf.$dev.arp_ignore=8"
        offloads_off "" "$dev"
        ip link set "$dev" promisc on up
    done

    trap - EXIT
    log "up: cgn-sub1 100.64.0.11 (+.21 .22), cgn-sub2 100.64.0.12 (+.23 .24) -> cgn-in | cgn-out -> cgn-inet 192.0.2.2 (servers 198.51.100.10, .11) -> mtu 1400 -> cgn-far 198.18.0.2"
}

cgnatd_pid() {
    # Prints the pid from the pid file only if that process is still our cgnatd.
    [[ -f "$PID_FILE" ]] || return 1
    local pid
    pid=$(cat "$PID_FILE")
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ -r "/proc/$pid/cmdline" ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "cgnatd" || return 1
    echo "$pid"
}

cleanup_dpdk_files() {
    rm -rf "/var/run/dpdk/$CGNAT_FILE_PREFIX"
    local f
    for f in /dev/hugepages/"${CGNAT_FILE_PREFIX}"map_*; do
        [[ -e "$f" ]] && rm -f "$f"
    done
    return 0
}

cgnatd_start() {
    need_root
    [[ -x "$CGNATD" ]] || die "$CGNATD not found: run 'make build' first"
    [[ -f "$CGNAT_CONFIG" ]] || die "$CGNAT_CONFIG not found"
    link_exists cgn-in && link_exists cgn-out || die "lab is not up: run 'scripts/lab.sh up' first"
    if pid=$(cgnatd_pid); then
        die "cgnatd already running (pid $pid); 'scripts/lab.sh stop' first"
    fi
    mkdir -p "$LAB_DIR"
    cleanup_dpdk_files
    # setsid: the daemon outlives this shell and a Ctrl-C in the terminal does not reach it.
    setsid "$CGNATD" --config "$CGNAT_CONFIG" --file-prefix "$CGNAT_FILE_PREFIX" --log-format text \
        </dev/null >"$LOG_FILE" 2>&1 &
    local pid=$!
    echo "$pid" >"$PID_FILE"
    sleep 0.5
    if ! kill -0 "$pid" 2>/dev/null; then
        rm -f "$PID_FILE"
        echo "lab: cgnatd exited at once; log:" >&2
        tail -n 40 "$LOG_FILE" >&2 || true
        exit 1
    fi
    log "cgnatd started (pid $pid, log $LOG_FILE)"
}

cgnatd_stop() {
    local pid
    if pid=$(cgnatd_pid); then
        kill -TERM "$pid" 2>/dev/null || true
        local i
        for ((i = 0; i < 100; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "lab: cgnatd (pid $pid) ignored SIGTERM for 10 s, sending SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.2
        fi
        log "cgnatd stopped (pid $pid)"
    fi
    rm -f "$PID_FILE"
    cleanup_dpdk_files
}

lab_wait() {
    local deadline=$((SECONDS + WAIT_SECS))
    while ((SECONDS < deadline)); do
        if [[ -f "$PID_FILE" ]] && ! cgnatd_pid >/dev/null; then
            echo "lab: cgnatd is no longer running; log tail:" >&2
            tail -n 40 "$LOG_FILE" >&2 || true
            exit 1
        fi
        if ip netns exec cgn-sub1 ping -q -n -c 1 -W 1 198.51.100.10 >/dev/null 2>&1; then
            log "forwarding: cgn-sub1 reaches 198.51.100.10"
            return 0
        fi
        sleep 0.5
    done
    echo "lab: no ping from cgn-sub1 to 198.51.100.10 within ${WAIT_SECS}s; cgnatd log tail:" >&2
    tail -n 40 "$LOG_FILE" >&2 || true
    exit 1
}

lab_status() {
    local ns dev pid
    for ns in "${NAMESPACES[@]}"; do
        if ns_exists "$ns"; then
            # Every address of every interface (the subscribers have secondaries).
            echo "netns $ns: $(ip -n "$ns" -brief addr show | awk '$1 != "lo" {s = $1; for (i = 3; i <= NF; i++) s = s " " $i; print s}' | paste -sd ',' -)"
        else
            echo "netns $ns: absent"
        fi
    done
    for dev in "${ROOT_LINKS[@]}"; do
        if link_exists "$dev"; then
            echo "link $dev: $(ip -brief link show dev "$dev" | awk '{print $2, $3}')"
        else
            echo "link $dev: absent"
        fi
    done
    if pid=$(cgnatd_pid); then
        echo "cgnatd: running (pid $pid, log $LOG_FILE)"
    else
        echo "cgnatd: not running"
    fi
}

case "${1:-}" in
up) lab_up ;;
down)
    need_root
    lab_down
    log "down"
    ;;
status) lab_status ;;
start) cgnatd_start ;;
stop) cgnatd_stop ;;
wait) lab_wait ;;
*)
    echo "usage: $0 up|down|status|start|stop|wait" >&2
    exit 2
    ;;
esac
