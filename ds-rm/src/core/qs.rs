//! The queueing service: pseudonymous records, AddPackages and forward-secret queues.
//!
//! The QS knows clients only by random ids and auth keys. Queue contents are encrypted under a
//! per-queue hash ratchet whose current secret is the only key the QS keeps: after each enqueue the
//! previous secret is overwritten, so a seized disk cannot read messages already queued.

use crate::core::HubError;
use crate::core::ds::state::month_of;
use crate::core::ids::IdSource;
use crate::core::limits::MAX_CLIENTS_PER_USER;
use crate::core::{IdentityError, QueueError, RequestError};
use crate::store::{Cf, Record, Txn};
use mimi_rm_crypto::hpke_seal::{self, HpkeKeyPair};
use mimi_rm_crypto::ratchet::{QueueRatchet, RatchetSecret};
use mimi_rm_crypto::sign::VerifyingKey;
use mimi_rm_protocol::push::PUSH_KEY_LEN;
use mimi_rm_protocol::qs::*;
use mimi_rm_protocol::queue::{
    HpkeCiphertextWire, QUEUE_REF_HPKE_LABEL, QueueAddress, QueueMessage, SealedQueueRef,
};
use mimi_rm_protocol::{DsMode, decode_exact, encode};
use sha2::{Digest, Sha256};
use tls_codec::{TlsDeserialize, TlsSerialize, TlsSize, VLBytes};

/// A pseudonymous client (queue) id.
pub type ClientId = [u8; 16];

/// Most AddPackages one client may publish at once.
pub const MAX_ADD_PACKAGES: usize = 100;
/// Most messages returned by one dequeue.
pub const MAX_DEQUEUE: u32 = 500;
/// Index under which the last-resort AddPackage is stored (sorts after all one-time ones).
const LAST_RESORT_INDEX: u32 = u32::MAX;

/// A client record: auth key, owning pseudonymous user, counters. Its queue ratchet is a
/// separate, erasable [`RatchetRecord`].
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct ClientRecord {
    /// Pseudonymous user id.
    pub user_id: [u8; 16],
    /// Ed25519 key that signs this client's QS requests.
    pub auth_key: VLBytes,
    /// Month of the last dequeue.
    pub activity_month: u32,
    /// Every message below this sequence number was acknowledged (deleted); with the ratchet's
    /// next sequence number it gives the queue length without a scan.
    pub acked_below: u64,
    /// The client's device tag (32 bytes, or empty for clients created before tags): opaque to
    /// the QS, it lets a sibling device name this client for [`RemoveUserClient`].
    pub device_tag: VLBytes,
}

/// A queue's ratchet state: the one secret whose old values must not survive anywhere, so it
/// lives in an erasable family (the slot file, overwritten in place) apart from the record.
/// The last rekey travels with it, so a crash can never separate a mixed ratchet from the
/// note that makes a retried rekey idempotent.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct RatchetRecord {
    /// Current queue ratchet (secret ‖ next sequence number).
    pub ratchet: [u8; 40],
    /// The last rekey: SHA-256 of its randomness and the sequence number it took effect at,
    /// so a retried rekey is answered without mixing twice.
    pub last_rekey: Option<LastRekey>,
}

impl RatchetRecord {
    /// A fresh chain at sequence number 0.
    pub fn new(secret: RatchetSecret) -> Self {
        Self {
            ratchet: QueueRatchet::new(secret).to_bytes(),
            last_rekey: None,
        }
    }

    /// The ratchet state.
    pub fn ratchet(&self) -> Result<QueueRatchet, HubError> {
        QueueRatchet::from_bytes(&self.ratchet).map_err(|e| HubError::corrupt("queue ratchet", e))
    }
}

impl Record for RatchetRecord {
    const CF: Cf = Cf::QsRatchets;
    /// 40-byte state and an optional 40-byte rekey note: 81 bytes, within one slot.
    const MAX_BYTES: usize = crate::store::slots::MAX_VALUE;
    type Key = ClientId;
}

