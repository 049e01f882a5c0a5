#!/usr/bin/env bash
# Side by side in one run, with the same load generator and groups: one hub on RocksDB, then
# one, two and three hub processes on one PostgreSQL database (issue 22). Run under
# .ci/with-postgres.sh with MIMI_PG_FSYNC=on (make bench does), so PostgreSQL syncs its log
# like the RocksDB hub syncs every batch.
#
#   bench/instances.sh [RATES] [DURATION] [GROUPS] [GROUP_SIZE]
#
# PREBUILT=1 builds every message before each measured run (`mimi-rm-load run --prebuilt`), so
# the generator only sends while the hubs are measured (reports: instances-prebuilt-*).
#
# Reports go to bench/results/instances-*.json: hub CPU per message (all processes together),
# database CPU per message (the postmaster and its backends), throughput and latency.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/common.sh
source bench/common.sh
RATES=${1:-200,400,600}
DURATION=${2:-10}
NGROUPS=${3:-20}
SIZE=${4:-10}
BIN=${CARGO_TARGET_DIR:-target}/${BIN_PROFILE:-release}
OUT=bench/results
mkdir -p "$OUT"
: "${MIMI_TEST_PG_PORT:?run under .ci/with-postgres.sh}"
PSQL=("$MIMI_TEST_PG_BIN/psql" -h "$MIMI_TEST_PG_HOST" -p "$MIMI_TEST_PG_PORT" -U "$MIMI_TEST_PG_USER" -qAt)
POSTMASTER=$(head -n 1 "$("${PSQL[@]}" -d postgres -c 'SHOW data_directory')/postmaster.pid")
ulimit -n 65536 2>/dev/null || true
GENERATOR_FLAGS=()
PREFIX=instances
if [ "${PREBUILT:-0}" = 1 ]; then
    GENERATOR_FLAGS+=(--prebuilt)
    PREFIX=instances-prebuilt
fi

# run NAME STORAGE INSTANCES
run() {
    local name=$1 storage=$2 n=$3 data urls="" pids="" db_arg=() url=""
    data=$(mktemp -d)
    # Whatever fails from here on, no hub is left running.
    trap 'kill ${pids//,/ } 2>/dev/null || true' EXIT
    if [ "$storage" = postgres ]; then
        local db="bench_$RANDOM$RANDOM"
        "${PSQL[@]}" -d postgres -c "CREATE DATABASE $db"
        url="host=$MIMI_TEST_PG_HOST port=$MIMI_TEST_PG_PORT user=$MIMI_TEST_PG_USER dbname=$db"
        db_arg=(--db-pid "$POSTMASTER")
    fi
    for i in $(seq "$n"); do
        local port=$((18000 + RANDOM % 1000)) dir="$data/hub$i"
        mkdir -p "$dir"
        cat > "$dir/hub.toml" <<TOML
domain = "load.test"
listen = "127.0.0.1:$port"
storage = "$storage"
data_dir = "$dir/db"
${url:+postgres_url = \"$url\"}
instances = $n
max_queue_length = 1000000
max_connections_per_address = 100000
[privacy_pass]
allowance_per_epoch = 1000000
registrations_per_address_per_epoch = 1000000
TOML
        RUST_LOG=warn "$BIN/ds-rm" serve --config "$dir/hub.toml" > "$dir/hub.log" 2>&1 &
        pids="${pids:+$pids,}$!"
        urls="${urls:+$urls,}http://127.0.0.1:$port"
        wait_for_hub "$port"
    done
    "$BIN/mimi-rm-load" run --url "$urls" --sweep "$RATES" --hub-pid "$pids" "${db_arg[@]}" \
        --duration "$DURATION" --groups "$NGROUPS" --group-size "$SIZE" --mix send=100 \
        --data-dir "$data/clients" --out "$OUT/$PREFIX-$name" "${GENERATOR_FLAGS[@]}"
    kill ${pids//,/ } 2>/dev/null || true
    wait 2>/dev/null || true
    trap - EXIT
    rm -rf "$data"
}

run rocksdb-1 rocksdb 1
run postgres-1 postgres 1
run postgres-2 postgres 2
run postgres-3 postgres 3
