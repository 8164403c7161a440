#!/usr/bin/env bash
# Fresh-process pairs: for each round, start C epoll, run one echoload scenario against it, stop it; then the
# same for EchoKit (and for EchoKit with --busy-poll 0). Each server is a new process, as compare.sh's F is,
# and the runs of one round are seconds apart, so the machine's drift between minutes hits them alike.
# Prints msgs/s, server CPU %, echoload's loopback check (ms; ~44 is this machine's best) and server CPU per
# message, plus EchoKit's Debug line on reads made by polling. Loopback only; bounded by ROUNDS.
#
#   BENCH_BIN=/work/benchbin ROUNDS=4 ARGS="-c 100 -s 64 -d 1 --idle 10000" bench/experiments/fresh-pairs/fresh-pairs.sh
set -uo pipefail
cd "$(dirname "$0")/../../.."
BIN="${BENCH_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/echobench/bin}"
ECHOKIT="${ECHOKIT:-$PWD/artifacts/publish/echokit}"
ARGS="${ARGS:--c 100 -s 64 -d 1 --idle 10000}"
LOGS="$(mktemp -d)"
ulimit -n 20000
run() { # name port command...
  local name=$1 port=$2; shift 2
  taskset -c 0 "$@" 2>"$LOGS/$name.err" &
  local pid=$!
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
  # shellcheck disable=SC2086
  local out; out="$(timeout 120 taskset -c 1 "$BIN/echoload" $ARGS -t "${SECONDS_PER:-5}" -w 1 --server-pid "$pid" "127.0.0.1:$port")"
  kill -TERM "$pid"; wait "$pid" 2>/dev/null
  printf '%-8s %s %s\n' "$name" "$(python3 -c 'import json,sys; d=json.loads(sys.stdin.readline()); print(round(d["msgs_per_s"]), "msgs/s, server", round(d["server_cpu_pct"], 1), "%, check", d["calib_ms"], "ms,", round(d["server_cpu_pct"] * 1e4 / d["msgs_per_s"], 2), "us/msg")' <<<"$out")" \
    "$(grep -o 'event loop 0: [0-9]* of [0-9]* reads' "$LOGS/$name.err" | head -1)"
  sleep 1
}
for round in $(seq "${ROUNDS:-3}"); do
  base=$((19600 + round * 3))
  run epoll $base "$BIN/epoll" $base
  run echokit $((base + 1)) "$ECHOKIT" serve --port $((base + 1)) --no-greeting --quiet --log-level Debug --max-connections 0
  run bp0 $((base + 2)) "$ECHOKIT" serve --port $((base + 2)) --no-greeting --quiet --log-level Debug --max-connections 0 --busy-poll 0
done
rm -rf "$LOGS"
