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
