//! The cross-process half of the PostgreSQL store: each request's lock transaction (a task
//! that holds a pooled connection in `BEGIN … COMMIT`, taking row locks on `hub_locks` and
//! finally writing and committing the request's batch), the shared replay digests and the
//! outbox sequence. See the parent module for why a batch commits in its lock transaction.

use super::{ANSWER, Effect, PRUNE_EVERY, PRUNE_MARGIN_MS, PgError, PgStore, WAIT, apply, reduce};
use crate::store::shared::{Coordinator, HeldLocks, LockKind};
use crate::store::{Batch, StoreError};
use deadpool_postgres::Pool;
use std::sync::atomic::Ordering;

impl Coordinator for PgStore {
    fn hold(&self) -> Result<Box<dyn HeldLocks>, StoreError> {
        let rt = self.inner.rt.as_ref().ok_or(PgError::Stopped)?;
        let (commands, inbox) = tokio::sync::mpsc::unbounded_channel::<Command>();
        rt.spawn(holder(self.inner.locks.clone(), inbox));
        Ok(Box::new(PgHeld { commands }))
    }

    fn first_seen(&self, digest: &[u8; 32], expires_ms: u64) -> Result<bool, StoreError> {
        let pool = self.data();
        let digest = digest.to_vec();
        let expires = i64::try_from(expires_ms).unwrap_or(i64::MAX);
        let prune = self
            .inner
            .inserted
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(PRUNE_EVERY);
        self.run(async move {
            let client = pool.get().await.map_err(|e| PgError::Pool(e.to_string()))?;
            if prune {
                // Kept a margin past their expiry: a process whose clock lags the pruner's
                // still finds a digest whose timestamp it would accept as fresh.
                let now = i64::try_from(crate::now_ms().saturating_sub(PRUNE_MARGIN_MS))
                    .unwrap_or(i64::MAX);
                let stmt = client
                    .prepare_cached("DELETE FROM replay_seen WHERE expires_ms < $1")
                    .await?;
                client.execute(&stmt, &[&now]).await?;
            }
            let stmt = client
                .prepare_cached(
                    "INSERT INTO replay_seen (digest, expires_ms) VALUES ($1, $2) \
                     ON CONFLICT (digest) DO NOTHING",
                )
                .await?;
            Ok(client.execute(&stmt, &[&digest, &expires]).await? == 1)
        })
    }

