//! Several devices (clients) of one user.
//!
//! All devices of a user share its friendship keys (so contacts fetch AddPackages for every
//! device with one token and add them all), its pseudonymous QS user, and a *user secret* from
//! which each group's user auth key (`PseudonymousUserAuth`) derives. With that key a device
//! adds its user's other devices to a group, removes them, and joins a group by external
//! commit; members never learn it.
//!
//! A new device is linked without moving a private key (see `link`). Removing a device rotates
//! the user secret: its leaves are removed with a new user auth key in every group, and the new
//! secret is sealed to each remaining device's link key and sent inside the groups.

use super::commit::Plan;
use super::leaves::leaf_key_restore;
use super::membership::InviteMode;
use super::requests::{signed_as, signed_qs};
use super::{ADD_PACKAGES, CIPHERSUITE, Client, GroupHandle, b32, encoded};
use crate::error::ClientError;
use crate::state::unhex;
use mimi_rm_crypto::ear::EarKey;
use mimi_rm_crypto::hpke_seal::{self, HpkeCiphertext, HpkePrivateKey, HpkePublicKey};
use mimi_rm_crypto::kdf::expand_label;
use mimi_rm_crypto::sign::SigningKey;
use mimi_rm_protocol::auth::AsOperation;
use mimi_rm_protocol::decode_exact;
use mimi_rm_protocol::ds::*;
use mimi_rm_protocol::qs::{QsOperation, QsSender, RemoveUserClient};
use mimi_rm_protocol::queue::HpkeCiphertextWire;
use std::collections::BTreeMap;
use tls_codec::{TlsDeserialize, TlsSerialize, TlsSize, VLBytes};

/// HPKE label of a rotated user secret.
const USER_SECRET_LABEL: &str = "user secret";
/// KDF label of per-group user auth keys.
const USER_AUTH_LABEL: &str = "user auth key";
/// First byte of an application message carrying a rotated user secret for our own devices.
pub(super) const CONTENT_USER_SECRET: u8 = 2;

/// A user's device, as its siblings know it.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub(super) struct DeviceEntry {
    pub(super) device: [u8; 16],
    pub(super) link_key: VLBytes,
}

/// A rotated user secret, sealed to each remaining device.
#[derive(Debug, TlsSerialize, TlsDeserialize, TlsSize)]
struct UserSecretUpdate {
    generation: u32,
    sealed: Vec<SealedForDevice>,
}

#[derive(Debug, TlsSerialize, TlsDeserialize, TlsSize)]
struct SealedForDevice {
    device: [u8; 16],
    secret: HpkeCiphertextWire,
}

pub(super) fn hpke_wire(ct: HpkeCiphertext) -> HpkeCiphertextWire {
    ct.into()
}

pub(super) fn hpke_ct(w: &HpkeCiphertextWire) -> HpkeCiphertext {
    w.to_ciphertext()
}

impl Client {
    /// Our user secret.
    pub(super) fn user_secret(&self) -> Result<[u8; 32], ClientError> {
        b32(&unhex(&self.state.user_secret)?)
    }

    /// Our user's auth key in `group` (see [`derive_user_auth_key`]).
    pub(super) fn user_auth_key(&self, group: &[u8]) -> Result<SigningKey, ClientError> {
        derive_user_auth_key(&self.user_secret()?, group)
    }

    /// A DS request signed with our user's auth key in `group`.
    pub(super) fn user_request(
        &self,
        group: &GroupHandle,
        ear_key: &EarKey,
        operation: DsOperation,
    ) -> Result<DsRequest, ClientError> {
        let key = self.user_auth_key(&group.0)?;
        let sender = DsSender::User(key.verifying_key().as_bytes().to_vec().into());
        let signer = openmls_basic_credential::SignatureKeyPair::from_raw(
            CIPHERSUITE.signature_algorithm(),
            key.to_bytes().to_vec(),
            key.verifying_key().as_bytes().to_vec(),
        );
        self.ds_request(&group.0, Some(ear_key), sender, operation, Some(&signer))
    }

    pub(super) fn device_entries(&self) -> Result<Vec<DeviceEntry>, ClientError> {
        self.state
            .devices
            .iter()
            .map(|(d, k)| {
                Ok(DeviceEntry {
                    device: unhex(d)?
                        .try_into()
                        .map_err(|_| ClientError::State("device id".into()))?,
                    link_key: unhex(k)?.into(),
                })
            })
            .collect()
    }

