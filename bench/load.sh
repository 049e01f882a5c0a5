#!/usr/bin/env bash
# Runs the mimi-rm-load scenario of BENCHMARKS.md against freshly started local hubs, once in
# RM mode and once in baseline mode, at each arrival rate of a sweep, and draws both modes'
# latency distributions side by side per rate.
#
#   bench/load.sh [RATES] [DURATION] [GROUPS] [GROUP_SIZE] [MIX]
#   e.g. bench/load.sh 250,500,750,1000 10 20 10 send=100
#
# PREBUILT=1 builds every message before each measured run (`mimi-rm-load run --prebuilt`), so
# the generator only sends while the hub is measured; it needs a send-only MIX.
#
# Expects target/release/ds-rm and target/release/mimi-rm-load (built by `make bench`). Results go
# to bench/results/ (or $OUT). Each hub gets a fresh data directory and syncs every batch (the default).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/common.sh
source bench/common.sh
RATES=${1:-250,500,750,1000}
DURATION=${2:-10}
NGROUPS=${3:-20}
SIZE=${4:-10}
MIX=${5:-send=100}
# The release build `make bench` makes; BIN_PROFILE=debug runs the dev build instead.
BIN=${CARGO_TARGET_DIR:-target}/${BIN_PROFILE:-release}
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
TAG="g${NGROUPS}x${SIZE}-$(echo "$MIX" | tr ',=' '_-')"
GENERATOR_FLAGS=()
if [ "${PREBUILT:-0}" = 1 ]; then
    GENERATOR_FLAGS+=(--prebuilt)
    TAG="$TAG-prebuilt"
fi
for MODE in rm baseline; do
    DATA=$(mktemp -d)
    PORT=$((18000 + RANDOM % 1000))
    start_load_hub "$DATA" "$PORT" "$MODE"
    trap 'kill $HUB 2>/dev/null || true' EXIT
    "$BIN/mimi-rm-load" run --url "http://127.0.0.1:$PORT" --mode "$MODE" --sweep "$RATES" --hub-pid "$HUB" \
        --duration "$DURATION" --groups "$NGROUPS" --group-size "$SIZE" --mix "$MIX" \
        --data-dir "$DATA/clients" --out "$OUT/load-$MODE-$TAG" "${GENERATOR_FLAGS[@]}"
    kill $HUB; wait $HUB 2>/dev/null || true
    trap - EXIT
    du -sb "$DATA/db" | awk -v m="$MODE" '{print "  " m " hub data directory: " $1 " bytes"}'
    rm -rf "$DATA"
done
for RATE in ${RATES//,/ }; do
    "$BIN/mimi-rm-load" compare "$OUT/load-rm-$TAG-$RATE.json" "$OUT/load-baseline-$TAG-$RATE.json" \
        --svg "$OUT/compare-$TAG-$RATE.svg"
done
