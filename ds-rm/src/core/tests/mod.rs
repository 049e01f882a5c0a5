//! In-process tests of the DS, QS and AS cores over the in-memory store.
//!
//! Every request goes through [`Hub::handle`] (decode once, then [`Hub::handle_request`], the
//! path the HTTP shell takes for requests it does not forward): an encoded envelope posted to
//! an endpoint, with the Privacy Pass gate switched off and a fixed clock. Forwarding between
//! hubs is covered end to end by the `federation` suite.
//! Accepted requests are checked for their response and for what they stored; refused ones for
//! their stable [`ErrorCode`] and for leaving the store byte-for-byte unchanged.

mod auth;
mod ds;
mod ds_refusals;
mod mls;
mod qs;

use crate::config::Config;
use crate::core::qs::{ClientId, ClientRecord, UserRecord};
use crate::core::{Hub, HubConfig, HubError, tokens};
use crate::store::{Cf, CfEntry, MemStore, Record, Store, Txn};
use mimi_rm_crypto::ratchet::{QueueRatchet, RatchetSecret};
use mimi_rm_crypto::sign::SigningKey;
use mimi_rm_protocol::auth::{
    AS_REQUEST_SIGNATURE_LABEL, AsOperation, AsRequest, AsRequestTbs, AsResponse, AsSender,
};
use mimi_rm_protocol::credentials::ClientIdentity;
use mimi_rm_protocol::ds::{DsOperation, DsRequest, DsResponse};
use mimi_rm_protocol::qs::{
    CreateUser, Dequeue, QS_REQUEST_SIGNATURE_LABEL, QsOperation, QsRequest, QsRequestTbs,
    QsResponse, QsSender, StoredTicket,
};
use mimi_rm_protocol::queue::QueueMessage;
use mimi_rm_protocol::{
    Envelope, ErrorCode, PROTOCOL_VERSION, TransactionType, decode_exact, encode,
};
use std::collections::BTreeSet;
use std::sync::Arc;

/// The hub's clock in every test (2027-01-15), so nothing depends on when the tests run.
pub(super) const NOW: u64 = 1_800_000_000_000;
/// The domain of the hub under test.
pub(super) const DOMAIN: &str = "hub.test";
/// The freshness window of the hub under test.
pub(super) const WINDOW_MS: u64 = 60_000;

/// A request the hub takes: the endpoint it is posted to and the response it answers with.
pub(super) trait Request: tls_codec::Serialize {
    /// The success response.
    type Response: tls_codec::Deserialize;
    /// Where the request is posted.
    fn endpoint(&self) -> TransactionType;
}

impl Request for QsRequest {
    type Response = QsResponse;
    fn endpoint(&self) -> TransactionType {
        TransactionType::QueueService
    }
}

impl Request for AsRequest {
    type Response = AsResponse;
    fn endpoint(&self) -> TransactionType {
        TransactionType::AuthService
    }
}

impl Request for DsRequest {
    type Response = DsResponse;
    fn endpoint(&self) -> TransactionType {
        match self.tbs.operation {
            DsOperation::WelcomeInfo(_) => TransactionType::WelcomeInformation,
            DsOperation::ExternalCommitInfo => TransactionType::ExternalCommitInformation,
            _ => TransactionType::GroupOperation,
        }
    }
}

/// `payload` in a current-version envelope of type `tt`, encoded.
pub(super) fn envelope(tt: TransactionType, payload: Vec<u8>) -> Vec<u8> {
    encode(&Envelope::new(tt, payload)).unwrap()
}

/// The body a client posts for `req`.
pub(super) fn body<R: Request>(req: &R) -> Vec<u8> {
    envelope(req.endpoint(), encode(req).unwrap())
}

