#!/usr/bin/env bash
# The cost of Oblivious HTTP (issue 20): a send's round trip and the hub's CPU per send, direct
# and through a `ds-rm relay` on the same machine, MESSAGES sends each, against a freshly started
# local hub.
#
#   bench/ohttp.sh [MESSAGES]
#
# Expects target/release/ds-rm and target/release/mimi-rm-load (built by `make bench`).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/common.sh
source bench/common.sh
MESSAGES=${1:-500}
# The release build `make bench` makes; BIN_PROFILE=debug runs the dev build instead.
BIN=${CARGO_TARGET_DIR:-target}/${BIN_PROFILE:-release}
DATA=$(mktemp -d)
PORT=$((20000 + RANDOM % 1000))
RELAY_PORT=$((PORT + 1000))
start_hub "$DATA" "$PORT"
RUST_LOG=warn "$BIN/ds-rm" relay --listen "127.0.0.1:$RELAY_PORT" \
    --gateway "http://127.0.0.1:$PORT/ohttp" > "$DATA/relay.log" 2>&1 &
RELAY=$!
trap 'kill $HUB $RELAY 2>/dev/null || true; wait $HUB $RELAY 2>/dev/null || true; rm -rf "$DATA"' EXIT
wait_for_port "$RELAY_PORT"
"$BIN/mimi-rm-load" oblivious --url "http://127.0.0.1:$PORT" \
    --relay "http://127.0.0.1:$RELAY_PORT/" --messages "$MESSAGES" --hub-pid "$HUB" \
    --data-dir "$DATA/clients"