/// The ratchet of a client whose record exists: missing is corruption, not "no queue".
pub fn ratchet_record(txn: &Txn<'_>, client: &ClientId) -> Result<RatchetRecord, HubError> {
    txn.get_record::<RatchetRecord>(client)?
        .ok_or_else(|| HubError::corrupt("qs_ratchets", "a client record without its ratchet"))
}

/// Per-queue limits an operator configures.
#[derive(Debug, Clone, Copy)]
pub struct QsLimits {
    /// Most messages returned by one dequeue.
    pub max_fetch: u32,
    /// Most undelivered messages a queue holds; further ones are dropped (and counted).
    pub max_queue: u64,
}

/// See [`ClientRecord::last_rekey`].
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct LastRekey {
    /// SHA-256 of the mixed-in randomness (which itself is never stored).
    pub fresh_hash: [u8; 32],
    /// The first sequence number under the mixed chain.
    pub seq: u64,
}

/// A user record: its clients and the hash of its friendship token.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct UserRecord {
    /// Ed25519 key for user-level changes.
    pub user_auth_key: VLBytes,
    /// SHA-256 of the friendship token.
    pub friendship_hash: [u8; 32],
    /// The user's client ids.
    pub clients: Vec<ClientId>,
}

impl Record for ClientRecord {
    const CF: Cf = Cf::QsClients;
    /// Ids, two keys, a ratchet state and counters: a few hundred bytes.
    const MAX_BYTES: usize = 4096;
    type Key = ClientId;
}

impl Record for UserRecord {
    const CF: Cf = Cf::QsUsers;
    /// At most [`MAX_CLIENTS_PER_USER`] 16-byte ids, a key and a hash: about 1.1 KiB.
    const MAX_BYTES: usize = 4096;
    type Key = [u8; 16];
}

/// The QS's long-term key: clients seal their `QueueRef`s to it.
pub struct QsKeys {
    /// HPKE key pair.
    pub hpke: HpkeKeyPair,
}

fn queue_key(client: &ClientId, seq: u64) -> Vec<u8> {
    let mut k = client.to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn package_key(client: &ClientId, index: u32) -> Vec<u8> {
    let mut k = client.to_vec();
    k.extend_from_slice(&index.to_be_bytes());
    k
}

/// Whether a queue address is of the kind a hub in `mode` accepts: an RM hub refuses a plain
/// queue id (it would put the member's queue on disk in the clear and let the DS link leaves to
/// queues), a baseline hub a sealed one. The one rule for new leaves and for fan-out.
pub fn check_address_mode(address: &QueueAddress, mode: DsMode) -> Result<(), HubError> {
    match (address, mode) {
        (QueueAddress::Sealed(_), DsMode::Rm) | (QueueAddress::Plain(_), DsMode::Baseline) => {
            Ok(())
        }
        (QueueAddress::Plain(_), DsMode::Rm) => Err(HubError::Request(RequestError::Invalid(
            "a reduced-metadata hub refuses plain queue ids",
        ))),
        (QueueAddress::Sealed(_), DsMode::Baseline) => Err(HubError::Request(
            RequestError::Invalid("a baseline hub takes plain queue ids"),
        )),
    }
}

/// A local queue as a queue ref names it: the client, and the push key the ref carried (a
/// plain ref never carries one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    /// The client (queue).
    pub client: ClientId,
    /// The client's `PushTokenEarKey`, if its ref carried one.
    pub push_key: Option<[u8; PUSH_KEY_LEN]>,
}

/// Opens a sealed `QueueRef` address for this QS's domain; returns what it names.
pub fn open_sealed_queue_ref(
    keys: &QsKeys,
    domain: &str,
    sealed: &HpkeCiphertextWire,
) -> Result<Resolved, HubError> {
    let ct = sealed.to_ciphertext();
    let plain = hpke_seal::open(
        &keys.hpke.private,
        QUEUE_REF_HPKE_LABEL,
        domain.as_bytes(),
        &ct,
    )
    .map_err(|_| HubError::Request(RequestError::Invalid("queue ref does not open")))?;
    // Sixteen bytes: a ref sealed before push keys (the queue id alone).
    if let Ok(old) = <[u8; 16]>::try_from(plain.as_slice()) {
        return Ok(Resolved {
            client: old,
            push_key: None,
        });
    }
    let inside: SealedQueueRef =
        decode_exact(&plain, 1024).map_err(|e| HubError::malformed("queue ref", e))?;
    Ok(Resolved {
        client: inside.client_id,
        push_key: inside.push_key.as_slice().try_into().ok(),
    })
}