/// The settings of the hub under test: the operator defaults, this domain, a 60 s window, and
/// no Privacy Pass gate (so requests reach the cores).
pub(super) fn test_config() -> HubConfig {
    let mut cfg = Config {
        domain: DOMAIN.into(),
        freshness_window_secs: WINDOW_MS / 1000,
        ..Config::default()
    }
    .hub_config();
    cfg.tokens = tokens::TokenPolicy {
        rate_limited: BTreeSet::new(),
        ..Default::default()
    };
    cfg
}

/// A hub over an in-memory store, started at [`NOW`].
pub(super) struct TestHub {
    store: Arc<MemStore>,
    hub: Hub,
}

impl TestHub {
    /// A hub with [`test_config`].
    pub(super) fn new() -> Self {
        Self::with(|_| {})
    }

    /// A hub with [`test_config`] changed by `adjust`.
    pub(super) fn with(adjust: impl FnOnce(&mut HubConfig)) -> Self {
        let mut cfg = test_config();
        adjust(&mut cfg);
        let store = Arc::new(MemStore::new());
        let hub = Hub::new(store.clone(), cfg, NOW).unwrap();
        Self { store, hub }
    }

    /// A hub whose fresh ids are 1, 2, 3, … (as 16-byte big-endian numbers).
    pub(super) fn counting_ids() -> Self {
        let store = Arc::new(MemStore::new());
        let hub = Hub::with_ids(
            store.clone(),
            test_config(),
            NOW,
            Arc::new(CountingIds::default()),
        )
        .unwrap();
        Self { store, hub }
    }

    /// A second hub process over the same store (a restart).
    pub(super) fn reopen(&self) -> Self {
        let hub = Hub::new(self.store.clone(), test_config(), NOW).unwrap();
        Self {
            store: self.store.clone(),
            hub,
        }
    }

    /// Posts a raw body to `endpoint` at time `now`, as a client without a token.
    pub(super) fn post_at(
        &self,
        endpoint: TransactionType,
        body: &[u8],
        now: u64,
    ) -> Result<Vec<u8>, HubError> {
        self.hub
            .handle(endpoint, body, now, &tokens::Admission::Client(None))
    }

    /// Sends `req` at time `now` and decodes the answer.
    pub(super) fn call_at<R: Request>(&self, req: &R, now: u64) -> Result<R::Response, HubError> {
        let out = self.post_at(req.endpoint(), &body(req), now)?;
        Ok(decode_exact(&out, usize::MAX).expect("response decodes"))
    }

    /// Sends `req` at [`NOW`]; it must be accepted.
    pub(super) fn ok<R: Request>(&self, req: &R) -> R::Response {
        self.ok_at(req, NOW)
    }

    /// Sends `req` at time `now`; it must be accepted.
    pub(super) fn ok_at<R: Request>(&self, req: &R, now: u64) -> R::Response {
        self.call_at(req, now)
            .unwrap_or_else(|e| panic!("request refused: {e} ({:?})", e.code()))
    }

    /// Every entry of the store.
    pub(super) fn dump(&self) -> Vec<CfEntry> {
        self.store.dump().unwrap()
    }

