#!/usr/bin/env bash
# make bench: every local benchmark in one bounded run (about 8 minutes, at most 10), results in
# perf/RESULTS.md.
#
#   1. reference:  dpdk-testpmd 5tswap forwarding on two net_null ports (no state), before and after
#                  the pipeline benchmark;
#   2. pipeline:   cgnat-bench, the NAT core (nat::Shard::process) on one CPU over 1K..16M sessions,
#                  after its probe of the machine's memory; then again at 1M and 16M with 16
#                  sessions per mapping (each inside endpoint talking to 16 servers);
#   3. system:     a dpdk-testpmd generator --memif--> cgnatd (1 worker) --> net_null sink, and the
#                  same with dpdk-testpmd io-forward in cgnatd's place; each with two generators, a
#                  replay of subscriber UDP (perf/mkpcap.py) and testpmd's own flowgen (one
#                  subscriber; it builds its frames). Three interleaved rounds.
#
# Environment: BENCH_SIZES (1K,64K,1M,16M), BENCH_SECONDS per established-rate sample (1),
# BENCH_REPEAT samples per pipeline figure (3), BENCH_SHARED_SIZES for the shared-mapping
# pipeline run (1M,16M; empty skips it), BENCH_WINDOW seconds per system measurement (4),
# BENCH_ROUNDS of the system benchmark (3), BENCH_GEN_CPU and BENCH_DUT_CPU for its generator and
# device under test (1 and 0), BENCH_LIMIT seconds for all benchmarks (570), BENCH_CPU for the
# pipeline and the 5tswap forwarding lcore (1), BENCH_HUGEPAGES: number of 2 MiB hugepages to reserve for this run only, 0 for none;
# default "auto" reserves what is missing for 2.5 GiB when at least 6.5 GiB of memory is available
# (no hugepages at all: DPDK runs with --no-huge).
#
# Everything started here is stopped by process group on exit; sockets, the pcap, DPDK runtime dirs
# and any hugepages reserved here are removed.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=perf/out
RUN=/run/cgnat-bench
SIZES=${BENCH_SIZES:-1K,64K,1M,16M}
SHARED_SIZES=${BENCH_SHARED_SIZES-1M,16M}
SECS=${BENCH_SECONDS:-1}
REPEAT=${BENCH_REPEAT:-3}
WINDOW=${BENCH_WINDOW:-4}
ROUNDS=${BENCH_ROUNDS:-3}
CPU=${BENCH_CPU:-1}
# System benchmark: the generator's CPU and the device under test's (cgnatd or io-forward), each
# running that program's main and forwarding lcore. On a bigger box give them separate cores.
GEN_CPU=${BENCH_GEN_CPU:-1}
DUT_CPU=${BENCH_DUT_CPU:-0}
HUGE_RESERVE=${BENCH_HUGEPAGES:-auto}
PREFIX=cgnat-bench
CMDS=$OUT/commands.txt
PY=${PYTHON:-/usr/bin/python3}

