//! Several devices (clients) of one user.
//!
//! All devices of a user share its friendship keys (so contacts fetch AddPackages for every
//! device with one token and add them all), its pseudonymous QS user, and a *user secret* from
//! which each group's user auth key (`PseudonymousUserAuth`) derives. With that key a device
//! adds its user's other devices to a group, removes them, and joins a group by external
//! commit; members never learn it.
//!
//! A new device is linked in three steps that never move a private key: it requests a link
//! (CSR + a fresh link key), an existing device approves (the AS certifies the CSR; the user's
//! secrets and groups are sealed to the link key), and the new device completes (creates its
//! queue, then joins every group by external commit). Removing a device rotates the user secret:
//! its leaves are removed with a new user auth key in every group, and the new secret is sealed
//! to each remaining device's link key and sent inside the groups.

use super::{CIPHERSUITE, Client, GroupHandle, Plan, b32, encoded, now_ms, signed_qs};
use crate::contact::ContactCard;
use crate::error::ClientError;
use crate::state::{ClientState, unhex};
use mimi_rm_crypto::ear::EarKey;
use mimi_rm_crypto::hpke_seal::{self, HpkeCiphertext, HpkeKeyPair, HpkePrivateKey, HpkePublicKey};
use mimi_rm_crypto::kdf::expand_label;
use mimi_rm_crypto::ratchet::{QueueRatchet, RatchetSecret};
use mimi_rm_crypto::sign::SigningKey;
use mimi_rm_protocol::auth::*;
use mimi_rm_protocol::credentials::*;
use mimi_rm_protocol::ds::*;
use mimi_rm_protocol::qs::*;
use mimi_rm_protocol::queue::HpkeCiphertextWire;
use mimi_rm_protocol::{DsMode, decode_exact};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tls_codec::{TlsDeserialize, TlsSerialize, TlsSize, VLBytes};

/// Text prefix of a link request.
const LINK_REQUEST_PREFIX: &str = "mimi-link-request:";
/// Text prefix of a link grant.
const LINK_GRANT_PREFIX: &str = "mimi-link-grant:";
/// HPKE label of a link grant.
const LINK_GRANT_LABEL: &str = "link grant";
/// HPKE label of a rotated user secret.
const USER_SECRET_LABEL: &str = "user secret";
/// KDF label of per-group user auth keys.
const USER_AUTH_LABEL: &str = "user auth key";
/// First byte of an application message carrying a rotated user secret for our own devices.
pub(super) const CONTENT_USER_SECRET: u8 = 2;

/// What a new device asks an existing one for.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
struct LinkRequest {
    /// The new device's CSR (its handle and a fresh device id).
    csr: ClientCredentialCsr,
    /// X25519 key the grant is sealed to.
    link_key: VLBytes,
}

/// One group a new device should join.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
struct GroupKeys {
    group_id: VLBytes,
    ear_key: [u8; 32],
    credential_key: [u8; 32],
    wrapper_key: [u8; 32],
}

/// A user's device, as its siblings know it.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
struct DeviceEntry {
    device: [u8; 16],
    link_key: VLBytes,
}

