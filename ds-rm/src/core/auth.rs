//! The authentication service: handles, client credentials and the AS signing keys.
//!
//! The AS is the one part of the hub that knows identities. It stores, per handle, the user's
//! current client credentials (`as_users`) and its own signing keys (`as_keys`), and nothing
//! about groups, queues, leaf pseudonyms or QS ids: the DS and QS never read these families and
//! the AS never reads theirs, so the two halves of the hub cannot be joined through the store.
//!
//! Key hierarchy: a self-signed root (10 years) certifies an online intermediate (1 year) that
//! issues client credentials. Both private keys are created on first start and kept in
//! `as_keys`; a production deployment would keep the root offline or in an HSM. An expired
//! intermediate is replaced from the root at the next start; an expired root is not handled
//! (it needs an operator ceremony and a new trust anchor for clients).

use crate::core::HubError;
use crate::core::connections;
use crate::core::replay::ReplayGuard;
use crate::core::{IdentityError, RequestError};
use crate::store::{Cf, Record, Store, Txn};
use mimi_rm_crypto::sign::SigningKey;
use mimi_rm_protocol::auth::{
    AS_REQUEST_SIGNATURE_LABEL, AsOperation, AsRequest, AsRequestTbs, AsResponse, AsSender,
};
use mimi_rm_protocol::credentials::{
    AsCredential, AsCredentials, AsIntermediateCredential, ClientCredential, ClientCredentialCsr,
    ClientIdentity, CredentialError, ExpirationData,
};
use mimi_rm_protocol::encode;
use mimi_rm_protocol::revocation::{MAX_REVOKED, RevocationList, revoked_entry};
use tls_codec::{TlsDeserialize, TlsSerialize, TlsSize};

/// Validity of the root: long, because clients pin it per domain.
pub const ROOT_LIFETIME_SECS: u64 = 10 * 365 * 24 * 60 * 60;
/// Validity of the intermediate: short enough that a leaked online key expires within a year.
pub const INTERMEDIATE_LIFETIME_SECS: u64 = 365 * 24 * 60 * 60;
/// Longest handle, in bytes (handles are ASCII).
pub const MAX_HANDLE_LEN: usize = 64;
pub use crate::core::limits::MAX_CLIENTS_PER_USER;

const ROOT_RECORD: &[u8] = b"root_v1";
const INTERMEDIATE_RECORD: &[u8] = b"intermediate_v1";

/// What `as_users` holds per handle: the user's current client credentials.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct AsUserRecord {
    /// One credential per device, in issue order.
    pub clients: Vec<ClientCredential>,
}

/// The root key and its self-signed credential, as stored in `as_keys`.
#[derive(TlsSerialize, TlsDeserialize, TlsSize)]
struct StoredRoot {
    seed: [u8; 32],
    credential: AsCredential,
}

/// The intermediate key and its credential, as stored in `as_keys`.
#[derive(TlsSerialize, TlsDeserialize, TlsSize)]
struct StoredIntermediate {
    seed: [u8; 32],
    credential: AsIntermediateCredential,
}

impl Record for AsUserRecord {
    const CF: Cf = Cf::AsUsers;
    /// At most [`MAX_CLIENTS_PER_USER`] client credentials of well under 1 KiB each.
    const MAX_BYTES: usize = 256 << 10;
    type Key = [u8];
}

impl Record for StoredRoot {
    const CF: Cf = Cf::AsKeys;
    /// A seed and one self-signed credential.
    const MAX_BYTES: usize = 4096;
    type Key = [u8];
}

impl Record for StoredIntermediate {
    const CF: Cf = Cf::AsKeys;
    /// A seed and one credential signed by the root.
    const MAX_BYTES: usize = 4096;
    type Key = [u8];
}

/// The AS signing keys, loaded once at start so requests never read key material from disk.
pub struct AsKeys {
    root: AsCredential,
    intermediate_key: SigningKey,
    intermediate: AsIntermediateCredential,
}

fn internal(e: impl std::fmt::Display) -> HubError {
    HubError::Bug(e.to_string())
}

/// The signing key of a stored seed, checked against the public key its credential names.
fn matching_key(
    seed: &[u8; 32],
    public_key: &tls_codec::VLBytes,
    what: &str,
) -> Result<SigningKey, HubError> {
    let key = SigningKey::from_bytes(seed).map_err(|e| HubError::corrupt("as_keys", e))?;
    if key.verifying_key().as_bytes().as_slice() != public_key.as_slice() {
        return Err(HubError::corrupt(
            "as_keys",
            format!("AS {what} key does not match"),
        ));
    }
    Ok(key)
}

