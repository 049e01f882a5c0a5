#!/usr/bin/env bash
# Runs a command with a throw-away PostgreSQL cluster: created in a temporary directory, owned
# by a non-root user, reachable only through a Unix socket in that directory (no TCP port, so
# no other local user can reach it and no port can collide), stopped and deleted when the
# command ends. The tests find it through MIMI_TEST_PG_*.
# fsync is off (tests throw the data away and never crash PostgreSQL itself) unless
# MIMI_PG_FSYNC=on, which benchmarks set so the database syncs like the RocksDB hub does.
set -euo pipefail
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
    echo "PostgreSQL server programs not found under /usr/lib/postgresql (make deps installs them)" >&2
    exit 1
fi
dir=$(mktemp -d /tmp/mimi-pg.XXXXXX)
as_owner=()
stop() {
    ${as_owner[@]+"${as_owner[@]}"} "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap stop EXIT
if [ "$(id -u)" = 0 ]; then
    # PostgreSQL refuses to run as root: the cluster belongs to the distribution's user.
    chown postgres "$dir"
    as_owner=(runuser -u postgres --)
fi
port=5432
${as_owner[@]+"${as_owner[@]}"} "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 >/dev/null
if ! ${as_owner[@]+"${as_owner[@]}"} "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
    -o "-c listen_addresses='' -p $port -k $dir -c max_connections=500 -c fsync=${MIMI_PG_FSYNC:-off} -c shared_buffers=128MB" \
    start >/dev/null; then
    echo "the test PostgreSQL did not start:" >&2
    cat "$dir/server.log" >&2 || true
    exit 1
fi
echo "test PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on $dir/.s.PGSQL.$port"
export MIMI_TEST_PG_HOST="$dir" MIMI_TEST_PG_PORT="$port" MIMI_TEST_PG_USER=postgres MIMI_TEST_PG_BIN="$bin"
"$@"