/// What the approving device seals to the new one.
#[derive(TlsSerialize, TlsDeserialize, TlsSize)]
struct LinkGrant {
    credential: ClientCredential,
    as_credentials: AsCredentials,
    qs_user_id: [u8; 16],
    qs_user_auth_key: [u8; 32],
    /// Our own contact card: the user's friendship keys.
    card: VLBytes,
    user_secret: [u8; 32],
    user_secret_generation: u32,
    contacts: Vec<VLBytes>,
    groups: Vec<GroupKeys>,
    devices: Vec<DeviceEntry>,
    /// 1 for a baseline-mode user, 0 for RM.
    baseline: u8,
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

/// File of a pending link request in the new device's directory.
const PENDING_FILE: &str = "pending-link.json";

#[derive(serde::Serialize, serde::Deserialize)]
struct SavedPending {
    client_key: String,
    link_private: String,
    link_public: String,
    handle: String,
    device: String,
}

/// A device that asked to be linked and waits for the grant.
pub struct PendingDevice {
    dir: PathBuf,
    hub_url: String,
    ca_pem: Option<Vec<u8>>,
    client_key: SigningKey,
    link: HpkeKeyPair,
    identity: ClientIdentity,
}

fn hpke_wire(ct: HpkeCiphertext) -> HpkeCiphertextWire {
    HpkeCiphertextWire {
        kem_output: ct.kem_output.into(),
        ciphertext: ct.ciphertext.into(),
    }
}

fn hpke_ct(w: &HpkeCiphertextWire) -> HpkeCiphertext {
    HpkeCiphertext {
        kem_output: w.kem_output.as_slice().to_vec(),
        ciphertext: w.ciphertext.as_slice().to_vec(),
    }
}

fn from_text<T: tls_codec::Deserialize>(text: &str, prefix: &str) -> Result<T, ClientError> {
    let hexpart = text
        .trim()
        .strip_prefix(prefix)
        .ok_or(ClientError::Unexpected("wrong kind of link text"))?;
    let bytes = hex::decode(hexpart).map_err(|_| ClientError::Unexpected("link text not hex"))?;
    decode_exact(&bytes, 4 << 20).map_err(|e| ClientError::State(e.to_string()))
}

impl PendingDevice {
    /// Starts linking a new device of `handle`: returns it and the request text to show the
    /// existing device. Nothing is sent yet.
    pub fn request(
        dir: &Path,
        hub_url: &str,
        handle: &str,
        ca_pem: Option<&[u8]>,
    ) -> Result<(Self, String), ClientError> {
        let client_key = SigningKey::generate();
        let identity = ClientIdentity {
            handle: handle.as_bytes().to_vec().into(),
            device: mimi_rm_crypto::ids::random_id(),
        };
        let csr = ClientCredentialCsr::new(&client_key, identity.clone())
            .map_err(|e| ClientError::State(e.to_string()))?;
        let link = HpkeKeyPair::generate();
        let req = LinkRequest {
            csr,
            link_key: link.public.as_bytes().to_vec().into(),
        };
        let text = format!("{LINK_REQUEST_PREFIX}{}", hex::encode(encoded(&req)?));
        Ok((
            Self {
                dir: dir.to_owned(),
                hub_url: hub_url.to_owned(),
                ca_pem: ca_pem.map(<[u8]>::to_vec),
                client_key,
                link,
                identity,
            },
            text,
        ))
    }