    /// The devices of our user this device knows of (hex ids).
    pub fn own_devices(&self) -> Vec<String> {
        let mut all: Vec<String> = self.state.devices.keys().cloned().collect();
        if !all.contains(&self.state.device) {
            all.push(self.state.device.clone());
        }
        all
    }

    /// Adds our user's other devices to `group` (AddClients, signed with the user auth key).
    /// Returns how many were added.
    pub async fn add_own_devices(&mut self, group: &GroupHandle) -> Result<usize, ClientError> {
        let card = self.contact_card()?;
        self.catch_up_before_commit().await?;
        self.ensure_user_key(group).await?;
        // Only devices we know as current: a removed device's packages may still be published.
        let siblings: Vec<[u8; 16]> = self
            .state
            .devices
            .keys()
            .filter(|d| **d != self.state.device)
            .filter_map(|d| unhex(d).ok().and_then(|b| b.try_into().ok()))
            .collect();
        let (kps, added, records) = self
            .fetch_add_packages_of(group, &card, Some(&siblings), InviteMode::Checked)
            .await?;
        if kps.is_empty() {
            return Ok(0);
        }
        let n = kps.len();
        let added = added
            .into_iter()
            .map(|a| AddedMember {
                user: OWN_CLIENT,
                ..a
            })
            .collect();
        self.commit(group, Plan::AddClients(kps, added)).await?;
        self.insert_added_records(group, records)?;
        Ok(n)
    }

    /// Removes device `device` (hex id) of our user from every group and rotates the user
    /// secret, so the removed device can no longer act for the user anywhere: its QS client,
    /// queue and AddPackages go, our friendship token and keys rotate (it fetches none of our
    /// AddPackages any more), and the AS revokes its credential (every verifier's revocation
    /// list names it from then on).
    pub async fn remove_device(&mut self, device: &str) -> Result<(), ClientError> {
        if device == self.state.device {
            return Err(ClientError::Unexpected(
                "a device cannot remove itself this way",
            ));
        }
        let device_id: [u8; 16] = unhex(device)?
            .try_into()
            .map_err(|_| ClientError::Unexpected("a device id is 16 bytes"))?;
        let new_secret = self.rotate_user_secret(Some(device)).await?;
        // Then the QS (after the commits, which the removed device still receives): its queue
        // and AddPackages go, and our QS user key moves to the one the new secret derives, so
        // the removed device cannot create another client of our user.
        self.remove_qs_client(device_id, &new_secret).await?;
        // At the AS: the device's credential is no longer current, so it signs nothing there
        // and gets no tokens, and it enters the signed revocation list (a retry of an applied
        // revocation is Ok). Before the friendship steps, whose failure must not leave it
        // current.
        let client_key = SigningKey::from_bytes(&unhex(&self.state.client_key)?)?;
        let req = signed_as(
            &client_key,
            self.identity()?,
            AsOperation::RevokeClient(device_id),
        )?;
        self.transport.auth(&req).await?;
        // Last, the friendship keys it knew (retried after each receive if interrupted).
        self.rotate_friendship(&new_secret).await
    }

