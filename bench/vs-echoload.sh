#!/usr/bin/env bash
# Trust check for `echokit bench`: against the same server (echokit serve, pinned to CPU 0), run each
# scenario with the C load generator echoload and with echokit bench (both pinned to CPU 1) and print
# both results side by side. Loopback only; every run is bounded by -t.
#
#   bench/vs-echoload.sh                 # needs ../shared/bench built (BENCH_BIN, default ~/.cache/echobench/bin)
#   SECONDS_PER_RUN=5 ROUNDS=3 bench/vs-echoload.sh
#   UDP=1 bench/vs-echoload.sh           # U1-U3 against echokit serve --udp (--udp-rate 0)
# The two generators alternate, ROUNDS times per scenario, so that machine drift hits both alike.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${BENCH_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/echobench/bin}"
ECHOLOAD="$BIN/echoload"
[ -x "$ECHOLOAD" ] || { echo "no $ECHOLOAD: build it with ../shared/bench/baselines/build.sh c (BENCH_BIN=$BIN)" >&2; exit 1; }
T="${SECONDS_PER_RUN:-5}"
PORT="${PORT:-18888}"
ROUNDS="${ROUNDS:-3}"

dotnet publish src/EchoKit.Cli -c Release -o artifacts/publish --nologo -v quiet >/dev/null
if [ -n "${UDP:-}" ]; then
  SERVE=(--udp --udp-rate 0) SCENARIOS=("-c 1 -s 64 -d 1" "-c 100 -s 64 -d 1" "-c 16 -s 1400 -d 8") LOAD=(--udp) BENCH=(--udp)
else
  SERVE=(--no-greeting) SCENARIOS=("-c 1 -s 64 -d 1" "-c 100 -s 64 -d 1" "-c 100 -s 64 -d 16" "-c 10 -s 32768 -d 4" "-c 1000 -s 64 -d 1")
  LOAD=() BENCH=(--skip-greeting 0)
fi
taskset -c 0 artifacts/publish/echokit serve --port "$PORT" "${SERVE[@]}" --quiet --log-level Warning &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null' EXIT
for _ in $(seq 100); do
  if [ -n "${UDP:-}" ]; then  # bound when the port is taken
    python3 -c "import socket,sys; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); sys.exit(0 if s.connect_ex(('127.0.0.1',0)) or True and not s.bind(('127.0.0.1',$PORT)) else 1)" 2>/dev/null || break
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  fi
  sleep 0.05
done
kill -0 "$server" 2>/dev/null || { echo "echokit serve did not start on port $PORT (PORT=... to choose another)" >&2; exit 1; }

field() { python3 -c "import json,sys; d=json.loads(sys.stdin.read()); print(' '.join(str(d[k]) for k in sys.argv[1:]))" "$@"; }
printf '%-22s %-6s %-9s %12s %10s %10s %10s\n' scenario round tool msgs/s MB/s p50_us p99_us
for sc in "${SCENARIOS[@]}"; do
  for round in $(seq "$ROUNDS"); do
    # shellcheck disable=SC2086
    e=$(taskset -c 1 "$ECHOLOAD" "${LOAD[@]}" $sc -t "$T" -w 1 "127.0.0.1:$PORT" | field msgs_per_s mbytes_per_s p50_us p99_us)
    # shellcheck disable=SC2086
    k=$(taskset -c 1 artifacts/publish/echokit bench "127.0.0.1:$PORT" $sc -t "${T}s" --warmup 1s "${BENCH[@]}" --json 2>/dev/null \
        | field msgs_per_s mbytes_per_s p50_us p99_us)
    # shellcheck disable=SC2086
    printf '%-22s %-6s %-9s %12s %10s %10s %10s\n' "$sc" "$round" echoload $e
    # shellcheck disable=SC2086
    printf '%-22s %-6s %-9s %12s %10s %10s %10s\n' "$sc" "$round" bench $k
  done
done
