-- Schema 1 of the PostgreSQL store: one table per record kind (the RocksDB column families,
-- same names), keys and values as opaque bytes exactly as the RocksDB store holds them.
CREATE TABLE ds_groups (k BYTEA PRIMARY KEY, v BYTEA NOT NULL);
CREATE TABLE ds_routing (k BYTEA PRIMARY KEY, v BYTEA NOT NULL);
CREATE TABLE ds_reservations (k BYTEA PRIMARY KEY, v BYTEA NOT NULL);
CREATE TABLE ds_tombstones (k BYTEA PRIMARY KEY, v BYTEA NOT NULL);
CREATE TABLE qs_users (k BYTEA PRIMARY KEY, v BYTEA NOT NULL);
CREATE TABLE qs_friendship (k BYTEA PRIMARY KEY, v BYTEA NOT NULL);
CREATE TABLE qs_clients (k BYTEA PRIMARY KEY, v BYTEA NOT NULL);
CREATE TABLE qs_ratchets (k BYTEA PRIMARY KEY, v BYTEA NOT NULL);
CREATE TABLE qs_queues (k BYTEA PRIMARY KEY, v BYTEA NOT NULL);
CREATE TABLE qs_add_packages (k BYTEA PRIMARY KEY, v BYTEA NOT NULL);
CREATE TABLE server_keys (k BYTEA PRIMARY KEY, v BYTEA NOT NULL);
CREATE TABLE as_users (k BYTEA PRIMARY KEY, v BYTEA NOT NULL);
CREATE TABLE as_keys (k BYTEA PRIMARY KEY, v BYTEA NOT NULL);
CREATE TABLE as_invites (k BYTEA PRIMARY KEY, v BYTEA NOT NULL);
CREATE TABLE as_connection_packages (k BYTEA PRIMARY KEY, v BYTEA NOT NULL);
CREATE TABLE as_connection_requests (k BYTEA PRIMARY KEY, v BYTEA NOT NULL);
CREATE TABLE fed_outbox (k BYTEA PRIMARY KEY, v BYTEA NOT NULL);
CREATE TABLE fed_peer_keys (k BYTEA PRIMARY KEY, v BYTEA NOT NULL);
CREATE TABLE fed_seen (k BYTEA PRIMARY KEY, v BYTEA NOT NULL);
CREATE TABLE pp_keys (k BYTEA PRIMARY KEY, v BYTEA NOT NULL);
CREATE TABLE pp_spent (k BYTEA PRIMARY KEY, v BYTEA NOT NULL);
CREATE TABLE qs_push (k BYTEA PRIMARY KEY, v BYTEA NOT NULL);
CREATE TABLE as_revoked (k BYTEA PRIMARY KEY, v BYTEA NOT NULL);
-- Cross-process lock stripes: (kind, stripe) rows that requests lock with SELECT ... FOR UPDATE
-- in a transaction held for the request (kinds: see LockKind in ds-rm/src/store/shared.rs).
CREATE TABLE hub_locks (kind SMALLINT NOT NULL, stripe INTEGER NOT NULL, PRIMARY KEY (kind, stripe));
INSERT INTO hub_locks (kind, stripe)
    SELECT k, s FROM generate_series(0, 6) AS k, generate_series(0, 1023) AS s;

-- Digests of recently verified request signatures, until their freshness window ends: a
-- request replayed to another process, or to a restarted one, is refused. Logged like every
-- table, so a crash of the database or a failover to its replica forgets none.
CREATE TABLE replay_seen (digest BYTEA PRIMARY KEY, expires_ms BIGINT NOT NULL);
CREATE INDEX replay_seen_expiry ON replay_seen (expires_ms);

-- Outbox item numbers, increasing across processes, so a peer's items keep their order.
CREATE SEQUENCE fed_outbox_seq;
