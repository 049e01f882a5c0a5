//! The hub's request logic, independent of HTTP.
//!
//! [`Hub::handle`] takes an endpoint and a raw body and returns the encoded response. It decodes,
//! checks freshness, takes the per-group and per-queue (or, for the AS, per-handle) locks, runs
//! the DS, QS or AS core against one transaction, delivers the fan-out into local queues inside the same transaction, and commits
//! it durably before returning — so a 2xx always means "stored", and an error means "nothing
//! changed".

pub mod auth;
pub mod connections;
pub mod ds;
pub mod erasure;
pub mod error;
pub mod federation;
pub mod identity_limit;
pub mod ids;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod peering;
pub mod push;
pub mod qs;
pub mod queue_cache;
pub mod queue_signal;
pub mod replay;
pub mod request;
pub mod stored;
#[cfg(test)]
mod tests;
pub mod tokens;

pub use error::{
    FederationError, GroupError, HubError, IdentityError, QueueError, RequestError, TokenError,
};
pub use metrics::Metrics;
pub use peering::{OutboxBatch, ProxyTarget};
pub use request::{ClientRequest, Route};

use crate::store::{Cf, KeyLocks, Store, Txn};
use auth::AsKeys;
use mimi_rm_crypto::hpke_seal::HpkePublicKey;
use mimi_rm_crypto::sign::{SigningKey, VerifyingKey};
use mimi_rm_protocol::auth::{AsOperation, AsRequest};
use mimi_rm_protocol::ds::DsRequest;
use mimi_rm_protocol::federation::*;
use mimi_rm_protocol::qs::{QsOperation, QsRequest, QsSender};
use mimi_rm_protocol::queue::{QueueAddress, QueueMessage, QueueRef};
use mimi_rm_protocol::{DsMode, Envelope, TransactionType, decode_exact, encode};
use qs::QsKeys;
use replay::ReplayGuard;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Operator settings the core needs.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// The domain this hub serves.
    pub domain: String,
    /// Serve `/metrics` beyond loopback clients.
    pub metrics_public: bool,
    /// Length of an OHTTP gateway key epoch in seconds.
    pub ohttp_key_epoch_secs: u64,
    /// Largest accepted request body.
    pub max_body: usize,
    /// Accepted clock skew / request age, in milliseconds.
    pub freshness_window_ms: u64,
    /// Lifetime of client credentials the AS issues, in seconds; bounds how long a stolen
    /// device key stays usable without the user re-certifying.
    pub client_credential_lifetime_secs: u64,
    /// Most members a group may have.
    pub max_group_size: usize,
    /// How long a Welcome's tree waits for joiners that have not come yet, in milliseconds.
    pub welcome_tree_ttl_ms: u64,
    /// How long the HTTP shell waits for a request body.
    pub request_timeout_ms: u64,
    /// Most messages one dequeue returns.
    pub max_messages_per_fetch: u32,
    /// Most undelivered messages one queue holds.
    pub max_queue_length: u64,
    /// Which fanned-out messages are stored once rather than copied into every queue.
    pub store_once: stored::StoreOncePolicy,
    /// Privacy Pass: which requests need tokens, key epochs, allowance.
    pub tokens: tokens::TokenPolicy,
    /// Reduced-metadata hub, or the full-metadata baseline kept for comparison.
    pub mode: DsMode,
    /// Baseline mode only: DS requests per client identity and minute (0: unlimited).
    pub identity_requests_per_minute: u32,
    /// Registration needs a single-use invitation code.
    pub invite_only: bool,
    /// Sealed queue refs kept opened in memory (0 disables the cache).
    pub queue_ref_cache: usize,
    /// Inactivity after which the hub proposes a client's removal, in milliseconds.
    pub inactive_client_limit_ms: u64,
    /// Granularity of recorded client activity, in milliseconds.
    pub activity_period_ms: u64,
}

/// How long a signed revocation list is served again (see `Hub::handle_as`).
const REVOCATION_LIST_CACHE_SECS: u64 = 10;

