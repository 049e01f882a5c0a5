//! Linking a new device of our user (see `devices` for what the devices share).
//!
//! A new device is linked in three steps that never move a private key: it requests a link
//! (CSR + a fresh link key), an existing device approves (the AS certifies the CSR; the user's
//! secrets and groups are sealed to the link key), and the new device completes (creates its
//! queue, then joins every group by external commit).

use super::devices::{DeviceEntry, hpke_ct, hpke_wire};
use super::join::ExternalEntry;
use super::requests::{qs_encryption_key, signed_as, signed_qs};
use super::{
    ADD_PACKAGES, CONNECTION_PACKAGES, Client, GroupHandle, WALLET_FILE, b32, encoded, now_ms,
    transport_for,
};
use crate::contact::ContactCard;
use crate::error::ClientError;
use crate::state::{ClientState, unhex};
use crate::store::StoreOptions;
use crate::transport::Transport;
use mimi_rm_crypto::ear::EarKey;
use mimi_rm_crypto::hpke_seal::{self, HpkeKeyPair, HpkePrivateKey, HpkePublicKey};
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
    /// The user's device tag key (empty for a user from before tags).
    device_tag_key: VLBytes,
    contacts: Vec<VLBytes>,
    groups: Vec<GroupKeys>,
    devices: Vec<DeviceEntry>,
    /// 1 for a baseline-mode user, 0 for RM.
    baseline: u8,
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
    /// How the new device connects while it completes (not saved: given again after a load).
    connections: crate::connections::ConnectionOptions,
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
                connections: Default::default(),
            },
            text,
        ))
    }

    /// Connects as `connections` says while completing (connection policy, local address,
    /// OHTTP relay); the completed client keeps them.
    pub fn set_connections(&mut self, connections: crate::connections::ConnectionOptions) {
        self.connections = connections;
    }

    /// Keeps the request's keys in the device directory until the grant arrives (for the CLI,
    /// where request and completion are separate runs).
    pub fn save(&self) -> Result<(), ClientError> {
        let saved = SavedPending {
            client_key: hex::encode(self.client_key.to_bytes()),
            link_private: hex::encode(self.link.private.as_bytes()),
            link_public: hex::encode(self.link.public.as_bytes()),
            handle: String::from_utf8_lossy(self.identity.handle.as_slice()).into_owned(),
            device: hex::encode(self.identity.device),
        };
        let text = serde_json::to_vec(&saved).map_err(|e| ClientError::State(e.to_string()))?;
        crate::store::files::private_dir(&self.dir)?;
        crate::store::files::write_private(&self.dir.join(PENDING_FILE), &text)
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
            connections: Default::default(),
        })
    }

    /// The device id this device will have.
    pub fn device(&self) -> [u8; 16] {
        self.identity.device
    }

    /// Completes the link with the grant from the existing device: creates this device's
    /// queue, publishes its packages and joins every group of the user by external commit.
    pub async fn complete(self, grant_text: &str) -> Result<Client, ClientError> {
        self.complete_with(grant_text, &StoreOptions::default())
            .await
    }

    /// [`PendingDevice::complete`], creating the new client's store with `options` (its
    /// passphrase).
    pub async fn complete_with(
        self,
        grant_text: &str,
        options: &StoreOptions,
    ) -> Result<Client, ClientError> {
        let store = super::new_store(&self.dir, options)?;
        let grant = self.open_grant(grant_text)?;
        let card = ContactCard::from_text(&String::from_utf8_lossy(grant.card.as_slice()))?;
        let (transport, domain, qs_public) = self
            .connect_hub(&grant.credential, store.token_store())
            .await?;
        let queue = create_queue(&transport, &grant, &self.identity.device).await?;
        let state = self.linked_state(&grant, &card, domain, qs_public, queue)?;
        let mut client = Client::from_parts(transport, &self.dir, state, store);
        client.persist()?;
        client.publish_add_packages(ADD_PACKAGES).await?;
        client
            .publish_connection_packages(CONNECTION_PACKAGES)
            .await?;
        for g in grant.groups {
            let group = GroupHandle(g.group_id.as_slice().to_vec());
            if let Err(e) = client.join_as_device(&group, &g).await {
                tracing::warn!(group = %group, error = %e, "could not join a group of our user");
            }
        }
        Ok(client)
    }

    /// Opens the grant sealed to our link key and checks that it certifies this device.
    fn open_grant(&self, grant_text: &str) -> Result<LinkGrant, ClientError> {
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
        Ok(grant)
    }

    /// The transport to our hub, paying with tokens `credential` authorises; returns it with
    /// the hub's domain and the QS's public key.
    async fn connect_hub(
        &self,
        credential: &ClientCredential,
        tokens: crate::store::tokens::TokenStore,
    ) -> Result<(Transport, String, Vec<u8>), ClientError> {
        let mut transport =
            transport_for(&self.hub_url, self.ca_pem.as_deref())?.reconnected(&self.connections)?;
        let domain = transport.domain().await?;
        std::fs::create_dir_all(&self.dir).map_err(|e| ClientError::State(e.to_string()))?;
        transport.enable_tokens(crate::tokens::Wallet::new(
            domain.clone(),
            credential.clone(),
            SigningKey::from_bytes(&self.client_key.to_bytes())?,
            Some(tokens),
            Some(self.dir.join(WALLET_FILE)),
        )?);
        let qs_public = qs_encryption_key(&transport).await?;
        Ok((transport, domain, qs_public))
    }

    /// This device's state: the user's keys, contacts and devices from the grant, plus its
    /// own credential, link key and new queue; no groups yet.
    fn linked_state(
        &self,
        grant: &LinkGrant,
        card: &ContactCard,
        domain: String,
        qs_public: Vec<u8>,
        queue: NewQueue,
    ) -> Result<ClientState, ClientError> {
        let NewQueue {
            client_auth,
            secret,
            client_id,
        } = queue;
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
        Ok(ClientState {
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
            revocation_lists: BTreeMap::new(),
            republish_pending: false,
            cards_pending: false,
            qs_rotation_pending: false,
            in_flight_rekey: None,
            pending_mixes: Vec::new(),
            received_since_rekey: 0,
            pending_releases: Vec::new(),
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
            device_tag_key: hex::encode(grant.device_tag_key.as_slice()),
            push_key: hex::encode(mimi_rm_crypto::ids::random_bytes::<32>()),
            user_secret_generation: grant.user_secret_generation,
            link_private: hex::encode(self.link.private.as_bytes()),
            devices,
            connection_keys: BTreeMap::new(),
            connection_key_order: Vec::new(),
            pending_user_secret: None,
            pending_connections: BTreeMap::new(),
            connection_requests: BTreeMap::new(),
        })
    }
}