/// Appends a message to a client's queue under the next ratchet key. The caller holds the
/// client's queue lock. Returns `false` if the client record no longer exists.
pub fn enqueue(
    txn: &mut Txn<'_>,
    client: &ClientId,
    message: &QueueMessage,
    max_queue: u64,
) -> Result<Enqueued, HubError> {
    let plain = encode(message).map_err(|e| HubError::Bug(e.to_string()))?;
    enqueue_encoded(txn, client, &plain, max_queue)
}

/// [`enqueue`] of an already encoded `QueueMessage`, so a message for many queues is encoded
/// once.
pub fn enqueue_encoded(
    txn: &mut Txn<'_>,
    client: &ClientId,
    plain: &[u8],
    max_queue: u64,
) -> Result<Enqueued, HubError> {
    let Some(record) = txn.get_record::<ClientRecord>(client)? else {
        return Ok(Enqueued::NoQueue);
    };
    let mut state = ratchet_record(txn, client)?;
    let mut ratchet = state.ratchet()?;
    if ratchet.next_seq().saturating_sub(record.acked_below) >= max_queue {
        // A client that stopped fetching cannot make the hub store without bound.
        return Ok(Enqueued::QueueFull);
    }
    let (seq, ct) = ratchet
        .encrypt_next(plain)
        .map_err(|e| HubError::Bug(format!("ratchet: {e}")))?;
    txn.put(Cf::QsQueues, queue_key(client, seq), ct);
    state.ratchet = ratchet.to_bytes();
    txn.put_record(client, &state)?;
    Ok(Enqueued::Delivered)
}

/// What became of one enqueue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// Stored.
    Delivered,
    /// Dropped: the queue holds its maximum of undelivered messages.
    QueueFull,
    /// Dropped: no such queue (its client was deleted).
    NoQueue,
}

/// Looks up which client ids a request will touch, so the caller can lock them first.
pub fn clients_touched(txn: &Txn<'_>, req: &QsRequest) -> Result<Vec<ClientId>, HubError> {
    Ok(match (&req.tbs.sender, &req.tbs.operation) {
        // Released stored messages are locked on queue stripes of their ids, with the client,
        // so two recipients' last releases cannot both leave the message behind.
        (QsSender::Client(c), QsOperation::Dequeue(d)) => {
            let mut locked = vec![*c];
            locked.extend(crate::core::stored::ids_released(&d.release)?);
            locked
        }
        (QsSender::Client(c), _) => vec![*c],
        // A user-level request rewrites the user record: it takes the locks of all the user's
        // clients, so two such requests (or one and a client's own deletion, which also
        // rewrites the record) never interleave. The set read here may change before the locks
        // are held, but a user always has a client, so any two such sets share one.
        (QsSender::User(uid), _) => txn
            .get_record::<UserRecord>(uid)?
            .map(|u| u.clients)
            .unwrap_or_default(),
        (_, QsOperation::FetchAddPackages(token)) => match user_of_token(txn, token.as_slice())? {
            Some((_, user)) => user.clients,
            None => Vec::new(),
        },
        _ => Vec::new(),
    })
}

fn user_of_token(txn: &Txn<'_>, token: &[u8]) -> Result<Option<([u8; 16], UserRecord)>, HubError> {
    let hash: [u8; 32] = Sha256::digest(token).into();
    let Some(uid) = txn.get(Cf::QsFriendship, &hash)? else {
        return Ok(None);
    };
    let uid: [u8; 16] = uid
        .as_slice()
        .try_into()
        .map_err(|_| HubError::corrupt("qs_friendship", "user id is not 16 bytes"))?;
    Ok(txn.get_record::<UserRecord>(&uid)?.map(|u| (uid, u)))
}