/// One hub: DS + QS + AS over one store.
pub struct Hub {
    store: Arc<dyn Store>,
    locks: KeyLocks,
    replay: ReplayGuard,
    /// Set when other hub processes share the store (see `crate::store::shared`).
    shared: Option<Arc<dyn crate::store::Coordinator>>,
    qs_keys: QsKeys,
    as_keys: AsKeys,
    s2s_key: SigningKey,
    /// The DS's external-sender key: signs the removals the hub proposes.
    ds_sender: openmls_basic_credential::SignatureKeyPair,
    outbox_seq: AtomicU64,
    /// Woken whenever a request put items into the outbox, so delivery starts at once.
    pub outbox_signal: tokio::sync::Notify,
    /// Live listeners of queues (open WebSockets), signalled when their queue grows.
    pub queue_signal: Arc<queue_signal::QueueSignal>,
    /// Wake-ups owed to offline clients with a push subscription (see `crate::push`).
    pub push: push::PushQueue,
    vapid: p256::SecretKey,
    config: HubConfig,
    tokens: tokens::Tokens,
    queue_refs: queue_cache::QueueRefCache,
    identity_limit: identity_limit::IdentityLimiter,
    ids: Arc<dyn ids::IdSource>,
    /// Peer QS public keys (persisted in `fed_peer_keys`): outbox items are sealed to them.
    peer_keys: std::sync::RwLock<std::collections::HashMap<String, HpkePublicKey>>,
    /// Peers whose key a request needed but this hub does not have (fetched by the worker).
    wanted_peer_keys: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// The last signed revocation list answer and the second it was made: served again for
    /// [`REVOCATION_LIST_CACHE_SECS`] (until a revocation), so anonymous readers cannot make
    /// the AS scan and sign at their rate.
    revocation_list: std::sync::Mutex<Option<(u64, Vec<u8>)>>,
    /// Request counters.
    pub metrics: Metrics,
}

/// The peer QS keys stored in `fed_peer_keys`.
fn load_peer_keys(
    store: &dyn Store,
) -> Result<std::collections::HashMap<String, HpkePublicKey>, HubError> {
    let mut keys = std::collections::HashMap::new();
    for (domain, value) in store.scan_prefix(Cf::FedPeerKeys, b"", usize::MAX)? {
        let record: federation::PeerKeyRecord = crate::store::record::decode(&value)?;
        let key = HpkePublicKey::from_bytes(record.key.as_slice())
            .map_err(|e| HubError::corrupt("fed_peer_keys", e))?;
        keys.insert(String::from_utf8_lossy(&domain).into_owned(), key);
    }
    Ok(keys)
}

impl Hub {
    /// Opens the hub over `store`, creating the QS key and the AS keys on first start; fresh
    /// ids come from the operating system.
    pub fn new(store: Arc<dyn Store>, config: HubConfig, now_ms: u64) -> Result<Self, HubError> {
        Self::with_ids(store, config, now_ms, Arc::new(ids::OsIds))
    }