/// A new self-signed root, written in `txn`.
fn create_root(
    txn: &mut Txn<'_>,
    domain: &str,
    now_s: u64,
) -> Result<(SigningKey, AsCredential), HubError> {
    let key = SigningKey::generate();
    let credential = AsCredential::issue(
        &key,
        domain,
        ExpirationData::starting(now_s, ROOT_LIFETIME_SECS),
    )
    .map_err(internal)?;
    let record = StoredRoot {
        seed: key.to_bytes(),
        credential: credential.clone(),
    };
    txn.put_record(ROOT_RECORD, &record)?;
    Ok((key, credential))
}

/// A new intermediate signed by the root, valid no longer than the root, written in `txn`.
fn create_intermediate(
    txn: &mut Txn<'_>,
    root_key: &SigningKey,
    root: &AsCredential,
    now_s: u64,
) -> Result<(SigningKey, AsIntermediateCredential), HubError> {
    let key = SigningKey::generate();
    let mut expiration = ExpirationData::starting(now_s, INTERMEDIATE_LIFETIME_SECS);
    expiration.not_after = expiration.not_after.min(root.tbs.expiration.not_after);
    let credential =
        AsIntermediateCredential::issue(root_key, root, &key.verifying_key(), expiration)
            .map_err(internal)?;
    let record = StoredIntermediate {
        seed: key.to_bytes(),
        credential: credential.clone(),
    };
    txn.put_record(INTERMEDIATE_RECORD, &record)?;
    Ok((key, credential))
}

impl AsKeys {
    /// Loads the AS keys from `as_keys`, creating the root and intermediate on first start and
    /// replacing an expired intermediate, so a fresh data directory is immediately usable.
    pub fn load_or_create(store: &dyn Store, domain: &str, now_s: u64) -> Result<Self, HubError> {
        let mut txn = Txn::new(store);
        let (root_key, root) = match txn.get_record::<StoredRoot>(ROOT_RECORD)? {
            Some(r) => (
                matching_key(&r.seed, &r.credential.tbs.public_key, "root")?,
                r.credential,
            ),
            None => create_root(&mut txn, domain, now_s)?,
        };
        let existing = match txn.get_record::<StoredIntermediate>(INTERMEDIATE_RECORD)? {
            Some(r) => {
                let key = matching_key(&r.seed, &r.credential.tbs.public_key, "intermediate")?;
                // Rotate on start once it can no longer issue (or the root changed).
                match r.credential.verify(&root, now_s) {
                    Ok(()) => Some((key, r.credential)),
                    Err(e) => {
                        tracing::warn!(error = %e, "replacing the AS intermediate credential");
                        None
                    }
                }
            }
            None => None,
        };
        let (intermediate_key, intermediate) = match existing {
            Some(pair) => pair,
            None => create_intermediate(&mut txn, &root_key, &root, now_s)?,
        };
        txn.commit()?;
        Ok(Self {
            root,
            intermediate_key,
            intermediate,
        })
    }

    /// What verifiers need: the root and the intermediate.
    pub fn credentials(&self) -> AsCredentials {
        AsCredentials {
            roots: vec![self.root.clone()],
            intermediates: vec![self.intermediate.clone()],
        }
    }
}

/// What one AS request needs besides the store.
pub struct AsContext<'a> {
    /// The AS keys.
    pub keys: &'a AsKeys,
    /// Replay cache shared with the DS and QS.
    pub replay: &'a ReplayGuard,
    /// The hub's clock.
    pub now_ms: u64,
    /// Lifetime of newly issued client credentials.
    pub client_lifetime_secs: u64,
    /// Fresh ids (connection-request inbox keys).
    pub ids: &'a dyn crate::core::ids::IdSource,
    /// Registration needs an invitation code.
    pub invite_only: bool,
    /// The provider domain (named in signed revocation lists).
    pub domain: &'a str,
    /// The request spent a registration token (bought with an invitation code, a device's
    /// vouch, or at an open provider): at an invitation-only provider that admits
    /// `RegisterUser` without a code of its own.
    pub paid_registration: bool,
}

impl AsContext<'_> {
    fn now_s(&self) -> u64 {
        self.now_ms / 1000
    }
}