/// The signed bytes of a QS request.
pub fn signed_bytes(tbs: &QsRequestTbs) -> Result<Vec<u8>, HubError> {
    encode(tbs).map_err(|e| HubError::malformed("request", e))
}

fn verify(key: &[u8], tbs: &[u8], sig: &VLBytes) -> Result<(), HubError> {
    let vk = VerifyingKey::from_bytes(key)
        .map_err(|_| HubError::Request(RequestError::Invalid("bad auth key")))?;
    vk.verify(QS_REQUEST_SIGNATURE_LABEL, tbs, sig.as_slice())
        .map_err(|_| HubError::Request(RequestError::InvalidSignature))
}

/// Processes one QS request. Freshness was checked by the caller; replay is checked here after
/// the signature, for signed requests.
pub fn process(
    txn: &mut Txn<'_>,
    ids: &dyn IdSource,
    keys: &QsKeys,
    replay: &crate::core::replay::ReplayGuard,
    now_ms: u64,
    req: &QsRequest,
    limits: QsLimits,
) -> Result<QsResponse, HubError> {
    let tbs = signed_bytes(&req.tbs)?;
    match (&req.tbs.sender, &req.tbs.operation) {
        (QsSender::Anonymous, QsOperation::EncryptionKey) => Ok(QsResponse::EncryptionKey(
            keys.hpke.public.as_bytes().to_vec().into(),
        )),
        (QsSender::NewClient, QsOperation::CreateUser(p)) => {
            verify(p.client_auth_key.as_slice(), &tbs, &req.signature)?;
            replay.check_and_record(req.signature.as_slice(), req.tbs.timestamp_ms, now_ms)?;
            create_user(txn, ids, now_ms, p)
        }
        (QsSender::Anonymous, QsOperation::FetchAddPackages(token)) => {
            fetch_add_packages(txn, token)
        }
        (QsSender::User(uid), QsOperation::CreateClient(p)) => {
            let mut user = txn
                .get_record::<UserRecord>(uid)?
                .ok_or(HubError::Identity(IdentityError::UnknownUser))?;
            verify(user.user_auth_key.as_slice(), &tbs, &req.signature)?;
            replay.check_and_record(req.signature.as_slice(), req.tbs.timestamp_ms, now_ms)?;
            create_client(txn, ids, now_ms, uid, &mut user, p)
        }
        (QsSender::User(uid), QsOperation::RemoveUserClient(r)) => {
            let user = txn
                .get_record::<UserRecord>(uid)?
                .ok_or(HubError::Identity(IdentityError::UnknownUser))?;
            verify(user.user_auth_key.as_slice(), &tbs, &req.signature)?;
            replay.check_and_record(req.signature.as_slice(), req.tbs.timestamp_ms, now_ms)?;
            remove_user_client(txn, uid, &user, r)
        }
        (QsSender::User(uid), QsOperation::RotateUser(r)) => {
            let user = txn
                .get_record::<UserRecord>(uid)?
                .ok_or(HubError::Identity(IdentityError::UnknownUser))?;
            verify(user.user_auth_key.as_slice(), &tbs, &req.signature)?;
            replay.check_and_record(req.signature.as_slice(), req.tbs.timestamp_ms, now_ms)?;
            rotate_user(txn, uid, user, r)
        }
        (QsSender::Client(id), op) => {
            let mut record = txn
                .get_record::<ClientRecord>(id)?
                .ok_or(HubError::Queue(QueueError::UnknownClient))?;
            verify(record.auth_key.as_slice(), &tbs, &req.signature)?;
            replay.check_and_record(req.signature.as_slice(), req.tbs.timestamp_ms, now_ms)?;
            match op {
                QsOperation::PublishAddPackages(p) => publish(txn, id, p),
                QsOperation::DeleteClient => delete_client(txn, id, &record),
                QsOperation::RekeyQueue(fresh) => rekey(txn, id, fresh.as_slice()),
                QsOperation::SetPushToken(sealed) => set_push(txn, id, sealed.as_slice()),
                QsOperation::FetchStored(ids) => crate::core::stored::fetch(txn, ids),
                QsOperation::Dequeue(d) => {
                    crate::core::stored::release(txn, &d.release)?;
                    let month = month_of(now_ms);
                    if record.activity_month != month {
                        record.activity_month = month;
                        txn.put_record(id, &record)?;
                    }
                    let next_seq = ratchet_record(txn, id)?.ratchet()?.next_seq();
                    // Older records could hold an ack beyond the ratchet (which switched the
                    // queue-length limit off): bring it back to the ratchet's position.
                    if record.acked_below > next_seq {
                        record.acked_below = next_seq;
                        txn.put_record(id, &record)?;
                    }
                    let acked_before = record.acked_below;
                    // Nothing at or past the ratchet's position was ever enqueued: an ack
                    // beyond it would only switch off the queue-length limit.
                    let ack_below = d.ack_below.min(next_seq);
                    if ack_below > record.acked_below {
                        record.acked_below = ack_below;
                        txn.put_record(id, &record)?;
                    }
                    let window = DequeueWindow {
                        acked_before,
                        ack_below,
                        next_seq,
                        max: d.max.min(limits.max_fetch).min(MAX_DEQUEUE) as usize,
                    };
                    dequeue(txn, id, window)
                }
                _ => Err(HubError::Request(RequestError::NotAuthorized(
                    "operation not allowed for a client",
                ))),
            }
        }
        _ => Err(HubError::Request(RequestError::NotAuthorized(
            "sender type not allowed for this operation",
        ))),
    }
}

