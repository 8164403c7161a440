#!/usr/bin/env bash
# UDP echo: echokit serve --udp against a C recvmmsg/sendmmsg baseline (bench/baselines/udp_echo.c),
# each server pinned to CPU 0 and loaded by `echokit bench --udp` pinned to CPU 1. Loopback only,
# every run bounded by -t. The load generator is .NET, so the figures are a property of the pair.
#
#   bench/udp-compare.sh                      # SECONDS_PER_RUN=5 CONNS="1 16" SIZES="64 1400"
set -euo pipefail
cd "$(dirname "$0")/.."
T="${SECONDS_PER_RUN:-5}"
PORT="${PORT:-18890}"
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT

gcc -O2 -Wall -o "$work/udp_echo" bench/baselines/udp_echo.c
dotnet publish src/EchoKit.Cli -c Release -o artifacts/publish --nologo -v quiet >/dev/null

run() { # NAME COMMAND...
  local name=$1; shift
  taskset -c 0 "$@" & local pid=$!
  sleep 1
  for c in ${CONNS:-1 16}; do
    for s in ${SIZES:-64 1400}; do
      local r
      r=$(taskset -c 1 artifacts/publish/echokit bench --udp "127.0.0.1:$PORT" -c "$c" -s "$s" -t "${T}s" --json 2>/dev/null \
          | python3 -c "import json,sys; d=json.loads(sys.stdin.read()); print(d['msgs_per_s'], d['p50_us'], d['p99_us'], d['errors'])")
      printf '%-12s %6s %6s %s\n' "$name" "$c" "$s" "$r"
    done
  done
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

printf '%-12s %6s %6s %s\n' server conns size "msgs/s p50_us p99_us lost"
run c-mmsg "$work/udp_echo" "$PORT"
run echokit artifacts/publish/echokit serve --udp --port "$PORT" --quiet --log-level Warning --udp-rate 0
