#!/usr/bin/env bash
# Sets up a streaming replica of the hubs' database on this machine (run as postgres on the
# replica host; PostgreSQL 15 paths). On the primary first:
#   CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD '…';
#   pg_hba.conf: host replication replicator <replica-address>/32 scram-sha-256
#   postgresql.conf: wal_level = replica, and for no acknowledged loss on failover
#     synchronous_standby_names = 'mimi_replica'  (every commit waits for the replica)
set -euo pipefail
PRIMARY=${1:?primary host}
DATA=/var/lib/postgresql/15/main
systemctl stop postgresql
rm -rf "$DATA"
# -R writes standby.signal and primary_conninfo; the application name matches
# synchronous_standby_names above.
pg_basebackup -h "$PRIMARY" -U replicator -D "$DATA" -R -X stream -P \
    -d "application_name=mimi_replica"
systemctl start postgresql
