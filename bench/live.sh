#!/usr/bin/env bash
# Latency from a sender's acknowledgement to the recipient's event (issue 21): the recipient
# woken over its live socket, then polling every POLL_MS, over MESSAGES messages each, against a
# freshly started local hub.
#
#   bench/live.sh [MESSAGES] [POLL_MS] [GAP_MS]
#
# Expects target/release/ds-rm and target/release/mimi-rm-load (built by `make bench`).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/common.sh
source bench/common.sh
MESSAGES=${1:-1000}
POLL_MS=${2:-1000}
GAP_MS=${3:-10}
# The release build `make bench` makes; BIN_PROFILE=debug runs the dev build instead.
BIN=${CARGO_TARGET_DIR:-target}/${BIN_PROFILE:-release}
DATA=$(mktemp -d)
PORT=$((20000 + RANDOM % 1000))
start_hub "$DATA" "$PORT"
trap 'kill $HUB 2>/dev/null || true; rm -rf "$DATA"' EXIT
"$BIN/mimi-rm-load" latency --url "http://127.0.0.1:$PORT" --messages "$MESSAGES" \
    --poll-ms "$POLL_MS" --gap-ms "$GAP_MS" --data-dir "$DATA/clients"
