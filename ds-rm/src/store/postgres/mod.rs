//! The PostgreSQL store: the same key-value interface over one table per record kind, shared
//! by any number of hub processes.
//!
//! The core is synchronous and runs on blocking threads; the database client is asynchronous.
//! The store owns a small runtime of its own, runs every query there and waits (at most
//! [`ANSWER`]) for the answer on the calling thread, so it never nests runtimes. Callers on an
//! async worker must move off it first (`spawn_blocking`, `block_in_place`): the wait blocks.
//!
//! Two connection pools: a request holds a *lock* connection (an open transaction with its row
//! locks, [`Coordinator::hold`]) from its first lock to its commit, and borrows a *data*
//! connection per read. A request takes its lock connection before any lock and one only, and
//! data connections are never held while waiting for anything, so the pools cannot starve
//! each other.
//!
//! Reads are `READ COMMITTED` statements made after the request's locks are held, so they see
//! every batch a previous holder committed. The request's batch is written **in its lock
//! transaction** and committed with it ([`crate::store::HeldLocks::commit`]): if the database ended that
//! transaction (a dropped connection, an administrator, a timeout), the batch fails instead of
//! landing after the locks were gone (`spec-notes/scaling.md`).

use super::shared::Coordinator;
use super::{Batch, Cf, CfEntry, Entry, Op, Store, StoreError};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

mod coordinator;

/// The schema's migrations, applied in order at start-up by refinery.
const MIGRATIONS: [(&str, &str); 2] = [
    (
        "V1__initial",
        include_str!("../../../migrations/V1__initial.sql"),
    ),
    (
        "V2__stored_once",
        include_str!("../../../migrations/V2__stored_once.sql"),
    ),
];

/// How long a request waits for a row lock or a pooled connection before it fails (a stuck
/// holder must not stall the whole hub).
const WAIT: Duration = Duration::from_secs(10);

/// The longest any call waits for the database's answer; lock and pool waits end earlier.
const ANSWER: Duration = Duration::from_secs(60);

/// How long past its expiry a replay digest is kept: the clock skew between hub processes
/// this tolerates.
const PRUNE_MARGIN_MS: u64 = 5 * 60 * 1000;

/// Replay digests are pruned after this many insertions (by the process that makes the
/// last one), so the table holds about one freshness window of requests.
const PRUNE_EVERY: u64 = 1024;

/// Failures of the PostgreSQL backend, kept behind [`StoreError::Backend`].
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The database answered with an error.
    #[error("postgres: {0}")]
    Db(#[from] tokio_postgres::Error),
    /// No pooled connection came in time, or the pool is misconfigured.
    #[error("postgres pool: {0}")]
    Pool(String),
    /// A migration failed.
    #[error("postgres migration: {0}")]
    Migration(String),
    /// The store's own runtime stopped answering (the store is being dropped).
    #[error("postgres store runtime stopped")]
    Stopped,
    /// No answer in time from the database (a stalled connection, a failover).
    #[error("postgres: no answer within {} s", ANSWER.as_secs())]
    NoAnswer,
    /// A lock transaction was asked for more after it committed or failed.
    #[error("postgres: the request's lock transaction has ended")]
    Finished,
    /// The lock table lacks rows the request needs (a schema not made by our migrations).
    #[error("lock table has {found} of {wanted} stripes of kind {kind}")]
    LockRows {
        /// The lock kind.
        kind: i16,
        /// Stripes asked for.
        wanted: usize,
        /// Stripes found.
        found: usize,
    },
}

impl From<PgError> for StoreError {
    fn from(e: PgError) -> Self {
        StoreError::backend(e)
    }
}

/// Whether `e` is a transient conflict worth one more try (deadlock, serialization failure).
fn retryable(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    )
}

struct Inner {
    /// Dropped with `shutdown_background`, so dropping the store inside async code is fine.
    rt: Option<tokio::runtime::Runtime>,
    data: Pool,
    locks: Pool,
    inserted: AtomicU64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// A store on a PostgreSQL database (see the module docs).
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

fn pool(config: &tokio_postgres::Config, size: usize) -> Result<Pool, PgError> {
    let manager = Manager::from_config(
        config.clone(),
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(WAIT))
        .create_timeout(Some(WAIT))
        .build()
        .map_err(|e| PgError::Pool(e.to_string()))
}

/// `SELECT`'s upper bound for keys starting with `prefix`: the next prefix of the same length
/// (`None` when every key from `prefix` on qualifies).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

impl PgStore {
    /// Connects to `url` (a `postgres://` URL or key-value string), applies any pending
    /// migration, and keeps up to `pool_size` connections for data and as many for locks.
    pub fn connect(url: &str, pool_size: usize) -> Result<Self, StoreError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(PgError::Db)?;
        // A hub host that vanishes (a partition, a hung machine) must not keep its row locks
        // until the operating system's default two-hour keepalive notices: the database
        // drops the connection, and the locks with it, within about half a minute.
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("postgres")
            .enable_all()
            .build()
            .map_err(StoreError::backend)?;
        let (data, locks) = {
            let _entered = rt.enter();
            (pool(&config, pool_size)?, pool(&config, pool_size)?)
        };
        let store = Self {
            inner: Arc::new(Inner {
                rt: Some(rt),
                data,
                locks,
                inserted: AtomicU64::new(0),
            }),
        };
        store.run(migrate(config))?;
        Ok(store)
    }

