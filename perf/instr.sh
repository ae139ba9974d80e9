#!/usr/bin/env bash
# make bench-instr: instructions per packet of cgnatd's worker and of dpdk-testpmd io-forward on the
# same ports, counted by valgrind's callgrind, written to perf/INSTRUCTIONS.md (about 3 minutes).
#
#   net_pcap (a replay of perf/mkpcap.py's UDP flows, infinite_rx) --> [device under test] --> net_null
#
# Timings on a shared VM drift by half within minutes; instruction counts do not, so they show what a
# change did to the work per packet where `make bench` cannot. They are not a speed: cache misses and
# the memory system are not in them (callgrind simulates no hardware here), so the figures complement
# RESULTS.md rather than replace it. Both devices run one forwarding thread, on DPDK without
# hugepages (valgrind); the flows are established after their first packet (512 by default), so this
# is the per-packet cost of forwarding established UDP.
#
# Environment: INSTR_SECONDS of forwarding under valgrind per device (40), INSTR_FLOWS (512; the
# pcap PMD needs an mbuf per replayed packet, so keep it small).
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${INSTR_SECONDS:-40}
FLOWS=${INSTR_FLOWS:-512}
PY=${PYTHON:-/usr/bin/python3}
OUT=perf/out/instr
RUN=/run/cgnat-instr
PREFIX=cgnat-instr
[ "$(id -u)" -eq 0 ] || { echo "bench-instr: run as root (DPDK, /run)"; exit 1; }
command -v valgrind >/dev/null || { echo "bench-instr: valgrind not found (make deps installs it)"; exit 1; }
TESTPMD=$(command -v dpdk-testpmd) || { echo "bench-instr: dpdk-testpmd not found (apt install dpdk)"; exit 1; }
rm -rf "$OUT" "$RUN" /var/run/dpdk/"$PREFIX"-*
mkdir -p "$OUT" "$RUN"
PGID=
cleanup() {
    if [ -n "$PGID" ]; then
        kill -TERM -- "-$PGID" 2>/dev/null || true
        sleep 1
        kill -KILL -- "-$PGID" 2>/dev/null || true
    fi
    rm -rf "$RUN" /var/run/dpdk/"$PREFIX"-*
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "bench-instr: building (release)"
cargo build --release -p cgnatd
CGNATD=target/release/cgnatd
CGNATCTL=target/release/cgnatctl

# cgnatd's config: perf/configs/memif.yaml with the pcap replay as the inside port.
cfg() { # pcap
    sed -e "s#vdev: \"net_memif0[^\"]*\"#vdev: \"net_pcap0,rx_pcap=$1,infinite_rx=1\"#" \
        -e "s/file_prefix: cgnat-bench-dut/file_prefix: $PREFIX-dut/" \
        -e 's/size_mb: 1024/size_mb: 512/' perf/configs/memif.yaml >"$OUT/cgnatd.yaml"
}

# cgnatd drops frames not addressed to its port, and net_pcap takes no MAC argument: ask a first,
# native run which MAC the port has, then write the replay for it.
"$PY" perf/mkpcap.py --out "$RUN/probe.pcap" --subscribers 1 --ports-per-subscriber 1 \
    --dst-mac 02:00:00:00:00:01 >/dev/null
cfg "$RUN/probe.pcap"
setsid "$CGNATD" --config "$OUT/cgnatd.yaml" >"$OUT/probe.log" 2>&1 &
PGID=$!
MAC=
for _ in $(seq 50); do
    MAC=$("$CGNATCTL" --server 127.0.0.1:50061 -o json ports 2>/dev/null |
        "$PY" -c 'import json,sys; print(next(p["mac"] for p in json.load(sys.stdin)["ports"] if p["role"] == "inside"))' \
            2>/dev/null) && break
    sleep 0.2
done
kill -TERM "$PGID"
wait "$PGID" || true
PGID=
[ -n "$MAC" ] || { echo "bench-instr: could not read the inside port's MAC:"; cat "$OUT/probe.log"; exit 1; }
SUBS=$((FLOWS / 4 > 0 ? FLOWS / 4 : 1))
N=$("$PY" perf/mkpcap.py --out "$RUN/flows.pcap" --subscribers "$SUBS" --ports-per-subscriber 4 \
    --dst-mac "$MAC")
cfg "$RUN/flows.pcap"
echo "bench-instr: $N flows to $MAC"

CG=(valgrind --tool=callgrind --separate-threads=yes --dump-line=no --dump-instr=no)

echo "bench-instr: cgnatd under callgrind ($SECS s)"
setsid "${CG[@]}" --callgrind-out-file="$OUT/cgnatd.cg" "$CGNATD" --config "$OUT/cgnatd.yaml" \
    >"$OUT/cgnatd.log" 2>&1 &
PGID=$!
for _ in $(seq 300); do
    grep -q 'cgnatd forwarding' "$OUT/cgnatd.log" && break
    kill -0 "$PGID" 2>/dev/null || break
    sleep 0.2
done
grep -q 'cgnatd forwarding' "$OUT/cgnatd.log" || { echo "bench-instr: cgnatd did not start:"; tail "$OUT/cgnatd.log"; exit 1; }
sleep "$SECS"
kill -TERM "$PGID"
wait "$PGID" || true
PGID=
rm -rf /var/run/dpdk/"$PREFIX"-*

echo "bench-instr: dpdk-testpmd io-forward under callgrind ($SECS s)"
# testpmd quits when its stdin closes, printing its forward statistics. Its start-up link check
# once spun under valgrind for over eight minutes without forwarding (2026-12-03), so it is
# skipped (these vdevs have no link to wait for), and a timeout ends a run that hangs anyway
# (SIGINT: testpmd still prints its statistics).
IO=("$TESTPMD" --no-huge -m 512 --file-prefix "$PREFIX-io" -l 0,1 --no-pci
    --vdev "net_pcap0,rx_pcap=$RUN/flows.pcap,infinite_rx=1" --vdev "net_null0,no-rx=1" --
    --forward-mode=io --port-topology=paired --nb-cores=1 --total-num-mbufs=$((N + 8192))
    --disable-link-check)
setsid bash -c 'sleep "$1" | timeout -s INT "$2" "${@:3}"' _ $((SECS + 20)) $((SECS + 120)) \
    "${CG[@]}" --callgrind-out-file="$OUT/io.cg" "${IO[@]}" >"$OUT/io.log" 2>&1 &
PGID=$!
wait "$PGID" || true
PGID=

# Written beside the raw output first: redirecting into perf/INSTRUCTIONS.md would truncate it
# before the report asks git whether the tree is clean, and so always call it dirty.
"$PY" - "$OUT" "$N" "$SECS" "${IO[*]}" <<'PY' >"$OUT/INSTRUCTIONS.md"
import collections, glob, json, os, platform, re, subprocess, sys

out, flows, secs, io_cmd = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]