    /// The entries of one column family, in key order.
    pub(super) fn rows(&self, cf: Cf) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.dump()
            .into_iter()
            .filter(|(c, _, _)| *c == cf)
            .map(|(_, k, v)| (k, v))
            .collect()
    }

    /// One stored record, decoded.
    pub(super) fn record<R: Record>(&self, key: &R::Key) -> Option<R> {
        Txn::new(self.store.as_ref()).get_record::<R>(key).unwrap()
    }

    /// Gives raw access to the store, for setting up what no request can (queue contents).
    pub(super) fn txn(&self) -> Txn<'_> {
        Txn::new(self.store.as_ref())
    }

    /// Posts `body` to `endpoint` at `now` and checks that it is refused with `expected` and
    /// that the store did not change at all. Returns the error for further checks.
    pub(super) fn assert_body_refused_at(
        &self,
        endpoint: TransactionType,
        body: &[u8],
        now: u64,
        expected: ErrorCode,
    ) -> HubError {
        let before = self.dump();
        let err = match self.post_at(endpoint, body, now) {
            Ok(_) => panic!("accepted, expected {expected:?}"),
            Err(e) => e,
        };
        assert_eq!(err.code(), expected, "refused with: {err}");
        let after = self.dump();
        assert!(
            before == after,
            "refused request ({err}) changed the store: {}",
            diff(&before, &after)
        );
        err
    }

    /// [`Self::assert_body_refused_at`] at [`NOW`].
    pub(super) fn assert_body_refused(
        &self,
        endpoint: TransactionType,
        body: &[u8],
        expected: ErrorCode,
    ) -> HubError {
        self.assert_body_refused_at(endpoint, body, NOW, expected)
    }

    /// `req` is refused with `expected` and changes nothing.
    pub(super) fn assert_refused<R: Request>(&self, req: &R, expected: ErrorCode) -> HubError {
        self.assert_refused_at(req, NOW, expected)
    }

    /// `req`, sent at `now`, is refused with `expected` and changes nothing.
    pub(super) fn assert_refused_at<R: Request>(
        &self,
        req: &R,
        now: u64,
        expected: ErrorCode,
    ) -> HubError {
        self.assert_body_refused_at(req.endpoint(), &body(req), now, expected)
    }
}

/// Sends each named request of `cases` and checks that it is refused with its code and leaves
/// the store unchanged.
pub(super) fn assert_cases<R: Request, S: std::fmt::Display>(
    hub: &TestHub,
    cases: impl IntoIterator<Item = (S, R, ErrorCode)>,
) {
    for (name, req, code) in cases {
        let before = hub.dump();
        let err = match hub.call_at(&req, NOW) {
            Ok(_) => panic!("{name}: accepted, expected {code:?}"),
            Err(e) => e,
        };
        assert_eq!(err.code(), code, "{name}: {err}");
        let after = hub.dump();
        assert!(
            before == after,
            "{name}: the refusal changed the store: {}",
            diff(&before, &after)
        );
    }
}

/// Which keys differ between two dumps, per column family (for failure messages).
fn diff(before: &[CfEntry], after: &[CfEntry]) -> String {
    let key = |e: &CfEntry| (e.0, e.1.clone());
    let b: BTreeSet<_> = before.iter().map(key).collect();
    let a: BTreeSet<_> = after.iter().map(key).collect();
    let changed: Vec<String> = after
        .iter()
        .filter(|e| {
            before
                .iter()
                .any(|o| o.0 == e.0 && o.1 == e.1 && o.2 != e.2)
        })
        .map(|e| format!("{}/{}", e.0.name(), hex::encode(&e.1)))
        .collect();
    let added: Vec<String> = a
        .difference(&b)
        .map(|(c, k)| format!("{}/{}", c.name(), hex::encode(k)))
        .collect();
    let removed: Vec<String> = b
        .difference(&a)
        .map(|(c, k)| format!("{}/{}", c.name(), hex::encode(k)))
        .collect();
    format!("added {added:?}, removed {removed:?}, changed {changed:?}")
}