fn create_user(
    txn: &mut Txn<'_>,
    ids: &dyn IdSource,
    now_ms: u64,
    p: &CreateUser,
) -> Result<QsResponse, HubError> {
    if p.friendship_token.as_slice().len() != 32 {
        return Err(HubError::Request(RequestError::Invalid(
            "friendship token must be 32 bytes",
        )));
    }
    VerifyingKey::from_bytes(p.user_auth_key.as_slice())
        .map_err(|_| HubError::Request(RequestError::Invalid("bad user auth key")))?;
    let secret = RatchetSecret::from_bytes(p.initial_ratchet_secret.as_slice())
        .map_err(|_| HubError::Request(RequestError::Invalid("ratchet secret must be 32 bytes")))?;
    let hash: [u8; 32] = Sha256::digest(p.friendship_token.as_slice()).into();
    if txn.get(Cf::QsFriendship, &hash)?.is_some() {
        return Err(HubError::Request(RequestError::Invalid(
            "friendship token already in use",
        )));
    }
    let user_id = ids.id();
    let client_id = ids.id();
    txn.put_record(
        &user_id,
        &UserRecord {
            user_auth_key: p.user_auth_key.clone(),
            friendship_hash: hash,
            clients: vec![client_id],
        },
    )?;
    txn.put(Cf::QsFriendship, hash.to_vec(), user_id.to_vec());
    txn.put_record(
        &client_id,
        &ClientRecord {
            user_id,
            auth_key: p.client_auth_key.clone(),
            activity_month: month_of(now_ms),
            acked_below: 0,
            device_tag: checked_tag(&p.device_tag)?,
        },
    )?;
    txn.put_record(&client_id, &RatchetRecord::new(secret))?;
    Ok(QsResponse::UserCreated(UserCreated { user_id, client_id }))
}