[ "$(id -u)" -eq 0 ] || { echo "bench: run as root (DPDK, /run, hugepages)"; exit 1; }
# The run's bound: the benchmarks end within LIMIT seconds of the build (10 minutes in all, with
# the report). The pipeline benchmarks must leave RESERVE seconds for what follows them (two
# 5tswap references and one system round, each phase with its wait for a quiet machine); one that
# would not is stopped and the run fails saying so. A system round after the first runs only if
# the time left holds another as long as the first took; RESULTS.md counts the rounds it has.
LIMIT=${BENCH_LIMIT:-570}
RESERVE=$((190 + 4 * WINDOW))
left() { echo $((START + LIMIT - $(date +%s))); }
# bounded what reserve cmd...: run cmd (logged like `logged`) for at most the time left but
# `reserve`; past it, stop it and fail the run. Another failure of cmd fails the run as it is.
bounded() {
    local what=$1 t rc=0
    t=$(($(left) - $2))
    shift 2
    [ "$t" -gt 0 ] || over "$what"
    printf '%q ' "$@" >>"$CMDS"
    echo >>"$CMDS"
    # --foreground: cgnat-bench stays in this process group, so an interrupt reaches it.
    timeout --foreground -k 10 -s INT "$t" "$@" || rc=$?
    [ "$rc" -ne 124 ] || over "$what"
    return "$rc"
}
over() {
    echo "bench: $1 would end past make bench's ${LIMIT} s limit (BENCH_LIMIT); nothing written" >&2
    exit 1
}
# One benchmark per machine: a second one would share CPUs, sockets and the DPDK prefix.
LOCK=/run/lock/cgnat-bench.lock
exec 9>"$LOCK"
flock -n 9 || { echo "bench: another make bench is running"; exit 1; }
rm -rf "$OUT"
# A socket left by an interrupted run would make memif's server refuse to start.
rm -rf "$RUN" /var/run/dpdk/"$PREFIX"-*
mkdir -p "$OUT" "$RUN"
: >"$CMDS"
PIDS=()
HUGE_PREV=
HUGE_MNT=

