//! The hub's request logic, independent of HTTP.
//!
//! [`Hub::handle`] takes an endpoint and a raw body and returns the encoded response. It decodes,
//! checks freshness, takes the per-group and per-queue (or, for the AS, per-handle) locks, runs
//! the DS, QS or AS core against one transaction, delivers the fan-out into local queues inside the same transaction, and commits
//! it durably before returning — so a 2xx always means "stored", and an error means "nothing
//! changed".

pub mod auth;
pub mod ds;
mod error;
pub mod qs;
pub mod replay;

pub use error::HubError;

use crate::store::{Cf, KeyLocks, Store, Txn};
use auth::AsKeys;
use mimi_rm_crypto::hpke_seal::{HpkeKeyPair, HpkePrivateKey, HpkePublicKey};
use mimi_rm_protocol::auth::AsRequest;
use mimi_rm_protocol::ds::{DsOperation, DsRequest};
use mimi_rm_protocol::qs::QsRequest;
use mimi_rm_protocol::{Envelope, PROTOCOL_VERSION, TransactionType, decode_exact, encode};
use qs::QsKeys;
use replay::ReplayGuard;
use std::sync::Arc;

/// Operator settings the core needs.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// The domain this hub serves.
    pub domain: String,
    /// Largest accepted request body.
    pub max_body: usize,
    /// Accepted clock skew / request age, in milliseconds.
    pub freshness_window_ms: u64,
    /// Lifetime of client credentials the AS issues, in seconds; bounds how long a stolen
    /// device key stays usable without the user re-certifying.
    pub client_credential_lifetime_secs: u64,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Requests answered with 2xx.
    pub ok: std::sync::atomic::AtomicU64,
    /// Requests answered with an error.
    pub errors: std::sync::atomic::AtomicU64,
    /// Messages enqueued.
    pub enqueued: std::sync::atomic::AtomicU64,
    /// Fan-out items that could not be delivered (unknown or foreign queue).
    pub undeliverable: std::sync::atomic::AtomicU64,
}

/// One hub: DS + QS + AS over one store.
pub struct Hub {
    store: Arc<dyn Store>,
    locks: KeyLocks,
    replay: ReplayGuard,
    qs_keys: QsKeys,
    as_keys: AsKeys,
    config: HubConfig,
    /// Request counters.
    pub metrics: Metrics,
}

const QS_HPKE_KEY: &[u8] = b"qs_hpke_v1";

impl Hub {
    /// Opens the hub over `store`, creating the QS key and the AS keys on first start.
    pub fn new(store: Arc<dyn Store>, config: HubConfig, now_ms: u64) -> Result<Self, HubError> {
        let qs_keys = match store.get(Cf::ServerKeys, QS_HPKE_KEY)? {
            Some(bytes) if bytes.len() == 64 => QsKeys {
                hpke: HpkeKeyPair {
                    private: HpkePrivateKey::from_bytes(&bytes[..32])
                        .map_err(|e| HubError::Internal(e.to_string()))?,
                    public: HpkePublicKey::from_bytes(&bytes[32..])
                        .map_err(|e| HubError::Internal(e.to_string()))?,
                },
            },
            Some(_) => return Err(HubError::Internal("corrupt QS key".into())),
            None => {
                let kp = HpkeKeyPair::generate();
                let mut bytes = kp.private.as_bytes().to_vec();
                bytes.extend_from_slice(kp.public.as_bytes());
                let mut txn = Txn::new(store.as_ref());
                txn.put(Cf::ServerKeys, QS_HPKE_KEY.to_vec(), bytes);
                txn.commit()?;
                QsKeys { hpke: kp }
            }
        };
        let as_keys = AsKeys::load_or_create(store.as_ref(), &config.domain, now_ms / 1000)?;
        Ok(Self {
            store,
            locks: KeyLocks::default(),
            replay: ReplayGuard::new(config.freshness_window_ms, now_ms.saturating_sub(1)),
            qs_keys,
            as_keys,
            config,
            metrics: Metrics::default(),
        })
    }

    /// The hub's configuration.
    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// The store (for audit).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Handles one request body posted to the endpoint of `endpoint`.
    pub fn handle(
        &self,
        endpoint: TransactionType,
        body: &[u8],
        now_ms: u64,
    ) -> Result<Vec<u8>, HubError> {
        use std::sync::atomic::Ordering::Relaxed;
        let result = self.handle_inner(endpoint, body, now_ms);
        match &result {
            Ok(_) => self.metrics.ok.fetch_add(1, Relaxed),
            Err(_) => self.metrics.errors.fetch_add(1, Relaxed),
        };
        result
    }

