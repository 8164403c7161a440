#!/usr/bin/env bash
# Reproduces BENCHMARKS.md's main table: EchoKit beside the baselines of ../shared/bench, each scenario
# run on every server back to back (BENCH_ORDER=scenario) for several rounds, because this machine's
# speed drifts by up to 2x between minutes. Loopback only; every run is bounded in time.
#
#   bench/compare.sh                         # C epoll and EchoKit, 3 rounds (about 10 minutes)
#   ONLY=epoll,kestrel,echokit,echokit-socket ROUNDS=2 bench/compare.sh
#   BENCH_SCENARIOS=A,B bench/compare.sh     # any compare.sh variable passes through
# The JSON goes to bench/results/ (OUT=file to choose), its logs beside it (not kept in git).
# Binaries of the baselines: BENCH_BIN (default ~/.cache/echobench/bin), built if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED="$(cd ../shared/bench && pwd)"
export BENCH_BIN="${BENCH_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/echobench/bin}"
[ -x "$BENCH_BIN/echoload" ] || "$SHARED/baselines/build.sh"
dotnet publish src/EchoKit.Cli -c Release -o artifacts/publish --nologo -v quiet >/dev/null
ECHOKIT="$PWD/artifacts/publish/echokit serve --port {PORT} --no-greeting --quiet --log-level Warning --max-connections 0"
BENCH_SECONDS="${BENCH_SECONDS:-3}" BENCH_WARMUP="${BENCH_WARMUP:-1}" BENCH_REPEAT="${ROUNDS:-3}" BENCH_ORDER="${BENCH_ORDER:-scenario}" \
  "$SHARED/compare.sh" --only "${ONLY:-epoll,echokit}" --out "${OUT:-$PWD/bench/results/compare-$(date -u +%Y%m%dT%H%M%SZ).json}" \
  --server "echokit=$ECHOKIT" \
  --server "echokit-socket=$ECHOKIT --engine socket"