fn create_client(
    txn: &mut Txn<'_>,
    ids: &dyn IdSource,
    now_ms: u64,
    user_id: &[u8; 16],
    user: &mut UserRecord,
    p: &CreateClient,
) -> Result<QsResponse, HubError> {
    VerifyingKey::from_bytes(p.client_auth_key.as_slice())
        .map_err(|_| HubError::Request(RequestError::Invalid("bad client auth key")))?;
    let secret = RatchetSecret::from_bytes(p.initial_ratchet_secret.as_slice())
        .map_err(|_| HubError::Request(RequestError::Invalid("ratchet secret must be 32 bytes")))?;
    if user.clients.len() >= MAX_CLIENTS_PER_USER {
        return Err(HubError::Request(RequestError::LimitExceeded(
            "clients per user",
        )));
    }
    let client_id = ids.id();
    user.clients.push(client_id);
    txn.put_record(user_id, &*user)?;
    txn.put_record(
        &client_id,
        &ClientRecord {
            user_id: *user_id,
            auth_key: p.client_auth_key.clone(),
            activity_month: month_of(now_ms),
            acked_below: 0,
            device_tag: checked_tag(&p.device_tag)?,
        },
    )?;
    txn.put_record(&client_id, &RatchetRecord::new(secret))?;
    Ok(QsResponse::ClientCreated(client_id))
}

/// A client's push subscription, sealed by the client under its `PushTokenEarKey`: opaque here
/// and at rest; opened only in memory, with the key from a queue ref being served.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct PushRecord {
    /// The sealed `PushSubscription`.
    pub sealed: VLBytes,
}

impl Record for PushRecord {
    const CF: Cf = Cf::QsPush;
    const MAX_BYTES: usize = 4 + MAX_SEALED_PUSH;
    type Key = ClientId;
}

/// Largest sealed push subscription accepted (an endpoint of 2 KiB, its keys, EAR overhead and
/// padding).
pub const MAX_SEALED_PUSH: usize = 4096;

/// Sets or (empty) removes a client's sealed push subscription.
fn set_push(txn: &mut Txn<'_>, id: &ClientId, sealed: &[u8]) -> Result<QsResponse, HubError> {
    if sealed.is_empty() {
        txn.delete_record::<PushRecord>(id);
    } else if sealed.len() > MAX_SEALED_PUSH {
        return Err(HubError::Request(RequestError::Invalid(
            "sealed push subscription too long",
        )));
    } else {
        txn.put_record(
            id,
            &PushRecord {
                sealed: sealed.to_vec().into(),
            },
        )?;
    }
    Ok(QsResponse::Ok)
}

/// Deletes a client's queue, AddPackages and record, and drops it from its user (the user
/// record goes with its last client). Fan-out to it afterwards finds no queue and leaves the
/// group a tombstone.
fn delete_client(
    txn: &mut Txn<'_>,
    id: &ClientId,
    record: &ClientRecord,
) -> Result<QsResponse, HubError> {
    for cf in [Cf::QsQueues, Cf::QsAddPackages] {
        for (k, _) in txn.scan_prefix(cf, id, usize::MAX)? {
            txn.delete(cf, k);
        }
    }
    txn.delete_record::<PushRecord>(id);
    txn.delete_record::<ClientRecord>(id);
    txn.delete_record::<RatchetRecord>(id);
    if let Some(mut user) = txn.get_record::<UserRecord>(&record.user_id)? {
        user.clients.retain(|c| c != id);
        if user.clients.is_empty() {
            txn.delete_record::<UserRecord>(&record.user_id);
            txn.delete(Cf::QsFriendship, user.friendship_hash.to_vec());
        } else {
            txn.put_record(&record.user_id, &user)?;
        }
    }
    Ok(QsResponse::Ok)
}

/// A device tag is 32 bytes, or absent.
fn checked_tag(tag: &VLBytes) -> Result<VLBytes, HubError> {
    match tag.as_slice().len() {
        0 | 32 => Ok(tag.clone()),
        _ => Err(HubError::Request(RequestError::Invalid(
            "a device tag is 32 bytes",
        ))),
    }
}

