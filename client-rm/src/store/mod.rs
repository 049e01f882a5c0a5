//! The client's store: one SQLite database holding our state, the OpenMLS key store and the
//! events not yet shown, changed by one transaction per operation.
//!
//! The old client rewrote one JSON file with everything on each operation, so a message in a
//! client with 100 groups wrote all 100 groups' secrets. Here every part of the state is a row
//! (`core`, one per group, one per published KeyPackage, one per OpenMLS entry) and a commit
//! writes only the rows whose bytes changed, plus the new events, atomically: a received message
//! writes its group's OpenMLS entries, the core row (the queue ratchet) and the event, whatever
//! the number of groups.
//!
//! Durability: WAL mode with `synchronous = FULL`, so a committed operation survives a crash or
//! power loss before the client acknowledges anything to the hub. `secure_delete` zeroes freed
//! pages. The database is opened in exclusive locking mode: two processes on one client
//! directory would each overwrite the other's ratchets, so the second one waits, then fails.
//!
//! Files: the directory 0700, the database (and the WAL SQLite creates with the database's mode)
//! 0600. With a passphrase every row is sealed ([`seal`]).

mod events;
pub use events::tls_hex as events_tls;
pub mod files;
#[doc(hidden)]
pub mod legacy;
pub mod seal;
pub mod tokens;

use crate::client::Event;
use crate::error::ClientError;
use crate::provider::MlsStore;
use crate::state::ClientState;
use rusqlite::{Connection, OptionalExtension as _, params};
use seal::{KdfParams, KdfRecord, Sealer};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use zeroize::Zeroizing;

/// The database's file name in the client directory.
pub const DB_FILE: &str = "client.db";
/// Schema version written in `meta`.
const SCHEMA: i64 = 1;
/// How long an operation waits for another process holding the store.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Logical key of the core state row (everything but groups and KeyPackages).
const CORE: &[u8] = b"s:core";
/// Prefix of a group's row (then the group id).
const GROUP: &[u8] = b"s:group:";
/// Prefix of a published KeyPackage's row (then its hex reference).
const KEY_PACKAGE: &[u8] = b"s:kp:";
/// Prefix of an OpenMLS key-store entry (then the entry's key).
const MLS: &[u8] = b"m:";

/// How the store is opened.
#[derive(Default, Clone)]
pub struct StoreOptions {
    /// Seal every row under this passphrase (stretched with argon2id). A store created with one
    /// opens only with it.
    pub passphrase: Option<Zeroizing<Vec<u8>>>,
    /// argon2id cost for a new passphrase-protected store (default [`KdfParams::DEFAULT`]).
    pub kdf: Option<KdfParams>,
}

impl StoreOptions {
    /// Options with the passphrase in the first line of the file at `path` (without its line
    /// ending), as `mimi-rm --passphrase-file` reads it. An empty passphrase is refused.
    pub fn passphrase_file(path: &Path) -> Result<Self, ClientError> {
        let text = Zeroizing::new(
            std::fs::read(path)
                .map_err(|e| ClientError::State(format!("reading {}: {e}", path.display())))?,
        );
        let line = text.split(|&b| b == b'\n').next().unwrap_or_default();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return Err(ClientError::Passphrase(
                "the passphrase file's first line is empty",
            ));
        }
        Ok(Self {
            passphrase: Some(Zeroizing::new(line.to_vec())),
            kdf: None,
        })
    }
}

impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOptions")
            .field(
                "passphrase",
                &self.passphrase.as_ref().map(|_| "[redacted]"),
            )
            .field("kdf", &self.kdf)
            .finish()
    }
}

/// Counters of what commits wrote, for tests and benchmarks of the store's cost.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteStats {
    /// Transactions committed.
    pub transactions: u64,
    /// Rows inserted or replaced (events included).
    pub rows_written: u64,
    /// Bytes of ids and values in those rows.
    pub bytes_written: u64,
    /// Rows deleted.
    pub rows_deleted: u64,
}

/// What a store holds when opened.
pub struct Loaded {
    /// Our state.
    pub state: ClientState,
    /// The OpenMLS key store.
    pub mls: MlsStore,
}