/// The refusals every request body meets before any service sees it: size limit, framing,
/// version and endpoint. `req` is a request the hub would accept.
pub(super) fn assert_framing_refusals<R: Request>(hub: &TestHub, req: &R) {
    let endpoint = req.endpoint();
    let good = body(req);
    let payload = encode(req).unwrap();
    let with_version = |version: u16| {
        encode(&Envelope {
            version,
            transaction_type: endpoint,
            payload: payload.clone().into(),
        })
        .unwrap()
    };
    let mut trailing_envelope = good.clone();
    trailing_envelope.push(0);
    let mut trailing_payload = payload.clone();
    trailing_payload.push(0);
    let other = match endpoint {
        TransactionType::AuthService => TransactionType::QueueService,
        _ => TransactionType::AuthService,
    };
    let cases: Vec<(&str, TransactionType, Vec<u8>, ErrorCode)> = vec![
        ("empty body", endpoint, Vec::new(), ErrorCode::Malformed),
        (
            "truncated envelope",
            endpoint,
            good[..good.len() - 1].to_vec(),
            ErrorCode::Malformed,
        ),
        (
            "trailing byte after the envelope",
            endpoint,
            trailing_envelope,
            ErrorCode::Malformed,
        ),
        (
            "truncated payload",
            endpoint,
            envelope(endpoint, payload[..payload.len() - 1].to_vec()),
            ErrorCode::Malformed,
        ),
        (
            "trailing byte after the payload",
            endpoint,
            envelope(endpoint, trailing_payload),
            ErrorCode::Malformed,
        ),
        (
            "garbage payload",
            endpoint,
            envelope(endpoint, vec![0xff; 7]),
            ErrorCode::Malformed,
        ),
        (
            "version 0",
            endpoint,
            with_version(0),
            ErrorCode::UnsupportedVersion,
        ),
        (
            "version 2",
            endpoint,
            with_version(PROTOCOL_VERSION + 1),
            ErrorCode::UnsupportedVersion,
        ),
        (
            "posted to another service's endpoint",
            other,
            good.clone(),
            ErrorCode::WrongEndpoint,
        ),
        (
            "envelope of another service",
            endpoint,
            envelope(other, payload.clone()),
            ErrorCode::WrongEndpoint,
        ),
        (
            "posted to the federation endpoint",
            TransactionType::Federation,
            envelope(TransactionType::Federation, payload.clone()),
            ErrorCode::WrongEndpoint,
        ),
        (
            "posted to the proxy endpoint",
            TransactionType::Proxy,
            envelope(TransactionType::Proxy, payload.clone()),
            ErrorCode::WrongEndpoint,
        ),
        (
            "over the body limit",
            endpoint,
            vec![0; test_config().max_body + 1],
            ErrorCode::TooLarge,
        ),
    ];
    for (name, endpoint, bytes, code) in cases {
        let before = hub.dump();
        let err = hub
            .post_at(endpoint, &bytes, NOW)
            .err()
            .unwrap_or_else(|| panic!("{name}: accepted"));
        assert_eq!(err.code(), code, "{name}: {err}");
        assert!(before == hub.dump(), "{name}: changed the store");
    }
    // Positive control: the untouched body is accepted.
    hub.post_at(endpoint, &good, NOW)
        .unwrap_or_else(|e| panic!("the untouched body was refused: {e}"));
}

/// A random 32-byte value.
pub(super) fn random32() -> [u8; 32] {
    rand::random()
}

/// An anonymous QS request, timestamped [`NOW`].
pub(super) fn qs_anon(operation: QsOperation) -> QsRequest {
    QsRequest {
        tbs: QsRequestTbs {
            timestamp_ms: NOW,
            nonce: rand::random(),
            sender: QsSender::Anonymous,
            operation,
        },
        signature: Vec::new().into(),
    }
}

/// A QS request signed by `key`, timestamped `ts`.
pub(super) fn qs_signed_at(
    key: &SigningKey,
    sender: QsSender,
    operation: QsOperation,
    ts: u64,
) -> QsRequest {
    let tbs = QsRequestTbs {
        timestamp_ms: ts,
        nonce: rand::random(),
        sender,
        operation,
    };
    let signature = key.sign(QS_REQUEST_SIGNATURE_LABEL, &encode(&tbs).unwrap());
    QsRequest {
        tbs,
        signature: signature.into(),
    }
}

/// A QS request signed by `key`, timestamped [`NOW`].
pub(super) fn qs_signed(key: &SigningKey, sender: QsSender, operation: QsOperation) -> QsRequest {
    qs_signed_at(key, sender, operation, NOW)
}

/// An anonymous AS request, timestamped `ts`.
pub(super) fn as_anon_at(operation: AsOperation, ts: u64) -> AsRequest {
    AsRequest {
        tbs: AsRequestTbs {
            timestamp_ms: ts,
            nonce: rand::random(),
            sender: AsSender::Anonymous,
            operation,
        },
        signature: Vec::new().into(),
    }
}

