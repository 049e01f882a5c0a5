#!/usr/bin/env bash
# Profiles the hub (release build) while it serves prebuilt application messages, with `perf`:
# where its CPU goes per message, by component (issue 23, item 5).
#
#   bench/profile.sh [RATE] [SECONDS] [GROUPS] [GROUP_SIZE] [MODE]
#   e.g. bench/profile.sh 800 20 20 10 rm
#
# The generator builds every message first and only sends while perf samples the hub, so the
# profile holds the hub's request path, not group setup. Writes bench/results/profile-<MODE>-
# <RATE>.txt (perf's flat profile by symbol) and prints the component summary
# (bench/profile_summary.py). Needs `perf` (linux-perf) and the binaries `make bench` builds.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/common.sh
source bench/common.sh
RATE=${1:-800}
SECONDS_SAMPLED=${2:-20}
NGROUPS=${3:-20}
SIZE=${4:-10}
MODE=${5:-rm}
BIN=${CARGO_TARGET_DIR:-target}/${BIN_PROFILE:-release}
OUT=bench/results
mkdir -p "$OUT"
command -v perf >/dev/null || { echo "perf not found (apt-get install linux-perf)" >&2; exit 1; }
DATA=$(mktemp -d)
PORT=$((18000 + RANDOM % 1000))
HUB=
GEN=
cleanup() {
    kill $HUB $GEN 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$DATA"
}
trap cleanup EXIT
start_load_hub "$DATA" "$PORT" "$MODE"
# Two seconds of warm-up, then the sampled seconds, and two more so sampling ends under load.
"$BIN/mimi-rm-load" run --url "http://127.0.0.1:$PORT" --mode "$MODE" --rate "$RATE" --prebuilt \
    --warmup 2 --duration $((SECONDS_SAMPLED + 2)) --groups "$NGROUPS" --group-size "$SIZE" \
    --mix send=100 --op-timeout-secs 10 --hub-pid "$HUB" --data-dir "$DATA/clients" \
    --out "$DATA/load" \
    > "$DATA/load.log" 2>&1 &
GEN=$!
until grep -q '^built ' "$DATA/load.log"; do
    kill -0 $GEN 2>/dev/null || { cat "$DATA/load.log" >&2; exit 1; }
    sleep 0.2
done
sleep 2
perf record -F 999 -g -p "$HUB" -o "$DATA/perf.data" -- sleep "$SECONDS_SAMPLED" 2> "$DATA/perf.log"
wait $GEN
grep -E 'achieved|CPU:|p99' "$DATA/load.log" || true
PROFILE="$OUT/profile-$MODE-$RATE.txt"
perf report -i "$DATA/perf.data" --stdio --no-children -g none --sort dso,symbol --percent-limit 0.02 \
    2>/dev/null | sed -e 's/ *- *- *$//' -e 's/[[:space:]]*$//' | grep -v '^$' > "$PROFILE"
echo "wrote $PROFILE"
python3 bench/profile_summary.py "$PROFILE"
