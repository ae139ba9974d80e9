#!/usr/bin/env bash
# make bench: every local benchmark in one bounded run, results in perf/RESULTS.md.
#
#   1. pipeline:  cgnat-bench, the NAT core on one core over 1K..16M sessions;
#   2. reference: dpdk-testpmd 5tswap forwarding on net_null (touches L2-L4, keeps no state);
#   3. system:    dpdk-testpmd flowgen --memif--> cgnatd (1 worker) --> net_null sink, and the same
#                 generator and link into dpdk-testpmd io-forward instead of cgnatd.
#
# Everything started here is stopped by PID on exit; sockets and DPDK runtime dirs are removed.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=perf/out
RUN=/run/cgnat-bench
SECONDS_PER=${BENCH_SECONDS:-1}
SIZES=${BENCH_SIZES:-1K,64K,1M,16M}
WINDOW=${BENCH_WINDOW:-3}
# A socket left by an interrupted run would make memif's server refuse to start.
rm -rf "$RUN" /var/run/dpdk/cgnat-bench-*
mkdir -p "$OUT" "$RUN"
PIDS=()

cleanup() {
    for p in "${PIDS[@]:-}"; do
        [ -n "$p" ] && kill -INT "$p" 2>/dev/null || true
    done
    sleep 1
    for p in "${PIDS[@]:-}"; do
        [ -n "$p" ] && kill -KILL "$p" 2>/dev/null || true
    done
    rm -rf "$RUN" /var/run/dpdk/cgnat-bench-*
}
trap cleanup EXIT INT TERM

# Hugepages if at least 3 GiB of them are free, plain memory otherwise.
free_huge_kb=$(awk '/HugePages_Free/ {f=$2} /Hugepagesize/ {s=$2} END {print f*s}' /proc/meminfo)
if [ "${free_huge_kb:-0}" -ge $((3 * 1024 * 1024)) ]; then
    MODE=hugepages
    MEM=(-m 1024 --huge-unlink)
else
    MODE=no-huge
    MEM=(--no-huge -m 1024)
fi
echo "bench: memory mode $MODE"

TESTPMD=$(command -v dpdk-testpmd)
CGNATD=target/release/cgnatd
CGNATCTL=target/release/cgnatctl

# testpmd prints per-port "Tx-pps:" every second; sum the ports of each period, drop the first
# two periods (start-up), report the median of the rest.
tx_pps_median() {
    python3 - "$1" "$2" <<'PY'
import re, statistics, sys
log, ports = sys.argv[1], int(sys.argv[2])
vals = [int(m) for m in re.findall(r"Tx-pps:\s+(\d+)", open(log).read())]
periods = [sum(vals[i:i + ports]) for i in range(0, len(vals) - ports + 1, ports)]
periods = periods[2:] or periods
print(int(statistics.median(periods)) if periods else 0)
PY
}

run_testpmd() { # log seconds args...
    local log=$1 secs=$2
    shift 2
    (sleep $((secs + 2)) | timeout -s INT "$secs" "$TESTPMD" "$@" >"$log" 2>&1) || true
}

echo "bench: building"
cargo build --release -p perf -p cgnatd >/dev/null

echo "bench: pipeline ($SIZES)"
target/release/cgnat-bench --sizes "$SIZES" --seconds "$SECONDS_PER" --repeat 3 --no-prefetch-too >"$OUT/pipeline.json"

echo "bench: testpmd 5tswap on net_null"
run_testpmd "$OUT/5tswap.log" 8 "${MEM[@]}" --file-prefix cgnat-bench-5t --lcores 0@0,1@1 --no-pci \
    --vdev net_null0 --vdev net_null1 -- --forward-mode=5tswap --nb-cores=1 \
    --total-num-mbufs=16384 --stats-period 1
FIVE_T=$(tx_pps_median "$OUT/5tswap.log" 2)

