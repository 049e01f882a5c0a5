#!/usr/bin/env bash
# Send latency while the hub is flooded with idle and slowloris connections (issue 19): a hub
# limited to 256 file descriptors, 300 attacking connections from 127.0.0.2 that reconnect as
# soon as they are closed, and mimi-rm-load sending from 127.0.0.1 at a modest rate. Runs once
# without the flood and once with it, and prints both reports' percentiles.
#
#   bench/flood.sh [RATE] [DURATION] [CONNECTIONS]
#
# Expects target/release/ds-rm and target/release/mimi-rm-load (built by `make bench`).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/common.sh
source bench/common.sh
RATE=${1:-50}
DURATION=${2:-20}
CONNS=${3:-300}
# The release build `make bench` makes; BIN_PROFILE=debug runs the dev build instead.
BIN=${CARGO_TARGET_DIR:-target}/${BIN_PROFILE:-release}
OUT=bench/results
mkdir -p "$OUT"
for FLOOD in 0 "$CONNS"; do
    DATA=$(mktemp -d)
    PORT=$((19000 + RANDOM % 1000))
    cat > "$DATA/hub.toml" <<TOML
domain = "load.test"
listen = "127.0.0.1:$PORT"
data_dir = "$DATA/db"
max_queue_length = 1000000
[privacy_pass]
allowance_per_epoch = 1000000
registrations_per_address_per_epoch = 1000000
TOML
    (ulimit -n 256; RUST_LOG=warn exec "$BIN/ds-rm" serve --config "$DATA/hub.toml") > "$DATA/hub.log" 2>&1 &
    HUB=$!
    trap 'kill $HUB 2>/dev/null || true; kill ${FLOODER:-} 2>/dev/null || true' EXIT
    wait_for_hub "$PORT"
    FLOODER=
    if [ "$FLOOD" -gt 0 ]; then
        python3 bench/flood.py "$PORT" "$FLOOD" > "$DATA/flood.log" 2>&1 &
        FLOODER=$!
        sleep 3
    fi
    # 5 groups of 4: 20 clients, well under the hub's per-address limit at 256 descriptors.
    "$BIN/mimi-rm-load" run --url "http://127.0.0.1:$PORT" --rate "$RATE" --hub-pid "$HUB" \
        --duration "$DURATION" --groups 5 --group-size 4 --mix send=100 \
        --data-dir "$DATA/clients" --out "$OUT/flood-$FLOOD"
    [ -n "$FLOODER" ] && { tail -n 1 "$DATA/flood.log"; kill "$FLOODER"; }
    echo "  hub log lines about connection limits: $(grep -c "connection limit reached" "$DATA/hub.log" || true)"
    kill $HUB; wait $HUB 2>/dev/null || true
    trap - EXIT
    rm -rf "$DATA"
done
python3 - "$OUT/flood-0.json" "$OUT/flood-$CONNS.json" <<'PY'
import json, sys
for path in sys.argv[1:]:
    r = json.load(open(path))
    s = r["ops"]["send"]
    print(f"{path}: {s['count']} sends, {s['errors']} errors, p50 {s['p50_ms']:.1f} ms, "
          f"p99 {s['p99_ms']:.1f} ms, max {s['max_ms']:.1f} ms")
PY