    fn next_outbox_seq(&self) -> Result<u64, StoreError> {
        let pool = self.data();
        self.run(async move {
            let client = pool.get().await.map_err(|e| PgError::Pool(e.to_string()))?;
            let stmt = client
                .prepare_cached("SELECT nextval('fed_outbox_seq')")
                .await?;
            let n: i64 = client.query_one(&stmt, &[]).await?.get(0);
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }
}

async fn take_rows(
    tx: &deadpool_postgres::Object,
    kind: LockKind,
    stripes: &[u32],
    skip_locked: bool,
) -> Result<bool, PgError> {
    let wait = if skip_locked { " SKIP LOCKED" } else { "" };
    let stmt = tx
        .prepare_cached(&format!(
            "SELECT stripe FROM hub_locks WHERE kind = $1 AND stripe = ANY($2) \
             ORDER BY stripe FOR UPDATE{wait}"
        ))
        .await?;
    let kind = kind as i16;
    let wanted: Vec<i32> = stripes.iter().map(|s| *s as i32).collect();
    let rows = tx.query(&stmt, &[&kind, &wanted]).await?;
    if rows.len() == wanted.len() {
        return Ok(true);
    }
    if skip_locked {
        return Ok(false);
    }
    Err(PgError::LockRows {
        kind,
        wanted: wanted.len(),
        found: rows.len(),
    })
}

/// What a request asks of its lock transaction.
enum Command {
    /// Lock `stripes` of `kind` (only if free, with `skip_locked`); answers whether it did.
    Take {
        kind: LockKind,
        stripes: Vec<u32>,
        skip_locked: bool,
        reply: std::sync::mpsc::SyncSender<Result<bool, PgError>>,
    },
    /// Write the batch in the lock transaction and commit it.
    Commit {
        effect: Effect,
        reply: std::sync::mpsc::SyncSender<Result<(), PgError>>,
    },
}

impl Command {
    fn refuse(self, e: PgError) {
        match self {
            Command::Take { reply, .. } => drop(reply.send(Err(e))),
            Command::Commit { reply, .. } => drop(reply.send(Err(e))),
        }
    }
}

/// The task behind one [`PgHeld`]: a pooled connection in a transaction that holds the
/// request's row locks until the request commits through it or drops it.
async fn holder(pool: Pool, mut inbox: tokio::sync::mpsc::UnboundedReceiver<Command>) {
    // The first command's answer carries any failure to connect or begin.
    let client = match pool.get().await {
        Ok(c) => c,
        Err(e) => {
            while let Some(cmd) = inbox.recv().await {
                cmd.refuse(PgError::Pool(e.to_string()));
            }
            return;
        }
    };
    // One round trip: the transaction and its lock wait limit.
    let begin = format!("BEGIN; SET LOCAL lock_timeout = '{}ms'", WAIT.as_millis());
    if let Err(e) = client.batch_execute(&begin).await {
        let text = e.to_string();
        drop(deadpool_postgres::Object::take(client));
        while let Some(cmd) = inbox.recv().await {
            cmd.refuse(PgError::Pool(text.clone()));
        }
        return;
    }
    while let Some(cmd) = inbox.recv().await {
        match cmd {
            Command::Take {
                kind,
                stripes,
                skip_locked,
                reply,
            } => drop(reply.send(take_rows(&client, kind, &stripes, skip_locked).await)),
            Command::Commit { effect, reply } => {
                // Any earlier failure (a lock wait that timed out, a terminated connection)
                // already failed the request; a statement here that fails aborts the whole
                // transaction, so nothing of the batch lands.
                let outcome = match apply(&client, &effect).await {
                    Ok(()) => client.batch_execute("COMMIT").await.map_err(PgError::from),
                    Err(e) => Err(e),
                };
                let committed = outcome.is_ok();
                drop(reply.send(outcome));
                if committed {
                    // The locks ended with the transaction; the connection goes back to the
                    // pool at once, while the request finishes.
                    drop(client);
                    while let Some(cmd) = inbox.recv().await {
                        cmd.refuse(PgError::Finished);
                    }
                    return;
                }
                break;
            }
        }
    }
    // Ended without a commit (a request that wrote nothing, or failed): roll back, which
    // releases the locks. A connection that cannot is not returned to the pool.
    if client.batch_execute("ROLLBACK").await.is_err() {
        drop(deadpool_postgres::Object::take(client));
    }
    while let Some(cmd) = inbox.recv().await {
        cmd.refuse(PgError::Finished);
    }
}

/// The request's side of a lock transaction: dropping it ends the transaction.
struct PgHeld {
    commands: tokio::sync::mpsc::UnboundedSender<Command>,
}

impl PgHeld {
    /// Sends a command and waits for its answer.
    fn ask<T>(
        &mut self,
        command: impl FnOnce(std::sync::mpsc::SyncSender<Result<T, PgError>>) -> Command,
    ) -> Result<T, StoreError> {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        self.commands
            .send(command(reply))
            .map_err(|_| PgError::Stopped)?;
        Ok(answer
            .recv_timeout(ANSWER)
            .map_err(|_| PgError::NoAnswer)??)
    }
}

impl HeldLocks for PgHeld {
    fn take(&mut self, kind: LockKind, stripes: &[u32]) -> Result<(), StoreError> {
        let stripes = stripes.to_vec();
        self.ask(|reply| Command::Take {
            kind,
            stripes,
            skip_locked: false,
            reply,
        })
        .map(|_| ())
    }

    fn try_take(&mut self, kind: LockKind, stripe: u32) -> Result<bool, StoreError> {
        self.ask(|reply| Command::Take {
            kind,
            stripes: vec![stripe],
            skip_locked: true,
            reply,
        })
    }

    fn commit(&mut self, batch: Batch) -> Result<(), StoreError> {
        let effect = reduce(batch);
        self.ask(|reply| Command::Commit { effect, reply })
    }
}