    /// Rotates our user secret in every group — removing the leaves of `removed` (a hex device
    /// id of ours) where it has any, otherwise only moving the user auth key — and sends the
    /// new secret, sealed to each remaining device we know, inside the groups. Returns the new
    /// secret, which is ours from then on.
    pub(super) async fn rotate_user_secret(
        &mut self,
        removed: Option<&str>,
    ) -> Result<[u8; 32], ClientError> {
        let handle = self.state.name.clone();
        // The new secret is saved before any group sees a key derived from it: if this is
        // interrupted half-way, a retry continues with the same secret instead of stranding the
        // groups already rotated under a key nobody can derive.
        let new_secret: [u8; 32] = match &self.state.pending_user_secret {
            Some(hexed) => b32(&unhex(hexed)?)?,
            None => {
                let fresh = mimi_rm_crypto::ids::random_bytes();
                self.state.pending_user_secret = Some(hex::encode(fresh));
                self.persist()?;
                fresh
            }
        };
        self.catch_up().await?;
        let mut secret_update = None;
        if let Some(device) = removed {
            self.state.devices.remove(device);
        }
        for group in self.groups() {
            self.ensure_user_key(&group).await?;
            let leaves: Vec<u32> = self
                .meta(&group)?
                .members
                .iter()
                .filter(|(_, r)| {
                    r.handle.as_deref() == Some(handle.as_str())
                        && removed.is_some_and(|d| r.device.as_deref() == Some(d))
                })
                .map(|(l, _)| *l)
                .collect();
            // Signed with the current key; the commit carries the key of the new secret.
            let new_key = derive_user_auth_key(&new_secret, &group.0)?;
            let plan = if leaves.is_empty() {
                Plan::RotateUserKey(new_key.verifying_key().as_bytes().to_vec())
            } else {
                Plan::RemoveClients(leaves, new_key.verifying_key().as_bytes().to_vec())
            };
            self.commit(&group, plan).await?;
            if secret_update.is_none() {
                secret_update = Some(self.seal_user_secret(&new_secret)?);
            }
            if let Some(update) = &secret_update {
                let mut framed = vec![CONTENT_USER_SECRET];
                framed.extend(encoded(update)?);
                self.send_framed(&group, &framed).await?;
            }
        }
        self.state.user_secret = hex::encode(new_secret);
        self.state.user_secret_generation += 1;
        self.state.pending_user_secret = None;
        self.persist()?;
        Ok(new_secret)
    }

    /// Has the QS delete the removed device's client (named by its device tag) and rotate our
    /// QS user key to the one derived from the new user secret, which only current devices
    /// learn. Idempotent: after a crash the retry is signed with the key already rotated to.
    async fn remove_qs_client(
        &mut self,
        device: [u8; 16],
        secret: &[u8; 32],
    ) -> Result<(), ClientError> {
        if self.state.device_tag_key.is_empty() {
            tracing::warn!("no device tag key (a state from before tags): the QS client stays");
            return Ok(());
        }
        let new_key = qs_user_key(secret)?;
        let tag = device_tag(&unhex(&self.state.device_tag_key)?, &device)?;
        let user_id: [u8; 16] = unhex(&self.state.user_id)?
            .try_into()
            .map_err(|_| ClientError::State("user id".into()))?;
        let op = || {
            QsOperation::RemoveUserClient(RemoveUserClient {
                device_tag: tag,
                new_user_auth_key: new_key.verifying_key().as_bytes().to_vec().into(),
            })
        };
        let current = SigningKey::from_bytes(&unhex(&self.state.user_auth_key)?)?;
        let req = signed_qs(&current, QsSender::User(user_id), op())?;
        match self.transport.qs(&req).await {
            Ok(_) => {}
            // Already rotated by an interrupted earlier attempt: the new key signs the retry.
            Err(e) if e.code() == Some(mimi_rm_protocol::ErrorCode::InvalidSignature) => {
                let retry = signed_qs(&new_key, QsSender::User(user_id), op())?;
                self.transport.qs(&retry).await?;
            }
            Err(e) => return Err(e),
        }
        self.state.user_auth_key = hex::encode(new_key.to_bytes());
        self.persist()
    }

    /// The rotated secret sealed to each remaining device we know a link key for.
    fn seal_user_secret(&self, secret: &[u8; 32]) -> Result<UserSecretUpdate, ClientError> {
        let mut sealed = Vec::new();
        for entry in self.device_entries()? {
            if hex::encode(entry.device) == self.state.device {
                continue;
            }
            let pk = HpkePublicKey::from_bytes(entry.link_key.as_slice())?;
            let ct = hpke_seal::seal(&pk, USER_SECRET_LABEL, &entry.device, secret)?;
            sealed.push(SealedForDevice {
                device: entry.device,
                secret: hpke_wire(ct),
            });
        }
        Ok(UserSecretUpdate {
            generation: self.state.user_secret_generation + 1,
            sealed,
        })
    }

