#!/usr/bin/env python3
"""Processes vs loops on one port, on a drifting machine: each layout is a set of server processes sharing one
port (--reuse-port) or one process with several epoll loops; all layouts run at once, each pinned to
SERVER_CPUS, and echoload (pinned to LOAD_CPU) alternates between them in short runs. Per layout: median
msgs/s, server CPU per message (summed over its processes, from /proc), RSS summed, and how evenly the
connections were spread (the busiest process's or loop's share of the CPU). Loopback only; bounded by ROUNDS.

  BENCH_BIN=/path/to/bin bench/scaling.py ROUNDS SECONDS "echoload args" [NAME='command {PORT} + command {PORT}' ...]
"""
import json, os, socket, statistics, subprocess, sys, time

if len(sys.argv) < 4:
    sys.exit(__doc__)
rounds, seconds, load = int(sys.argv[1]), sys.argv[2], sys.argv[3].split()
echoload = os.path.join(os.environ.get("BENCH_BIN", os.path.expanduser("~/.cache/echobench/bin")), "echoload")
echokit = os.environ.get("ECHOKIT", "artifacts/publish/echokit")
server_cpus, load_cpu = os.environ.get("SERVER_CPUS", "0,1"), os.environ.get("LOAD_CPU", "1")
common = "serve --no-greeting --quiet --log-level Warning --max-connections 0 --port {PORT}"
layouts = {
    "1 process, 1 loop": [f"{echokit} {common} --loops 1"],
    "1 process, 2 loops": [f"{echokit} {common} --loops 2"],
    "2 processes (--reuse-port), 1 loop each": [f"{echokit} {common} --loops 1 --reuse-port"] * 2,
}
if len(sys.argv) > 4:  # NAME='command with {PORT} + another process's command' ...
    layouts = {spec.split("=", 1)[0]: spec.split("=", 1)[1].split(" + ") for spec in sys.argv[4:]}
HZ = os.sysconf("SC_CLK_TCK")


def cpu(pid):  # user + system ticks of every thread
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def thread_cpu(pid):
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = open(f"/proc/{pid}/task/{tid}/stat").read().rsplit(")", 1)[1].split()
            out[tid] = int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return out


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


running = []
for i, (name, commands) in enumerate(layouts.items()):
    port = 19200 + i
    processes = []
    for command in commands:
        processes.append(subprocess.Popen(["taskset", "-c", server_cpus] + command.replace("{PORT}", str(port)).split(),
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                time.sleep(0.05)
    running.append((name, port, processes))


def run(port, processes, t):
    before = [cpu(p.pid) for p in processes]
    threads_before = [thread_cpu(p.pid) for p in processes]
    out = subprocess.run(["taskset", "-c", load_cpu, echoload] + load + ["-t", t, "-w", "0", f"127.0.0.1:{port}"],
                         capture_output=True, text=True, timeout=120).stdout
    d = json.loads(out)
    used = [cpu(p.pid) - b for p, b in zip(processes, before)]
    # The busiest unit's share: a process among processes, else the busiest thread of the one process.
    if len(processes) > 1:
        busiest = max(used) / max(sum(used), 1)
    else:
        after = thread_cpu(processes[0].pid)
        per = sorted((after[k] - threads_before[0].get(k, 0) for k in after), reverse=True)
        busiest = per[0] / max(sum(per[:2]), 1)
    return d["msgs_per_s"], sum(used) / HZ * 1e6 / max(d["msgs_per_s"] * float(t), 1), busiest


results = {name: [] for name in layouts}
try:
    for name, port, processes in running:
        run(port, processes, "2")  # warm-up
    for r in range(rounds):
        for name, port, processes in (running if r % 2 == 0 else running[::-1]):
            results[name].append(run(port, processes, seconds))
    rss = {name: sum(rss_kib(p.pid) for p in processes) for name, _, processes in running}
finally:
    for _, _, processes in running:
        for p in processes:
            p.terminate()
            p.wait()

base = next(iter(layouts))
for name in layouts:
    rows = results[name]
    ratios = [a[0] / b[0] for a, b in zip(rows, results[base])]
    print(f"{name:42s} msgs/s {statistics.median(r[0] for r in rows):9.0f} (x{statistics.median(ratios):.2f})"
          f"  cpu/msg {statistics.median(r[1] for r in rows):5.2f} us  busiest unit {statistics.median(r[2] for r in rows):.2f}"
          f"  RSS {rss[name] / 1024:.0f} MiB")