/// Checks that a handle is 1–64 bytes of `[a-z0-9._-]`, so handles compare byte-wise and cannot
/// be confused through Unicode look-alikes or case.
pub fn validate_handle(handle: &[u8]) -> Result<(), HubError> {
    if handle.is_empty() {
        return Err(HubError::Identity(IdentityError::InvalidHandle("empty")));
    }
    if handle.len() > MAX_HANDLE_LEN {
        return Err(HubError::Identity(IdentityError::InvalidHandle(
            "longer than 64 characters",
        )));
    }
    let allowed = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(b);
    if !handle.iter().all(allowed) {
        return Err(HubError::Identity(IdentityError::InvalidHandle(
            "characters outside [a-z0-9._-]",
        )));
    }
    Ok(())
}

/// The handle whose record a request may write, so the caller can lock it before `process`.
pub fn handle_written(req: &AsRequest) -> Option<&[u8]> {
    match (&req.tbs.sender, &req.tbs.operation) {
        (AsSender::Anonymous, AsOperation::RegisterUser(csr)) => {
            Some(csr.tbs.identity.handle.as_slice())
        }
        (AsSender::Anonymous, AsOperation::RegisterInvited(r)) => {
            Some(r.csr.tbs.identity.handle.as_slice())
        }
        (AsSender::Anonymous, AsOperation::FetchConnectionPackage(handle)) => {
            Some(handle.as_slice())
        }
        (AsSender::Anonymous, AsOperation::SendConnectionRequest(r)) => Some(r.handle.as_slice()),
        (AsSender::Client(id), _) => Some(id.handle.as_slice()),
        _ => None,
    }
}

/// The bytes a client credential key signs for an AS request.
pub fn signed_bytes(tbs: &AsRequestTbs) -> Result<Vec<u8>, HubError> {
    encode(tbs).map_err(|e| HubError::malformed("AS request", e))
}

fn load_user(txn: &Txn<'_>, handle: &[u8]) -> Result<Option<AsUserRecord>, HubError> {
    Ok(txn.get_record::<AsUserRecord>(handle)?)
}

fn store_user(txn: &mut Txn<'_>, handle: &[u8], record: &AsUserRecord) -> Result<(), HubError> {
    Ok(txn.put_record(handle, record)?)
}

/// Proof of possession of the CSR key; a key that is not an Ed25519 point is a bad request.
fn verify_csr(csr: &ClientCredentialCsr) -> Result<(), HubError> {
    csr.verify().map_err(|e| match e {
        CredentialError::Malformed(_) => HubError::Request(RequestError::Invalid(
            "CSR public key is not an Ed25519 key",
        )),
        _ => HubError::Request(RequestError::InvalidSignature),
    })
}

/// Issues a credential for a verified CSR; it never outlives the intermediate.
fn issue(ctx: &AsContext<'_>, csr: &ClientCredentialCsr) -> Result<ClientCredential, HubError> {
    let now = ctx.now_s();
    let limit = ctx.keys.intermediate.tbs.expiration;
    if !limit.contains(now) {
        return Err(HubError::Bug(
            "AS intermediate credential expired; restart the hub to rotate it".into(),
        ));
    }
    let mut expiration = ExpirationData::starting(now, ctx.client_lifetime_secs);
    expiration.not_after = expiration.not_after.min(limit.not_after);
    ClientCredential::issue(
        &ctx.keys.intermediate_key,
        &ctx.keys.intermediate,
        csr,
        expiration,
    )
    .map_err(|e| match e {
        CredentialError::BadSignature(_) => HubError::Request(RequestError::InvalidSignature),
        other => internal(other),
    })
}