# The generator: flowgen on CPU 1, one UDP source (10.254.0.0:1000) to 60000 destinations.
FLOWS=60000
generator() { # log seconds
    run_testpmd "$1" "$2" "${MEM[@]}" --file-prefix cgnat-bench-gen --lcores 0@1,1@1 --no-pci \
        --vdev "net_memif0,role=client,id=0,socket=$RUN/dut.sock" -- \
        --forward-mode=flowgen --flowgen-flows=$FLOWS --port-topology=loop --nb-cores=1 \
        --total-num-mbufs=16384 --stats-period 1
}

echo "bench: system, cgnatd"
cfg="$OUT/memif.yaml"
if [ "$MODE" = hugepages ]; then
    sed 's/hugepages: false/hugepages: true/' perf/configs/memif.yaml >"$cfg"
else
    cp perf/configs/memif.yaml "$cfg"
fi
"$CGNATD" --config "$cfg" --log-format json >"$OUT/cgnatd.log" 2>&1 &
PIDS+=($!)
DUT=$!
for _ in $(seq 50); do
    grep -q 'cgnatd forwarding' "$OUT/cgnatd.log" && break
    sleep 0.2
done
grep -q 'cgnatd forwarding' "$OUT/cgnatd.log" || { echo "cgnatd did not start:"; cat "$OUT/cgnatd.log"; exit 1; }
generator "$OUT/gen-cgnatd.log" $((WINDOW + 6)) &
GEN=$!
sleep 4
"$CGNATCTL" --server 127.0.0.1:50061 stats -o json >"$OUT/stats-a.json"
t0=$(date +%s.%N)
sleep "$WINDOW"
"$CGNATCTL" --server 127.0.0.1:50061 stats -o json >"$OUT/stats-b.json"
t1=$(date +%s.%N)
wait "$GEN" || true
kill -TERM "$DUT"
wait "$DUT" || true
PIDS=()
NAT_PPS=$(python3 - "$OUT/stats-a.json" "$OUT/stats-b.json" "$t0" "$t1" <<'PY'
import json, sys
a, b = (json.load(open(p))["totals"] for p in sys.argv[1:3])
dt = float(sys.argv[4]) - float(sys.argv[3])
print(int((b["tx_packets"] - a["tx_packets"]) / dt))
PY
)
GEN_CGNATD=$(tx_pps_median "$OUT/gen-cgnatd.log" 1)
SESSIONS=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["totals"]["sessions_current"])' "$OUT/stats-b.json")
DROPS=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1]))["drops"]; print(", ".join(f"{k}={v}" for k,v in d.items() if v) or "none")' "$OUT/stats-b.json")
rm -rf /var/run/dpdk/cgnat-bench-dut "$RUN/dut.sock"

echo "bench: system, testpmd io-forward on the same link"
run_testpmd "$OUT/io.log" $((WINDOW + 8)) "${MEM[@]}" --file-prefix cgnat-bench-io --lcores 0@0,1@0 --no-pci \
    --vdev "net_memif0,role=server,id=0,socket=$RUN/dut.sock" --vdev "net_null0,no-rx=1" -- \
    --forward-mode=io --port-topology=paired --nb-cores=1 --total-num-mbufs=16384 --stats-period 1 &
IO=$!
sleep 2
generator "$OUT/gen-io.log" $((WINDOW + 5))
wait "$IO" || true
IO_PPS=$(tx_pps_median "$OUT/io.log" 2)
GEN_IO=$(tx_pps_median "$OUT/gen-io.log" 1)

python3 perf/report.py --out perf/RESULTS.md --pipeline "$OUT/pipeline.json" --mode "$MODE" \
    --fivetswap "$FIVE_T" --nat-pps "$NAT_PPS" --io-pps "$IO_PPS" --gen-cgnatd "$GEN_CGNATD" \
    --gen-io "$GEN_IO" --flows "$FLOWS" --sessions "$SESSIONS" --drops "$DROPS"
echo "bench: wrote perf/RESULTS.md"