/// Deletes the user's client carrying `r.device_tag` (if any) exactly as its own
/// `DeleteClient` would, and replaces the user auth key: the old key, which the removed device
/// holds, authorises nothing afterwards. A retry (signed with the new key) finds no such
/// client and changes nothing else.
fn remove_user_client(
    txn: &mut Txn<'_>,
    user_id: &[u8; 16],
    user: &UserRecord,
    r: &RemoveUserClient,
) -> Result<QsResponse, HubError> {
    VerifyingKey::from_bytes(r.new_user_auth_key.as_slice())
        .map_err(|_| HubError::Request(RequestError::Invalid("bad user auth key")))?;
    for id in &user.clients {
        let Some(record) = txn.get_record::<ClientRecord>(id)? else {
            continue;
        };
        if record.device_tag.as_slice() == r.device_tag {
            delete_client(txn, id, &record)?;
            break;
        }
    }
    // The user goes with its last client; otherwise it takes the new key.
    if let Some(mut after) = txn.get_record::<UserRecord>(user_id)? {
        after.user_auth_key = r.new_user_auth_key.clone();
        txn.put_record(user_id, &after)?;
    }
    Ok(QsResponse::Ok)
}

/// Moves the user to a new auth key and friendship token: the old token's index entry goes in
/// the same batch, so a fetch with it finds no user from then on.
fn rotate_user(
    txn: &mut Txn<'_>,
    user_id: &[u8; 16],
    mut user: UserRecord,
    r: &RotateUser,
) -> Result<QsResponse, HubError> {
    VerifyingKey::from_bytes(r.new_user_auth_key.as_slice())
        .map_err(|_| HubError::Request(RequestError::Invalid("bad user auth key")))?;
    if r.new_friendship_token.as_slice().len() != 32 {
        return Err(HubError::Request(RequestError::Invalid(
            "friendship token must be 32 bytes",
        )));
    }
    let hash: [u8; 32] = Sha256::digest(r.new_friendship_token.as_slice()).into();
    if hash != user.friendship_hash {
        if txn.get(Cf::QsFriendship, &hash)?.is_some() {
            return Err(HubError::Request(RequestError::Invalid(
                "friendship token already in use",
            )));
        }
        txn.delete(Cf::QsFriendship, user.friendship_hash.to_vec());
        txn.put(Cf::QsFriendship, hash.to_vec(), user_id.to_vec());
        user.friendship_hash = hash;
    }
    user.user_auth_key = r.new_user_auth_key.clone();
    txn.put_record(user_id, &user)?;
    Ok(QsResponse::Ok)
}

fn publish(
    txn: &mut Txn<'_>,
    client: &ClientId,
    p: &PublishAddPackages,
) -> Result<QsResponse, HubError> {
    if p.packages.len() > MAX_ADD_PACKAGES {
        return Err(HubError::Request(RequestError::Invalid(
            "too many AddPackages",
        )));
    }
    if p.last_resort.as_slice().is_empty() {
        return Err(HubError::Request(RequestError::Invalid(
            "a last-resort AddPackage is required",
        )));
    }
    for (k, _) in txn.scan_prefix(Cf::QsAddPackages, client, usize::MAX)? {
        txn.delete(Cf::QsAddPackages, k);
    }
    for (i, pkg) in p.packages.iter().enumerate() {
        txn.put(
            Cf::QsAddPackages,
            package_key(client, i as u32),
            pkg.as_slice().to_vec(),
        );
    }
    txn.put(
        Cf::QsAddPackages,
        package_key(client, LAST_RESORT_INDEX),
        p.last_resort.as_slice().to_vec(),
    );
    Ok(QsResponse::Ok)
}

fn fetch_add_packages(txn: &mut Txn<'_>, token: &VLBytes) -> Result<QsResponse, HubError> {
    let (_, user) = user_of_token(txn, token.as_slice())?
        .ok_or(HubError::Queue(QueueError::UnknownFriendshipToken))?;
    let mut out = Vec::new();
    for client in &user.clients {
        if let Some((k, v)) = txn
            .scan_prefix(Cf::QsAddPackages, client, 1)?
            .into_iter()
            .next()
        {
            // One-time packages are consumed; the last-resort one stays.
            if k != package_key(client, LAST_RESORT_INDEX) {
                txn.delete(Cf::QsAddPackages, k);
            }
            out.push(v.into());
        }
    }
    Ok(QsResponse::AddPackages(out))
}