    /// [`Hub::new`] with fresh ids from `ids` (deterministic in tests).
    pub fn with_ids(
        store: Arc<dyn Store>,
        config: HubConfig,
        now_ms: u64,
        ids: Arc<dyn ids::IdSource>,
    ) -> Result<Self, HubError> {
        let queue_signal = Arc::new(queue_signal::QueueSignal::default());
        let store: Arc<dyn Store> =
            Arc::new(queue_signal::Signalling::new(store, queue_signal.clone()));
        let shared = store.coordinator();
        let upkeep = erasure::prepare(store.as_ref())?;
        if upkeep != erasure::Upkeep::default() {
            tracing::info!(
                migrated = upkeep.migrated,
                orphans_erased = upkeep.orphans_erased,
                "queue ratchets moved to the erasable slot file"
            );
        }
        let qs_keys = keys::qs_keys(store.as_ref())?;
        // Processes starting together on one database create the AS keys once: the first
        // under this lock, the others find them.
        let creating = crate::store::hold_global(shared.as_deref(), crate::store::LockKind::Keys)?;
        let as_keys = AsKeys::load_or_create(store.as_ref(), &config.domain, now_ms / 1000)?;
        drop(creating);
        let s2s_key = keys::signing_key(store.as_ref(), keys::S2S_SIGNING_KEY)?;
        let ds_key = keys::signing_key(store.as_ref(), keys::DS_SENDER_KEY)?;
        let vapid = keys::vapid_key(store.as_ref())?;
        let push = push::PushQueue::default();
        // Which clients have a subscription (their ids, keys of `qs_push`; the sealed values
        // stay on disk).
        for (client, _) in store.scan_prefix(Cf::QsPush, b"", usize::MAX)? {
            if let Ok(id) = <[u8; 16]>::try_from(client.as_slice()) {
                push.set_subscribed(id, true);
            }
        }
        let ds_sender = openmls_basic_credential::SignatureKeyPair::from_raw(
            openmls::prelude::SignatureScheme::ED25519,
            ds_key.to_bytes().to_vec(),
            ds_key.verifying_key().as_bytes().to_vec(),
        );
        // Outbox sequence numbers only grow, across restarts too, so a peer's items keep their
        // order: continue after the highest pending one, and never below the clock.
        let last = store
            .scan_prefix(Cf::FedOutbox, b"", usize::MAX)?
            .into_iter()
            .filter_map(|(k, _)| {
                let tail: [u8; 8] = k.get(k.len().saturating_sub(8)..)?.try_into().ok()?;
                Some(u64::from_be_bytes(tail))
            })
            .max()
            .unwrap_or(0);
        let outbox_seq = AtomicU64::new(last.saturating_add(1).max(now_ms.saturating_mul(1024)));
        let tokens = tokens::Tokens::open(
            store.as_ref(),
            &config.domain,
            config.tokens.clone(),
            now_ms,
        )?;
        Ok(Self {
            tokens,
            queue_refs: queue_cache::QueueRefCache::new(config.queue_ref_cache),
            identity_limit: identity_limit::IdentityLimiter::new(
                config.identity_requests_per_minute,
            ),
            peer_keys: std::sync::RwLock::new(load_peer_keys(store.as_ref())?),
            wanted_peer_keys: std::sync::Mutex::new(std::collections::BTreeSet::new()),
            store,
            ids,
            locks: KeyLocks::new(shared.clone()),
            replay: ReplayGuard::shared(
                config.freshness_window_ms,
                now_ms.saturating_sub(1),
                shared.clone(),
            ),
            shared,
            qs_keys,
            as_keys,
            s2s_key,
            ds_sender,
            outbox_seq,
            outbox_signal: tokio::sync::Notify::new(),
            queue_signal,
            push,
            vapid,
            config,
            revocation_list: std::sync::Mutex::new(None),
            metrics: Metrics::default(),
        })
    }

    /// The hub's configuration.
    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// Whether other hub processes share this hub's store (their enqueues then signal no
    /// listener here, see [`Hub::queue_head`]).
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// The key of the oldest message in `client`'s queue, if any: what a live socket polls
    /// when another process may have filled the queue.
    pub fn queue_head(&self, client: &qs::ClientId) -> Result<Option<Vec<u8>>, HubError> {
        Ok(self
            .store
            .scan_prefix(Cf::QsQueues, client, 1)?
            .into_iter()
            .next()
            .map(|(k, _)| k))
    }

    /// The store (for audit).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The Privacy Pass issuer and origin.
    pub fn tokens(&self) -> &tokens::Tokens {
        &self.tokens
    }