def busiest(prefix):
    """The callgrind file of the thread that executed most: the polling one."""
    best = None
    for f in glob.glob(prefix + "-*"):
        for line in open(f):
            if line.startswith("summary:") or line.startswith("totals:"):
                n = int(line.split()[1])
                if best is None or n > best[0]:
                    best = (n, f)
                break
    if best is None:
        sys.exit(f"bench-instr: no callgrind output {prefix}-*")
    return best


def functions(path):
    """Self cost per function (inlined code counted where it was inlined)."""
    text = subprocess.run(["callgrind_annotate", "--show-percs=no", "--threshold=100", path],
                          capture_output=True, text=True, check=True).stdout
    agg = collections.Counter()
    on = False
    for line in text.splitlines():
        if "file:function" in line:
            on = True
            continue
        if not on:
            continue
        if line.startswith("--") and agg:
            break  # the per-line annotation that follows the function table
        m = re.match(r"\s*([\d,]+)\s+(\S.*)", line)
        # Call lines ("=> callee (Nx)", inclusive) and the trailer are not self costs.
        if not m or re.search(r"\([\d,]+x\)", line) or "events annotated" in line:
            continue
        name = m.group(2)
        name = name.split(":", 1)[1] if ":" in name else name
        name = re.sub(r" \[(.*)\]$", "", name)
        if name.startswith("0x"):
            # A stripped shared object (the PMDs): name it by its file.
            lib = re.search(r"\[(.*)\]$", m.group(2))
            name = os.path.basename(lib.group(1)) if lib else name
        agg[name] += int(m.group(1).replace(",", ""))
    return agg


