# Shared by the benchmark scripts: waits until the hub on port $1 answers (up to 10 s).
wait_for_hub() {
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$1/.well-known/mimi/ds-domain" >/dev/null && return 0
        sleep 0.1
    done
    echo "hub on port $1 did not start" >&2
    return 1
}

# Waits until something listens on port $1 (up to 10 s): for processes without the hub's
# discovery endpoint, such as a relay.
wait_for_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    return 1
}

# Starts a release (or $BIN_PROFILE) hub with a minimal config in directory $1 on port $2, logging
# to $1/hub.log; sets HUB to its pid and waits until it answers.
start_hub() {
    cat > "$1/hub.toml" <<TOML
domain = "load.test"
listen = "127.0.0.1:$2"
data_dir = "$1/db"
[privacy_pass]
# Every generated client registers from 127.0.0.1.
registrations_per_address_per_epoch = 1000000
TOML
    RUST_LOG=warn "$BIN/ds-rm" serve --config "$1/hub.toml" > "$1/hub.log" 2>&1 &
    HUB=$!
    wait_for_hub "$2"
}

# Writes $1/hub.toml for a load run in mode $3 on port $2: no limit the generator's hundreds of
# clients on 127.0.0.1 would hit (queue length, per-identity rate, per-address connections and
# registrations, token allowance). Every batch is synced (the default).
write_load_config() {
    cat > "$1/hub.toml" <<TOML
domain = "load.test"
listen = "127.0.0.1:$2"
data_dir = "$1/db"
mode = "$3"
max_queue_length = 1000000
baseline_requests_per_minute = 0
# Every generated client connects from 127.0.0.1: the per-address limit must not bind.
max_connections_per_address = 100000
[privacy_pass]
allowance_per_epoch = 1000000
# ... and registers from there too.
registrations_per_address_per_epoch = 1000000
TOML
}

# Starts a $BIN hub for a load run in mode $3 on port $2, in directory $1 (config from
# write_load_config, log in $1/hub.log); sets HUB to its pid and waits until it answers.
start_load_hub() {
    write_load_config "$1" "$2" "$3"
    # Hundreds of clients hold a connection each: room for them under the hub's fd-fitted limit.
    ulimit -n 65536 2>/dev/null || true
    RUST_LOG=warn "$BIN/ds-rm" serve --config "$1/hub.toml" > "$1/hub.log" 2>&1 &
    HUB=$!
    wait_for_hub "$2" || { kill "$HUB" 2>/dev/null; return 1; }
}