/// Processes one AS request. Freshness was checked by the caller; for signed requests replay is
/// checked here after the signature. Only successful requests leave writes in `txn`.
pub fn process(
    ctx: &AsContext<'_>,
    txn: &mut Txn<'_>,
    req: &AsRequest,
) -> Result<AsResponse, HubError> {
    match (&req.tbs.sender, &req.tbs.operation) {
        (AsSender::Anonymous, op) => {
            if !req.signature.as_slice().is_empty() {
                return Err(HubError::Request(RequestError::Invalid(
                    "anonymous requests carry no signature",
                )));
            }
            match op {
                AsOperation::RegisterUser(_) if ctx.invite_only && !ctx.paid_registration => {
                    Err(HubError::Request(RequestError::NotAuthorized(
                        "this provider registers by invitation only",
                    )))
                }
                AsOperation::RegisterUser(csr) => register_user(ctx, txn, csr),
                // The code is the payment, at any provider: an open one that gates registration
                // with tokens must not register for an unknown code.
                AsOperation::RegisterInvited(r) => {
                    use_invite(txn, r.invite.as_slice())?;
                    register_user(ctx, txn, &r.csr)
                }
                AsOperation::AsCredentials => Ok(AsResponse::AsCredentials(ctx.keys.credentials())),
                AsOperation::RevocationList => revocation_list(ctx, txn),
                AsOperation::UserClients(handle) => user_clients(ctx, txn, handle.as_slice()),
                AsOperation::FetchConnectionPackage(handle) => {
                    validate_handle(handle.as_slice())?;
                    connections::fetch_package(txn, handle.as_slice(), ctx.now_s())
                }
                AsOperation::SendConnectionRequest(r) => {
                    validate_handle(r.handle.as_slice())?;
                    if load_user(txn, r.handle.as_slice())?.is_none() {
                        return Err(HubError::Identity(IdentityError::UnknownUser));
                    }
                    connections::leave_request(
                        txn,
                        ctx.ids,
                        r.handle.as_slice(),
                        r.device,
                        &r.request,
                    )
                }
                AsOperation::AddClient(_)
                | AsOperation::PublishConnectionPackages(_)
                | AsOperation::FetchConnectionRequests
                | AsOperation::RevokeClient(_) => {
                    Err(HubError::Request(RequestError::NotAuthorized(
                        "this operation needs a signed request from a client of the user",
                    )))
                }
            }
        }
        (AsSender::Client(id), op) => {
            let current = authenticate_client(ctx, txn, req, id)?;
            match op {
                AsOperation::AddClient(csr) => add_client(ctx, txn, id, csr),
                AsOperation::PublishConnectionPackages(p) => {
                    connections::publish(txn, &current, p, ctx.now_s())
                }
                AsOperation::FetchConnectionRequests => {
                    connections::take_requests(txn, id.handle.as_slice(), id.device)
                }
                AsOperation::RevokeClient(device) => revoke_client(txn, id, *device),
                _ => Err(HubError::Request(RequestError::NotAuthorized(
                    "operation is anonymous; a client may not sign it",
                ))),
            }
        }
    }
}

/// Verifies a request signed by a current client credential of its user; returns it.
fn authenticate_client(
    ctx: &AsContext<'_>,
    txn: &Txn<'_>,
    req: &AsRequest,
    sender: &ClientIdentity,
) -> Result<ClientCredential, HubError> {
    let record = load_user(txn, sender.handle.as_slice())?
        .ok_or(HubError::Identity(IdentityError::UnknownUser))?;
    let current = record
        .clients
        .into_iter()
        .find(|c| c.tbs.identity == *sender)
        .ok_or(HubError::Identity(IdentityError::UnknownUser))?;
    if !current.tbs.expiration.contains(ctx.now_s()) {
        return Err(HubError::Identity(IdentityError::ExpiredCredential));
    }
    current
        .verifying_key()
        .map_err(internal)?
        .verify(
            AS_REQUEST_SIGNATURE_LABEL,
            &signed_bytes(&req.tbs)?,
            req.signature.as_slice(),
        )
        .map_err(|_| HubError::Request(RequestError::InvalidSignature))?;
    ctx.replay
        .check_and_record(req.signature.as_slice(), req.tbs.timestamp_ms, ctx.now_ms)?;
    Ok(current)
}

/// The SHA-256 an invitation code is stored under.
pub fn invite_hash(code: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(code).into()
}

/// Consumes an unused invitation code, in the registration's own batch.
pub(crate) fn use_invite(txn: &mut Txn<'_>, code: &[u8]) -> Result<(), HubError> {
    let key = invite_hash(code).to_vec();
    if txn.get(Cf::AsInvites, &key)?.is_none() {
        return Err(HubError::Request(RequestError::NotAuthorized(
            "unknown or already used invitation",
        )));
    }
    txn.delete(Cf::AsInvites, key);
    Ok(())
}