    /// Keeps the request's keys in the device directory until the grant arrives (for the CLI,
    /// where request and completion are separate runs).
    pub fn save(&self) -> Result<(), ClientError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| ClientError::State(e.to_string()))?;
        let saved = SavedPending {
            client_key: hex::encode(self.client_key.to_bytes()),
            link_private: hex::encode(self.link.private.as_bytes()),
            link_public: hex::encode(self.link.public.as_bytes()),
            handle: String::from_utf8_lossy(self.identity.handle.as_slice()).into_owned(),
            device: hex::encode(self.identity.device),
        };
        let text = serde_json::to_vec(&saved).map_err(|e| ClientError::State(e.to_string()))?;
        crate::state::write_private(&self.dir.join(PENDING_FILE), &text)
    }

    /// Loads what [`PendingDevice::save`] kept.
    pub fn load(dir: &Path, hub_url: &str, ca_pem: Option<&[u8]>) -> Result<Self, ClientError> {
        let text = std::fs::read(dir.join(PENDING_FILE))
            .map_err(|e| ClientError::State(format!("no pending link request: {e}")))?;
        let saved: SavedPending =
            serde_json::from_slice(&text).map_err(|e| ClientError::State(e.to_string()))?;
        Ok(Self {
            dir: dir.to_owned(),
            hub_url: hub_url.to_owned(),
            ca_pem: ca_pem.map(<[u8]>::to_vec),
            client_key: SigningKey::from_bytes(&unhex(&saved.client_key)?)?,
            link: HpkeKeyPair {
                private: HpkePrivateKey::from_bytes(&unhex(&saved.link_private)?)?,
                public: HpkePublicKey::from_bytes(&unhex(&saved.link_public)?)?,
            },
            identity: ClientIdentity {
                handle: saved.handle.into_bytes().into(),
                device: unhex(&saved.device)?
                    .try_into()
                    .map_err(|_| ClientError::State("device id".into()))?,
            },
        })
    }

    /// The device id this device will have.
    pub fn device(&self) -> [u8; 16] {
        self.identity.device
    }

    /// Completes the link with the grant from the existing device: creates this device's
    /// queue, publishes its packages and joins every group of the user by external commit.
    pub async fn complete(self, grant_text: &str) -> Result<Client, ClientError> {
        let sealed: HpkeCiphertextWire = from_text(grant_text, LINK_GRANT_PREFIX)?;
        let plain = hpke_seal::open(
            &self.link.private,
            LINK_GRANT_LABEL,
            self.link.public.as_bytes(),
            &hpke_ct(&sealed),
        )?;
        let grant: LinkGrant =
            decode_exact(&plain, 4 << 20).map_err(|e| ClientError::State(e.to_string()))?;
        grant
            .credential
            .verify_chain(&grant.as_credentials, now_ms() / 1000)
            .map_err(crate::identity::IdentityError::from)?;
        if grant.credential.tbs.identity != self.identity
            || grant.credential.tbs.public_key.as_slice()
                != self.client_key.verifying_key().as_bytes()
        {
            return Err(ClientError::Unexpected(
                "the grant certifies another device",
            ));
        }
        let card = ContactCard::from_text(&String::from_utf8_lossy(grant.card.as_slice()))?;
        let mut transport = super::transport_for(&self.hub_url, self.ca_pem.as_deref())?;
        let domain = transport.domain().await?;
        std::fs::create_dir_all(&self.dir).map_err(|e| ClientError::State(e.to_string()))?;
        transport.enable_tokens(crate::tokens::Wallet::new(
            domain.clone(),
            grant.credential.clone(),
            SigningKey::from_bytes(&self.client_key.to_bytes())?,
            Some(self.dir.join(super::WALLET_FILE)),
        )?);
        let qs_public = match transport
            .qs(&super::anonymous_qs(QsOperation::EncryptionKey))
            .await?
        {
            QsResponse::EncryptionKey(k) => k.as_slice().to_vec(),
            _ => return Err(ClientError::Unexpected("expected the QS key")),
        };
        let qs_user_auth = SigningKey::from_bytes(&grant.qs_user_auth_key)?;
        let client_auth = SigningKey::generate();
        let secret = RatchetSecret::random();
        let req = signed_qs(
            &qs_user_auth,
            QsSender::User(grant.qs_user_id),
            QsOperation::CreateClient(CreateClient {
                client_auth_key: client_auth.verifying_key().as_bytes().to_vec().into(),
                initial_ratchet_secret: secret.as_bytes().to_vec().into(),
            }),
        )?;
        let QsResponse::ClientCreated(client_id) = transport.qs(&req).await? else {
            return Err(ClientError::Unexpected("expected ClientCreated"));
        };
        let mut devices: BTreeMap<String, String> = grant
            .devices
            .iter()
            .map(|d| (hex::encode(d.device), hex::encode(d.link_key.as_slice())))
            .collect();
        devices.insert(
            hex::encode(self.identity.device),
            hex::encode(self.link.public.as_bytes()),
        );
        let mut contacts = BTreeMap::new();
        for c in &grant.contacts {
            let card = ContactCard::from_text(&String::from_utf8_lossy(c.as_slice()))?;
            contacts.insert(card.handle_str(), card.to_text()?);
        }
        let state = ClientState {
            name: card.handle_str(),
            device: hex::encode(self.identity.device),
            client_key: hex::encode(self.client_key.to_bytes()),
            client_credential: hex::encode(encoded(&grant.credential)?),
            as_credentials: hex::encode(encoded(&grant.as_credentials)?),
            credential_key: hex::encode(card.credential_key),
            wrapper_key: hex::encode(card.wrapper_key),
            wai_key: hex::encode(card.wai_key),
            contacts,
            peer_anchors: BTreeMap::new(),
            in_flight_rekey: None,
            pending_mixes: Vec::new(),
            received_since_rekey: 0,
            committed_since_receive: false,
            mode: if grant.baseline == 1 {
                DsMode::Baseline
            } else {
                DsMode::Rm
            },
            user_id: hex::encode(grant.qs_user_id),
            client_id: hex::encode(client_id),
            client_auth_key: hex::encode(client_auth.to_bytes()),
            user_auth_key: hex::encode(grant.qs_user_auth_key),
            friendship_token: hex::encode(card.friendship_token),
            add_package_key: hex::encode(card.add_package_key),
            queue_ratchet: hex::encode(QueueRatchet::new(secret).to_bytes()),
            qs_public_key: hex::encode(qs_public),
            domain,
            groups: BTreeMap::new(),
            key_packages: BTreeMap::new(),
            user_secret: hex::encode(grant.user_secret),
            user_secret_generation: grant.user_secret_generation,
            link_private: hex::encode(self.link.private.as_bytes()),
            devices,
            connection_keys: BTreeMap::new(),
            connection_key_order: Vec::new(),
            pending_user_secret: None,
            pending_connections: BTreeMap::new(),
            connection_requests: BTreeMap::new(),
        };
        let mut client = Client::from_parts(transport, &self.dir, state);
        client.persist()?;
        client.publish_add_packages(super::ADD_PACKAGES).await?;
        client
            .publish_connection_packages(super::CONNECTION_PACKAGES)
            .await?;
        for g in grant.groups {
            let group = GroupHandle(g.group_id.as_slice().to_vec());
            if let Err(e) = client.join_as_device(&group, &g).await {
                tracing::warn!(group = %group, error = %e, "could not join a group of our user");
            }
        }
        Ok(client)
    }
}

