//! The AS side of consent-based connections: published connection packages and the per-user
//! inbox of sealed connection requests.
//!
//! The AS already knows handles and client credentials, so storing packages under the handle
//! reveals nothing new. A request is left anonymously and sealed to the responder's package key:
//! the AS learns that *someone* asked this handle, never who, and cannot read or alter the offer.
//! Fetching the inbox deletes it.

use crate::core::HubError;
use crate::core::ids::IdSource;
use crate::core::{IdentityError, RequestError};
use crate::store::{Cf, Record, Txn, record};
use mimi_rm_protocol::auth::AsResponse;
use mimi_rm_protocol::connection::{ConnectionPackage, ConnectionRequest};
use mimi_rm_protocol::credentials::ClientCredential;
use tls_codec::{TlsDeserialize, TlsSerialize, TlsSize};

/// Most connection packages one client may publish at once.
pub const MAX_PACKAGES_PER_CLIENT: usize = 100;
/// Most requests waiting for one user; further ones are refused until it reads its inbox.
pub const MAX_PENDING_REQUESTS: usize = 1000;
/// Longest validity a package may claim (seconds): keys are rotated at least this often.
pub const MAX_PACKAGE_LIFETIME_SECS: u64 = 90 * 24 * 60 * 60;

/// One device's packages.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
struct DevicePackages {
    device: [u8; 16],
    packages: Vec<ConnectionPackage>,
}

/// What `as_connection_packages` holds per handle.
#[derive(Debug, Clone, Default, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
struct PackagesRecord {
    devices: Vec<DevicePackages>,
}

impl Record for PackagesRecord {
    const CF: Cf = Cf::AsConnectionPackages;
    /// [`MAX_CLIENTS_PER_USER`](crate::core::limits::MAX_CLIENTS_PER_USER) devices with
    /// [`MAX_PACKAGES_PER_CLIENT`] packages of a few hundred bytes each.
    const MAX_BYTES: usize = 16 << 20;
    type Key = [u8];
}

impl Record for ConnectionRequest {
    const CF: Cf = Cf::AsConnectionRequests;
    /// A sealed offer arrives in one request body, which the hub caps well below this.
    const MAX_BYTES: usize = 1 << 20;
    type Key = [u8];
}

fn load(txn: &Txn<'_>, handle: &[u8]) -> Result<PackagesRecord, HubError> {
    Ok(txn
        .get_record::<PackagesRecord>(handle)?
        .unwrap_or_default())
}

fn store(txn: &mut Txn<'_>, handle: &[u8], record: &PackagesRecord) -> Result<(), HubError> {
    if record.devices.is_empty() {
        txn.delete_record::<PackagesRecord>(handle);
        return Ok(());
    }
    Ok(txn.put_record(handle, record)?)
}

/// Replaces the packages of the (already authenticated) client `sender`. Each must be signed by
/// exactly that credential, valid now, and not claim a longer life than the AS allows.
pub fn publish(
    txn: &mut Txn<'_>,
    sender: &ClientCredential,
    packages: &[ConnectionPackage],
    now_s: u64,
) -> Result<AsResponse, HubError> {
    if packages.is_empty() || packages.len() > MAX_PACKAGES_PER_CLIENT {
        return Err(HubError::Request(RequestError::Invalid(
            "publish between 1 and 100 connection packages",
        )));
    }
    for p in packages {
        if p.tbs.client_credential != *sender {
            return Err(HubError::Request(RequestError::NotAuthorized(
                "a client publishes packages under its own credential only",
            )));
        }
        p.verify(None, now_s).map_err(|_| {
            HubError::Request(RequestError::Invalid("connection package does not verify"))
        })?;
        if p.tbs.expiration.not_after.saturating_sub(now_s) > MAX_PACKAGE_LIFETIME_SECS {
            return Err(HubError::Request(RequestError::Invalid(
                "connection package lives too long",
            )));
        }
        mimi_rm_crypto::hpke_seal::HpkePublicKey::from_bytes(p.tbs.encryption_key.as_slice())
            .map_err(|_| {
                HubError::Request(RequestError::Invalid(
                    "connection package key is not X25519",
                ))
            })?;
    }
    let handle = sender.tbs.identity.handle.as_slice();
    let device = sender.tbs.identity.device;
    let mut record = load(txn, handle)?;
    record.devices.retain(|d| d.device != device);
    record.devices.push(DevicePackages {
        device,
        packages: packages.to_vec(),
    });
    store(txn, handle, &record)?;
    Ok(AsResponse::Ok)
}

