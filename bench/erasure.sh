#!/usr/bin/env bash
# The cost of "deleted means gone from the files" (issue 17): the load generator's send workload
# against hubs that differ only in erasure — the slot file with a scrub every 60 s (default),
# every 1 s, or never — and, with OLD_HUB set to a ds-rm built from before the slot file, the
# hub that kept ratchets in RocksDB. Prints throughput, latency, bytes the hub wrote per message
# and the scrub durations (the second term of the bound).
#
#   bench/erasure.sh [RATES] [DURATION] [GROUPS] [GROUP_SIZE]
#   e.g. OLD_HUB=/tmp/ds-rm-old bench/erasure.sh 200,400 10 20 10
#
# Expects target/release/ds-rm and target/release/mimi-rm-load (built by `make bench`). Results go
# to bench/results/erasure-*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/common.sh
source bench/common.sh
RATES=${1:-200,400}
DURATION=${2:-10}
NGROUPS=${3:-20}
SIZE=${4:-10}
# The release build `make bench` makes; BIN_PROFILE=debug runs the dev build instead.
BIN=${CARGO_TARGET_DIR:-target}/${BIN_PROFILE:-release}
OUT=bench/results
mkdir -p "$OUT"
VARIANTS=("slots-scrub-60s|$BIN/ds-rm|scrub_interval_secs = 60"
          "slots-scrub-1s|$BIN/ds-rm|scrub_interval_secs = 1"
          "slots-no-scrub|$BIN/ds-rm|scrub_interval_secs = 0")
if [ -n "${OLD_HUB:-}" ]; then
    VARIANTS=("before-ratchets-in-lsm|$OLD_HUB|" "${VARIANTS[@]}")
fi
SCRUBS=$(mktemp)
for V in "${VARIANTS[@]}"; do
    IFS='|' read -r NAME HUB_BIN EXTRA <<< "$V"
    DATA=$(mktemp -d)
    PORT=$((18000 + RANDOM % 1000))
    cat > "$DATA/hub.toml" <<TOML
domain = "load.test"
listen = "127.0.0.1:$PORT"
data_dir = "$DATA/db"
max_queue_length = 1000000
$EXTRA
[privacy_pass]
allowance_per_epoch = 1000000
registrations_per_address_per_epoch = 1000000
TOML
    RUST_LOG=warn,mimi_ds_rm::scrub=debug "$HUB_BIN" serve --config "$DATA/hub.toml" > "$DATA/hub.log" 2>&1 &
    HUB=$!
    trap 'kill $HUB 2>/dev/null || true' EXIT
    wait_for_hub "$PORT"
    "$BIN/mimi-rm-load" run --url "http://127.0.0.1:$PORT" --mode rm --sweep "$RATES" --hub-pid "$HUB" \
        --duration "$DURATION" --groups "$NGROUPS" --group-size "$SIZE" --mix send=100 \
        --data-dir "$DATA/clients" --out "$OUT/erasure-$NAME" > "$DATA/load.out"
    kill $HUB; wait $HUB 2>/dev/null || true
    trap - EXIT
    { grep -o 'scrubbed.*' "$DATA/hub.log" || true; } | { grep -o 'ms=[0-9]*' || true; } \
        | cut -d= -f2 | awk -v n="$NAME" '{print n, $1}' >> "$SCRUBS"
    rm -rf "$DATA"
done
python3 - "$OUT" "$RATES" "$SCRUBS" "${VARIANTS[@]}" <<'PY'
import json, sys, statistics
out, rates, scrubs, variants = sys.argv[1], sys.argv[2].split(','), sys.argv[3], sys.argv[4:]
durations = {}
for line in open(scrubs):
    name, ms = line.rsplit(' ', 1)
    durations.setdefault(name, []).append(int(ms))
print("| hub | target/s | achieved/s | send p50 | p99 | hub bytes written per message | scrubs: n, median, max |")
print("|---|---|---|---|---|---|---|")
for v in variants:
    name = v.split('|')[0]
    d = sorted(durations.get(name, []))
    sc = f"{len(d)}, {statistics.median(d):.0f} ms, {d[-1]} ms" if d else "none"
    for rate in rates:
        r = json.load(open(f"{out}/erasure-{name}-{rate}.json"))
        s = r["ops"]["send"]
        wb = r.get("hub_write_bytes_per_op")
        print(f"| {name} | {rate} | {r['achieved_ops_per_s']:.0f} | {s['p50_ms']:.1f} ms | {s['p99_ms']:.1f} ms | "
              f"{wb:.0f} | {sc} |" if wb is not None else f"| {name} | {rate} | ... |")
PY
rm -f "$SCRUBS"