/// An anonymous AS request, timestamped [`NOW`].
pub(super) fn as_anon(operation: AsOperation) -> AsRequest {
    as_anon_at(operation, NOW)
}

/// An AS request by the client `sender`, signed by `key`, timestamped `ts`.
pub(super) fn as_signed_at(
    key: &SigningKey,
    sender: ClientIdentity,
    operation: AsOperation,
    ts: u64,
) -> AsRequest {
    let tbs = AsRequestTbs {
        timestamp_ms: ts,
        nonce: rand::random(),
        sender: AsSender::Client(sender),
        operation,
    };
    let signature = key.sign(AS_REQUEST_SIGNATURE_LABEL, &encode(&tbs).unwrap());
    AsRequest {
        tbs,
        signature: signature.into(),
    }
}

/// An AS request by the client `sender`, signed by `key`, timestamped [`NOW`].
pub(super) fn as_signed(
    key: &SigningKey,
    sender: ClientIdentity,
    operation: AsOperation,
) -> AsRequest {
    as_signed_at(key, sender, operation, NOW)
}

/// A pseudonymous QS user with one client, as a client keeps it: its keys, its token and its
/// own copy of the queue ratchet to read what the hub enqueues.
pub(super) struct QsClient {
    pub(super) user_id: [u8; 16],
    pub(super) client_id: ClientId,
    pub(super) user_key: SigningKey,
    pub(super) client_key: SigningKey,
    pub(super) friendship_token: [u8; 32],
    /// The reader's side of the queue ratchet.
    ratchet: QueueRatchet,
    /// Tickets of stored messages read, released with the next dequeue.
    to_release: Vec<StoredTicket>,
}

/// The parts of a fresh `CreateUser`: the operation and the secrets behind it.
pub(super) struct NewUser {
    pub(super) op: QsOperation,
    pub(super) user_key: SigningKey,
    pub(super) client_key: SigningKey,
    pub(super) friendship_token: [u8; 32],
    pub(super) ratchet_secret: [u8; 32],
}

impl NewUser {
    /// Fresh keys, token and ratchet secret.
    pub(super) fn new() -> Self {
        let user_key = SigningKey::generate();
        let client_key = SigningKey::generate();
        let friendship_token = random32();
        let ratchet_secret = random32();
        let op = QsOperation::CreateUser(CreateUser {
            user_auth_key: user_key.verifying_key().as_bytes().to_vec().into(),
            client_auth_key: client_key.verifying_key().as_bytes().to_vec().into(),
            friendship_token: friendship_token.to_vec().into(),
            initial_ratchet_secret: ratchet_secret.to_vec().into(),
            device_tag: Vec::new().into(),
        });
        Self {
            op,
            user_key,
            client_key,
            friendship_token,
            ratchet_secret,
        }
    }

    /// The `CreateUser` request, signed by the new client key.
    pub(super) fn request(&self) -> QsRequest {
        qs_signed(&self.client_key, QsSender::NewClient, self.op.clone())
    }
}

impl QsClient {
    /// Registers a new pseudonymous user at the hub's QS.
    pub(super) fn register(hub: &TestHub) -> Self {
        let new = NewUser::new();
        let QsResponse::UserCreated(ids) = hub.ok(&new.request()) else {
            panic!("expected UserCreated")
        };
        Self::of(new, ids.user_id, ids.client_id)
    }

    /// The client a `CreateUser` made (or a `CreateClient`, with the user's keys).
    pub(super) fn of(new: NewUser, user_id: [u8; 16], client_id: ClientId) -> Self {
        Self {
            user_id,
            client_id,
            user_key: new.user_key,
            client_key: new.client_key,
            friendship_token: new.friendship_token,
            ratchet: QueueRatchet::new(RatchetSecret::from_bytes(&new.ratchet_secret).unwrap()),
            to_release: Vec::new(),
        }
    }

