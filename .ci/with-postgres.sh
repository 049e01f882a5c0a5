#!/usr/bin/env bash
# Runs a command with a throw-away PostgreSQL cluster: created in a temporary directory,
# listening on a free loopback port (and a socket in that directory), owned by a non-root user,
# stopped and deleted when the command ends. The tests find it through MIMI_TEST_PG_*.
# fsync is off (tests throw the data away and never crash PostgreSQL itself) unless
# MIMI_PG_FSYNC=on, which benchmarks set so the database syncs like the RocksDB hub does.
set -euo pipefail
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
    echo "PostgreSQL server programs not found under /usr/lib/postgresql (make deps installs them)" >&2
    exit 1
fi
dir=$(mktemp -d /tmp/mimi-pg.XXXXXX)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
as_owner=()
if [ "$(id -u)" = 0 ]; then
    # PostgreSQL refuses to run as root: the cluster belongs to the distribution's user.
    chown postgres "$dir"
    as_owner=(runuser -u postgres --)
fi
stop() {
    "${as_owner[@]}" "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap stop EXIT
"${as_owner[@]}" "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 >/dev/null
"${as_owner[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=500 -c fsync=${MIMI_PG_FSYNC:-off} -c shared_buffers=128MB" \
    start >/dev/null
echo "test PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port ($dir)"
export MIMI_TEST_PG_HOST=127.0.0.1 MIMI_TEST_PG_PORT="$port" MIMI_TEST_PG_USER=postgres MIMI_TEST_PG_BIN="$bin"
"$@"