/// Makes `count` fresh invitation codes (hex of 16 random bytes), storing only their hashes:
/// a seized disk does not yield a usable code.
pub fn make_invites(store: &dyn Store, count: usize) -> Result<Vec<String>, HubError> {
    let mut txn = Txn::new(store);
    let mut codes = Vec::with_capacity(count);
    for _ in 0..count {
        let code = hex::encode(mimi_rm_crypto::ids::random_id());
        txn.put(
            Cf::AsInvites,
            invite_hash(code.as_bytes()).to_vec(),
            Vec::new(),
        );
        codes.push(code);
    }
    txn.commit()?;
    Ok(codes)
}

fn register_user(
    ctx: &AsContext<'_>,
    txn: &mut Txn<'_>,
    csr: &ClientCredentialCsr,
) -> Result<AsResponse, HubError> {
    verify_csr(csr)?;
    let handle = csr.tbs.identity.handle.as_slice();
    validate_handle(handle)?;
    if txn.get(Cf::AsUsers, handle)?.is_some() {
        return Err(HubError::Identity(IdentityError::HandleTaken));
    }
    let credential = issue(ctx, csr)?;
    store_user(
        txn,
        handle,
        &AsUserRecord {
            clients: vec![credential.clone()],
        },
    )?;
    Ok(AsResponse::ClientCredential(credential))
}

fn add_client(
    ctx: &AsContext<'_>,
    txn: &mut Txn<'_>,
    sender: &ClientIdentity,
    csr: &ClientCredentialCsr,
) -> Result<AsResponse, HubError> {
    let now = ctx.now_s();
    let mut record = load_user(txn, sender.handle.as_slice())?
        .ok_or(HubError::Identity(IdentityError::UnknownUser))?;
    if csr.tbs.identity.handle != sender.handle {
        return Err(HubError::Request(RequestError::NotAuthorized(
            "a client may only add clients of its own user",
        )));
    }
    verify_csr(csr)?;
    let credential = issue(ctx, csr)?;
    // Expired credentials are dropped; re-certifying an existing device replaces its entry.
    record
        .clients
        .retain(|c| c.tbs.expiration.contains(now) && c.tbs.identity != csr.tbs.identity);
    if record.clients.len() >= MAX_CLIENTS_PER_USER {
        return Err(HubError::Request(RequestError::LimitExceeded(
            "clients per user",
        )));
    }
    record.clients.push(credential.clone());
    store_user(txn, sender.handle.as_slice(), &record)?;
    Ok(AsResponse::ClientCredential(credential))
}

/// Removes `device` from its user's current credentials (see `AsOperation::RevokeClient`).
/// Revoking a device that is already gone answers `Ok` again, so a retried request is safe.
fn revoke_client(
    txn: &mut Txn<'_>,
    sender: &ClientIdentity,
    device: [u8; 16],
) -> Result<AsResponse, HubError> {
    let handle = sender.handle.as_slice();
    let mut record =
        load_user(txn, handle)?.ok_or(HubError::Identity(IdentityError::UnknownUser))?;
    let (revoked, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut record.clients)
        .into_iter()
        .partition(|c| c.tbs.identity.device == device);
    record.clients = kept;
    let Some(valid_until) = revoked.iter().map(|c| c.tbs.expiration.not_after).max() else {
        return Ok(AsResponse::Ok);
    };
    if record.clients.is_empty() {
        return Err(HubError::Request(RequestError::Invalid(
            "a user's last device cannot be revoked",
        )));
    }
    store_user(txn, handle, &record)?;
    connections::forget_device(txn, handle, device)?;
    let identity = ClientIdentity {
        handle: handle.to_vec().into(),
        device,
    };
    txn.put(
        Cf::AsRevoked,
        revoked_entry(&identity).map_err(internal)?.to_vec(),
        valid_until.to_be_bytes().to_vec(),
    );
    Ok(AsResponse::Ok)
}

/// The signed list of revoked devices whose credentials have not all expired; entries that
/// have are deleted on the way (in this request's batch). A list too long to serve is refused
/// rather than cut short: a verifier must never get a list with a revoked device left out.
fn revocation_list(ctx: &AsContext<'_>, txn: &mut Txn<'_>) -> Result<AsResponse, HubError> {
    let now = ctx.now_s();
    let mut revoked = Vec::new();
    for (entry, until) in txn.scan_prefix(Cf::AsRevoked, b"", usize::MAX)? {
        if revoked_until(&until)? < now {
            txn.delete(Cf::AsRevoked, entry);
        } else if let Ok(e) = <[u8; 32]>::try_from(entry.as_slice()) {
            revoked.push(e);
        }
    }
    if revoked.len() > MAX_REVOKED {
        return Err(HubError::Bug(format!(
            "{} revoked devices exceed the list limit of {MAX_REVOKED}",
            revoked.len()
        )));
    }
    let list = RevocationList::sign(
        &ctx.keys.intermediate_key,
        &ctx.keys.intermediate,
        ctx.domain,
        now,
        revoked,
    )
    .map_err(internal)?;
    Ok(AsResponse::RevocationList(list))
}