impl Client {
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
            .auth(&signed_as(
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
            device_tag_key: unhex(&self.state.device_tag_key)?.into(),
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
        let entered = ExternalEntry {
            mls,
            signer,
            sek,
            ear_key,
            keys: (ck, wk),
        };
        self.enter_by_external_commit(group, &req, entered, &info.credentials)
            .await
    }
}

/// This device's new queue at the QS: its auth key, its ratchet's first secret, and its id.
struct NewQueue {
    client_auth: SigningKey,
    secret: RatchetSecret,
    client_id: [u8; 16],
}

/// Creates this device's queue as a new client of our user's QS user.
async fn create_queue(
    transport: &Transport,
    grant: &LinkGrant,
    device: &[u8; 16],
) -> Result<NewQueue, ClientError> {
    let qs_user_auth = SigningKey::from_bytes(&grant.qs_user_auth_key)?;
    let device_tag = match grant.device_tag_key.as_slice() {
        [] => Vec::new(),
        key => super::devices::device_tag(key, device)?.to_vec(),
    };
    let client_auth = SigningKey::generate();
    let secret = RatchetSecret::random();
    let req = signed_qs(
        &qs_user_auth,
        QsSender::User(grant.qs_user_id),
        QsOperation::CreateClient(CreateClient {
            client_auth_key: client_auth.verifying_key().as_bytes().to_vec().into(),
            initial_ratchet_secret: secret.as_bytes().to_vec().into(),
            device_tag: device_tag.into(),
        }),
    )?;
    let QsResponse::ClientCreated(client_id) = transport.qs(&req).await? else {
        return Err(ClientError::Unexpected("expected ClientCreated"));
    };
    Ok(NewQueue {
        client_auth,
        secret,
        client_id,
    })
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
