# Shared by the benchmark scripts: waits until the hub on port $1 answers (up to 10 s).
wait_for_hub() {
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$1/.well-known/mimi/ds-domain" >/dev/null && return 0
        sleep 0.1
    done
    echo "hub on port $1 did not start" >&2
    return 1
}
