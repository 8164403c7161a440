#!/usr/bin/env python3
"""A/B on a drifting machine: every server runs at once (each pinned to CPU 0, idle while not measured),
and echoload (pinned to CPU 1) alternates between them in short runs, so that a change of the machine's
speed hits all of them alike. Prints, per server, the median msgs/s, p50/p99, server CPU per message and
the median / min / max of its per-round ratio to the first server. Loopback only; bounded by ROUNDS.

  BENCH_BIN=/path/to/bin bench/ab.py ROUNDS SECONDS "echoload args" NAME='command with {PORT}' ...
  bench/ab.py 8 1 "-c 100 -s 64 -d 1" "epoll=$BENCH_BIN/epoll {PORT}" \
      "echokit=artifacts/publish/echokit serve --port {PORT} --no-greeting --quiet --log-level Warning --max-connections 0"
"""
import json, os, socket, statistics, subprocess, sys, time

if len(sys.argv) < 5:
    sys.exit(__doc__)
rounds, seconds, load = int(sys.argv[1]), sys.argv[2], sys.argv[3].split()
echoload = os.path.join(os.environ.get("BENCH_BIN", os.path.expanduser("~/.cache/echobench/bin")), "echoload")
servers = []
for i, spec in enumerate(sys.argv[4:]):
    name, command = spec.split("=", 1)
    port = 19100 + i
    process = subprocess.Popen(["taskset", "-c", "0"] + command.replace("{PORT}", str(port)).split(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    servers.append((name, port, process))


def run(port, pid, t):
    out = subprocess.run(["taskset", "-c", "1", echoload] + load + ["-t", t, "-w", "0", "--server-pid", str(pid),
                          f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=120).stdout
    return json.loads(out)


results = {name: [] for name, _, _ in servers}
try:
    for name, port, process in servers:
        for _ in range(100):
            try:
                if "--udp" in load:  # bound when our own bind of the port fails
                    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    try:
                        probe.bind(("127.0.0.1", port))
                    except OSError:
                        break
                    finally:
                        probe.close()
                    time.sleep(0.05)
                    continue
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                time.sleep(0.05)
        run(port, process.pid, "2")  # warm-up (and the JIT's second tier)
    for r in range(rounds):
        for name, port, process in (servers if r % 2 == 0 else servers[::-1]):
            d = run(port, process.pid, seconds)
            results[name].append((d["msgs_per_s"], d["p50_us"], d["p99_us"], d["server_cpu_pct"] * 1e4 / max(d["msgs_per_s"], 1)))
finally:
    for _, _, process in servers:
        process.terminate()
        process.wait()

base = servers[0][0]
for name, _, _ in servers:
    rows = results[name]
    ratios = [a[0] / b[0] for a, b in zip(rows, results[base])]
    cpu_ratios = [a[3] / b[3] for a, b in zip(rows, results[base]) if b[3] > 0]
    print(f"{name:14s} msgs/s {statistics.median(r[0] for r in rows):10.0f}  p50 {statistics.median(r[1] for r in rows):8.1f} us"
          f"  p99 {statistics.median(r[2] for r in rows):8.1f} us  cpu/msg {statistics.median(r[3] for r in rows):5.2f} us"
          f"  vs {base}: median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})"
          + (f", cpu/msg {statistics.median(cpu_ratios):.3f}" if cpu_ratios else ""))