/// The last second of validity an `as_revoked` value records.
fn revoked_until(value: &[u8]) -> Result<u64, HubError> {
    value
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| HubError::corrupt("as_revoked", "expiry is not 8 bytes"))
}

/// Deletes the revocation entries whose credentials have all expired (they verify nowhere any
/// more, so the list no longer needs to name them). Returns how many went.
pub fn prune_revocations(store: &dyn Store, now_s: u64) -> Result<usize, HubError> {
    let mut txn = Txn::new(store);
    let mut pruned = 0;
    for (entry, until) in store.scan_prefix(Cf::AsRevoked, b"", usize::MAX)? {
        if revoked_until(&until)? < now_s {
            txn.delete(Cf::AsRevoked, entry);
            pruned += 1;
        }
    }
    txn.commit()?;
    Ok(pruned)
}

fn user_clients(ctx: &AsContext<'_>, txn: &Txn<'_>, handle: &[u8]) -> Result<AsResponse, HubError> {
    validate_handle(handle)?;
    let record = load_user(txn, handle)?.ok_or(HubError::Identity(IdentityError::UnknownUser))?;
    let now = ctx.now_s();
    Ok(AsResponse::UserClients(
        record
            .clients
            .into_iter()
            .filter(|c| c.tbs.expiration.contains(now))
            .collect(),
    ))
}