/// An open client store.
pub struct ClientStore {
    /// Behind a mutex only so that a `Client` is `Sync` (its futures hold `&Client` across
    /// awaits); one client uses it from one task at a time.
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
    sealer: Option<Arc<Sealer>>,
    /// State rows (logical key → bytes) as last committed: a commit writes what differs.
    written_state: HashMap<Vec<u8>, Zeroizing<Vec<u8>>>,
    /// OpenMLS entries (entry key → value) as last committed.
    written_mls: HashMap<Vec<u8>, Zeroizing<Vec<u8>>>,
    /// Sequence number of the next event (never reused, even after events are deleted).
    next_event: i64,
    stats: WriteStats,
}

impl std::fmt::Debug for ClientStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientStore")
            .field("path", &self.path)
            .field("sealed", &self.sealer.is_some())
            .finish_non_exhaustive()
    }
}

/// A row by logical key, with its (secret) bytes.
type Row = (Vec<u8>, Zeroizing<Vec<u8>>);

fn db(e: rusqlite::Error) -> ClientError {
    ClientError::Store(e.to_string())
}

fn json<T: serde::Serialize>(v: &T) -> Result<Zeroizing<Vec<u8>>, ClientError> {
    serde_json::to_vec(v)
        .map(Zeroizing::new)
        .map_err(|e| ClientError::State(e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(what: &str, v: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(v).map_err(|e| ClientError::State(format!("stored {what}: {e}")))
}

impl ClientStore {
    /// The connection, for `&self` readers.
    /// The handle the token wallet keeps its tokens through: the same database and, with a
    /// passphrase, the same keys.
    pub fn token_store(&self) -> tokens::TokenStore {
        tokens::TokenStore::new(self.conn.clone(), self.sealer.clone())
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Opens (creating if need be) the store in `dir`, and what it holds: `None` for a store
    /// with no client yet. A directory the old client left (`client.json`) is migrated first, in
    /// one transaction, and the old file removed after it commits.
    pub fn open(dir: &Path, options: &StoreOptions) -> Result<(Self, Option<Loaded>), ClientError> {
        files::private_dir(dir)?;
        let path = dir.join(DB_FILE);
        files::private_file(&path)?;
        let conn = Connection::open(&path).map_err(db)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(db)?;
        // `journal_mode` answers with a row; the others with none.
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(db)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(ClientError::Store(format!("journal mode {mode}, not WAL")));
        }
        conn.execute_batch(
            "PRAGMA synchronous = FULL;
             PRAGMA secure_delete = ON;
             PRAGMA locking_mode = EXCLUSIVE;
             BEGIN IMMEDIATE;
             CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS rows (id BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, value BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS tokens (id INTEGER PRIMARY KEY, value BLOB NOT NULL);
             COMMIT;",
        )
        .map_err(|e| match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                ClientError::Store(format!(
                    "{} is in use by another process (one process per client directory)",
                    path.display()
                ))
            }
            _ => db(e),
        })?;
        let mut store = Self {
            conn: Arc::new(Mutex::new(conn)),
            path,
            sealer: None,
            written_state: HashMap::new(),
            written_mls: HashMap::new(),
            next_event: 1,
            stats: WriteStats::default(),
        };
        store.check_schema()?;
        store.sealer = store.unlock(options)?.map(Arc::new);
        store.next_event = store.meta_i64("next_event")?.unwrap_or(1);
        let loaded = match store.load()? {
            Some(l) => {
                // A migration that committed but did not get to remove the old file.
                if dir.join(legacy::FILE).exists() {
                    files::remove_synced(&dir.join(legacy::FILE))?;
                }
                Some(l)
            }
            None if dir.join(legacy::FILE).exists() => Some(store.migrate(dir)?),
            None => None,
        };
        Ok((store, loaded))
    }

    /// Refuses a database written by a newer schema; stamps a new one.
    fn check_schema(&self) -> Result<(), ClientError> {
        match self.meta_i64("schema")? {
            Some(SCHEMA) => Ok(()),
            Some(v) => Err(ClientError::Store(format!(
                "store schema {v}; this client reads schema {SCHEMA}"
            ))),
            None => self.set_meta("schema", &SCHEMA.to_be_bytes()),
        }
    }

    /// The passphrase keys: checks `options` against what the store was created with.
    fn unlock(&self, options: &StoreOptions) -> Result<Option<Sealer>, ClientError> {
        let record = self.meta("kdf")?;
        let empty = self.is_empty()?;
        match (record, &options.passphrase) {
            (Some(r), Some(p)) => {
                let r: KdfRecord = from_json("passphrase record", &r)?;
                Sealer::unlock(p, &r).map(Some)
            }
            (Some(_), None) => Err(ClientError::Passphrase(
                "the client store is passphrase-protected: give the passphrase",
            )),
            (None, Some(p)) if empty => {
                let (sealer, r) = Sealer::create(p, options.kdf.unwrap_or(KdfParams::DEFAULT))?;
                self.set_meta("kdf", &json(&r)?)?;
                Ok(Some(sealer))
            }
            (None, Some(_)) => Err(ClientError::Passphrase(
                "the client store has no passphrase; open it without one",
            )),
            (None, None) => Ok(None),
        }
    }

    fn is_empty(&self) -> Result<bool, ClientError> {
        let rows: i64 = self
            .conn()
            .query_row(
                "SELECT (SELECT count(*) FROM rows) + (SELECT count(*) FROM events)",
                [],
                |r| r.get(0),
            )
            .map_err(db)?;
        Ok(rows == 0)
    }

    fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, ClientError> {
        self.conn()
            .query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()
            .map_err(db)
    }

    fn meta_i64(&self, name: &str) -> Result<Option<i64>, ClientError> {
        match self.meta(name)? {
            None => Ok(None),
            Some(v) => Ok(Some(i64::from_be_bytes(v.as_slice().try_into().map_err(
                |_| ClientError::Store(format!("meta {name} is not a number")),
            )?))),
        }
    }

    fn set_meta(&self, name: &str, value: &[u8]) -> Result<(), ClientError> {
        self.conn()
            .execute(
                "INSERT OR REPLACE INTO meta (name, value) VALUES (?1, ?2)",
                params![name, value],
            )
            .map(|_| ())
            .map_err(db)
    }

    /// Every row, decoded: `None` if the store holds no client.
    fn load(&mut self) -> Result<Option<Loaded>, ClientError> {
        let mut rows: Vec<(Vec<u8>, Zeroizing<Vec<u8>>)> = Vec::new();
        {
            let conn = self.conn();
            let mut q = conn.prepare("SELECT id, value FROM rows").map_err(db)?;
            let mut it = q.query([]).map_err(db)?;
            while let Some(r) = it.next().map_err(db)? {
                let id: Vec<u8> = r.get(0).map_err(db)?;
                let value: Vec<u8> = r.get(1).map_err(db)?;
                rows.push(match &self.sealer {
                    Some(s) => {
                        let (k, v) = s.open_row(&id, &value)?;
                        (k, Zeroizing::new(v))
                    }
                    None => (id, Zeroizing::new(value)),
                });
            }
        }
        let mut core = None;
        let mut groups = BTreeMap::new();
        let mut key_packages = BTreeMap::new();
        let mut mls = HashMap::new();
        for (key, value) in rows {
            if key == CORE {
                core = Some(from_json::<ClientState>("state", &value)?);
            } else if let Some(g) = key.strip_prefix(GROUP) {
                groups.insert(hex::encode(g), from_json("group", &value)?);
            } else if let Some(r) = key.strip_prefix(KEY_PACKAGE) {
                let r = String::from_utf8(r.to_vec())
                    .map_err(|_| ClientError::State("stored KeyPackage reference".into()))?;
                key_packages.insert(r, from_json("KeyPackage", &value)?);
            } else if let Some(k) = key.strip_prefix(MLS) {
                mls.insert(k.to_vec(), value.to_vec());
                self.written_mls.insert(k.to_vec(), value);
                continue;
            } else {
                return Err(ClientError::State("a store row of unknown kind".into()));
            }
            self.written_state.insert(key, value);
        }
        let Some(mut state) = core else {
            if !groups.is_empty() || !mls.is_empty() {
                return Err(ClientError::State("the store has no core state row".into()));
            }
            return Ok(None);
        };
        state.groups = groups;
        state.key_packages = key_packages;
        Ok(Some(Loaded { state, mls }))
    }

    /// Moves a `client.json` directory into the database, then removes the file.
    fn migrate(&mut self, dir: &Path) -> Result<Loaded, ClientError> {
        let (mut state, mls) = legacy::load(dir)?;
        self.commit(&mut state, &mls, &[])?;
        files::remove_synced(&dir.join(legacy::FILE))?;
        tracing::info!(dir = %dir.display(), "migrated client.json into the client store");
        Ok(Loaded { state, mls })
    }

    /// The state's rows by logical key: core (without groups and KeyPackages), groups,
    /// KeyPackages.
    fn state_rows(state: &mut ClientState) -> Result<Vec<Row>, ClientError> {
        let groups = std::mem::take(&mut state.groups);
        let key_packages = std::mem::take(&mut state.key_packages);
        let core = json(state);
        state.groups = groups;
        state.key_packages = key_packages;
        let mut rows = Vec::with_capacity(1 + state.groups.len() + state.key_packages.len());
        rows.push((CORE.to_vec(), core?));
        for (id, meta) in &state.groups {
            let mut key = GROUP.to_vec();
            key.extend_from_slice(&crate::state::unhex(id)?);
            rows.push((key, json(meta)?));
        }
        for (r, kp) in &state.key_packages {
            let mut key = KEY_PACKAGE.to_vec();
            key.extend_from_slice(r.as_bytes());
            rows.push((key, json(kp)?));
        }
        Ok(rows)
    }

    /// Writes, in one transaction, the rows of `state` and `mls` that changed since the last
    /// commit, deletes those that are gone, and appends `events`. Nothing is written when nothing
    /// changed. Returns the events' sequence numbers.
    pub fn commit(
        &mut self,
        state: &mut ClientState,
        mls: &MlsStore,
        events: &[Event],
    ) -> Result<Vec<u64>, ClientError> {
        let rows = Self::state_rows(state)?;
        let changed_state: Vec<&Row> = rows
            .iter()
            .filter(|(k, v)| self.written_state.get(k) != Some(v))
            .collect();
        let gone_state: Vec<Vec<u8>> = if rows.len() == self.written_state.len()
            && rows.iter().all(|(k, _)| self.written_state.contains_key(k))
        {
            Vec::new()
        } else {
            let now: HashSet<&Vec<u8>> = rows.iter().map(|(k, _)| k).collect();
            self.written_state
                .keys()
                .filter(|k| !now.contains(k))
                .cloned()
                .collect()
        };
        let changed_mls: Vec<(&Vec<u8>, &Vec<u8>)> = mls
            .iter()
            .filter(|(k, v)| self.written_mls.get(*k).map(|w| w.as_slice()) != Some(v.as_slice()))
            .collect();
        let gone_mls: Vec<Vec<u8>> = if mls.len() == self.written_mls.len()
            && self.written_mls.keys().all(|k| mls.contains_key(k))
        {
            Vec::new()
        } else {
            self.written_mls
                .keys()
                .filter(|k| !mls.contains_key(*k))
                .cloned()
                .collect()
        };
        if changed_state.is_empty()
            && gone_state.is_empty()
            && changed_mls.is_empty()
            && gone_mls.is_empty()
            && events.is_empty()
        {
            return Ok(Vec::new());
        }

        let mut stats = self.stats;
        let mut conn = self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let tx = conn.transaction().map_err(db)?;
        let sealer = self.sealer.as_ref();
        let row_id = |key: &[u8]| -> Result<Vec<u8>, ClientError> {
            match sealer {
                Some(s) => s.row_id(key),
                None => Ok(key.to_vec()),
            }
        };
        {
            let mut put = tx
                .prepare_cached("INSERT OR REPLACE INTO rows (id, value) VALUES (?1, ?2)")
                .map_err(db)?;
            let mut del = tx
                .prepare_cached("DELETE FROM rows WHERE id = ?1")
                .map_err(db)?;
            let mut write = |key: &[u8], value: &[u8]| -> Result<(), ClientError> {
                let id = row_id(key)?;
                let stored = match sealer {
                    Some(s) => Zeroizing::new(s.seal_row(&id, key, value)?),
                    None => Zeroizing::new(value.to_vec()),
                };
                put.execute(params![id, &*stored]).map_err(db)?;
                stats.rows_written += 1;
                stats.bytes_written += (id.len() + stored.len()) as u64;
                Ok(())
            };
            for (k, v) in &changed_state {
                write(k, v)?;
            }
            for (k, v) in &changed_mls {
                let mut key = MLS.to_vec();
                key.extend_from_slice(k);
                write(&key, v)?;
            }
            let mut gone = |key: &[u8]| -> Result<(), ClientError> {
                del.execute([row_id(key)?]).map_err(db)?;
                stats.rows_deleted += 1;
                Ok(())
            };
            for k in &gone_state {
                gone(k)?;
            }
            for k in &gone_mls {
                let mut key = MLS.to_vec();
                key.extend_from_slice(k);
                gone(&key)?;
            }
        }
        let mut ids = Vec::with_capacity(events.len());
        if !events.is_empty() {
            let mut next = self.next_event;
            {
                let mut put = tx
                    .prepare_cached("INSERT INTO events (id, value) VALUES (?1, ?2)")
                    .map_err(db)?;
                for e in events {
                    let bytes = Zeroizing::new(events::encode(e)?);
                    let stored = match sealer {
                        Some(s) => Zeroizing::new(s.seal_event(next, &bytes)?),
                        None => bytes,
                    };
                    put.execute(params![next, &*stored]).map_err(db)?;
                    stats.rows_written += 1;
                    stats.bytes_written += 8 + stored.len() as u64;
                    ids.push(next as u64);
                    next += 1;
                }
            }
            tx.execute(
                "INSERT OR REPLACE INTO meta (name, value) VALUES ('next_event', ?1)",
                [&next.to_be_bytes()[..]],
            )
            .map_err(db)?;
            self.next_event = next;
        }
        tx.commit().map_err(db)?;
        stats.transactions += 1;
        self.stats = stats;

        // Only now, with the transaction durable, does the cache move on.
        for (k, v) in changed_state {
            self.written_state.insert(k.clone(), v.clone());
        }
        for k in gone_state {
            self.written_state.remove(&k);
        }
        for (k, v) in changed_mls {
            self.written_mls
                .insert(k.clone(), Zeroizing::new(v.clone()));
        }
        for k in gone_mls {
            self.written_mls.remove(&k);
        }
        Ok(ids)
    }

    /// The stored events not yet taken, oldest first, with their sequence numbers.
    pub fn events(&self) -> Result<Vec<(u64, Event)>, ClientError> {
        let conn = self.conn();
        let mut q = conn
            .prepare_cached("SELECT id, value FROM events ORDER BY id")
            .map_err(db)?;
        let mut it = q.query([]).map_err(db)?;
        let mut out = Vec::new();
        while let Some(r) = it.next().map_err(db)? {
            let id: i64 = r.get(0).map_err(db)?;
            let value: Vec<u8> = r.get(1).map_err(db)?;
            let bytes = match &self.sealer {
                Some(s) => Zeroizing::new(s.open_event(id, &value)?),
                None => Zeroizing::new(value),
            };
            out.push((id as u64, events::decode(&bytes)?));
        }
        Ok(out)
    }

    /// How many events wait.
    pub fn event_count(&self) -> Result<u64, ClientError> {
        let n: i64 = self
            .conn()
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .map_err(db)?;
        Ok(n as u64)
    }

    /// Deletes the events up to and including sequence number `through`: they were shown.
    pub fn events_shown(&mut self, through: u64) -> Result<(), ClientError> {
        let n = self
            .conn()
            .execute(
                "DELETE FROM events WHERE id <= ?1",
                [i64::try_from(through).unwrap_or(i64::MAX)],
            )
            .map_err(db)?;
        self.stats.rows_deleted += n as u64;
        self.stats.transactions += 1;
        Ok(())
    }

    /// What commits wrote since the store was opened.
    pub fn stats(&self) -> WriteStats {
        self.stats
    }
}

#[cfg(test)]
mod tests;