    fn handle_inner(
        &self,
        endpoint: TransactionType,
        body: &[u8],
        now_ms: u64,
    ) -> Result<Vec<u8>, HubError> {
        if body.len() > self.config.max_body {
            return Err(HubError::TooLarge);
        }
        let env: Envelope = decode_exact(body, self.config.max_body)
            .map_err(|e| HubError::malformed("envelope", e))?;
        if env.version != PROTOCOL_VERSION {
            return Err(HubError::UnsupportedVersion(env.version));
        }
        if env.transaction_type != endpoint {
            return Err(HubError::WrongEndpoint);
        }
        let payload = env.payload.as_slice();
        match endpoint {
            TransactionType::QueueService => {
                let req: QsRequest = decode_exact(payload, self.config.max_body)
                    .map_err(|e| HubError::malformed("QS request", e))?;
                self.replay.check_fresh(req.tbs.timestamp_ms, now_ms)?;
                self.handle_qs(&req, now_ms)
            }
            TransactionType::AuthService => {
                let req: AsRequest = decode_exact(payload, self.config.max_body)
                    .map_err(|e| HubError::malformed("AS request", e))?;
                self.replay.check_fresh(req.tbs.timestamp_ms, now_ms)?;
                self.handle_as(&req, now_ms)
            }
            _ => {
                let req: DsRequest = decode_exact(payload, self.config.max_body)
                    .map_err(|e| HubError::malformed("DS request", e))?;
                let expected = match req.tbs.operation {
                    DsOperation::WelcomeInfo(_) => TransactionType::WelcomeInformation,
                    DsOperation::ExternalCommitInfo => TransactionType::ExternalCommitInformation,
                    _ => TransactionType::GroupOperation,
                };
                if expected != endpoint {
                    return Err(HubError::WrongEndpoint);
                }
                self.replay.check_fresh(req.tbs.timestamp_ms, now_ms)?;
                self.handle_ds(req, now_ms)
            }
        }
    }

    fn handle_ds(&self, req: DsRequest, now_ms: u64) -> Result<Vec<u8>, HubError> {
        let op = req.tbs.operation.name();
        let mut locks = self.locks.lock_group(req.tbs.group_id.as_slice());
        let mut txn = Txn::new(self.store.as_ref());
        let ctx = ds::DsContext {
            domain: &self.config.domain,
            now_ms,
            replay: &self.replay,
        };
        let outcome = ds::process(&ctx, &mut txn, req)?;
        // Resolve sealed addresses, lock the queues (after the group lock), then enqueue.
        let mut targets = Vec::with_capacity(outcome.fanout.len());
        for item in &outcome.fanout {
            match qs::open_queue_ref(&self.qs_keys, &self.config.domain, &item.queue_ref) {
                Ok(client) => targets.push((client, &item.message)),
                Err(e) => {
                    // Federation delivers foreign queues (separate issue); here they are counted.
                    tracing::warn!(op, error = %e, "fan-out item not deliverable locally");
                    self.metrics
                        .undeliverable
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        let clients: Vec<qs::ClientId> = targets.iter().map(|(c, _)| *c).collect();
        self.locks.lock_queues(&mut locks, &clients);
        let mut delivered = 0u64;
        for (client, message) in targets {
            if qs::enqueue(&mut txn, &client, message)? {
                delivered += 1;
            } else {
                self.metrics
                    .undeliverable
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        txn.commit()?;
        self.metrics
            .enqueued
            .fetch_add(delivered, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(op, delivered, "group operation committed");
        drop(locks);
        encode(&outcome.response).map_err(|e| HubError::Internal(e.to_string()))
    }

    fn handle_qs(&self, req: &QsRequest, now_ms: u64) -> Result<Vec<u8>, HubError> {
        let mut locks = crate::store::LockSet::default();
        let probe = Txn::new(self.store.as_ref());
        let clients = qs::clients_touched(&probe, req)?;
        drop(probe);
        self.locks.lock_queues(&mut locks, &clients);
        let mut txn = Txn::new(self.store.as_ref());
        let resp = qs::process(&mut txn, &self.qs_keys, &self.replay, now_ms, req)?;
        txn.commit()?;
        drop(locks);
        encode(&resp).map_err(|e| HubError::Internal(e.to_string()))
    }

    fn handle_as(&self, req: &AsRequest, now_ms: u64) -> Result<Vec<u8>, HubError> {
        let locks = auth::handle_written(req).map(|h| self.locks.lock_handle(h));
        let mut txn = Txn::new(self.store.as_ref());
        let ctx = auth::AsContext {
            keys: &self.as_keys,
            replay: &self.replay,
            now_ms,
            client_lifetime_secs: self.config.client_credential_lifetime_secs,
        };
        let resp = auth::process(&ctx, &mut txn, req)?;
        txn.commit()?;
        drop(locks);
        encode(&resp).map_err(|e| HubError::Internal(e.to_string()))
    }
}
