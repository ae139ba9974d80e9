#!/usr/bin/env bash
# The cgnat demo: brings up the namespace lab, starts cgnatd, and shows what the servers in
# cgn-inet see when two subscribers ping, send UDP and download over HTTP through the NAT.
#
#   scripts/demo.sh            (as root; `make demo` builds first)
#   KEEP=1 scripts/demo.sh     leave the lab and cgnatd running afterwards (make lab-down)
#
# Everything it starts is stopped by PID on exit, Ctrl-C included.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
LAB=scripts/lab.sh
PY=${CGNAT_PYTHON:-/usr/bin/python3}
CGNATCTL=${CGNATCTL:-$ROOT/target/release/cgnatctl}
MGMT=${CGNAT_MGMT:-http://127.0.0.1:50051}
WORK=$ROOT/.lab/demo
KEEP=${KEEP:-0}
SERVER=198.51.100.10

[[ $(id -u) -eq 0 ]] || {
    echo "demo: run as root (network namespaces, DPDK)" >&2
    exit 1
}
for bin in target/release/cgnatd "$CGNATCTL"; do
    [[ -x "$bin" ]] || {
        echo "demo: $bin not found: run 'make build' first" >&2
        exit 1
    }
done

PIDS=()
cleanup() {
    local rc=$?
    # Finish the cleanup even if another Ctrl-C arrives while it runs.
    trap - EXIT
    trap "" INT TERM
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ "$KEEP" == "1" && $rc -eq 0 ]]; then
        echo
        echo "KEEP=1: the lab and cgnatd stay up (scripts/lab.sh status; make lab-down to remove)."
    else
        "$LAB" stop >/dev/null || true
        "$LAB" down >/dev/null || true
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'echo; echo "demo: interrupted"; exit 130' INT TERM

step() { printf '\n== %s\n' "$*"; }

# Waits (bounded) for a file to contain a string: servers and captures announce readiness.
wait_for() {
    local file=$1 text=$2 i
    for ((i = 0; i < 100; i++)); do
        grep -q -- "$text" "$file" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "demo: timed out waiting for '$text' in $file" >&2
    cat "$file" >&2 || true
    return 1
}

step "Lab: two subscribers behind cgnatd, two servers on the far side"
"$LAB" stop >/dev/null
"$LAB" up
"$LAB" start
"$LAB" wait

rm -rf "$WORK"
mkdir -p "$WORK"

step "Servers in cgn-inet: UDP echo on $SERVER:7000, HTTP on $SERVER:8080"
ip netns exec cgn-inet "$PY" tests/tools/udp_echo.py server --bind "$SERVER" --port 7000 --lifetime 300 \
    >"$WORK/udp.out" 2>&1 &
PIDS+=($!)
ip netns exec cgn-inet "$PY" tests/tools/http_server.py --bind "$SERVER" --port 8080 \
    --file "$WORK/file.bin" --size $((4 * 1024 * 1024)) --log "$WORK/http.log" --lifetime 300 \
    >"$WORK/http.out" 2>&1 &
PIDS+=($!)
wait_for "$WORK/udp.out" '"ready"'
wait_for "$WORK/http.out" '"ready"'
echo "ready"

ROWS=()
row() { ROWS+=("$(printf '%-10s  %-8s  %-21s  ->  %s' "$1" "$2" "$3" "$4")"); }

for sub in cgn-sub1 cgn-sub2; do
    inside=$([[ $sub == cgn-sub1 ]] && echo 100.64.0.11 || echo 100.64.0.12)

    step "$sub ($inside): ping $SERVER"
    cap=$WORK/ping-$sub.txt
    # One echo request captured on the server side shows the source the server sees.
    ip netns exec cgn-inet timeout 15 tcpdump -n -l -c 1 -i eth0 \
        "icmp[icmptype] == icmp-echo and dst host $SERVER" >"$cap" 2>"$cap.err" &
    tcpdump_pid=$!
    PIDS+=("$tcpdump_pid")
    wait_for "$cap.err" "listening on"
    ip netns exec "$sub" ping -n -c 3 -i 0.2 -W 2 "$SERVER"
    wait "$tcpdump_pid" || true
    echo "tcpdump in cgn-inet: $(head -n 1 "$cap" | cut -d' ' -f2-)"
    seen=$(awk '/ICMP echo request/ {print $3; exit}' "$cap")
    row "$sub" icmp "$inside" "${seen:-nothing captured}"

    step "$sub: UDP exchange with $SERVER:7000"
    out=$(ip netns exec "$sub" "$PY" tests/tools/udp_echo.py client --server "$SERVER" --port 7000 --count 1)
    echo "$out"
    read -r local seen < <("$PY" -c 'import json,sys; d=json.load(sys.stdin); r=d["replies"]; print(d["local"], r[0]["seen"] if r else "no-reply")' <<<"$out")
    row "$sub" udp "$local" "$seen"

    step "$sub: HTTP download http://$SERVER:8080/file"
    out=$(ip netns exec "$sub" curl -sS --max-time 30 -o /dev/null \
        -w '%{http_code} %{size_download} %{local_ip}:%{local_port} %{speed_download}' "http://$SERVER:8080/file")
    read -r code size local speed <<<"$out"
    echo "HTTP $code, $size bytes at $((${speed%.*} / 1024)) KiB/s from $local"
    seen=$(tail -n 1 "$WORK/http.log" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["client"])')
    row "$sub" http "$local" "$seen"
done

step "What the servers saw"
printf '%-10s  %-8s  %-21s      %s\n' subscriber protocol inside-src "server saw"
printf '%s\n' "${ROWS[@]}"

step "cgnatctl stats"
"$CGNATCTL" --server "$MGMT" stats