    /// Answers a token issuance request (see [`tokens::Tokens::issue`]).
    pub fn issue_tokens(
        &self,
        content_type: Option<&str>,
        auth_header: Option<&str>,
        body: &[u8],
        now_ms: u64,
    ) -> Result<tokens::issue::Issued, tokens::issue::Refused> {
        if body.len() > self.config.max_body {
            self.metrics.errors.fetch_add(1, Ordering::Relaxed);
            return Err(tokens::issue::Refused {
                error: HubError::Request(RequestError::TooLarge),
                unprocessable: false,
            });
        }
        let anchors = self.as_keys.credentials();
        let ctx = self.issue_context(&anchors, now_ms);
        let result = self.tokens.issue(&ctx, content_type, auth_header, body);
        match &result {
            Ok(issued) => {
                self.metrics.ok.fetch_add(1, Ordering::Relaxed);
                self.metrics
                    .tokens_issued
                    .fetch_add(u64::from(issued.count), Ordering::Relaxed);
            }
            Err(_) => {
                self.metrics.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    /// Answers a registration token request (see [`tokens::Tokens::issue_registration`]).
    /// Invitation codes are used under the same lock as `RegisterInvited`, so one code buys one
    /// token even when presented twice at once.
    pub fn issue_registration_token(
        &self,
        payment: tokens::issue::RegistrationPayment<'_>,
        content_type: Option<&str>,
        body: &[u8],
        now_ms: u64,
    ) -> Result<tokens::issue::Issued, tokens::issue::Refused> {
        let anchors = self.as_keys.credentials();
        let ctx = self.issue_context(&anchors, now_ms);
        let refused = |error: HubError| tokens::issue::Refused {
            error,
            unprocessable: false,
        };
        // Keys first (a no-op unless an epoch began): a rotation needs the key lock, which must
        // not be waited for while holding the invitation lock.
        self.tokens
            .rotate(self.store.as_ref(), now_ms)
            .map_err(refused)?;
        let mut invite_lock = crate::store::LockSet::default();
        if matches!(payment, tokens::issue::RegistrationPayment::Invite(_)) {
            self.locks
                .add_invites(&mut invite_lock)
                .map_err(|e| refused(e.into()))?;
        }
        let result = self.tokens.issue_registration(
            &ctx,
            payment,
            self.config.invite_only,
            content_type,
            body,
        );
        if result.is_ok() {
            self.metrics.ok.fetch_add(1, Ordering::Relaxed);
            self.metrics
                .registration_tokens_issued
                .fetch_add(1, Ordering::Relaxed);
        } else {
            self.metrics.errors.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// What issuing needs from the hub: its store, its AS anchors, its replay guard.
    fn issue_context<'a>(
        &'a self,
        anchors: &'a mimi_rm_protocol::credentials::AsCredentials,
        now_ms: u64,
    ) -> tokens::issue::IssueContext<'a> {
        tokens::issue::IssueContext {
            store: self.store.as_ref(),
            anchors,
            replay: &self.replay,
            now_ms,
        }
    }

    /// Decodes a client's request body posted to `endpoint` (once: everything later uses the
    /// decoded value). A body that does not decode counts as a failed request.
    pub fn decode_request(
        &self,
        endpoint: TransactionType,
        body: &[u8],
    ) -> Result<ClientRequest, HubError> {
        let decoded = ClientRequest::decode(endpoint, body, self.config.max_body);
        if decoded.is_err() {
            self.metrics.errors.fetch_add(1, Ordering::Relaxed);
        }
        decoded
    }

    /// Decodes and handles one request body posted to `endpoint`, admitted as `admission`
    /// (a client's verified token, or a federation peer).
    pub fn handle(
        &self,
        endpoint: TransactionType,
        body: &[u8],
        now_ms: u64,
        admission: &tokens::Admission,
    ) -> Result<Vec<u8>, HubError> {
        let request = self.decode_request(endpoint, body)?;
        self.handle_request(request, now_ms, admission)
    }

    /// Handles one decoded request: Privacy Pass admission, freshness, then the service.
    pub fn handle_request(
        &self,
        request: ClientRequest,
        now_ms: u64,
        admission: &tokens::Admission,
    ) -> Result<Vec<u8>, HubError> {
        let result = self.handle_inner(request, now_ms, admission);
        match &result {
            Ok(_) => self.metrics.ok.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.metrics.errors.fetch_add(1, Ordering::Relaxed),
        };
        result
    }

    fn handle_inner(
        &self,
        request: ClientRequest,
        now_ms: u64,
        admission: &tokens::Admission,
    ) -> Result<Vec<u8>, HubError> {
        let spend = self.tokens.admit(request.rate_class(), admission)?;
        // Once admitted, every refusal costs the token — a stale request too, or a client could
        // re-present one token forever by sending requests that are refused before the service.
        let result = self
            .replay
            .check_fresh(request.timestamp_ms(), now_ms)
            .and_then(|()| match request {
                ClientRequest::Qs(req) => self.handle_qs(&req, now_ms, spend.as_ref()),
                ClientRequest::As(req) => self.handle_as(&req, now_ms, spend.as_ref()),
                ClientRequest::Ds { request, .. } => {
                    self.handle_ds(request, now_ms, spend.as_ref())
                }
            });
        self.account_token(&result, spend.as_ref());
        result
    }

    /// Counts a spent token. A request refused after its token was admitted still costs the
    /// token, written here on its own (see [`HubError::spends_token`]); a server fault does not.
    fn account_token<T>(
        &self,
        result: &Result<T, HubError>,
        spend: Option<&tokens::VerifiedToken>,
    ) {
        let Some(token) = spend else {
            return;
        };
        let spent = match result {
            Ok(_) => true,
            Err(e) if e.spends_token() => match tokens::Tokens::burn(self.store.as_ref(), token) {
                Ok(()) => true,
                Err(burn) => {
                    tracing::error!(error = %burn, "could not record a spent token");
                    false
                }
            },
            Err(_) => false,
        };
        if spent {
            self.metrics.tokens_spent.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// For a request this hub passes on to another provider (forwarded DS request or proxied
    /// lookup): the token is spent here, by the provider that issued it, in its own batch.
    pub fn admit_forward(
        &self,
        request: &ClientRequest,
        admission: &tokens::Admission,
    ) -> Result<(), HubError> {
        let Some(token) = self.tokens.admit(request.rate_class(), admission)? else {
            return Ok(());
        };
        let mut lock = self.locks.lock_token(Some(&token.nonce))?;
        let mut txn = Txn::new(self.store.as_ref());
        tokens::Tokens::spend(&mut txn, &token)?;
        txn.commit_under(&mut lock)?;
        self.metrics.tokens_spent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn handle_ds(
        &self,
        req: DsRequest,
        now_ms: u64,
        spend: Option<&tokens::VerifiedToken>,
    ) -> Result<Vec<u8>, HubError> {
        let op = req.tbs.operation.name();
        let mut locks = self.locks.lock_token(spend.map(|t| &t.nonce))?;
        self.locks
            .add_group(&mut locks, req.tbs.group_id.as_slice())?;
        let mut txn = Txn::new(self.store.as_ref());
        if let Some(token) = spend {
            tokens::Tokens::spend(&mut txn, token)?;
        }
        let ctx = self.ds_context(now_ms);
        let group_id = req.tbs.group_id.as_slice().to_vec();
        let outcome = ds::process(&ctx, &mut txn, req)?;
        let (delivered, outboxed) =
            self.fan_out(&mut txn, &mut locks, &group_id, &outcome.fanout, now_ms, op)?;
        txn.commit_under(&mut locks)?;
        self.metrics
            .enqueued
            .fetch_add(delivered, Ordering::Relaxed);
        self.metrics.outboxed.fetch_add(outboxed, Ordering::Relaxed);
        if outboxed > 0 {
            self.outbox_signal.notify_one();
        }
        tracing::debug!(op, delivered, outboxed, "group operation committed");
        drop(locks);
        encode(&outcome.response).map_err(HubError::bug)
    }

    /// What the DS core needs of this hub's configuration for one request at `now_ms`.
    fn ds_context(&self, now_ms: u64) -> ds::DsContext<'_> {
        ds::DsContext {
            domain: &self.config.domain,
            now_ms,
            replay: &self.replay,
            max_group_size: self.config.max_group_size,
            ids: self.ids.as_ref(),
            welcome_tree_ttl_ms: self.config.welcome_tree_ttl_ms,
            mode: self.config.mode,
            identity_limit: (self.config.mode == DsMode::Baseline).then_some(&self.identity_limit),
            removal: ds::removals::RemovalPolicy {
                signer: &self.ds_sender,
                inactivity_limit_ms: self.config.inactive_client_limit_ms,
                activity_period_ms: self.config.activity_period_ms,
            },
        }
    }

    /// Puts a group operation's fan-out into the same batch: remote members' items into the
    /// durable outbox, local ones into their queues (resolved from sealed addresses and locked
    /// after the group lock). Returns (enqueued locally, outboxed).
    fn fan_out<'h>(
        &'h self,
        txn: &mut Txn<'_>,
        locks: &mut crate::store::LockSet<'h>,
        group_id: &[u8],
        fanout: &[ds::Fanout],
        now_ms: u64,
        op: &str,
    ) -> Result<(u64, u64), HubError> {
        let mut targets = Vec::with_capacity(fanout.len());
        let mut outboxed = 0u64;
        for item in fanout {
            if item.queue_ref.domain.as_slice() != self.config.domain.as_bytes() {
                self.queue_for_peer(txn, &item.queue_ref, &item.message, now_ms)?;
                outboxed += 1;
                continue;
            }
            match self.resolve_queue(&item.queue_ref) {
                Ok(client) => targets.push((client, item)),
                Err(e) => {
                    tracing::warn!(op, error = %e, "fan-out item not deliverable locally");
                    self.metrics.undeliverable.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let clients: Vec<qs::ClientId> = targets.iter().map(|(c, _)| *c).collect();
        self.locks.lock_queues(locks, &clients)?;
        let keys: Vec<Vec<u8>> = clients.iter().map(|c| c.to_vec()).collect();
        txn.prefetch(Cf::QsClients, &keys)?;
        txn.prefetch(Cf::QsRatchets, &keys)?;
        if self.shared.is_some() {
            // Another process may have stored (or dropped) a recipient's push subscription:
            // the stored row, not this process's memory, says whether it is pushed.
            txn.prefetch(Cf::QsPush, &keys)?;
            for (client, key) in clients.iter().zip(&keys) {
                let subscribed = txn.get(Cf::QsPush, key)?.is_some();
                self.push.set_subscribed(*client, subscribed);
            }
        }
        let mut delivered = 0u64;
        let (outcomes, stored_once) = stored::enqueue_local(
            txn,
            &targets,
            self.config.store_once,
            self.config.max_queue_length,
            now_ms,
        )?;
        self.metrics
            .stored_once
            .fetch_add(stored_once, Ordering::Relaxed);
        for ((client, item), outcome) in targets.into_iter().zip(outcomes) {
            match outcome {
                qs::Enqueued::Delivered => {
                    delivered += 1;
                    // Owed before the batch is durable, but the client's fetch waits for this
                    // queue's lock, so it finds the message; a batch that then fails costs the
                    // client one empty fetch.
                    self.push_if_offline(&client, &item.queue_ref, now_ms);
                }
                qs::Enqueued::QueueFull => {
                    self.metrics.undeliverable.fetch_add(1, Ordering::Relaxed);
                }
                qs::Enqueued::NoQueue => {
                    // The member deleted its queue: leave the group a tombstone so the hub
                    // proposes its removal at the group's next request.
                    self.metrics.undeliverable.fetch_add(1, Ordering::Relaxed);
                    ds::tombstone_missing_queue(txn, self.ids.as_ref(), group_id, &item.queue_ref)?;
                }
            }
        }
        Ok((delivered, outboxed))
    }

    fn handle_qs(
        &self,
        req: &QsRequest,
        now_ms: u64,
        spend: Option<&tokens::VerifiedToken>,
    ) -> Result<Vec<u8>, HubError> {
        let mut locks = self.locks.lock_token(spend.map(|t| &t.nonce))?;
        let probe = Txn::new(self.store.as_ref());
        let clients = qs::clients_touched(&probe, req)?;
        drop(probe);
        self.locks.lock_queues(&mut locks, &clients)?;
        let mut txn = Txn::new(self.store.as_ref());
        if let Some(token) = spend {
            tokens::Tokens::spend(&mut txn, token)?;
        }
        let limits = qs::QsLimits {
            max_fetch: self.config.max_messages_per_fetch,
            max_queue: self.config.max_queue_length,
        };
        let resp = qs::process(
            &mut txn,
            self.ids.as_ref(),
            &self.qs_keys,
            &self.replay,
            now_ms,
            req,
            limits,
        )?;
        txn.commit_under(&mut locks)?;
        if let QsSender::Client(client) = &req.tbs.sender {
            match &req.tbs.operation {
                // The client is fetching (or has a new subscription): the next message that
                // finds it offline may push again. Cleared under the queue lock, so a message
                // enqueued after this fetch cannot find the old mark and go unannounced.
                QsOperation::Dequeue(_) => self.push.fetched(client),
                QsOperation::SetPushToken(sealed) => {
                    self.push
                        .set_subscribed(*client, !sealed.as_slice().is_empty());
                    self.push.fetched(client);
                }
                QsOperation::DeleteClient => self.push.set_subscribed(*client, false),
                _ => {}
            }
        }
        drop(locks);
        encode(&resp).map_err(|e| HubError::Bug(e.to_string()))
    }

    fn handle_as(
        &self,
        req: &AsRequest,
        now_ms: u64,
        spend: Option<&tokens::VerifiedToken>,
    ) -> Result<Vec<u8>, HubError> {
        let list_read = matches!(req.tbs.operation, AsOperation::RevocationList);
        if list_read
            && let Some((at, answer)) = &*self
                .revocation_list
                .lock()
                .unwrap_or_else(|p| p.into_inner())
            && now_ms / 1000 < at.saturating_add(REVOCATION_LIST_CACHE_SECS)
        {
            return Ok(answer.clone());
        }
        let mut locks = self.locks.lock_token(spend.map(|t| &t.nonce))?;
        // Invited registrations one at a time: one code, one user, even when two registrations
        // for different handles present it at once.
        if matches!(req.tbs.operation, AsOperation::RegisterInvited(_)) {
            self.locks.add_invites(&mut locks)?;
        }
        if let Some(handle) = auth::handle_written(req) {
            self.locks.add_handle(&mut locks, handle)?;
        }
        let mut txn = Txn::new(self.store.as_ref());
        if let Some(token) = spend {
            tokens::Tokens::spend(&mut txn, token)?;
        }
        let ctx = auth::AsContext {
            keys: &self.as_keys,
            replay: &self.replay,
            now_ms,
            client_lifetime_secs: self.config.client_credential_lifetime_secs,
            ids: self.ids.as_ref(),
            invite_only: self.config.invite_only,
            domain: &self.config.domain,
            paid_registration: spend.is_some_and(|t| t.purpose == tokens::Purpose::Registration),
        };
        let resp = auth::process(&ctx, &mut txn, req)?;
        txn.commit_under(&mut locks)?;
        drop(locks);
        let answer = encode(&resp).map_err(|e| HubError::Bug(e.to_string()))?;
        let mut cached = self
            .revocation_list
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if list_read {
            *cached = Some((now_ms / 1000, answer.clone()));
        } else if matches!(req.tbs.operation, AsOperation::RevokeClient(_)) {
            // The next reader gets a list with this revocation.
            *cached = None;
        }
        Ok(answer)
    }

    /// The local queue a fan-out address names. RM hubs take only sealed addresses (opened once,
    /// then served from the in-memory cache); baseline hubs take only plain ones.
    fn resolve_queue(&self, qr: &QueueRef) -> Result<qs::ClientId, HubError> {
        if qr.domain.as_slice() != self.config.domain.as_bytes() {
            return Err(HubError::Request(RequestError::Invalid(
                "queue ref for another domain",
            )));
        }
        qs::check_address_mode(&qr.address, self.config.mode)?;
        match &qr.address {
            QueueAddress::Sealed(sealed) => {
                let key = queue_cache::sealed_key(sealed);
                let mut opened = false;
                // Only the client id is cached: a push key is taken from the ref again when a
                // push is owed, so keys do not sit in the cache.
                let id = self.queue_refs.get_or_open(&key, || {
                    opened = true;
                    qs::open_sealed_queue_ref(&self.qs_keys, &self.config.domain, sealed)
                        .map(|r| r.client)
                })?;
                let counter = if opened {
                    &self.metrics.queue_refs_opened
                } else {
                    &self.metrics.queue_refs_cached
                };
                counter.fetch_add(1, Ordering::Relaxed);
                Ok(id)
            }
            QueueAddress::Plain(plain) => Ok(plain.client_id),
        }
    }
}