    /// A request signed by this client.
    pub(super) fn request(&self, operation: QsOperation) -> QsRequest {
        qs_signed(
            &self.client_key,
            QsSender::Client(self.client_id),
            operation,
        )
    }

    /// A dequeue request acknowledging everything read so far.
    pub(super) fn dequeue(&self, max: u32) -> QsRequest {
        self.request(QsOperation::Dequeue(Dequeue {
            ack_below: self.ratchet.next_seq(),
            max,
            release: self.to_release.clone(),
        }))
    }

    /// Mixes `fresh` into the reader's ratchet, as the client does after a rekey.
    pub(super) fn mix(&mut self, fresh: &[u8; 32]) {
        self.ratchet.mix(fresh);
    }

    /// Reads (and acknowledges what was read before) up to `max` queued messages, decrypting
    /// each with the reader's ratchet.
    pub(super) fn fetch_upto(&mut self, hub: &TestHub, max: u32) -> Vec<QueueMessage> {
        let QsResponse::Messages(m) = hub.ok(&self.dequeue(max)) else {
            panic!("expected Messages")
        };
        self.to_release.clear();
        let read: Vec<QueueMessage> = m
            .messages
            .iter()
            .map(|q| {
                let plain = self
                    .ratchet
                    .decrypt_next(q.seq, q.ciphertext.as_slice())
                    .expect("queue entry decrypts with the client's ratchet");
                decode_exact(&plain, usize::MAX).unwrap()
            })
            .collect();
        read.into_iter().map(|m| self.resolve(hub, m)).collect()
    }

    /// A stored message's contents in place of its reference, as clients read it; the ticket
    /// is released with the next dequeue.
    fn resolve(&mut self, hub: &TestHub, m: QueueMessage) -> QueueMessage {
        let QueueMessage::Stored(r) = m else {
            return m;
        };
        let QsResponse::Stored(found) = hub.ok(&self.request(QsOperation::FetchStored(vec![r.id])))
        else {
            panic!("expected Stored")
        };
        let [stored] = found.as_slice() else {
            panic!("stored message {} not found", hex::encode(r.id))
        };
        let key = mimi_rm_crypto::ear::EarKey::from_bytes(&r.key).unwrap();
        let plain = mimi_rm_crypto::ear::open(
            &key,
            mimi_rm_protocol::queue::STORED_EAR_DOMAIN,
            &r.id,
            stored.ciphertext.as_slice(),
        )
        .expect("a stored message opens with its reference's key");
        self.to_release.push(StoredTicket {
            id: r.id,
            ticket: r.ticket,
        });
        decode_exact(&plain, usize::MAX).unwrap()
    }

    /// Reads every queued message (see [`Self::fetch_upto`]).
    pub(super) fn fetch(&mut self, hub: &TestHub) -> Vec<QueueMessage> {
        self.fetch_upto(hub, 500)
    }

    /// The client's stored record.
    pub(super) fn record(&self, hub: &TestHub) -> Option<ClientRecord> {
        hub.record::<ClientRecord>(&self.client_id)
    }

    /// The client's queue ratchet as the hub stores it (erasable family).
    pub(super) fn ratchet_record(&self, hub: &TestHub) -> Option<crate::core::qs::RatchetRecord> {
        hub.record::<crate::core::qs::RatchetRecord>(&self.client_id)
    }

    /// The user's stored record.
    pub(super) fn user(&self, hub: &TestHub) -> Option<UserRecord> {
        hub.record::<UserRecord>(&self.user_id)
    }
}

/// Ids 1, 2, 3, …: every id a request creates is predictable.
#[derive(Default)]
pub(super) struct CountingIds(std::sync::atomic::AtomicU64);

impl crate::core::ids::IdSource for CountingIds {
    fn id(&self) -> [u8; 16] {
        let n = self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        u128::from(n).to_be_bytes()
    }
}

/// The id [`CountingIds`] hands out `n`-th.
pub(super) fn counted_id(n: u64) -> [u8; 16] {
    u128::from(n).to_be_bytes()
}