log = open(os.path.join(out, "cgnatd.log")).read()
m = re.search(r"data plane stopped summary=rx=(\d+) tx=(\d+)", log)
if not m:
    sys.exit("bench-instr: cgnatd's log has no final summary")
nat_tx = int(m.group(2))
nat_ir, nat_file = busiest(os.path.join(out, "cgnatd.cg"))
iolog = open(os.path.join(out, "io.log")).read()
txs = [int(x) for x in re.findall(r"TX-packets:\s+(\d+)", iolog.split("Forward statistics for port 1")[-1])[:1]]
if not txs:
    sys.exit("bench-instr: testpmd printed no forward statistics")
io_tx = txs[0]
io_ir, io_file = busiest(os.path.join(out, "io.cg"))
nat_pp, io_pp = nat_ir / nat_tx, io_ir / io_tx
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                       text=True).stdout.strip()
print("# Instructions per packet (make bench-instr)\n")
print(f"Commit {commit}{' with uncommitted changes' if dirty else ''}; {platform.machine()}, "
      f"{subprocess.run(['valgrind', '--version'], capture_output=True, text=True).stdout.strip()}.")
print(f"Both devices forward a replay of {flows} UDP flows (perf/mkpcap.py, net_pcap infinite_rx) to a"
      f" net_null port for about {secs} s under callgrind, on DPDK without hugepages; the count is"
      " that of the polling thread, divided by the packets it transmitted. Instruction counts do not"
      " drift with the machine as timings do, but they are not a speed: cache misses and memory are"
      " not in them. See perf/README.md.\n")
print("| device under test | packets transmitted | instructions per packet | ratio |")
print("|---|---:|---:|---:|")
print(f"| cgnatd, 1 worker | {nat_tx:,} | **{nat_pp:.0f}** | {nat_pp / io_pp:.2f} × io-forward's |")
print(f"| dpdk-testpmd io-forward | {io_tx:,} | **{io_pp:.0f}** | 1 |")
print(f"\nio-forward's instructions per packet ÷ cgnatd's: **{io_pp / nat_pp:.2f}** (the system benchmark's"
      " ratio, had every instruction the same cost).")
# The expiry sweeps do a fixed amount of work per second of wall-clock time (a pass over each slab
# per second up to 4 Mi slots), not per packet; under callgrind the worker forwards some 40 times
# fewer packets per second than natively, so per packet their share here is inflated as much.
nat_funcs = functions(nat_file)
sweep_ir = sum(n for name, n in nat_funcs.items()
               if re.search(r"Slab::sweep|Shard::expire|MapTable::sweep|sweep::Sweep", name))
if sweep_ir:
    rest_pp = (nat_ir - sweep_ir) / nat_tx
    per_s = sweep_ir / float(secs)
    print(f"\nOf cgnatd's count, {sweep_ir / nat_tx:.0f} per packet are the expiry sweeps: about "
          f"{per_s / 1e6:.0f} M instructions per second of wall-clock time whatever the packet rate (a pass "
          "over the flow slab of sessions and mappings, 1 Mi slots, every second). Under callgrind "
          f"the worker forwarded {nat_tx / float(secs) / 1e6:.2f} Mpps; at 20 Mpps the same sweeps are "
          f"{per_s / 20e6:.1f} instructions per packet. Without them, cgnatd's per-packet work is "
          f"**{rest_pp:.0f}** instructions, and io-forward's ÷ that **{io_pp / rest_pp:.2f}**.")


def breakdown(title, path, packets, rows):
    print(f"\n{title}, per packet:\n")
    print("| function | instructions |")
    print("|---|---:|")
    for name, n in (nat_funcs if path == nat_file else functions(path)).most_common(rows):
        if n / packets >= 1:
            print(f"| `{name}` | {n / packets:.1f} |")


breakdown("cgnatd's worker by function (self cost, inlined code counted in its caller)", nat_file, nat_tx, 12)
breakdown("testpmd's forwarding thread by function", io_file, io_tx, 8)
print("\nCommands:\n")
print("```")
print(f"valgrind --tool=callgrind --separate-threads=yes target/release/cgnatd --config {out}/cgnatd.yaml")
print(f"valgrind --tool=callgrind --separate-threads=yes {io_cmd}")
print("```")
PY
mv "$OUT/INSTRUCTIONS.md" perf/INSTRUCTIONS.md
echo "bench-instr: wrote perf/INSTRUCTIONS.md"