impl Client {
    /// Our user secret.
    fn user_secret(&self) -> Result<[u8; 32], ClientError> {
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

    /// Approves a link request shown by a new device of our user: has the AS certify it and
    /// returns the grant text (sealed to the new device) to show it.
    pub async fn approve_link(&mut self, request_text: &str) -> Result<String, ClientError> {
        let req: LinkRequest = from_text(request_text, LINK_REQUEST_PREFIX)?;
        let own = self.identity()?;
        if req.csr.tbs.identity.handle != own.handle {
            return Err(ClientError::Unexpected("the request is for another user"));
        }
        let link_key = HpkePublicKey::from_bytes(req.link_key.as_slice())?;
        let client_key = SigningKey::from_bytes(&unhex(&self.state.client_key)?)?;
        let AsResponse::ClientCredential(credential) = self
            .transport
            .auth(&super::signed_as(
                &client_key,
                own,
                AsOperation::AddClient(req.csr.clone()),
            )?)
            .await?
        else {
            return Err(ClientError::Unexpected("expected a client credential"));
        };
        for g in self.groups() {
            self.ensure_user_key(&g).await?;
        }
        self.ensure_own_link_key()?;
        self.state.devices.insert(
            hex::encode(req.csr.tbs.identity.device),
            hex::encode(req.link_key.as_slice()),
        );
        self.persist()?;
        let mut groups = Vec::new();
        for g in self.groups() {
            let meta = self.meta(&g)?;
            groups.push(GroupKeys {
                group_id: g.0.clone().into(),
                ear_key: b32(&unhex(&meta.ear_key)?)?,
                credential_key: b32(&unhex(&meta.credential_key)?)?,
                wrapper_key: b32(&unhex(&meta.wrapper_key)?)?,
            });
        }
        let grant = LinkGrant {
            credential,
            as_credentials: decode_exact(&unhex(&self.state.as_credentials)?, 1 << 20)
                .map_err(|e| ClientError::State(e.to_string()))?,
            qs_user_id: unhex(&self.state.user_id)?
                .try_into()
                .map_err(|_| ClientError::State("user id".into()))?,
            qs_user_auth_key: b32(&unhex(&self.state.user_auth_key)?)?,
            card: self.contact_card()?.to_text()?.into_bytes().into(),
            user_secret: self.user_secret()?,
            user_secret_generation: self.state.user_secret_generation,
            contacts: self
                .state
                .contacts
                .values()
                .map(|c| c.as_bytes().to_vec().into())
                .collect(),
            groups,
            devices: self.device_entries()?,
            baseline: u8::from(self.state.mode == DsMode::Baseline),
        };
        let sealed = hpke_seal::seal(
            &link_key,
            LINK_GRANT_LABEL,
            req.link_key.as_slice(),
            &encoded(&grant)?,
        )?;
        Ok(format!(
            "{LINK_GRANT_PREFIX}{}",
            hex::encode(encoded(&hpke_wire(sealed))?)
        ))
    }

    /// Gives this device a link key if it has none (devices registered before linking existed).
    fn ensure_own_link_key(&mut self) -> Result<(), ClientError> {
        if self.state.link_private.is_empty() {
            let link = HpkeKeyPair::generate();
            self.state.link_private = hex::encode(link.private.as_bytes());
            self.state.devices.insert(
                self.state.device.clone(),
                hex::encode(link.public.as_bytes()),
            );
        }
        Ok(())
    }

    fn device_entries(&self) -> Result<Vec<DeviceEntry>, ClientError> {
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

    /// Joins `group` as another client of our user: an external commit authenticated with our
    /// user auth key, carrying our credential material for the other members.
    async fn join_as_device(
        &mut self,
        group: &GroupHandle,
        keys: &GroupKeys,
    ) -> Result<u64, ClientError> {
        let ear_key = EarKey::from_bytes(&keys.ear_key)?;
        let (ck, wk) = (
            EarKey::from_bytes(&keys.credential_key)?,
            EarKey::from_bytes(&keys.wrapper_key)?,
        );
        let info = self.external_commit_info(group, &ear_key).await?;
        let (signer, cwk, sek) = self.new_leaf_identity()?;
        let credential = self.client_credential()?;
        let aad = CommitAad {
            added: Vec::new(),
            user_auth_key: None,
            joiner: Some(JoinData {
                credential: self.leaf_info(&credential, &sek, &ck, &wk)?,
                friendship: Vec::new().into(),
            }),
            reinit: None,
        };
        let (mls, bundle) = self.build_external_join(group, &info, cwk, &signer, encoded(&aad)?)?;
        let req = self.user_request(group, &ear_key, DsOperation::ExternalJoin(bundle))?;
        let entered = super::ExternalEntry {
            mls,
            signer,
            sek,
            ear_key,
            keys: (ck, wk),
        };
        self.enter_by_external_commit(group, &req, entered, &info.credentials)
            .await
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
            .fetch_add_packages_of(group, &card, Some(&siblings), super::InviteMode::Checked)
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
    /// secret, so the removed device can no longer act for the user anywhere.
    pub async fn remove_device(&mut self, device: &str) -> Result<(), ClientError> {
        if device == self.state.device {
            return Err(ClientError::Unexpected(
                "a device cannot remove itself this way",
            ));
        }
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
        self.state.devices.remove(device);
        for group in self.groups() {
            self.ensure_user_key(&group).await?;
            let leaves: Vec<u32> = self
                .meta(&group)?
                .members
                .iter()
                .filter(|(_, r)| {
                    r.handle.as_deref() == Some(handle.as_str())
                        && r.device.as_deref() == Some(device)
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
        self.state.user_secret = hex::encode(b32(&secret)?);
        self.state.user_secret_generation = update.generation;
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
            let signer = super::leaf_key_restore(&meta.signer_private)?;
            signer
                .store(openmls_traits::OpenMlsProvider::storage(&self.provider))
                .map_err(ClientError::mls)?;
            self.resync(&group).await?;
            recovered.push(group);
        }
        // Our published KeyPackages' keys were in the lost state too: replace them.
        self.state.key_packages.clear();
        self.publish_add_packages(super::ADD_PACKAGES).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_request_text_round_trips() {
        let dir = tempfile_dir();
        let (pending, text) = PendingDevice::request(&dir, "http://x", "alice", None).unwrap();
        let req: LinkRequest = from_text(&text, LINK_REQUEST_PREFIX).unwrap();
        assert_eq!(req.csr.tbs.identity.device, pending.device());
        req.csr.verify().unwrap();
        assert!(from_text::<LinkRequest>(&text, LINK_GRANT_PREFIX).is_err());
    }

    fn tempfile_dir() -> PathBuf {
        std::env::temp_dir().join(format!(
            "mimi-link-{}",
            hex::encode(mimi_rm_crypto::ids::random_id())
        ))
    }
}