    /// Runs `f` on the store's runtime and waits for it on this thread.
    fn run<T: Send + 'static>(
        &self,
        f: impl Future<Output = Result<T, PgError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let rt = self.inner.rt.as_ref().ok_or(PgError::Stopped)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        rt.spawn(async move {
            let _ = tx.send(f.await);
        });
        Ok(rx.recv_timeout(ANSWER).map_err(|_| PgError::NoAnswer)??)
    }

    fn data(&self) -> Pool {
        self.inner.data.clone()
    }
}

/// Applies the pending migrations. Several processes may start at once: the migrations run
/// in one transaction, so a loser of that race rolls back and finds them applied on retry.
async fn migrate(config: tokio_postgres::Config) -> Result<(), PgError> {
    let migrations = MIGRATIONS
        .iter()
        .map(|(name, sql)| refinery_core::Migration::unapplied(name, sql))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PgError::Migration(e.to_string()))?;
    let runner = refinery_core::Runner::new(&migrations).set_grouped(true);
    let mut last = String::new();
    for attempt in 0..5u64 {
        let (mut client, connection) = config.connect(NoTls).await?;
        let driver = tokio::spawn(connection);
        let outcome = runner.run_async(&mut client).await;
        drop(client);
        let _ = driver.await;
        match outcome {
            Ok(report) => {
                for m in report.applied_migrations() {
                    tracing::info!(migration = %m, "postgres schema migrated");
                }
                return Ok(());
            }
            Err(e) => {
                last = e.to_string();
                tracing::warn!(attempt, error = %last, "postgres migration failed; retrying");
                tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
            }
        }
    }
    Err(PgError::Migration(last))
}

async fn get_one(pool: Pool, cf: Cf, key: Vec<u8>) -> Result<Option<Vec<u8>>, PgError> {
    let client = pool.get().await.map_err(|e| PgError::Pool(e.to_string()))?;
    let stmt = client
        .prepare_cached(&format!("SELECT v FROM {} WHERE k = $1", cf.name()))
        .await?;
    let row = client.query_opt(&stmt, &[&key]).await?;
    Ok(row.map(|r| r.get(0)))
}

async fn get_several(
    pool: Pool,
    cf: Cf,
    keys: Vec<Vec<u8>>,
) -> Result<Vec<Option<Vec<u8>>>, PgError> {
    let client = pool.get().await.map_err(|e| PgError::Pool(e.to_string()))?;
    let stmt = client
        .prepare_cached(&format!("SELECT k, v FROM {} WHERE k = ANY($1)", cf.name()))
        .await?;
    let found: std::collections::HashMap<Vec<u8>, Vec<u8>> = client
        .query(&stmt, &[&keys])
        .await?
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    // A key asked for twice gets its value twice.
    Ok(keys.iter().map(|k| found.get(k).cloned()).collect())
}

