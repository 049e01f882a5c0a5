//! The token wallet's rows: one per unspent Privacy Pass token, in the client's database and,
//! with a passphrase, sealed like everything else there.
//!
//! The wallet used to rewrite a JSON file with every token it held whenever it spent one, so a
//! send cost time in proportion to the wallet's size (15 ms against 8 ms at 2,040 against 1,040
//! tokens) and the tokens sat outside the sealed store. Here spending deletes one row and a
//! refill inserts one batch, each in its own small transaction.

use super::{db, seal::Sealer};
use crate::error::ClientError;
use rusqlite::{Connection, OptionalExtension as _, params};
use std::sync::{Arc, Mutex, MutexGuard};

/// `meta` entry holding the rate classes the hub asked tokens for (JSON; not secret: the
/// operator's policy, the same for every client).
const LIMITED: &str = "token_limited";

/// The wallet's handle on the client database.
#[derive(Clone)]
pub struct TokenStore {
    conn: Arc<Mutex<Connection>>,
    sealer: Option<Arc<Sealer>>,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStore")
            .field("sealed", &self.sealer.is_some())
            .finish_non_exhaustive()
    }
}

/// What the wallet finds at start.
#[derive(Debug, Default)]
pub struct StoredTokens {
    /// (row number, token encoding), oldest first.
    pub tokens: Vec<(i64, Vec<u8>)>,
    /// The rate classes, as JSON, if ever stored.
    pub limited: Option<Vec<u8>>,
}

impl TokenStore {
    pub(super) fn new(conn: Arc<Mutex<Connection>>, sealer: Option<Arc<Sealer>>) -> Self {
        Self { conn, sealer }
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every stored token, oldest first, and the stored rate classes.
    pub fn load(&self) -> Result<StoredTokens, ClientError> {
        let conn = self.conn();
        let mut q = conn
            .prepare("SELECT id, value FROM tokens ORDER BY id")
            .map_err(db)?;
        let mut rows = q.query([]).map_err(db)?;
        let mut tokens = Vec::new();
        while let Some(r) = rows.next().map_err(db)? {
            let id: i64 = r.get(0).map_err(db)?;
            let value: Vec<u8> = r.get(1).map_err(db)?;
            tokens.push(match &self.sealer {
                Some(s) => (id, s.open_token(id, &value)?),
                None => (id, value),
            });
        }
        let limited = conn
            .query_row("SELECT value FROM meta WHERE name = ?1", [LIMITED], |r| {
                r.get(0)
            })
            .optional()
            .map_err(db)?;
        Ok(StoredTokens { tokens, limited })
    }

    /// Stores new tokens (row number, encoding) in one transaction.
    pub fn add(&self, tokens: &[(i64, Vec<u8>)]) -> Result<(), ClientError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db)?;
        {
            let mut put = tx
                .prepare_cached("INSERT OR REPLACE INTO tokens (id, value) VALUES (?1, ?2)")
                .map_err(db)?;
            for (id, token) in tokens {
                let stored = match &self.sealer {
                    Some(s) => s.seal_token(*id, token)?,
                    None => token.clone(),
                };
                put.execute(params![id, stored]).map_err(db)?;
            }
        }
        tx.commit().map_err(db)
    }

    /// Deletes spent or stale tokens by row number.
    pub fn remove(&self, ids: &[i64]) -> Result<(), ClientError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db)?;
        {
            let mut del = tx
                .prepare_cached("DELETE FROM tokens WHERE id = ?1")
                .map_err(db)?;
            for id in ids {
                del.execute([id]).map_err(db)?;
            }
        }
        tx.commit().map_err(db)
    }

    /// Stores the rate classes (JSON).
    pub fn set_limited(&self, json: &[u8]) -> Result<(), ClientError> {
        self.conn()
            .execute(
                "INSERT OR REPLACE INTO meta (name, value) VALUES (?1, ?2)",
                params![LIMITED, json],
            )
            .map(|_| ())
            .map_err(db)
    }
}
