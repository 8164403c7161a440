#!/usr/bin/env python3
"""Per-round ratios of one server to another from a compare.sh JSON (results/compare-*.json):
msgs/s (MB/s for D; for A the other's p50 over this one's, so above 1 is better here too) and the
server CPU per message of both.   bench/ratios.py RESULTS.json [SERVER] [BASELINE]   (echokit, epoll)"""
import json, sys

if len(sys.argv) < 2:
    sys.exit(__doc__)
data = json.load(open(sys.argv[1]))
mine, base = (sys.argv[2:4] + ["echokit", "epoll"][len(sys.argv[2:4]):])[:2]
cells = {(r["server"], r["scenario"], r["round"]): r["echoload"] for r in data["results"] if r.get("echoload")}
print(f"{'scenario':8s} {'round':5s} {mine + '/' + base:>16s}   cpu us/msg {base} / {mine}")
for scenario in data["scenarios"]:
    rounds = sorted({k[2] for k in cells if k[1] == scenario})
    for n in rounds:
        a, b = cells.get((mine, scenario, n)), cells.get((base, scenario, n))
        if not a or not b:
            continue
        if scenario == "A":
            ratio = b["p50_us"] / a["p50_us"]
        elif scenario == "D":
            ratio = a["mbytes_per_s"] / b["mbytes_per_s"]
        else:
            ratio = a["msgs_per_s"] / b["msgs_per_s"]
        cpu = lambda e: e["server_cpu_pct"] * 1e4 / e["msgs_per_s"] if e.get("server_cpu_pct") is not None and e["msgs_per_s"] else float("nan")
        print(f"{scenario:8s} {n:<5d} {ratio:16.2f}   {cpu(b):6.2f} / {cpu(a):6.2f}")