/// Whether `credential` is one of its user's current client credentials here (a removed or
/// replaced device no longer is). Used by the token issuer, which serves current devices only.
pub fn is_current_client(
    store: &dyn Store,
    credential: &ClientCredential,
) -> Result<bool, HubError> {
    let txn = Txn::new(store);
    Ok(load_user(&txn, credential.tbs.identity.handle.as_slice())?
        .is_some_and(|u| u.clients.iter().any(|c| c == credential)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    const NOW_MS: u64 = 1_800_000_000_000;

    fn csr(key: &SigningKey, handle: &str, device: u8) -> ClientCredentialCsr {
        ClientCredentialCsr::new(
            key,
            ClientIdentity {
                handle: handle.as_bytes().to_vec().into(),
                device: [device; 16],
            },
        )
        .unwrap()
    }

    fn anon(op: AsOperation) -> AsRequest {
        AsRequest {
            tbs: AsRequestTbs {
                timestamp_ms: NOW_MS,
                nonce: rand::random(),
                sender: AsSender::Anonymous,
                operation: op,
            },
            signature: Vec::new().into(),
        }
    }

    fn run(
        store: &MemStore,
        keys: &AsKeys,
        replay: &ReplayGuard,
        req: &AsRequest,
    ) -> Result<AsResponse, HubError> {
        let ctx = AsContext {
            keys,
            replay,
            now_ms: NOW_MS,
            client_lifetime_secs: 100,
            ids: &crate::core::ids::OsIds,
            invite_only: false,
            domain: "a.test",
            paid_registration: false,
        };
        let mut txn = Txn::new(store);
        let out = process(&ctx, &mut txn, req)?;
        txn.commit()?;
        Ok(out)
    }

    #[test]
    fn keys_survive_a_restart() {
        let store = MemStore::default();
        let a = AsKeys::load_or_create(&store, "hub.test", NOW_MS / 1000).unwrap();
        let b = AsKeys::load_or_create(&store, "hub.test", NOW_MS / 1000 + 5).unwrap();
        assert_eq!(a.credentials(), b.credentials());
        a.intermediate.verify(&a.root, NOW_MS / 1000).unwrap();
    }

    #[test]
    fn an_expired_intermediate_is_replaced_at_start() {
        let store = MemStore::default();
        let now = NOW_MS / 1000;
        let a = AsKeys::load_or_create(&store, "hub.test", now).unwrap();
        let later = now + INTERMEDIATE_LIFETIME_SECS + 1;
        let b = AsKeys::load_or_create(&store, "hub.test", later).unwrap();
        assert_eq!(a.root, b.root);
        assert_ne!(a.intermediate, b.intermediate);
        b.intermediate.verify(&b.root, later).unwrap();
    }

    #[test]
    fn register_then_list_and_reject_duplicates() {
        let store = MemStore::default();
        let keys = AsKeys::load_or_create(&store, "hub.test", NOW_MS / 1000).unwrap();
        let replay = ReplayGuard::new(60_000, 0);
        let k = SigningKey::generate();
        let AsResponse::ClientCredential(cred) = run(
            &store,
            &keys,
            &replay,
            &anon(AsOperation::RegisterUser(csr(&k, "alice", 1))),
        )
        .unwrap() else {
            panic!("wrong response");
        };
        cred.verify_chain(&keys.credentials(), NOW_MS / 1000)
            .unwrap();
        assert!(matches!(
            run(
                &store,
                &keys,
                &replay,
                &anon(AsOperation::RegisterUser(csr(&k, "alice", 2)))
            ),
            Err(HubError::Identity(IdentityError::HandleTaken))
        ));
        assert_eq!(
            run(
                &store,
                &keys,
                &replay,
                &anon(AsOperation::UserClients(b"alice".to_vec().into()))
            )
            .unwrap(),
            AsResponse::UserClients(vec![cred])
        );
    }

    fn signed(by: &SigningKey, sender: ClientIdentity, op: AsOperation) -> AsRequest {
        let tbs = AsRequestTbs {
            timestamp_ms: NOW_MS,
            nonce: rand::random(),
            sender: AsSender::Client(sender),
            operation: op,
        };
        let signature = by.sign(AS_REQUEST_SIGNATURE_LABEL, &encode(&tbs).unwrap());
        AsRequest {
            tbs,
            signature: signature.into(),
        }
    }

    #[test]
    fn recertifying_a_device_replaces_it_and_users_are_bounded() {
        let store = MemStore::default();
        let keys = AsKeys::load_or_create(&store, "hub.test", NOW_MS / 1000).unwrap();
        let replay = ReplayGuard::new(60_000, 0);
        let k = SigningKey::generate();
        let first = csr(&k, "alice", 0);
        let me = first.tbs.identity.clone();
        run(
            &store,
            &keys,
            &replay,
            &anon(AsOperation::RegisterUser(first)),
        )
        .unwrap();
        // The same device with a new key: still one credential, now for the new key.
        let k2 = SigningKey::generate();
        let again = signed(&k, me.clone(), AsOperation::AddClient(csr(&k2, "alice", 0)));
        run(&store, &keys, &replay, &again).unwrap();
        let list = |store: &MemStore| match run(
            store,
            &keys,
            &replay,
            &anon(AsOperation::UserClients(b"alice".to_vec().into())),
        ) {
            Ok(AsResponse::UserClients(c)) => c,
            other => panic!("{other:?}"),
        };
        let clients = list(&store);
        assert_eq!(clients.len(), 1);
        assert_eq!(
            clients[0].tbs.public_key.as_slice(),
            k2.verifying_key().as_bytes()
        );
        for d in 1..MAX_CLIENTS_PER_USER as u8 {
            let req = signed(
                &k2,
                me.clone(),
                AsOperation::AddClient(csr(&SigningKey::generate(), "alice", d)),
            );
            run(&store, &keys, &replay, &req).unwrap();
        }
        assert_eq!(list(&store).len(), MAX_CLIENTS_PER_USER);
        let req = signed(
            &k2,
            me,
            AsOperation::AddClient(csr(&SigningKey::generate(), "alice", 200)),
        );
        let before = store.dump().unwrap();
        assert!(matches!(
            run(&store, &keys, &replay, &req),
            Err(HubError::Request(RequestError::LimitExceeded(_)))
        ));
        assert_eq!(store.dump().unwrap(), before);
    }

    #[test]
    fn handles_are_checked() {
        for ok in ["a", "alice.b-c_9", &"x".repeat(64)] {
            validate_handle(ok.as_bytes()).unwrap();
        }
        for bad in ["", "Alice", "al ice", "ali\u{e7}e", &"x".repeat(65), "a/b"] {
            assert!(matches!(
                validate_handle(bad.as_bytes()),
                Err(HubError::Identity(IdentityError::InvalidHandle(_)))
            ));
        }
    }
}