    /// A rotated user secret from a sibling device (ignored unless it is for us and newer).
    pub(super) fn apply_user_secret(
        &mut self,
        sender_handle: Option<&str>,
        body: &[u8],
    ) -> Result<(), ClientError> {
        if sender_handle != Some(self.state.name.as_str()) {
            // Another user's devices talking among themselves: not for us.
            return Ok(());
        }
        let update: UserSecretUpdate =
            decode_exact(body, 1 << 20).map_err(|e| ClientError::State(e.to_string()))?;
        if update.generation <= self.state.user_secret_generation
            || self.state.link_private.is_empty()
        {
            return Ok(());
        }
        let own: [u8; 16] = unhex(&self.state.device)?
            .try_into()
            .map_err(|_| ClientError::State("device id".into()))?;
        let Some(mine) = update.sealed.iter().find(|s| s.device == own) else {
            // We were the removed device, or unknown to the remover.
            return Ok(());
        };
        let sk = HpkePrivateKey::from_bytes(&unhex(&self.state.link_private)?)?;
        let secret = hpke_seal::open(&sk, USER_SECRET_LABEL, &own, &hpke_ct(&mine.secret))?;
        let secret = b32(&secret)?;
        self.state.user_secret = hex::encode(secret);
        self.state.user_secret_generation = update.generation;
        // The remover moved our QS user key to the one this secret derives, and our user to
        // the friendship token it derives; this device's AddPackages follow after the receive.
        self.state.user_auth_key = hex::encode(qs_user_key(&secret)?.to_bytes());
        self.install_friendship(&secret)?;
        tracing::info!("our user secret was rotated by a sibling device");
        Ok(())
    }

    /// Who is in `group`, by user: each verified handle with its devices (hex ids).
    pub fn user_devices(
        &self,
        group: &GroupHandle,
    ) -> Result<BTreeMap<String, Vec<String>>, ClientError> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in self.meta(group)?.members.values() {
            if let (Some(h), Some(d)) = (&r.handle, &r.device) {
                out.entry(h.clone()).or_default().push(d.clone());
            }
        }
        for v in out.values_mut() {
            v.sort();
        }
        Ok(out)
    }

    /// Re-enters every group whose OpenMLS state this device lost (its key file survived):
    /// an external commit with the unchanged leaf, removing the old one. Returns the groups.
    pub async fn recover_lost_groups(&mut self) -> Result<Vec<GroupHandle>, ClientError> {
        let mut recovered = Vec::new();
        for group in self.groups() {
            if self.load_group(&group).is_ok() {
                continue;
            }
            let meta = self.meta(&group)?.clone();
            if meta.signer_private.is_empty() {
                tracing::warn!(group = %group, "no leaf key backup; cannot resync");
                continue;
            }
            let signer = leaf_key_restore(&meta.signer_private)?;
            signer
                .store(openmls_traits::OpenMlsProvider::storage(&self.provider))
                .map_err(ClientError::mls)?;
            self.resync(&group).await?;
            recovered.push(group);
        }
        // Our published KeyPackages' keys were in the lost state too: replace them.
        self.state.key_packages.clear();
        self.publish_add_packages(ADD_PACKAGES).await?;
        Ok(recovered)
    }

    /// Makes sure the hub knows our user's auth key in `group`: a group we were welcomed into
    /// has none until one of our devices commits; an Update carries it.
    pub(super) async fn ensure_user_key(&mut self, group: &GroupHandle) -> Result<(), ClientError> {
        if self.meta(group)?.user_key_set {
            return Ok(());
        }
        self.update(group).await?;
        Ok(())
    }
}

/// A user's auth key in `group`, derived from the user secret: every device of the user
/// computes the same key; other members and other groups learn nothing from it.
fn derive_user_auth_key(secret: &[u8; 32], group: &[u8]) -> Result<SigningKey, ClientError> {
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    expand_label(secret, USER_AUTH_LABEL, group, &mut *seed)?;
    Ok(SigningKey::from_bytes(&*seed)?)
}

/// The QS user auth key derived from a user secret: a removal rotates both together, so the
/// devices that learn the new secret hold the new QS key, and the removed device does not.
pub(super) fn qs_user_key(secret: &[u8; 32]) -> Result<SigningKey, ClientError> {
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    expand_label(secret, "qs user auth key", b"", seed.as_mut())?;
    Ok(SigningKey::from_bytes(seed.as_ref())?)
}

/// The device tag of `device` under our user's device tag key (see `ClientState`).
pub(super) fn device_tag(key: &[u8], device: &[u8; 16]) -> Result<[u8; 32], ClientError> {
    let mut tag = [0u8; 32];
    expand_label(key, "device tag", device, &mut tag)?;
    Ok(tag)
}