# Background jobs run in their own process group (setsid), recorded by its id: stopping the group
# stops timeout, testpmd and the sleep feeding its stdin together.
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -INT -- "-$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do
        for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 -- "-$p" 2>/dev/null || break; sleep 0.2; done
        kill -KILL -- "-$p" 2>/dev/null || true
    done
    rm -rf "$RUN"/*.sock "$RUN"/*.pcap /var/run/dpdk/"$PREFIX"-*
    if [ -n "$HUGE_MNT" ]; then
        rm -f "$HUGE_MNT"/* 2>/dev/null || true
        umount "$HUGE_MNT" 2>/dev/null || true
    fi
    if [ -n "$HUGE_PREV" ]; then echo "$HUGE_PREV" >"$NR2M"; fi
    rm -rf "$RUN" "$LOCK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Record a command line (for RESULTS.md) and run it.
logged() {
    printf '%q ' "$@" >>"$CMDS"
    echo >>"$CMDS"
    "$@"
}

# --- memory mode ---------------------------------------------------------------------------------
# DPDK without hugepages runs its mbufs from 4 KiB pages and is roughly half as fast (testpmd's
# 5tswap here: about 40 vs 70-100 Mpps), which would flatter every ratio against it. So unless told
# otherwise (BENCH_HUGEPAGES=0), a machine with no free hugepages but enough free memory gets 2 MiB
# pages reserved (and a hugetlbfs mount if it has none) for this run only; cleanup() gives them back.
NR2M=/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages
free_2m_mb() { echo $(($(cat /sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages 2>/dev/null || echo 0) * 2)); }
NEED_MB=2560 # generator 1024 + device under test 1024 + margin
if [ "$HUGE_RESERVE" = auto ]; then
    avail_mb=$(awk '/MemAvailable/ {print int($2 / 1024)}' /proc/meminfo)
    HUGE_RESERVE=0
    if [ -w "$NR2M" ] && [ "$(free_2m_mb)" -lt "$NEED_MB" ] && [ "$avail_mb" -ge $((NEED_MB + 4096)) ]; then
        HUGE_RESERVE=$(((NEED_MB - $(free_2m_mb)) / 2))
    fi
fi
if [ "$HUGE_RESERVE" -gt 0 ] && [ -w "$NR2M" ]; then
    HUGE_PREV=$(cat "$NR2M")
    echo "$((HUGE_PREV + HUGE_RESERVE))" >"$NR2M"
    if ! grep -q '^[^ ]* [^ ]* hugetlbfs .*pagesize=2M' /proc/mounts; then
        mkdir -p "$RUN/huge"
        mount -t hugetlbfs -o pagesize=2M nodev "$RUN/huge"
        HUGE_MNT=$RUN/huge
    fi
    echo "bench: reserved $HUGE_RESERVE 2 MiB hugepages for this run ($(free_2m_mb) MiB free)"
fi
if [ "$(free_2m_mb)" -ge "$NEED_MB" ] && grep -q hugetlbfs /proc/mounts; then
    MODE=hugepages
    MEM_GEN=(-m 1024 --huge-unlink)
    MEM_SMALL=(-m 256 --huge-unlink)
else
    MODE=no-huge
    MEM_GEN=(--no-huge -m 1024)
    MEM_SMALL=(--no-huge -m 256)
fi
echo "bench: memory mode $MODE"

TESTPMD=$(command -v dpdk-testpmd) || { echo "bench: dpdk-testpmd not found (apt install dpdk)"; exit 1; }
CGNATD=target/release/cgnatd
CGNATCTL=target/release/cgnatctl

# testpmd prints "Tx-pps:" per port every --stats-period; sum the ports of each period, keep the
# periods with traffic, drop the first and the last of those (partly idle: start-up, shut-down) and
# print the median of the rest.
tx_pps_median() { # log ports
    "$PY" - "$1" "$2" <<'PY'
import re, statistics, sys
log, ports = sys.argv[1], int(sys.argv[2])
vals = [int(m) for m in re.findall(r"Tx-pps:\s+(\d+)", open(log).read())]
periods = [sum(vals[i:i + ports]) for i in range(0, len(vals) - ports + 1, ports)]
busy = [p for p in periods if p > 0]
busy = busy[1:-1] if len(busy) > 2 else busy
print(int(statistics.median(busy)) if busy else 0)
PY
}

# Other people's load on the machine: percent of all CPUs busy over one second (run between
# phases, when nothing of ours runs). quiet() waits up to 10 s for it to drop below 15 % and
# records what it saw, so RESULTS.md can say how quiet each phase started.
busy_pct() {
    local a b
    read -r -a a </proc/stat
    sleep 1
    read -r -a b </proc/stat
    local t1=0 t2=0 i
    for i in 1 2 3 4 5 6 7 8; do t1=$((t1 + a[i])); t2=$((t2 + b[i])); done
    local idle=$(((b[4] + b[5]) - (a[4] + a[5]))) total=$((t2 - t1))
    echo $((total > 0 ? 100 * (total - idle) / total : 0))
}
quiet() { # phase
    local waited=0 b
    b=$(busy_pct)
    while [ "$b" -ge 15 ] && [ "$waited" -lt 10 ]; do
        b=$(busy_pct)
        waited=$((waited + 1))
    done
    echo "$1 $b $waited" >>"$OUT/load.txt"
}

# testpmd without -i forwards until stdin closes or a signal arrives: keep stdin open with sleep,
# stop it with SIGINT after $secs so it prints its final statistics.
# testpmd_bg leaves the process group id in BG.
TESTPMD_SH='sleep "$1" | timeout -s INT "$2" "${@:4}" >"$3" 2>&1 || true'
testpmd() { # log seconds args...
    local log=$1 secs=$2
    shift 2
    printf '%q ' timeout -s INT "$secs" "$TESTPMD" "$@" >>"$CMDS"
    echo >>"$CMDS"
    bash -c "$TESTPMD_SH" _ $((secs + 3)) "$secs" "$log" "$TESTPMD" "$@"
}
testpmd_bg() { # log seconds args...
    local log=$1 secs=$2
    shift 2
    printf '%q ' timeout -s INT "$secs" "$TESTPMD" "$@" >>"$CMDS"
    echo " &" >>"$CMDS"
    setsid bash -c "$TESTPMD_SH" _ $((secs + 3)) "$secs" "$log" "$TESTPMD" "$@" &
    BG=$!
    PIDS+=("$BG")
}

echo "bench: building (release)"
cargo build --release -p perf -p cgnatd
START=$(date +%s)

# --- testpmd 5tswap on net_null (the pipeline's reference) ---------------------------------------
# Plain, net_null hands out frames whose bytes are whatever the mbuf held before: zeros, so 5tswap
# finds no IPv4 header and swaps only the MACs ("l2"). With --tx-first, testpmd first sends one
# burst of txonly IPv4/UDP frames per port; net_null's TX frees them to the mempool cache and its RX
# hands the same mbufs out again untouched, so from then on every frame is IPv4/UDP and 5tswap swaps
# MACs, addresses and ports ("l4"; checked by writing the output to a pcap: all
# 198.18.0.1:9 <-> 198.18.0.2:9). The l4 run is made before and after the pipeline benchmark, whose
# ratios use the mean of the two, so that drift of the machine's speed shows and partly cancels.
fivetswap() { # variant tag [memory args...]
    local variant=$1 tag=$2
    shift 2
    local mem=("$@")
    [ ${#mem[@]} -gt 0 ] || mem=("${MEM_SMALL[@]}")
    quiet "5tswap-$tag"
    local extra=()
    [ "$variant" = l4 ] && extra=(--tx-first)
    testpmd "$OUT/5tswap-$tag.log" 8 "${mem[@]}" --file-prefix "$PREFIX-5t" \
        --lcores 0@0,1@"$CPU" --no-pci --vdev net_null0 --vdev net_null1 -- \
        --forward-mode=5tswap --nb-cores=1 --total-num-mbufs=16384 --stats-period 1 "${extra[@]}"
    rm -rf /var/run/dpdk/"$PREFIX"-5t
    tx_pps_median "$OUT/5tswap-$tag.log" 2
}
echo "bench: testpmd 5tswap on net_null"
FIVE_L4_BEFORE=$(fivetswap l4 l4-before)

# --- pipeline --------------------------------------------------------------------------------------
quiet pipeline
echo "bench: pipeline on CPU $CPU ($SIZES)"
bounded "the pipeline benchmark" "$RESERVE" taskset -c "$CPU" target/release/cgnat-bench \
    --sizes "$SIZES" --seconds "$SECS" --repeat "$REPEAT" --no-prefetch-too --memory-probe \
    >"$OUT/pipeline.json"
SHARED_ARGS=()
if [ -n "$SHARED_SIZES" ]; then
    echo "bench: pipeline with 16 sessions per mapping ($SHARED_SIZES)"
    bounded "the shared-mapping pipeline benchmark" "$RESERVE" taskset -c "$CPU" \
        target/release/cgnat-bench --sizes "$SHARED_SIZES" --seconds "$SECS" --repeat "$REPEAT" \
        --remotes 16 >"$OUT/pipeline-shared.json"
    SHARED_ARGS=(--pipeline-shared "$OUT/pipeline-shared.json")
fi

echo "bench: testpmd 5tswap on net_null, again"
FIVE_L4_AFTER=$(fivetswap l4 l4-after)
FIVE_L2=$(fivetswap l2 l2)
# What the same forward does without hugepages, for comparison with no-huge runs elsewhere.
FIVE_L4_NOHUGE=0
[ "$MODE" = hugepages ] && FIVE_L4_NOHUGE=$(fivetswap l4 l4-nohuge --no-huge -m 256)

# --- 3. system over memif ------------------------------------------------------------------------
# testpmd's flowgen (DPDK 22.11) always sends to 00:01:02:03:04:01, so that is cgnatd's inside MAC
# (configs/memif.yaml) and where the pcap's frames go too.
DUT_MAC=00:01:02:03:04:01
SUBS=4096
PPS=16
FLOWS=$(logged "$PY" perf/mkpcap.py --out "$RUN/flows.pcap" --subscribers $SUBS \
    --ports-per-subscriber $PPS --dst-mac $DUT_MAC)

# The generators, on GEN_CPU only; $1 is `testpmd` (foreground) or `testpmd_bg`.
# pcap: testpmd io-forwarding from the pcap replay to the memif link.
pcap_generator() { # launcher log seconds
    "$1" "$2" "$3" "${MEM_GEN[@]}" --file-prefix "$PREFIX-gen" --lcores 0@"$GEN_CPU",1@"$GEN_CPU" --no-pci \
        --vdev "net_pcap0,rx_pcap=$RUN/flows.pcap,infinite_rx=1" \
        --vdev "net_memif0,role=client,id=0,socket=$RUN/dut.sock" -- \
        --forward-mode=io --port-topology=paired --nb-cores=1 \
        --total-num-mbufs=$((2 * FLOWS + 32768)) --stats-period 1
}
# flowgen: testpmd's own generator: $FLOWS UDP flows from one source (10.254.0.0:1000, one
# subscriber in cgnatd's config) to as many destinations. It builds frames instead of copying
# them from a replay, which may let it deliver more than the pcap generator.
flowgen_generator() { # launcher log seconds
    "$1" "$2" "$3" "${MEM_GEN[@]}" --file-prefix "$PREFIX-gen" --lcores 0@"$GEN_CPU",1@"$GEN_CPU" --no-pci \
        --vdev "net_memif0,role=client,id=0,socket=$RUN/dut.sock" -- \
        --forward-mode=flowgen --flowgen-flows="$FLOWS" --port-topology=loop --nb-cores=1 \
        --total-num-mbufs=32768 --stats-period 1
}

# Ports whose TX the generator's testpmd reports: the pcap replay's two (it io-forwards both ways;
# the pcap port never transmits) or flowgen's one.
gen_ports() { # generator
    if [ "$1" = flowgen_generator ]; then echo 1; else echo 2; fi
}

cfg="$OUT/memif.yaml"
HUGE_SED=
[ "$MODE" = hugepages ] && HUGE_SED='s/hugepages: false/hugepages: true/'
sed -e "$HUGE_SED" -e "s/lcores: \"0@0,1@0\"/lcores: \"0@$DUT_CPU,1@$DUT_CPU\"/" \
    perf/configs/memif.yaml >"$cfg"
grep -q "lcores: \"0@$DUT_CPU,1@$DUT_CPU\"" "$cfg" || { echo "bench: cannot set cgnatd's lcores in $cfg"; exit 1; }

# One cgnatd measurement: start it, attach a generator, let the sessions be created, then read its
# counters over $WINDOW seconds of steady state.
system_cgnatd() { # round generator
    local r=$1 kind=cgnatd-${2%_generator}
    local log=$OUT/$kind-$r.log
    quiet "system-$kind-$r"
    echo "$CGNATD --config $cfg --log-format json &" >>"$CMDS"
    setsid "$CGNATD" --config "$cfg" --log-format json >"$log" 2>&1 &
    local dut=$!
    PIDS+=("$dut")
    for _ in $(seq 100); do
        grep -q 'cgnatd forwarding' "$log" && break
        kill -0 "$dut" 2>/dev/null || break
        sleep 0.2
    done
    grep -q 'cgnatd forwarding' "$log" || { echo "bench: cgnatd did not start:"; cat "$log"; exit 1; }
    "$2" testpmd_bg "$OUT/gen-$kind-$r.log" $((WINDOW + 7))
    local gen=$BG
    sleep 4
    echo "$CGNATCTL --server 127.0.0.1:50061 -o json stats  # twice, $WINDOW s apart" >>"$CMDS"
    "$CGNATCTL" --server 127.0.0.1:50061 -o json stats >"$OUT/stats-$kind-$r-a.json"
    local t0 t1
    t0=$(date +%s.%N)
    sleep "$WINDOW"
    "$CGNATCTL" --server 127.0.0.1:50061 -o json stats >"$OUT/stats-$kind-$r-b.json"
    t1=$(date +%s.%N)
    "$CGNATCTL" --server 127.0.0.1:50061 ports >"$OUT/ports-$kind-$r.txt" || true
    wait "$gen" || true
    kill -TERM "$dut"
    wait "$dut" || true
    PIDS=()
    rm -rf /var/run/dpdk/"$PREFIX"-dut /var/run/dpdk/"$PREFIX"-gen "$RUN/dut.sock"
    local pps
    pps=$("$PY" - "$OUT/stats-$kind-$r-a.json" "$OUT/stats-$kind-$r-b.json" "$t0" "$t1" <<'PY'
import json, sys
a, b = (json.load(open(p))["totals"] for p in sys.argv[1:3])
print(int((b["tx_packets"] - a["tx_packets"]) / (float(sys.argv[4]) - float(sys.argv[3]))))
PY
)
    echo "$r $kind $pps $(tx_pps_median "$OUT/gen-$kind-$r.log" "$(gen_ports "$2")")" >>"$OUT/system.txt"
}

# The reference: testpmd io-forward in cgnatd's place (memif server in, net_null out, DUT_CPU, as
# many mbufs as cgnatd's pool).
system_io() { # round generator
    local r=$1 kind=io-${2%_generator}
    local log=$OUT/$kind-$r.log
    quiet "system-$kind-$r"
    testpmd_bg "$log" $((WINDOW + 9)) "${MEM_SMALL[@]}" --file-prefix "$PREFIX-io" --lcores 0@"$DUT_CPU",1@"$DUT_CPU" \
        --no-pci --vdev "net_memif0,role=server,id=0,socket=$RUN/dut.sock" --vdev "net_null0,no-rx=1" -- \
        --forward-mode=io --port-topology=paired --nb-cores=1 --total-num-mbufs=8192 --stats-period 1
    local io=$BG
    sleep 2
    "$2" testpmd "$log.gen" $((WINDOW + 5))
    wait "$io" || true
    PIDS=()
    rm -rf /var/run/dpdk/"$PREFIX"-io /var/run/dpdk/"$PREFIX"-gen "$RUN/dut.sock"
    echo "$r $kind $(tx_pps_median "$log" 2) $(tx_pps_median "$log.gen" "$(gen_ports "$2")")" >>"$OUT/system.txt"
}

# Interleaved rounds, so that the machine's speed drifting over minutes affects all four alike.
: >"$OUT/system.txt"
# A round takes about a minute (four windows, each with its start-up and shut-down); the first
# always runs (the pipeline left room for it), a later one only if one as long as the first fits.
DONE=0
ROUND_S=0
for r in $(seq "$ROUNDS"); do
    if [ "$r" -gt 1 ] && [ "$(left)" -lt "$ROUND_S" ]; then
        echo "bench: $DONE system rounds of $ROUNDS: another (${ROUND_S} s) would pass the ${LIMIT} s limit"
        break
    fi
    ROUND_T0=$(date +%s)
    echo "bench: system round $r/$ROUNDS: cgnatd, then testpmd io-forward (pcap and flowgen generators)"
    system_cgnatd "$r" pcap_generator
    system_cgnatd "$r" flowgen_generator
    system_io "$r" pcap_generator
    system_io "$r" flowgen_generator
    DONE=$r
    [ "$r" -gt 1 ] || ROUND_S=$(($(date +%s) - ROUND_T0))
done

"$PY" perf/report.py --out perf/RESULTS.md --pipeline "$OUT/pipeline.json" "${SHARED_ARGS[@]}" --mode "$MODE" \
    --huge-reserved "$HUGE_RESERVE" --five-l2 "$FIVE_L2" --five-l4 "$FIVE_L4_BEFORE" "$FIVE_L4_AFTER" \
    --five-l4-nohuge "$FIVE_L4_NOHUGE" --system "$OUT/system.txt" --flows "$FLOWS" --subscribers $SUBS \
    --stats "$OUT/stats-cgnatd-pcap-$DONE-b.json" "$OUT/stats-cgnatd-flowgen-$DONE-b.json" --commands "$CMDS" --cpu "$CPU" --load "$OUT/load.txt" \
    --gen-cpu "$GEN_CPU" --dut-cpu "$DUT_CPU" --elapsed $(($(date +%s) - START))
echo "bench: wrote perf/RESULTS.md (raw outputs in $OUT/)"
