-- Schema 2: messages stored once for all their local recipients (ds-rm/src/core/stored.rs),
-- and one row per release ticket still out.
CREATE TABLE qs_stored (k BYTEA PRIMARY KEY, v BYTEA NOT NULL);
CREATE TABLE qs_stored_tickets (k BYTEA PRIMARY KEY, v BYTEA NOT NULL);