async fn scan(pool: Pool, cf: Cf, prefix: Vec<u8>, limit: usize) -> Result<Vec<Entry>, PgError> {
    let client = pool.get().await.map_err(|e| PgError::Pool(e.to_string()))?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let t = cf.name();
    let rows = match prefix_end(&prefix) {
        Some(end) => {
            let stmt = client
                .prepare_cached(&format!(
                    "SELECT k, v FROM {t} WHERE k >= $1 AND k < $2 ORDER BY k LIMIT $3"
                ))
                .await?;
            client.query(&stmt, &[&prefix, &end, &limit]).await?
        }
        None => {
            let stmt = client
                .prepare_cached(&format!(
                    "SELECT k, v FROM {t} WHERE k >= $1 ORDER BY k LIMIT $2"
                ))
                .await?;
            client.query(&stmt, &[&prefix, &limit]).await?
        }
    };
    Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// A batch reduced to its effect: the last write of each key, grouped by family (a batch may
/// write one key twice; applied in order, only the last write counts).
fn reduce(batch: Batch) -> Effect {
    let mut out: Effect = BTreeMap::new();
    for op in batch.ops {
        match op {
            Op::Put(cf, k, v) => out.entry(cf).or_default().insert(k, Some(v)),
            Op::Delete(cf, k) => out.entry(cf).or_default().insert(k, None),
        };
    }
    out
}

/// A batch reduced to the last write of each key, by family (see [`reduce`]).
type Effect = BTreeMap<Cf, BTreeMap<Vec<u8>, Option<Vec<u8>>>>;

async fn write_batch(pool: Pool, effect: Effect) -> Result<(), PgError> {
    let client = pool.get().await.map_err(|e| PgError::Pool(e.to_string()))?;
    let mut attempt = 0;
    loop {
        client.batch_execute("BEGIN").await?;
        let outcome = match apply(&client, &effect).await {
            Ok(()) => client.batch_execute("COMMIT").await.map_err(PgError::from),
            Err(e) => Err(e),
        };
        let Err(e) = outcome else {
            return Ok(());
        };
        if client.batch_execute("ROLLBACK").await.is_err() {
            // Not returned to the pool in an unknown state.
            drop(deadpool_postgres::Object::take(client));
            return Err(e);
        }
        match &e {
            PgError::Db(db) if retryable(db) && attempt < 3 => attempt += 1,
            _ => return Err(e),
        }
    }
}

/// Writes `effect` on `client`, inside a transaction the caller began and ends.
async fn apply(client: &deadpool_postgres::Object, effect: &Effect) -> Result<(), PgError> {
    // Statements are prepared first, then sent back to back (the client pipelines them) and
    // awaited together: one round trip for the batch's writes, not one per family. Each key
    // is written by exactly one statement, so their order does not matter; within a
    // statement keys are sorted, so two batches take row locks in the same order.
    let mut statements = Vec::new();
    for (cf, writes) in effect {
        let t = cf.name();
        let (mut keys, mut values, mut gone) = (Vec::new(), Vec::new(), Vec::new());
        for (k, v) in writes {
            match v {
                Some(v) => {
                    keys.push(k.as_slice());
                    values.push(v.as_slice());
                }
                None => gone.push(k.as_slice()),
            }
        }
        if !gone.is_empty() {
            let stmt = client
                .prepare_cached(&format!("DELETE FROM {t} WHERE k = ANY($1)"))
                .await?;
            statements.push((stmt, vec![gone]));
        }
        if !keys.is_empty() {
            let stmt = client
                .prepare_cached(&format!(
                    "INSERT INTO {t} (k, v) SELECT * FROM unnest($1::bytea[], $2::bytea[]) \
                     ON CONFLICT (k) DO UPDATE SET v = excluded.v"
                ))
                .await?;
            statements.push((stmt, vec![keys, values]));
        }
    }
    type Param<'a> = &'a (dyn tokio_postgres::types::ToSql + Sync);
    let params: Vec<Vec<Param<'_>>> = statements
        .iter()
        .map(|(_, columns)| columns.iter().map(|c| c as Param<'_>).collect())
        .collect();
    let sent = statements
        .iter()
        .zip(&params)
        .map(|((stmt, _), p)| client.execute(stmt, p.as_slice()));
    futures_util::future::try_join_all(sent).await?;
    Ok(())
}

impl Store for PgStore {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.run(get_one(self.data(), cf, key.to_vec()))
    }

    fn scan_prefix(&self, cf: Cf, prefix: &[u8], limit: usize) -> Result<Vec<Entry>, StoreError> {
        self.run(scan(self.data(), cf, prefix.to_vec(), limit))
    }

    fn get_many(&self, cf: Cf, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        self.run(get_several(self.data(), cf, keys.to_vec()))
    }

    fn write(&self, batch: Batch) -> Result<(), StoreError> {
        if batch.ops.is_empty() {
            return Ok(());
        }
        self.run(write_batch(self.data(), reduce(batch)))
    }

    fn dump(&self) -> Result<Vec<CfEntry>, StoreError> {
        let mut out = Vec::new();
        for cf in Cf::ALL {
            for (k, v) in self.scan_prefix(cf, b"", usize::MAX)? {
                out.push((cf, k, v));
            }
        }
        Ok(out)
    }

    fn coordinator(&self) -> Option<Arc<dyn Coordinator>> {
        Some(Arc::new(self.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_bounds() {
        assert_eq!(prefix_end(b""), None);
        assert_eq!(prefix_end(&[1, 2]), Some(vec![1, 3]));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
    }

    #[test]
    fn a_batch_reduces_to_the_last_write_of_each_key() {
        let batch = Batch {
            ops: vec![
                Op::Put(Cf::QsQueues, b"a".to_vec(), b"1".to_vec()),
                Op::Delete(Cf::QsQueues, b"a".to_vec()),
                Op::Put(Cf::QsQueues, b"b".to_vec(), b"2".to_vec()),
                Op::Delete(Cf::QsQueues, b"b".to_vec()),
                Op::Put(Cf::QsQueues, b"b".to_vec(), b"3".to_vec()),
            ],
        };
        let effect = reduce(batch);
        let q = &effect[&Cf::QsQueues];
        assert_eq!(q[&b"a".to_vec()], None);
        assert_eq!(q[&b"b".to_vec()], Some(b"3".to_vec()));
    }

    #[test]
    fn the_schema_has_a_table_for_every_family_and_every_lock_kind() {
        let all: String = MIGRATIONS.iter().map(|(_, sql)| *sql).collect();
        for cf in Cf::ALL {
            assert!(
                all.contains(&format!("CREATE TABLE {} (", cf.name())),
                "no table for {}",
                cf.name()
            );
        }
        let sql = MIGRATIONS[0].1;
        let kinds = super::super::shared::LockKind::ALL.len() - 1;
        assert!(sql.contains(&format!("generate_series(0, {kinds})")));
        assert!(sql.contains(&format!(
            "generate_series(0, {})",
            super::super::shared::STRIPES - 1
        )));
    }
}