/// Mixes the client's fresh randomness into its queue ratchet. Only the mixed secret is stored:
/// a copy of the record taken before this cannot decrypt anything enqueued after it.
fn rekey(txn: &mut Txn<'_>, client: &ClientId, fresh: &[u8]) -> Result<QsResponse, HubError> {
    let fresh: &[u8; 32] = fresh.try_into().map_err(|_| {
        HubError::Request(RequestError::Invalid("rekey randomness must be 32 bytes"))
    })?;
    let fresh_hash: [u8; 32] = Sha256::digest(fresh).into();
    let mut state = ratchet_record(txn, client)?;
    if let Some(last) = &state.last_rekey
        && last.fresh_hash == fresh_hash
    {
        return Ok(QsResponse::Rekeyed(last.seq));
    }
    let mut ratchet = state.ratchet()?;
    ratchet.mix(fresh);
    let seq = ratchet.next_seq();
    state.ratchet = ratchet.to_bytes();
    state.last_rekey = Some(LastRekey { fresh_hash, seq });
    txn.put_record(client, &state)?;
    Ok(QsResponse::Rekeyed(seq))
}

/// What one dequeue may touch: the acknowledged entries to delete and the next `max`.
struct DequeueWindow {
    /// Every entry below this was deleted by an earlier dequeue.
    acked_before: u64,
    /// This request acknowledges (deletes) every entry below this.
    ack_below: u64,
    /// The ratchet's next sequence number: entries are `acked_before..next_seq`.
    next_seq: u64,
    /// Most messages to return.
    max: usize,
}

/// Deletes the acknowledged entries and returns the next ones. The scan reads only the
/// entries it deletes plus one more than it returns (to know whether more remain), never the
/// whole queue.
fn dequeue(txn: &mut Txn<'_>, client: &ClientId, w: DequeueWindow) -> Result<QsResponse, HubError> {
    let acked = usize::try_from(w.ack_below.saturating_sub(w.acked_before)).unwrap_or(usize::MAX);
    let scan = acked.saturating_add(w.max).saturating_add(1);
    let mut messages = Vec::new();
    let mut more = false;
    for (k, v) in txn.scan_prefix(Cf::QsQueues, client, scan)? {
        let seq = k
            .get(16..24)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| HubError::corrupt("qs_queues", "key without a sequence number"))?;
        if seq < w.ack_below {
            txn.delete(Cf::QsQueues, k);
        } else if messages.len() < w.max {
            messages.push(QueuedCiphertext {
                seq,
                ciphertext: v.into(),
            });
        } else {
            more = true;
        }
    }
    // Entries after the last one returned run without a gap up to the ratchet's position, so
    // what is left is counted without reading it; zero whenever the scan saw nothing beyond
    // this batch.
    let remaining = if more {
        let first_left = messages
            .last()
            .map_or(w.ack_below.max(w.acked_before), |m| m.seq + 1);
        w.next_seq.saturating_sub(first_left).max(1)
    } else {
        0
    };
    Ok(QsResponse::Messages(Messages {
        messages,
        remaining,
    }))
}

#[cfg(test)]
mod address_mode_tests {
    use super::*;

    #[test]
    fn each_mode_takes_only_its_own_addresses() {
        let sealed = QueueAddress::Sealed(HpkeCiphertextWire {
            kem_output: vec![1; 32].into(),
            ciphertext: vec![2; 32].into(),
        });
        let plain =
            QueueAddress::Plain(mimi_rm_protocol::queue::QueueRefPlain { client_id: [3; 16] });
        assert!(check_address_mode(&sealed, DsMode::Rm).is_ok());
        assert!(check_address_mode(&plain, DsMode::Baseline).is_ok());
        assert!(matches!(
            check_address_mode(&plain, DsMode::Rm),
            Err(HubError::Request(RequestError::Invalid(_)))
        ));
        assert!(matches!(
            check_address_mode(&sealed, DsMode::Baseline),
            Err(HubError::Request(RequestError::Invalid(_)))
        ));
    }
}