/// Deletes a revoked device's packages and the requests waiting for it: nobody can reach it
/// through the AS any more, and nothing sealed to it stays stored.
pub fn forget_device(txn: &mut Txn<'_>, handle: &[u8], device: [u8; 16]) -> Result<(), HubError> {
    let mut record = load(txn, handle)?;
    record.devices.retain(|d| d.device != device);
    store(txn, handle, &record)?;
    for (key, _) in txn.scan_prefix(
        Cf::AsConnectionRequests,
        &inbox_prefix(handle, device),
        usize::MAX,
    )? {
        txn.delete(Cf::AsConnectionRequests, key);
    }
    Ok(())
}

/// Hands out one valid package of `handle`, consuming it unless it is its device's last (so a
/// user stays reachable until it publishes more). Expired packages are dropped on the way.
pub fn fetch_package(txn: &mut Txn<'_>, handle: &[u8], now_s: u64) -> Result<AsResponse, HubError> {
    let mut record = load(txn, handle)?;
    for d in &mut record.devices {
        d.packages.retain(|p| p.tbs.expiration.contains(now_s));
    }
    record.devices.retain(|d| !d.packages.is_empty());
    // The device with the most packages left serves this request.
    let Some(d) = record.devices.iter_mut().max_by_key(|d| d.packages.len()) else {
        store(txn, handle, &record)?;
        return Err(HubError::Identity(IdentityError::UnknownUser));
    };
    let package = if d.packages.len() > 1 {
        d.packages.remove(0)
    } else {
        d.packages[0].clone()
    };
    store(txn, handle, &record)?;
    Ok(AsResponse::ConnectionPackage(package))
}

fn inbox_prefix(handle: &[u8], device: [u8; 16]) -> Vec<u8> {
    // Handles never contain 0, so `handle ‖ 0 ‖ device` prefixes exactly one device's requests.
    let mut k = handle.to_vec();
    k.push(0);
    k.extend_from_slice(&device);
    k
}

/// Leaves a sealed request in the inbox of `handle`'s `device`.
pub fn leave_request(
    txn: &mut Txn<'_>,
    ids: &dyn IdSource,
    handle: &[u8],
    device: [u8; 16],
    request: &ConnectionRequest,
) -> Result<AsResponse, HubError> {
    let mut all = handle.to_vec();
    all.push(0);
    if txn
        .scan_prefix(Cf::AsConnectionRequests, &all, MAX_PENDING_REQUESTS)?
        .len()
        >= MAX_PENDING_REQUESTS
    {
        return Err(HubError::Request(RequestError::LimitExceeded(
            "pending connection requests",
        )));
    }
    let mut key = inbox_prefix(handle, device);
    key.extend_from_slice(&ids.id());
    txn.put_record(key.as_slice(), request)?;
    Ok(AsResponse::Ok)
}

/// Returns and deletes every request waiting for `handle`'s `device`.
pub fn take_requests(
    txn: &mut Txn<'_>,
    handle: &[u8],
    device: [u8; 16],
) -> Result<AsResponse, HubError> {
    let rows = txn.scan_prefix(
        Cf::AsConnectionRequests,
        &inbox_prefix(handle, device),
        MAX_PENDING_REQUESTS,
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for (key, value) in rows {
        txn.delete(Cf::AsConnectionRequests, key);
        match record::decode::<ConnectionRequest>(&value) {
            Ok(r) => out.push(r),
            Err(e) => tracing::warn!(error = %e, "dropping an undecodable stored request"),
        }
    }
    Ok(AsResponse::ConnectionRequests(out))
}
