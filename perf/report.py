#!/usr/bin/env python3
"""Write perf/RESULTS.md from one `make bench` run (called by perf/run.sh)."""

import argparse
import datetime
import json
import os
import platform
import subprocess


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--pipeline", required=True)
    ap.add_argument("--mode", required=True)
    ap.add_argument("--fivetswap", type=float, required=True)
    ap.add_argument("--nat-pps", type=float, required=True)
    ap.add_argument("--io-pps", type=float, required=True)
    ap.add_argument("--gen-cgnatd", type=float, required=True)
    ap.add_argument("--gen-io", type=float, required=True)
    ap.add_argument("--flows", type=int, required=True)
    ap.add_argument("--sessions", type=int, required=True)
    ap.add_argument("--drops", required=True)
    a = ap.parse_args()

    pipe = {r["sessions"]: r for r in json.load(open(a.pipeline))["pipeline"]}
    five = a.fivetswap
    cpu = sh("lscpu | sed -n 's/^Model name:[[:space:]]*//p'")
    mem = sh("free -g | awk '/Mem:/ {print $2}'")
    dpdk = sh("pkg-config --modversion libdpdk")
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    def size_name(n):
        return f"{n // (1 << 20)}M" if n >= 1 << 20 else f"{n // 1024}K"

    L = []
    w = L.append
    w("# cgnat benchmark results")
    w("")
    w(f"Produced by `make bench` (perf/run.sh) on {now}. Absolute figures drift on shared machines;")
    w("the ratios against dpdk-testpmd, measured in the same run, are the figures to compare.")
    w("")
    w("## Machine")
    w("")
    w(f"- CPU: {cpu}, {os.cpu_count()} CPUs; memory {mem} GiB; kernel {platform.release()}")
    w(f"- DPDK {dpdk} (Debian packages); memory mode: **{a.mode}**")
    w("- cgnatd: 1 worker. With 2 CPUs, the generator runs on CPU 1 and the device under test")
    w("  (cgnatd, or testpmd io-forward) on CPU 0 with its main lcore.")
    w("")
    w("## Pipeline (cgnat-bench: nat::Shard::process on one core)")
    w("")
    w("64-byte UDP frames in 2 KiB buffers, bursts of 32, flows visited in a random order over the")
    w("whole table. *Total* includes writing each packet into its buffer before translation; *NAT")
    w("only* subtracts that (measured by the same loop without the NAT). Medians of 3 runs.")
    w("")
    w("| sessions | in2out Mpps | in2out ns/pkt (NAT only) | out2in Mpps | out2in ns/pkt (NAT only) | no-prefetch in2out / out2in Mpps | new sessions/s | bytes/session (slab+index) | all-in incl. port maps | RSS growth/session |")
    w("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n, r in sorted(pipe.items()):
        m = r["memory"]
        npf = r["no_prefetch"]
        npf_s = (f"{npf['in2out_mpps']:.2f} / {npf['out2in_mpps']:.2f}"
                 if npf.get("in2out_mpps") is not None else "-")
        w(f"| {size_name(n)} | {r['in2out_mpps']:.2f} | {r['in2out_ns_per_packet']:.1f} ({r['nat_only']['in2out_ns']:.1f}) "
          f"| {r['out2in_mpps']:.2f} | {r['out2in_ns_per_packet']:.1f} ({r['nat_only']['out2in_ns']:.1f}) | {npf_s} "
          f"| {r['new_sessions_per_s'] / 1e6:.2f} M | {m['table_bytes_per_session']:.1f} | {m['all_in_bytes_per_session']:.1f} "
          f"| {m['rss_growth_bytes_per_session']:.1f} |")
    w("")
    w("New sessions/s: time to create the last 10 % of the sessions while filling the table to the")
    w("stated size (the table holds 90-100 % of it during the measurement).")
    w("")
    w("## References and system benchmark (same run)")
    w("")
    w(f"- dpdk-testpmd 5tswap on two net_null ports, 1 forwarding core: **{five / 1e6:.2f} Mpps**")
    w("  (net_null hands out zero-filled frames, so 5tswap swaps only the MAC addresses of these;")
    w("  it still pays the mbuf and burst costs a forwarder pays).")
    w(f"- System, cgnatd: dpdk-testpmd flowgen ({a.flows} flows from one inside endpoint) over")
    w(f"  net_memif into cgnatd (1 worker), out to a net_null sink: **{a.nat_pps / 1e6:.2f} Mpps**")
    w(f"  translated and sent; {a.sessions} sessions; drops: {a.drops}. Generator offered")
    w(f"  {a.gen_cgnatd / 1e6:.2f} Mpps.")
    w(f"- System, reference: the same generator and link into dpdk-testpmd io-forward (memif in,")
    w(f"  net_null out): **{a.io_pps / 1e6:.2f} Mpps**; generator offered {a.gen_io / 1e6:.2f} Mpps.")
    w("")

    def ratio(x, y):
        return x / y if y else float("nan")

    g1m = pipe.get(1 << 20)
    g16m = pipe.get(16 << 20)
    g64k = pipe.get(64 << 10)
    rows = []
    if g1m:
        rows.append(("established-flow rate at 1M sessions (in2out)", f"{ratio(g1m['in2out_mpps'] * 1e6, five):.2f} x testpmd 5tswap", ">= 0.35 x"))
        rows.append(("established-flow rate at 1M sessions (out2in)", f"{ratio(g1m['out2in_mpps'] * 1e6, five):.2f} x testpmd 5tswap", ">= 0.35 x"))
    if g16m:
        rows.append(("established-flow rate at 16M sessions (in2out)", f"{ratio(g16m['in2out_mpps'] * 1e6, five):.2f} x testpmd 5tswap", ">= 0.25 x"))
        rows.append(("established-flow rate at 16M sessions (out2in)", f"{ratio(g16m['out2in_mpps'] * 1e6, five):.2f} x testpmd 5tswap", ">= 0.25 x"))
    if g64k and g16m:
        a64, a16 = g64k["new_sessions_per_s"], g16m["new_sessions_per_s"]
        rows.append(("new sessions, 64K / 16M", f"{a64 / 1e6:.2f} M/s / {a16 / 1e6:.2f} M/s (16M = {ratio(a16, a64):.2f} x 64K)", ">= 3 M/s, flat within 20 %"))
    big = g16m or g1m
    if big:
        rows.append((f"memory per session at {size_name(big['sessions'])}", f"{big['memory']['table_bytes_per_session']:.1f} B (slab + index), {big['memory']['all_in_bytes_per_session']:.1f} B with port maps", "<= 64 B"))
    rows.append(("system: cgnatd / testpmd io-forward, same link", f"{ratio(a.nat_pps, a.io_pps):.2f} x", ">= 0.5 x"))
    w("## Ratios and goals")
    w("")
    w("| figure | measured | goal |")
    w("|---|---|---|")
    for r in rows:
        w(f"| {r[0]} | {r[1]} | {r[2]} |")
    w("")
    w("When the generator offers less than the device under test could forward, both system")
    w("figures are bounded by the generator (compare each with what it offered): on this 2-CPU")
    w("machine the generator, the device under test and the kernel share two CPUs.")
    w("")
    w("## Commands")
    w("")
    w("```")
    w("make bench        # = perf/run.sh; BENCH_SIZES, BENCH_SECONDS, BENCH_WINDOW override")
    w("target/release/cgnat-bench --sizes 1K,64K,1M,16M --seconds 1 --repeat 3 --no-prefetch-too")
    w("```")
    w("")
    w("Raw outputs of this run are in perf/out/ (not committed).")
    open(a.out, "w").write("\n".join(L) + "\n")


if __name__ == "__main__":
    main()
