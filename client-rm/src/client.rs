//! The client: key custody, OpenMLS groups, and every hub operation.

use crate::contact::ContactCard;
use crate::error::ClientError;
use crate::identity;
use crate::provider::ClientProvider;
use crate::state::{self, ClientState, GroupMeta, MemberRecord, PendingKeyPackage, unhex};
use crate::transport::Transport;
use mimi_rm_crypto::ear::{self, EarKey};
use mimi_rm_crypto::hpke_seal::{self, HpkeCiphertext, HpkeKeyPair, HpkePrivateKey, HpkePublicKey};
use mimi_rm_crypto::ratchet::{QueueRatchet, RatchetSecret};
use mimi_rm_crypto::sign::SigningKey;
use mimi_rm_protocol::auth::*;
use mimi_rm_protocol::credentials::*;
use mimi_rm_protocol::ds::*;
use mimi_rm_protocol::qs::*;
use mimi_rm_protocol::queue::*;
use mimi_rm_protocol::{DsMode, decode_exact, encode};
use openmls::prelude::{tls_codec::Deserialize as _, tls_codec::Serialize as _, *};
use openmls_basic_credential::SignatureKeyPair;
use openmls_traits::signatures::Signer as _;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

mod connect;
mod devices;
mod recovery;
#[cfg(feature = "adversary")]
mod tamper;
pub use connect::{IncomingConnection, seal_offer};
pub use devices::PendingDevice;
#[cfg(feature = "adversary")]
pub use tamper::Tamper;

/// The one ciphersuite this client speaks (MLS MTI).
pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;
/// EAR domain of AddPackages.
const ADD_PACKAGE_DOMAIN: &str = "add package";
/// How many past epochs' secrets a member keeps, so an application message sent just before a
/// commit (the hub accepts messages of earlier epochs) still decrypts after it.
pub const MAX_PAST_EPOCHS: usize = 8;
/// How far behind the newest generation of a sender a message may arrive (OpenMLS defaults to
/// 5, which a busy group under concurrent commits exceeded in the concurrency test).
const OUT_OF_ORDER_TOLERANCE: u32 = 64;
/// How far ahead of the last seen generation a sender's message may be.
const MAX_FORWARD_DISTANCE: u32 = 1000;
/// First byte of an application message's plaintext: what the rest is.
const CONTENT_USER: u8 = 0;
/// A group control message between clients (e.g. a new `GroupStateEarKey`).
const CONTENT_CONTROL: u8 = 1;
/// Messages after which the client mixes fresh randomness into its queue ratchet.
pub const REKEY_EVERY: u64 = 64;
/// How often a request is re-sent when the hub could not be reached (crash, restart).
const TRANSPORT_RETRIES: u32 = 40;
/// Default of [`Client::set_keepalive`]: a third of the hub's default inactivity limit.
const DEFAULT_KEEPALIVE_MS: u64 = 30 * 24 * 60 * 60 * 1000;
/// One-time AddPackages published at registration.
const ADD_PACKAGES: usize = 5;
/// Connection packages published at registration (the last one is kept when used).
const CONNECTION_PACKAGES: usize = 3;
const MAX_MESSAGE: usize = 16 << 20;

/// A group, by its MLS group id.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupHandle(pub Vec<u8>);

impl std::fmt::Debug for GroupHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GroupHandle({})", hex::encode(&self.0))
    }
}

impl std::fmt::Display for GroupHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(&self.0))
    }
}

impl GroupHandle {
    /// Parses the hex form printed by `Display`.
    pub fn from_hex(s: &str) -> Result<Self, ClientError> {
        hex::decode(s.trim())
            .map(Self)
            .map_err(|_| ClientError::Unexpected("group id must be hex"))
    }
}

/// Something that arrived from the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// We were welcomed into a group.
    Joined {
        /// The group.
        group: GroupHandle,
    },
    /// An application message.
    Message {
        /// The group.
        group: GroupHandle,
        /// Sender's leaf index.
        sender: u32,
        /// Decrypted content.
        plaintext: Vec<u8>,
    },
    /// A commit by another member was applied.
    Commit {
        /// The group.
        group: GroupHandle,
        /// New epoch.
        epoch: u64,
    },
    /// A member proposed something (e.g. to leave); committed later by someone.
    Proposal {
        /// The group.
        group: GroupHandle,
    },
    /// We are no longer a member.
    Removed {
        /// The group.
        group: GroupHandle,
    },
    /// We left an epoch we could not follow and re-entered the group by external commit. With
    /// `reported` set, a commit the hub had accepted failed our checks and we reported it;
    /// without, we had fallen behind.
    Resynced {
        /// The group.
        group: GroupHandle,
        /// Our report, if a commit failed.
        reported: Option<CommitRejected>,
        /// The epoch we re-entered at.
        epoch: u64,
    },
    /// An invitation we refused: the inviter is not among our contacts, or its attribution did
    /// not verify. We did not join.
    InviteRejected {
        /// The claimed inviter handle, if it could be read.
        inviter: Option<String>,
        /// Why.
        reason: String,
    },
    /// A member whose credential chain does not verify: shown, but not trusted.
    UnverifiedMember {
        /// The group.
        group: GroupHandle,
        /// Its leaf.
        leaf: u32,
        /// Why verification failed.
        reason: String,
    },
    /// A member rotated the group's `GroupStateEarKey`; we switched to the new key.
    EarKeyRotated {
        /// The group.
        group: GroupHandle,
    },
    /// Someone we asked to connect accepted: it joined the connection group and is now a
    /// contact.
    ConnectionAccepted {
        /// The connection group.
        group: GroupHandle,
        /// The responder's verified handle.
        handle: String,
    },
    /// An admin re-initialised the group: it takes no further messages; the conversation
    /// continues in `new_group` (its Welcome follows when we are invited).
    ReInitialised {
        /// The old group.
        group: GroupHandle,
        /// The new group.
        new_group: GroupHandle,
    },
    /// A queue entry that could not be processed (logged and skipped).
    Undecryptable {
        /// Queue sequence number.
        seq: u64,
        /// Why.
        reason: String,
    },
}

/// Who a member is, as far as we could verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberIdentity {
    /// The chain leaf → client credential → AS verified.
    Verified {
        /// The member's handle.
        handle: String,
        /// Its device id (one user may have several clients).
        device: [u8; 16],
    },
    /// It did not verify (or we lack its material); do not trust this member.
    Unverified {
        /// Why.
        reason: String,
    },
}

/// What processing one MLS message from the queue led to.
enum Processed {
    /// Done; what to report to the user.
    Done(Vec<Event>),
    /// A commit at our epoch failed: report it and resync.
    Rejected(GroupHandle, CommitRejected),
    /// A commit for a later epoch: we missed something; resync.
    Behind(GroupHandle),
}

/// How carefully `invite_with` works.
#[derive(Clone, Copy, PartialEq, Eq)]
enum InviteMode {
    /// Verify every AddPackage's credential chain first (the only honest mode).
    Checked,
    /// Add without checking (a colluding member, for tests).
    #[cfg_attr(not(feature = "adversary"), allow(dead_code))]
    Unchecked,
    /// Add without sending credential material (a broken client, for tests).
    #[cfg_attr(not(feature = "adversary"), allow(dead_code))]
    WithoutMaterial,
}

#[derive(Clone)]
enum Plan {
    Add(Vec<KeyPackage>, CommitAad),
    Remove(Vec<LeafNodeIndex>),
    Update,
    Delete(Vec<LeafNodeIndex>),
    /// Our user's other devices (signed with the user auth key).
    AddClients(Vec<KeyPackage>, Vec<AddedMember>),
    /// Leaves of our user's devices, and the user auth key that replaces the current one.
    RemoveClients(Vec<u32>, Vec<u8>),
    /// An Update that replaces our user's auth key.
    RotateUserKey(Vec<u8>),
    /// Re-initialise into the given (reserved) group id.
    ReInit(Vec<u8>),
}

impl Plan {
    /// Whether the hub authenticates this commit with the user auth key.
    fn is_user_level(&self) -> bool {
        matches!(self, Plan::AddClients(..) | Plan::RemoveClients(..))
    }
}

/// A group we are entering by external commit, with the keys it needs once the hub accepts.
pub(super) struct ExternalEntry {
    /// The group as the external commit leaves it.
    pub mls: MlsGroup,
    /// Our new leaf's signer.
    pub signer: SignatureKeyPair,
    /// Our new leaf's `SignatureEarKey`.
    pub sek: EarKey,
    /// The group's `GroupStateEarKey`.
    pub ear_key: EarKey,
    /// The group's credential key and wrapper key.
    pub keys: (EarKey, EarKey),
}

/// A client with its keys, its groups and a connection to its home hub.
pub struct Client {
    transport: Transport,
    dir: PathBuf,
    state: ClientState,
    provider: ClientProvider,
    /// Events processed while catching up inside another call (e.g. `send` after the group
    /// moved on); handed out by the next `receive`.
    pending: Vec<Event>,
    /// When set, state changes stay in memory (see [`Client::set_ephemeral`]).
    ephemeral: bool,
    /// After this long without a signed request of ours in a group, `receive` updates in it.
    keepalive_ms: u64,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The transport to `hub_url`, trusting `ca_pem` as an extra root when given.
fn transport_for(hub_url: &str, ca_pem: Option<&[u8]>) -> Result<Transport, ClientError> {
    match ca_pem {
        Some(pem) => Transport::with_root_ca(hub_url, pem),
        None => Ok(Transport::new(hub_url)),
    }
}

/// The token wallet's file in the client directory.
const WALLET_FILE: &str = "tokens.json";

fn b32(v: &[u8]) -> Result<[u8; 32], ClientError> {
    v.try_into()
        .map_err(|_| ClientError::State("expected 32 bytes".into()))
}

impl Client {
    /// Registers the handle `name` with a first client at the AS of the hub at `hub_url`,
    /// creates the pseudonymous QS records, and stores the state in `dir`.
    pub async fn register(dir: &Path, hub_url: &str, name: &str) -> Result<Self, ClientError> {
        Self::register_with_ca(dir, hub_url, name, None).await
    }

    /// Like [`Client::register`], additionally trusting the PEM root `ca_pem` for the hub's
    /// HTTPS certificate, for hubs certified by a private CA.
    pub async fn register_with_ca(
        dir: &Path,
        hub_url: &str,
        name: &str,
        ca_pem: Option<&[u8]>,
    ) -> Result<Self, ClientError> {
        Self::register_in_mode(dir, hub_url, name, ca_pem, DsMode::Rm).await
    }

    /// Like [`Client::register_with_ca`] for a hub in `mode`. A `baseline` client behaves as a
    /// client of a conventional full-metadata DS (its real credential in every leaf, a plain
    /// queue id, no EAR key sent), so the same scenario runs against both modes.
    pub async fn register_in_mode(
        dir: &Path,
        hub_url: &str,
        name: &str,
        ca_pem: Option<&[u8]>,
        mode: DsMode,
    ) -> Result<Self, ClientError> {
        let mut transport = transport_for(hub_url, ca_pem)?;
        let domain = transport.domain().await?;
        // Identity at the AS: the only request that carries our handle.
        let client_key = SigningKey::generate();
        let identity = ClientIdentity {
            handle: name.as_bytes().to_vec().into(),
            device: mimi_rm_crypto::ids::random_id(),
        };
        let csr = ClientCredentialCsr::new(&client_key, identity.clone())
            .map_err(|e| ClientError::State(e.to_string()))?;
        let AsResponse::ClientCredential(credential) = transport
            .auth(&anonymous_as(AsOperation::RegisterUser(csr)))
            .await?
        else {
            return Err(ClientError::Unexpected("expected a client credential"));
        };
        let AsResponse::AsCredentials(anchors) = transport
            .auth(&anonymous_as(AsOperation::AsCredentials))
            .await?
        else {
            return Err(ClientError::Unexpected("expected AS credentials"));
        };
        credential
            .verify_chain(&anchors, now_ms() / 1000)
            .map_err(identity::IdentityError::from)?;
        if credential.tbs.identity != identity
            || credential.tbs.public_key.as_slice() != client_key.verifying_key().as_bytes()
        {
            return Err(ClientError::Unexpected("the AS issued another credential"));
        }
        // From here on, rate-limited requests (the QS records first) are paid with tokens that
        // this credential authorises us to obtain.
        std::fs::create_dir_all(dir).map_err(|e| ClientError::State(e.to_string()))?;
        transport.enable_tokens(crate::tokens::Wallet::new(
            domain.clone(),
            credential.clone(),
            SigningKey::from_bytes(&client_key.to_bytes())?,
            Some(dir.join(WALLET_FILE)),
        )?);
        let qs_public = match transport
            .qs(&anonymous_qs(QsOperation::EncryptionKey))
            .await?
        {
            QsResponse::EncryptionKey(k) => k.as_slice().to_vec(),
            _ => return Err(ClientError::Unexpected("expected the QS key")),
        };
        let client_auth = SigningKey::generate();
        let user_auth = SigningKey::generate();
        let token: [u8; 32] = mimi_rm_crypto::ids::random_bytes();
        let add_package_key = EarKey::random();
        let secret = RatchetSecret::random();
        let create = CreateUser {
            user_auth_key: user_auth.verifying_key().as_bytes().to_vec().into(),
            client_auth_key: client_auth.verifying_key().as_bytes().to_vec().into(),
            friendship_token: token.to_vec().into(),
            initial_ratchet_secret: secret.as_bytes().to_vec().into(),
        };
        let req = signed_qs(
            &client_auth,
            QsSender::NewClient,
            QsOperation::CreateUser(create),
        )?;
        let QsResponse::UserCreated(ids) = transport.qs(&req).await? else {
            return Err(ClientError::Unexpected("expected UserCreated"));
        };
        let link = HpkeKeyPair::generate();
        let user_secret: [u8; 32] = mimi_rm_crypto::ids::random_bytes();
        let state = ClientState {
            name: name.to_owned(),
            device: hex::encode(identity.device),
            client_key: hex::encode(client_key.to_bytes()),
            client_credential: hex::encode(encoded(&credential)?),
            as_credentials: hex::encode(encoded(&anchors)?),
            credential_key: hex::encode(EarKey::random().as_bytes()),
            wrapper_key: hex::encode(EarKey::random().as_bytes()),
            wai_key: hex::encode(EarKey::random().as_bytes()),
            contacts: BTreeMap::new(),
            peer_anchors: BTreeMap::new(),
            in_flight_rekey: None,
            pending_mixes: Vec::new(),
            received_since_rekey: 0,
            committed_since_receive: false,
            mode,
            user_id: hex::encode(ids.user_id),
            client_id: hex::encode(ids.client_id),
            client_auth_key: hex::encode(client_auth.to_bytes()),
            user_auth_key: hex::encode(user_auth.to_bytes()),
            friendship_token: hex::encode(token),
            add_package_key: hex::encode(add_package_key.as_bytes()),
            queue_ratchet: hex::encode(QueueRatchet::new(secret).to_bytes()),
            qs_public_key: hex::encode(qs_public),
            domain,
            groups: BTreeMap::new(),
            key_packages: BTreeMap::new(),
            user_secret: hex::encode(user_secret),
            user_secret_generation: 0,
            link_private: hex::encode(link.private.as_bytes()),
            devices: BTreeMap::from([(
                hex::encode(identity.device),
                hex::encode(link.public.as_bytes()),
            )]),
            connection_keys: BTreeMap::new(),
            connection_key_order: Vec::new(),
            pending_user_secret: None,
            pending_connections: BTreeMap::new(),
            connection_requests: BTreeMap::new(),
        };
        let mut client = Self::from_parts(transport, dir, state);
        client.publish_add_packages(ADD_PACKAGES).await?;
        client
            .publish_connection_packages(CONNECTION_PACKAGES)
            .await?;
        Ok(client)
    }

    /// A client over an already set-up transport and state, with an empty OpenMLS store.
    fn from_parts(transport: Transport, dir: &Path, state: ClientState) -> Self {
        Self {
            transport,
            dir: dir.to_owned(),
            state,
            provider: ClientProvider::default(),
            pending: Vec::new(),
            ephemeral: false,
            keepalive_ms: DEFAULT_KEEPALIVE_MS,
        }
    }

    /// Loads a client saved in `dir`, talking to `hub_url`.
    pub fn load(dir: &Path, hub_url: &str) -> Result<Self, ClientError> {
        Self::load_with_ca(dir, hub_url, None)
    }

    /// Like [`Client::load`], additionally trusting the PEM root `ca_pem` for the hub's HTTPS
    /// certificate, for hubs certified by a private CA.
    pub fn load_with_ca(
        dir: &Path,
        hub_url: &str,
        ca_pem: Option<&[u8]>,
    ) -> Result<Self, ClientError> {
        let mut transport = transport_for(hub_url, ca_pem)?;
        let (state, mls) = state::load(dir)?;
        let credential: ClientCredential =
            decode_exact(&unhex(&state.client_credential)?, 64 * 1024)
                .map_err(|e| ClientError::State(e.to_string()))?;
        transport.enable_tokens(crate::tokens::Wallet::new(
            state.domain.clone(),
            credential,
            SigningKey::from_bytes(&unhex(&state.client_key)?)?,
            Some(dir.join(WALLET_FILE)),
        )?);
        Ok(Self {
            transport,
            dir: dir.to_owned(),
            state,
            provider: ClientProvider::from_snapshot(mls),
            pending: Vec::new(),
            ephemeral: false,
            keepalive_ms: DEFAULT_KEEPALIVE_MS,
        })
    }

    /// Takes one Privacy Pass token from this client's wallet (refilling it when low), for
    /// requests built by hand: tools, tests, benchmarks.
    pub async fn take_token(
        &self,
    ) -> Result<mimi_rm_protocol::tokens::PresentedToken, ClientError> {
        let wallet = self
            .transport
            .wallet()
            .ok_or(ClientError::Unexpected("no token wallet"))?;
        wallet
            .take(self.transport.http(), self.transport.base())
            .await
    }

    /// The client's token wallet.
    pub fn wallet(&self) -> Option<&crate::tokens::Wallet> {
        self.transport.wallet()
    }

    /// The transport to the home hub.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// Records every request body this client sends (wire log).
    pub fn set_recorder(&mut self, recorder: crate::transport::Recorder) {
        self.transport.set_recorder(recorder);
    }

    /// Our pseudonymous QS client id (the queue id; only our own QS can link it to leaves).
    pub fn client_id_bytes(&self) -> Result<[u8; 16], ClientError> {
        self.client_id()
    }

    /// The credential identities of our leaves in every current group: pseudonyms the hub must
    /// never store in the clear.
    pub fn leaf_identities(&self) -> Result<Vec<Vec<u8>>, ClientError> {
        self.groups()
            .iter()
            .map(|g| {
                let mls = self.load_group(g)?;
                let leaf = mls
                    .own_leaf_node()
                    .ok_or(ClientError::Unexpected("no own leaf"))?;
                Ok(leaf.credential().serialized_content().to_vec())
            })
            .collect()
    }

    /// Local name.
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// The card a contact needs to add us to groups and to read our credentials.
    pub fn contact_card(&self) -> Result<ContactCard, ClientError> {
        Ok(ContactCard {
            handle: self.state.name.as_bytes().to_vec().into(),
            domain: self.state.domain.as_bytes().to_vec().into(),
            friendship_token: b32(&unhex(&self.state.friendship_token)?)?,
            add_package_key: b32(&unhex(&self.state.add_package_key)?)?,
            credential_key: b32(&unhex(&self.state.credential_key)?)?,
            wrapper_key: b32(&unhex(&self.state.wrapper_key)?)?,
            wai_key: b32(&unhex(&self.state.wai_key)?)?,
        })
    }

    /// Accepts `card` as a contact: we will add its owner to groups and accept its invitations.
    pub fn add_contact(&mut self, card: &ContactCard) -> Result<(), ClientError> {
        self.state
            .contacts
            .insert(card.handle_str(), card.to_text()?);
        self.persist()
    }

    /// Handles of our contacts.
    pub fn contacts(&self) -> Vec<String> {
        self.state.contacts.keys().cloned().collect()
    }

    /// Our handle and device id, as the AS certified them.
    pub fn identity(&self) -> Result<ClientIdentity, ClientError> {
        Ok(self.client_credential()?.tbs.identity)
    }

    /// Our client credential (what members and contacts see; the hub never does).
    pub fn client_credential(&self) -> Result<ClientCredential, ClientError> {
        decode_exact(&unhex(&self.state.client_credential)?, 64 * 1024)
            .map_err(|e| ClientError::State(e.to_string()))
    }

    /// Who each member of `group` is, as far as we could verify.
    pub fn member_identities(
        &self,
        group: &GroupHandle,
    ) -> Result<BTreeMap<u32, MemberIdentity>, ClientError> {
        let meta = self.meta(group)?;
        Ok(self
            .load_group(group)?
            .members()
            .map(|m| {
                let id = match meta.members.get(&m.index.u32()) {
                    Some(MemberRecord {
                        handle: Some(handle),
                        device: Some(device),
                        ..
                    }) => MemberIdentity::Verified {
                        handle: handle.clone(),
                        device: unhex(device)
                            .ok()
                            .and_then(|d| d.try_into().ok())
                            .unwrap_or_default(),
                    },
                    Some(MemberRecord {
                        problem: Some(p), ..
                    }) => MemberIdentity::Unverified { reason: p.clone() },
                    _ => MemberIdentity::Unverified {
                        reason: "no credential material".into(),
                    },
                };
                (m.index.u32(), id)
            })
            .collect())
    }

    /// Groups we are in.
    pub fn groups(&self) -> Vec<GroupHandle> {
        self.state
            .groups
            .keys()
            .filter_map(|k| GroupHandle::from_hex(k).ok())
            .collect()
    }

    /// Our leaf index in a group.
    pub fn own_leaf(&self, group: &GroupHandle) -> Result<u32, ClientError> {
        Ok(self.load_group(group)?.own_leaf_index().u32())
    }

    /// Current epoch of a group as we see it.
    pub fn epoch(&self, group: &GroupHandle) -> Result<u64, ClientError> {
        Ok(self.load_group(group)?.epoch().as_u64())
    }

    /// Leaf indices of the current members.
    pub fn members(&self, group: &GroupHandle) -> Result<Vec<u32>, ClientError> {
        Ok(self
            .load_group(group)?
            .members()
            .map(|m| m.index.u32())
            .collect())
    }

    /// The EAR key of a group (for tests and diagnostics; never logged).
    pub fn group_ear_key(&self, group: &GroupHandle) -> Result<[u8; 32], ClientError> {
        let meta = self.meta(group)?;
        b32(&unhex(&meta.ear_key)?)
    }

    /// Keeps all further state changes in memory only: nothing is written to the client
    /// directory any more (the wallet file included). For load generators, whose thousands of
    /// clients would otherwise measure their own disk writes; a real client must not use it.
    pub fn set_ephemeral(&mut self) {
        self.ephemeral = true;
        if let Some(w) = self.transport.wallet() {
            w.set_ephemeral();
        }
    }

    /// How long this client may stay silent in a group before `receive` makes an Update there.
    /// The hub counts only signed requests as activity and proposes removing members idle past
    /// its limit (90 days by default), so a member that only reads must speak up now and then;
    /// an Update also refreshes its keys. Keep this well below the hub's limit.
    pub fn set_keepalive(&mut self, every: std::time::Duration) {
        self.keepalive_ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX);
    }

    /// Holds at least `n` Privacy Pass tokens before returning, so a burst of requests does not
    /// wait for issuance.
    pub async fn prefill_tokens(&self, n: usize) -> Result<(), ClientError> {
        let wallet = self
            .transport
            .wallet()
            .ok_or(ClientError::Unexpected("no token wallet"))?;
        wallet
            .prefill(self.transport.http(), self.transport.base(), n)
            .await
    }

    fn persist(&self) -> Result<(), ClientError> {
        if self.ephemeral {
            return Ok(());
        }
        state::save(&self.dir, &self.state, &self.provider.snapshot())
    }

    fn client_auth(&self) -> Result<SigningKey, ClientError> {
        Ok(SigningKey::from_bytes(&unhex(
            &self.state.client_auth_key,
        )?)?)
    }

    fn client_id(&self) -> Result<[u8; 16], ClientError> {
        unhex(&self.state.client_id)?
            .try_into()
            .map_err(|_| ClientError::State("client id".into()))
    }

    fn meta_mut(&mut self, group: &GroupHandle) -> Result<&mut GroupMeta, ClientError> {
        self.state
            .groups
            .get_mut(&hex::encode(&group.0))
            .ok_or(ClientError::UnknownGroup)
    }

    fn meta(&self, group: &GroupHandle) -> Result<&GroupMeta, ClientError> {
        self.state
            .groups
            .get(&hex::encode(&group.0))
            .ok_or(ClientError::UnknownGroup)
    }

    fn load_group(&self, group: &GroupHandle) -> Result<MlsGroup, ClientError> {
        MlsGroup::load(self.provider.storage(), &GroupId::from_slice(&group.0))
            .map_err(ClientError::mls)?
            .ok_or(ClientError::UnknownGroup)
    }

    fn signer(&self, public_hex: &str) -> Result<SignatureKeyPair, ClientError> {
        SignatureKeyPair::read(
            self.provider.storage(),
            &unhex(public_hex)?,
            CIPHERSUITE.signature_algorithm(),
        )
        .ok_or_else(|| ClientError::State("missing signature key".into()))
    }

    /// A fresh `QueueRef` for one leaf: our client id sealed to our QS (fresh randomness each
    /// time, so two leaves of ours cannot be linked by it). Baseline clients send it plain.
    fn sealed_queue_ref(&self) -> Result<Extension, ClientError> {
        let plain = QueueRefPlain {
            client_id: self.client_id()?,
        };
        let address = match self.state.mode {
            DsMode::Baseline => QueueAddress::Plain(plain),
            DsMode::Rm => {
                let pk = HpkePublicKey::from_bytes(&unhex(&self.state.qs_public_key)?)?;
                let plain = encode(&plain).map_err(|e| ClientError::State(e.to_string()))?;
                let sealed = hpke_seal::seal(
                    &pk,
                    QUEUE_REF_HPKE_LABEL,
                    self.state.domain.as_bytes(),
                    &plain,
                )?;
                QueueAddress::Sealed(HpkeCiphertextWire {
                    kem_output: sealed.kem_output.into(),
                    ciphertext: sealed.ciphertext.into(),
                })
            }
        };
        let qr = QueueRef {
            domain: self.state.domain.as_bytes().to_vec().into(),
            address,
        };
        let bytes = encode(&qr).map_err(|e| ClientError::State(e.to_string()))?;
        Ok(Extension::Unknown(
            QUEUE_REF_EXTENSION_TYPE,
            UnknownExtension(bytes),
        ))
    }

    /// A fresh leaf: a new signature key and a pseudonymous credential linked (encrypted) to our
    /// client credential. Returns the leaf's `SignatureEarKey` too. In baseline mode the leaf is
    /// our client credential itself, signing with its key, as in a conventional DS.
    fn new_leaf_identity(
        &self,
    ) -> Result<(SignatureKeyPair, CredentialWithKey, EarKey), ClientError> {
        if self.state.mode == DsMode::Baseline {
            let client_key = SigningKey::from_bytes(&unhex(&self.state.client_key)?)?;
            let signer = SignatureKeyPair::from_raw(
                CIPHERSUITE.signature_algorithm(),
                client_key.to_bytes().to_vec(),
                client_key.verifying_key().as_bytes().to_vec(),
            );
            signer
                .store(self.provider.storage())
                .map_err(ClientError::mls)?;
            let credential = BasicCredential::new(unhex(&self.state.client_credential)?).into();
            let cwk = CredentialWithKey {
                credential,
                signature_key: signer.to_public_vec().into(),
            };
            return Ok((signer, cwk, EarKey::random()));
        }
        let signer =
            SignatureKeyPair::new(CIPHERSUITE.signature_algorithm()).map_err(ClientError::mls)?;
        signer
            .store(self.provider.storage())
            .map_err(ClientError::mls)?;
        let client_key = SigningKey::from_bytes(&unhex(&self.state.client_key)?)?;
        let (pseudonym, sek) = identity::new_pseudonym(&client_key, signer.public())?;
        let credential = BasicCredential::new(encoded(&pseudonym)?).into();
        let cwk = CredentialWithKey {
            credential,
            signature_key: signer.to_public_vec().into(),
        };
        Ok((signer, cwk, sek))
    }

    /// The credential material the hub stores for one of our leaves: encrypted under the group's
    /// keys in RM mode; empty in baseline mode, whose leaves carry the credential in the clear.
    fn leaf_info(
        &self,
        credential: &ClientCredential,
        sek: &EarKey,
        ck: &EarKey,
        wk: &EarKey,
    ) -> Result<LeafCredentialInfo, ClientError> {
        Ok(match self.state.mode {
            DsMode::Rm => identity::wrap(credential, sek, ck, wk)?,
            DsMode::Baseline => LeafCredentialInfo {
                encrypted_client_credential: Vec::new().into(),
                encrypted_signature_ear_key: Vec::new().into(),
            },
        })
    }

    /// The hub mode this client was registered for.
    pub fn mode(&self) -> DsMode {
        self.state.mode
    }

    /// Every AS we can verify credentials against: our own (pinned at registration) and those
    /// of our contacts' providers.
    fn anchors(&self) -> Result<AsCredentials, ClientError> {
        let mut all: AsCredentials = decode_exact(&unhex(&self.state.as_credentials)?, 1 << 20)
            .map_err(|e| ClientError::State(e.to_string()))?;
        for hexed in self.state.peer_anchors.values() {
            let peer: AsCredentials = decode_exact(&unhex(hexed)?, 1 << 20)
                .map_err(|e| ClientError::State(e.to_string()))?;
            all.roots.extend(peer.roots);
            all.intermediates.extend(peer.intermediates);
        }
        Ok(all)
    }

    /// Fetches (through our provider) the AS credentials of every contact's provider we do not
    /// know yet. A provider's roots must name that provider's domain.
    async fn ensure_contact_anchors(&mut self) -> Result<(), ClientError> {
        let mut missing = Vec::new();
        for text in self.state.contacts.values() {
            let card = ContactCard::from_text(text)?;
            let domain = card.domain_str();
            if domain != self.state.domain
                && !self.state.peer_anchors.contains_key(&domain)
                && !missing.contains(&domain)
            {
                missing.push(domain);
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        for domain in missing {
            self.fetch_anchors(&domain).await?;
        }
        Ok(())
    }

    /// The AS credentials of `domain`: our own, already known ones, or fetched (through our
    /// provider) and remembered. A provider's roots must name that provider's domain.
    async fn fetch_anchors(&mut self, domain: &str) -> Result<AsCredentials, ClientError> {
        let known = if domain == self.state.domain {
            Some(&self.state.as_credentials)
        } else {
            self.state.peer_anchors.get(domain)
        };
        if let Some(hexed) = known {
            return decode_exact(&unhex(hexed)?, 1 << 20)
                .map_err(|e| ClientError::State(e.to_string()));
        }
        let AsResponse::AsCredentials(anchors) = self
            .transport
            .auth_at(
                &self.state.domain,
                domain,
                &anonymous_as(AsOperation::AsCredentials),
            )
            .await?
        else {
            return Err(ClientError::Unexpected("expected AS credentials"));
        };
        if anchors
            .roots
            .iter()
            .any(|r| r.tbs.as_domain.as_slice() != domain.as_bytes())
        {
            return Err(ClientError::Unexpected(
                "a provider's AS root names another domain",
            ));
        }
        self.state
            .peer_anchors
            .insert(domain.to_owned(), hex::encode(encoded(&anchors)?));
        self.persist()?;
        Ok(anchors)
    }

    fn friendship_keys(&self) -> Result<(EarKey, EarKey), ClientError> {
        Ok((
            EarKey::from_bytes(&unhex(&self.state.credential_key)?)?,
            EarKey::from_bytes(&unhex(&self.state.wrapper_key)?)?,
        ))
    }

    /// Replaces our published AddPackages with `count` one-time ones plus a last-resort one.
    pub async fn publish_add_packages(&mut self, count: usize) -> Result<(), ClientError> {
        let key = EarKey::from_bytes(&unhex(&self.state.add_package_key)?)?;
        let mut packages = Vec::with_capacity(count);
        let mut last_resort = Vec::new();
        let credential = self.client_credential()?;
        let (friend_ck, friend_wk) = self.friendship_keys()?;
        for i in 0..=count {
            let is_last_resort = i == count;
            let (signer, cwk, sek) = self.new_leaf_identity()?;
            let mut builder = KeyPackage::builder()
                .leaf_node_capabilities(leaf_capabilities())
                .leaf_node_extensions(
                    Extensions::single(self.sealed_queue_ref()?).map_err(ClientError::mls)?,
                );
            if is_last_resort {
                builder = builder.mark_as_last_resort();
            }
            let kpb = builder
                .build(CIPHERSUITE, &self.provider, &signer, cwk)
                .map_err(ClientError::mls)?;
            let kp_ref = kpb
                .key_package()
                .hash_ref(self.provider.crypto())
                .map_err(ClientError::mls)?;
            self.state.key_packages.insert(
                hex::encode(kp_ref.as_slice()),
                PendingKeyPackage {
                    init_private: hex::encode(&**kpb.init_private_key()),
                    signer_public: hex::encode(signer.public()),
                    signature_ear_key: hex::encode(sek.as_bytes()),
                },
            );
            let info = identity::wrap(&credential, &sek, &friend_ck, &friend_wk)?;
            let package = AddPackage {
                key_package: kpb
                    .key_package()
                    .tls_serialize_detached()
                    .map_err(ClientError::mls)?
                    .into(),
                encrypted_client_credential: info.encrypted_client_credential,
                encrypted_signature_ear_key: info.encrypted_signature_ear_key,
            };
            let sealed = ear::seal(&key, ADD_PACKAGE_DOMAIN, b"", &encoded(&package)?)?;
            if is_last_resort {
                last_resort = sealed;
            } else {
                packages.push(sealed.into());
            }
        }
        let op = QsOperation::PublishAddPackages(PublishAddPackages {
            packages,
            last_resort: last_resort.into(),
        });
        let req = signed_qs(
            &self.client_auth()?,
            QsSender::Client(self.client_id()?),
            op,
        )?;
        self.transport.qs(&req).await?;
        self.persist()
    }

    fn ds_request(
        &self,
        group: &[u8],
        ear_key: Option<&EarKey>,
        sender: DsSender,
        operation: DsOperation,
        signer: Option<&SignatureKeyPair>,
    ) -> Result<DsRequest, ClientError> {
        // A baseline hub keeps group state in the clear: the group key never leaves the client.
        let ear_key = ear_key.filter(|_| self.state.mode == DsMode::Rm);
        let tbs = DsRequestTbs {
            group_id: group.to_vec().into(),
            ear_key: ear_key.map(|k| k.as_bytes().to_vec().into()),
            timestamp_ms: now_ms(),
            nonce: mimi_rm_crypto::ids::random_id(),
            sender,
            operation,
        };
        let signature = match signer {
            Some(s) => {
                let mut signed = DS_REQUEST_SIGNATURE_LABEL.to_vec();
                signed.extend(encode(&tbs).map_err(|e| ClientError::State(e.to_string()))?);
                s.sign(&signed)
                    .map_err(|e| ClientError::Mls(format!("sign: {e:?}")))?
            }
            None => Vec::new(),
        };
        Ok(DsRequest {
            tbs,
            signature: signature.into(),
        })
    }

    /// Creates a group on the hub with our user as its only member (and admin): this device,
    /// plus our user's other devices.
    pub async fn create_group(&mut self) -> Result<GroupHandle, ClientError> {
        let group = self.create_group_of(GroupKind::Regular).await?;
        if self.state.devices.len() > 1 {
            self.add_own_devices(&group).await?;
        }
        Ok(group)
    }

    /// Creates a group of `kind` with this device as its only member.
    async fn create_group_of(&mut self, kind: GroupKind) -> Result<GroupHandle, ClientError> {
        let reserved = self.reserve_group_id().await?;
        self.create_group_in(reserved, kind).await
    }

    /// Creates a group of `kind` under an id reserved on our hub.
    async fn create_group_in(
        &mut self,
        reserved: ReservedGroup,
        kind: GroupKind,
    ) -> Result<GroupHandle, ClientError> {
        let gid = reserved.group_id.as_slice().to_vec();
        // The hub proposes removals (inactive members, deleted queues) as external sender.
        let hub_sender = ExternalSender::new(
            reserved.external_sender_key.as_slice().to_vec().into(),
            BasicCredential::new(external_sender_identity(&self.state.domain)).into(),
        );
        let (signer, cwk, sek) = self.new_leaf_identity()?;
        let cfg = MlsGroupCreateConfig::builder()
            .ciphersuite(CIPHERSUITE)
            .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
            .use_ratchet_tree_extension(false)
            .max_past_epochs(MAX_PAST_EPOCHS)
            .sender_ratchet_configuration(SenderRatchetConfiguration::new(
                OUT_OF_ORDER_TOLERANCE,
                MAX_FORWARD_DISTANCE,
            ))
            .capabilities(leaf_capabilities())
            .with_leaf_node_extensions(
                Extensions::single(self.sealed_queue_ref()?).map_err(ClientError::mls)?,
            )
            .map_err(ClientError::mls)?
            .with_group_context_extensions(
                Extensions::single(Extension::ExternalSenders(vec![hub_sender]))
                    .map_err(ClientError::mls)?,
            )
            .build();
        let group = MlsGroup::new_with_group_id(
            &self.provider,
            &signer,
            &cfg,
            GroupId::from_slice(&gid),
            cwk,
        )
        .map_err(ClientError::mls)?;
        let group_info = group
            .export_group_info(self.provider.crypto(), &signer, false)
            .map_err(ClientError::mls)?
            .to_bytes()
            .map_err(ClientError::mls)?;
        let ratchet_tree = group
            .export_ratchet_tree()
            .tls_serialize_detached()
            .map_err(ClientError::mls)?;
        let ear_key = EarKey::random();
        let (credential_key, wrapper_key) = (EarKey::random(), EarKey::random());
        let credential = self.client_credential()?;
        let creator = self.leaf_info(&credential, &sek, &credential_key, &wrapper_key)?;
        let op = DsOperation::CreateGroup(CreateGroup {
            group_info: group_info.into(),
            ratchet_tree: ratchet_tree.into(),
            creator,
            creator_user_auth_key: self
                .user_auth_key(&gid)?
                .verifying_key()
                .as_bytes()
                .to_vec()
                .into(),
            kind,
        });
        let req = self.ds_request(&gid, Some(&ear_key), DsSender::Member(0), op, Some(&signer))?;
        self.transport.ds(&req).await?;
        self.state.groups.insert(
            hex::encode(&gid),
            GroupMeta {
                ear_key: hex::encode(ear_key.as_bytes()),
                signer_public: hex::encode(signer.public()),
                credential_key: hex::encode(credential_key.as_bytes()),
                wrapper_key: hex::encode(wrapper_key.as_bytes()),
                signature_ear_key: hex::encode(sek.as_bytes()),
                signer_private: leaf_key_backup(&signer)?,
                leaf_credential: hex::encode(encoded_credential(&group)?),
                user_key_set: true,
                members: BTreeMap::from([(0, verified_record(signer.public(), &credential))]),
                last_request_ms: now_ms(),
                joined_epoch: 0,
            },
        );
        self.persist()?;
        Ok(GroupHandle(gid))
    }

    /// Reserves a group id on our hub (with the hub's external-sender key).
    pub(crate) async fn reserve_group_id(&self) -> Result<ReservedGroup, ClientError> {
        let req = self.ds_request(
            &[],
            None,
            DsSender::Anonymous,
            DsOperation::RequestGroupId,
            None,
        )?;
        match self.transport.ds(&req).await? {
            DsResponse::GroupId(reserved) => Ok(reserved),
            _ => Err(ClientError::Unexpected("expected a group id")),
        }
    }

    /// Fetches the contact's AddPackages with its card and adds all its clients to the group.
    pub async fn invite(
        &mut self,
        group: &GroupHandle,
        contact: &ContactCard,
    ) -> Result<u64, ClientError> {
        self.invite_with(group, contact, InviteMode::Checked).await
    }

    /// `invite`; only the test adversary uses the other modes.
    async fn invite_with(
        &mut self,
        group: &GroupHandle,
        contact: &ContactCard,
        mode: InviteMode,
    ) -> Result<u64, ClientError> {
        self.add_contact(contact)?;
        self.ensure_contact_anchors().await?;
        self.catch_up_before_commit().await?;
        let (kps, mut added, records) = self
            .fetch_add_packages_of(group, contact, None, mode)
            .await?;
        if kps.is_empty() {
            return Err(ClientError::NoAddPackage);
        }
        if mode == InviteMode::WithoutMaterial {
            added.clear();
        }
        let aad = CommitAad {
            added,
            user_auth_key: None,
            joiner: None,
            reinit: None,
        };
        let epoch = self.commit(group, Plan::Add(kps, aad)).await?;
        self.insert_added_records(group, records)?;
        Ok(epoch)
    }

    /// Files the member records of clients we just added under their new leaves.
    fn insert_added_records(
        &mut self,
        group: &GroupHandle,
        records: Vec<MemberRecord>,
    ) -> Result<(), ClientError> {
        let mls = self.load_group(group)?;
        let meta = self.meta_mut(group)?;
        for record in records {
            if let Some(m) = mls
                .members()
                .find(|m| hex::encode(&m.signature_key) == record.signature_key)
            {
                meta.members.insert(m.index.u32(), record);
            }
        }
        self.persist()
    }

    /// Fetches `contact`'s AddPackages (every device of that user, or only `only_devices`),
    /// verifies each (in `Checked` mode) and prepares its credential material for `group`.
    async fn fetch_add_packages_of(
        &mut self,
        group: &GroupHandle,
        contact: &ContactCard,
        only_devices: Option<&[[u8; 16]]>,
        mode: InviteMode,
    ) -> Result<(Vec<KeyPackage>, Vec<AddedMember>, Vec<MemberRecord>), ClientError> {
        let op = QsOperation::FetchAddPackages(contact.friendship_token.to_vec().into());
        let QsResponse::AddPackages(pkgs) = self
            .transport
            .qs_at(&self.state.domain, &contact.domain_str(), &anonymous_qs(op))
            .await?
        else {
            return Err(ClientError::Unexpected("expected AddPackages"));
        };
        let key = EarKey::from_bytes(&contact.add_package_key)?;
        let (friend_ck, friend_wk) = (
            EarKey::from_bytes(&contact.credential_key)?,
            EarKey::from_bytes(&contact.wrapper_key)?,
        );
        let wai_key = EarKey::from_bytes(&contact.wai_key)?;
        let meta = self.meta(group)?.clone();
        let (group_ck, group_wk) = group_keys(&meta)?;
        let anchors = self.anchors()?;
        let client_key = SigningKey::from_bytes(&unhex(&self.state.client_key)?)?;
        let own = self.client_credential()?;
        let now = now_ms() / 1000;
        let (mut kps, mut added, mut records) = (Vec::new(), Vec::new(), Vec::new());
        for p in pkgs {
            let bytes = ear::open(&key, ADD_PACKAGE_DOMAIN, b"", p.as_slice())?;
            let package: AddPackage =
                decode_exact(&bytes, MAX_MESSAGE).map_err(|e| ClientError::State(e.to_string()))?;
            let kp_in = KeyPackageIn::tls_deserialize_exact(package.key_package.as_slice())
                .map_err(ClientError::mls)?;
            let kp = kp_in
                .validate(self.provider.crypto(), ProtocolVersion::Mls10)
                .map_err(ClientError::mls)?;
            // Verify before adding: the leaf is signed by a client credential of this contact.
            let friend_info = LeafCredentialInfo {
                encrypted_client_credential: package.encrypted_client_credential,
                encrypted_signature_ear_key: package.encrypted_signature_ear_key,
            };
            let leaf = kp.leaf_node();
            let (credential, sek) = identity::unwrap(&friend_info, &friend_ck, &friend_wk)?;
            if only_devices.is_some_and(|d| !d.contains(&credential.tbs.identity.device)) {
                continue;
            }
            let record = if mode == InviteMode::Checked {
                match self.state.mode {
                    DsMode::Rm => identity::verify_leaf(
                        leaf.credential().serialized_content(),
                        leaf.signature_key().as_slice(),
                        &friend_info,
                        &friend_ck,
                        &friend_wk,
                        &anchors,
                        now,
                    )?,
                    DsMode::Baseline => identity::verify_plain_leaf(
                        leaf.credential().serialized_content(),
                        leaf.signature_key().as_slice(),
                        &anchors,
                        now,
                    )?,
                };
                if credential.tbs.identity.handle != contact.handle {
                    return Err(ClientError::Unexpected(
                        "an AddPackage belongs to someone other than the contact",
                    ));
                }
                verified_record(leaf.signature_key().as_slice(), &credential)
            } else {
                check_leaf(
                    self.state.mode,
                    leaf.credential().serialized_content(),
                    leaf.signature_key().as_slice(),
                    &friend_info,
                    (&friend_ck, &friend_wk),
                    &anchors,
                )
            };
            let kp_ref = kp
                .hash_ref(self.provider.crypto())
                .map_err(ClientError::mls)?;
            let attribution = WelcomeAttributionInfo::sign(
                &client_key,
                WelcomeAttributionTbs {
                    sender: own.clone(),
                    group_id: group.0.clone().into(),
                    key_package_ref: kp_ref.as_slice().to_vec().into(),
                    credential_key: *group_ck.as_bytes(),
                    wrapper_key: *group_wk.as_bytes(),
                },
            )
            .map_err(|e| ClientError::State(e.to_string()))?;
            added.push(AddedMember {
                key_package_ref: kp_ref.as_slice().to_vec().into(),
                credential: self.leaf_info(&credential, &sek, &group_ck, &group_wk)?,
                user: 0,
                attribution: ear::seal(
                    &wai_key,
                    identity::ATTRIBUTION_DOMAIN,
                    kp_ref.as_slice(),
                    &encoded(&attribution)?,
                )?
                .into(),
            });
            records.push(record);
            kps.push(kp);
        }
        Ok((kps, added, records))
    }

    /// Sets the role of the user owning `leaf` (admins only; all its devices share the role).
    pub async fn set_role(
        &mut self,
        group: &GroupHandle,
        leaf: u32,
        role: Role,
    ) -> Result<(), ClientError> {
        let (signer, mls, ear_key) = self.member(group)?;
        let req = self.member_request(
            &mls,
            &ear_key,
            &signer,
            DsOperation::SetRole(SetRole { leaf, role }),
        )?;
        self.transport.ds(&req).await?;
        Ok(())
    }

    /// The group's users as the hub enforces them: each user's leaves and role.
    pub async fn roles(&self, group: &GroupHandle) -> Result<Vec<GroupUser>, ClientError> {
        let ear_key = EarKey::from_bytes(&unhex(&self.meta(group)?.ear_key)?)?;
        Ok(self.external_commit_info(group, &ear_key).await?.users)
    }

    /// Removes members by leaf index. Like every commit of ours, it first reads our queue if we
    /// committed since the last `receive` (the events follow with the next `receive`); if that
    /// puts other members on the chosen leaves, it sends nothing and fails with
    /// [`ClientError::MembersChanged`].
    pub async fn remove(
        &mut self,
        group: &GroupHandle,
        leaves: &[u32],
    ) -> Result<u64, ClientError> {
        // The caller chose the leaves in the epoch we are in; if catching up moves another
        // member onto one of them, removing it would hit someone else.
        let chosen = self.leaf_keys(group, leaves)?;
        self.catch_up_before_commit().await?;
        if self.leaf_keys(group, leaves)? != chosen {
            return Err(ClientError::MembersChanged);
        }
        let plan = Plan::Remove(leaves.iter().map(|l| LeafNodeIndex::new(*l)).collect());
        self.commit(group, plan).await
    }

    /// The epoch we joined `group` at (see [`GroupMeta::joined_epoch`]).
    fn joined_epoch(&self, group: &GroupHandle) -> u64 {
        self.state
            .groups
            .get(&hex::encode(&group.0))
            .map_or(0, |g| g.joined_epoch)
    }

    /// The signature key at each of `leaves` (none for a blank leaf).
    fn leaf_keys(
        &self,
        group: &GroupHandle,
        leaves: &[u32],
    ) -> Result<Vec<Option<Vec<u8>>>, ClientError> {
        let mls = self.load_group(group)?;
        Ok(leaves
            .iter()
            .map(|l| {
                mls.members()
                    .find(|m| m.index.u32() == *l)
                    .map(|m| m.signature_key)
            })
            .collect())
    }

    /// Commits a fresh UpdatePath (post-compromise security), including pending proposals.
    pub async fn update(&mut self, group: &GroupHandle) -> Result<u64, ClientError> {
        self.catch_up_before_commit().await?;
        self.commit(group, Plan::Update).await
    }

    /// Re-initialises `group` (admins only): commits a ReInit into a fresh group on our hub,
    /// creates that group and invites every member who is our contact. The old group takes no
    /// further operations. Returns the new group.
    pub async fn reinit(&mut self, group: &GroupHandle) -> Result<GroupHandle, ClientError> {
        self.catch_up_before_commit().await?;
        let reserved = self.reserve_group_id().await?;
        self.commit(group, Plan::ReInit(reserved.group_id.as_slice().to_vec()))
            .await?;
        let handles: std::collections::BTreeSet<String> = self
            .meta(group)?
            .members
            .values()
            .filter_map(|r| r.handle.clone())
            .filter(|h| *h != self.state.name)
            .collect();
        let new = self.create_group_in(reserved, GroupKind::Regular).await?;
        if self.state.devices.len() > 1 {
            self.add_own_devices(&new).await?;
        }
        for handle in handles {
            if let Some(text) = self.state.contacts.get(&handle).cloned() {
                self.invite(&new, &ContactCard::from_text(&text)?).await?;
            }
        }
        Ok(new)
    }

    /// Removes everyone else and deletes the group on the hub.
    pub async fn delete_group(&mut self, group: &GroupHandle) -> Result<(), ClientError> {
        self.catch_up_before_commit().await?;
        let mls = self.load_group(group)?;
        let own = mls.own_leaf_index();
        let others = mls
            .members()
            .map(|m| m.index)
            .filter(|i| *i != own)
            .collect();
        self.commit(group, Plan::Delete(others)).await?;
        let mut mls = self.load_group(group)?;
        mls.delete(self.provider.storage())
            .map_err(ClientError::mls)?;
        self.state.groups.remove(&hex::encode(&group.0));
        self.persist()
    }

    /// What every member request needs: our signer in the group, the group, and its EAR key.
    fn member(
        &self,
        group: &GroupHandle,
    ) -> Result<(SignatureKeyPair, MlsGroup, EarKey), ClientError> {
        let meta = self.meta(group)?;
        Ok((
            self.signer(&meta.signer_public)?,
            self.load_group(group)?,
            EarKey::from_bytes(&unhex(&meta.ear_key)?)?,
        ))
    }

    /// A DS request signed by our leaf in `mls`.
    fn member_request(
        &self,
        mls: &MlsGroup,
        ear_key: &EarKey,
        signer: &SignatureKeyPair,
        operation: DsOperation,
    ) -> Result<DsRequest, ClientError> {
        let sender = DsSender::Member(mls.own_leaf_index().u32());
        self.ds_request(
            mls.group_id().as_slice(),
            Some(ear_key),
            sender,
            operation,
            Some(signer),
        )
    }

    /// Proposes our own removal; another member commits it.
    pub async fn leave(&mut self, group: &GroupHandle) -> Result<(), ClientError> {
        let (signer, mut mls, ear_key) = self.member(group)?;
        let proposal = mls
            .leave_group(&self.provider, &signer)
            .map_err(ClientError::mls)?
            .to_bytes()
            .map_err(ClientError::mls)?;
        let req = self.member_request(
            &mls,
            &ear_key,
            &signer,
            DsOperation::SelfRemove(proposal.into()),
        )?;
        self.transport.ds(&req).await?;
        self.persist()
    }

    /// Encrypts and sends an application message. If the group has moved on too far for the
    /// message, catches up (the events go to the next `receive`) and sends it again.
    pub async fn send(&mut self, group: &GroupHandle, plaintext: &[u8]) -> Result<(), ClientError> {
        let mut framed = vec![CONTENT_USER];
        framed.extend_from_slice(plaintext);
        self.send_framed(group, &framed).await
    }

    /// Sends an already framed application message, catching up when the group moved on (a
    /// newer epoch, or a rotated EAR key announced in our queue).
    async fn send_framed(&mut self, group: &GroupHandle, framed: &[u8]) -> Result<(), ClientError> {
        for _ in 0..8 {
            match self.send_once(group, framed).await {
                Err(e)
                    if matches!(
                        e.code(),
                        Some(
                            mimi_rm_protocol::ErrorCode::WrongEpoch
                                | mimi_rm_protocol::ErrorCode::WrongEarKey
                        )
                    ) =>
                {
                    self.catch_up().await?;
                }
                other => return other,
            }
        }
        Err(ClientError::Unexpected("the group keeps moving; try again"))
    }

    /// Processes everything queued for us inside another call; the events go to the next
    /// `receive`.
    async fn catch_up(&mut self) -> Result<(), ClientError> {
        // As in `receive`: an invitation from a contact elsewhere needs that provider's roots.
        if let Err(e) = self.ensure_contact_anchors().await {
            tracing::warn!(error = %e, "could not fetch a contact provider's AS credentials");
        }
        let mut caught_up = Vec::new();
        let result = self.receive_into(&mut caught_up).await;
        self.pending.extend(caught_up);
        result
    }

    /// Called before each of our commits, before the group's state is read for it: if a
    /// commit of ours has moved us on since we last read our whole queue, read it now.
    ///
    /// Our own commits advance our epoch without going through the queue, where application
    /// messages of earlier epochs may still wait (the hub accepts a message up to a few epochs
    /// behind its own and queues it for us then). After `MAX_PAST_EPOCHS` commits of ours in a
    /// row those epochs' secrets were gone, and OpenMLS refused the waiting messages
    /// ("generation too old"). Reading the queue before every further commit keeps a queued
    /// message at most the hub's lag plus one epoch behind us.
    async fn catch_up_before_commit(&mut self) -> Result<(), ClientError> {
        if self.state.committed_since_receive {
            self.catch_up().await?;
        }
        Ok(())
    }

    async fn send_once(
        &mut self,
        group: &GroupHandle,
        plaintext: &[u8],
    ) -> Result<(), ClientError> {
        let (signer, mut mls, ear_key) = self.member(group)?;
        let msg = mls
            .create_message(&self.provider, &signer, plaintext)
            .map_err(ClientError::mls)?
            .to_bytes()
            .map_err(ClientError::mls)?;
        // Persist first: the message key is used up whether or not the hub got the message.
        self.persist()?;
        let msg: tls_codec::VLBytes = msg.into();
        let mut attempt = 0;
        loop {
            let req = self.member_request(
                &mls,
                &ear_key,
                &signer,
                DsOperation::SendMessage(msg.clone()),
            )?;
            match self.transport.ds(&req).await {
                Ok(_) => {
                    if let Ok(meta) = self.meta_mut(group) {
                        meta.last_request_ms = now_ms();
                    }
                    return Ok(());
                }
                // Unknown outcome: re-send the same ciphertext. If the first copy did arrive,
                // recipients drop the second (that message key is already used).
                Err(ClientError::Transport(e)) if attempt < TRANSPORT_RETRIES => {
                    attempt += 1;
                    tracing::debug!(error = %e, attempt, "hub unreachable, re-sending");
                    backoff(attempt).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn commit(&mut self, group: &GroupHandle, plan: Plan) -> Result<u64, ClientError> {
        let user_level = plan.is_user_level();
        let (signer, mut mls, ear_key) = self.member(group)?;
        let op = self.build_commit(&mut mls, &signer, plan.clone(), self.provider.crypto())?;
        match self
            .send_commit(mls, &ear_key, &signer, op, user_level)
            .await
        {
            // The hub has just proposed removals our commit must include: fetch them (they go
            // into our proposal store) and build the commit again, once.
            Err(ClientError::ProposalsPending) => {
                self.catch_up().await?;
                let (signer, mut mls, ear_key) = self.member(group)?;
                let op = self.build_commit(&mut mls, &signer, plan, self.provider.crypto())?;
                self.send_commit(mls, &ear_key, &signer, op, user_level)
                    .await
            }
            other => other,
        }
    }

    /// Stages a commit for `plan` and wraps it as the matching DS operation. `crypto` is the
    /// provider's own, except for the test adversary.
    fn build_commit(
        &self,
        mls: &mut MlsGroup,
        signer: &SignatureKeyPair,
        plan: Plan,
        crypto: &impl openmls_traits::crypto::OpenMlsCrypto,
    ) -> Result<DsOperation, ClientError> {
        // Our user's auth key goes into the first commit we make after being welcomed.
        let group = GroupHandle(mls.group_id().as_slice().to_vec());
        let own_key = match self.meta(&group) {
            Ok(m) if !m.user_key_set => Some(
                self.user_auth_key(&group.0)?
                    .verifying_key()
                    .as_bytes()
                    .to_vec()
                    .into(),
            ),
            _ => None,
        };
        // The credential material and key changes ride in the signed authenticated data of the
        // commit, so the hub and every member see the same values.
        let aad = match &plan {
            Plan::Add(_, aad) => CommitAad {
                user_auth_key: own_key,
                ..aad.clone()
            },
            Plan::AddClients(_, added) => CommitAad {
                added: added.clone(),
                user_auth_key: None,
                joiner: None,
                reinit: None,
            },
            Plan::RemoveClients(_, key) | Plan::RotateUserKey(key) => CommitAad {
                added: Vec::new(),
                user_auth_key: Some(key.clone().into()),
                joiner: None,
                reinit: None,
            },
            Plan::ReInit(target) => CommitAad {
                added: Vec::new(),
                user_auth_key: own_key,
                joiner: None,
                reinit: Some(target.clone().into()),
            },
            _ => CommitAad {
                added: Vec::new(),
                user_auth_key: own_key,
                joiner: None,
                reinit: None,
            },
        };
        mls.set_aad(encoded(&aad)?);
        let builder = mls.commit_builder();
        let builder = match &plan {
            Plan::Add(kps, _) | Plan::AddClients(kps, _) => {
                builder.propose_adds(kps.iter().cloned())
            }
            Plan::Remove(l) | Plan::Delete(l) => builder.propose_removals(l.iter().copied()),
            Plan::RemoveClients(l, _) => {
                builder.propose_removals(l.iter().map(|i| LeafNodeIndex::new(*i)))
            }
            Plan::Update | Plan::RotateUserKey(_) | Plan::ReInit(_) => {
                builder.force_self_update(true)
            }
        };
        let bundle = builder
            .load_psks(self.provider.storage())
            .map_err(ClientError::mls)?
            .create_group_info(true)
            .build(self.provider.rand(), crypto, signer, |_| true)
            .map_err(ClientError::mls)?
            .stage_commit(&self.provider)
            .map_err(ClientError::mls)?;
        let (commit, welcome, group_info) = bundle.into_messages();
        let cb = CommitBundle {
            commit: commit.to_bytes().map_err(ClientError::mls)?.into(),
            group_info: group_info
                .ok_or(ClientError::Unexpected("commit without GroupInfo"))?
                .to_bytes()
                .map_err(ClientError::mls)?
                .into(),
            welcome: welcome
                .map(|w| w.to_bytes().map(Into::into))
                .transpose()
                .map_err(ClientError::mls)?,
        };
        Ok(match plan {
            Plan::Add(..) => DsOperation::AddMembers(cb),
            Plan::Remove(_) => DsOperation::RemoveMembers(cb),
            Plan::Update | Plan::RotateUserKey(_) => DsOperation::Update(cb),
            Plan::Delete(_) => DsOperation::DeleteGroup(cb),
            Plan::AddClients(..) => DsOperation::AddClients(cb),
            Plan::RemoveClients(..) => DsOperation::RemoveClients(cb),
            Plan::ReInit(_) => DsOperation::ReInit(cb),
        })
    }

    /// Sends a staged commit; merges it only once the hub has accepted it (the hub orders
    /// commits), and drops it otherwise.
    async fn send_commit(
        &mut self,
        mut mls: MlsGroup,
        ear_key: &EarKey,
        signer: &SignatureKeyPair,
        op: DsOperation,
        user_level: bool,
    ) -> Result<u64, ClientError> {
        let group = GroupHandle(mls.group_id().as_slice().to_vec());
        let req = if user_level {
            self.user_request(&group, ear_key, op)?
        } else {
            self.member_request(&mls, ear_key, signer, op)?
        };
        let outcome = match self.transport.ds(&req).await {
            Ok(DsResponse::ProposalsPending(_)) => Err(ClientError::ProposalsPending),
            // The hub may or may not have applied it before the connection broke: ask it.
            Err(ClientError::Transport(e)) => {
                tracing::warn!(error = %e, "commit outcome unknown; asking the hub");
                self.commit_applied(&mls, ear_key).await.map(|applied| {
                    if applied {
                        Ok(())
                    } else {
                        Err(ClientError::Transport(e))
                    }
                })?
            }
            other => other.map(|_| ()),
        };
        match outcome {
            Ok(()) => {
                mls.merge_pending_commit(&self.provider)
                    .map_err(ClientError::mls)?;
                self.state.committed_since_receive = true;
                if let Ok(meta) = self.meta_mut(&group) {
                    meta.user_key_set = true;
                    meta.last_request_ms = now_ms();
                }
                self.persist()?;
                Ok(mls.epoch().as_u64())
            }
            Err(e) => {
                mls.clear_pending_commit(self.provider.storage())
                    .map_err(ClientError::mls)?;
                self.persist()?;
                Err(e)
            }
        }
    }

    /// Rotates the group's `GroupStateEarKey`: the hub re-encrypts the state under a fresh key,
    /// then the other members get it end to end, inside the group. From then on the old key
    /// opens nothing written afterwards.
    pub async fn rotate_ear_key(&mut self, group: &GroupHandle) -> Result<(), ClientError> {
        if self.state.mode == DsMode::Baseline {
            return Err(ClientError::Unexpected(
                "a baseline hub keeps group state in the clear: there is no EAR key to rotate",
            ));
        }
        let (signer, mls, ear_key) = self.member(group)?;
        let (old_ck, old_wk) = group_keys(self.meta(group)?)?;
        let (new_ck, new_wk) = (EarKey::random(), EarKey::random());
        // Every leaf's credential material, re-wrapped under the new credential keys.
        let info = self.external_commit_info(group, &ear_key).await?;
        let mut credentials = Vec::with_capacity(info.credentials.len());
        for entry in &info.credentials {
            let (cc, sek) = identity::unwrap(&entry.info, &old_ck, &old_wk)?;
            credentials.push(LeafCredentialEntry {
                leaf: entry.leaf,
                info: identity::wrap(&cc, &sek, &new_ck, &new_wk)?,
            });
        }
        let new = EarKey::random();
        let rotation = KeyRotation {
            new_ear_key: new.as_bytes().to_vec().into(),
            credentials,
        };
        let req =
            self.member_request(&mls, &ear_key, &signer, DsOperation::RotateEarKey(rotation))?;
        self.transport.ds(&req).await?;
        let meta = self.meta_mut(group)?;
        meta.ear_key = hex::encode(new.as_bytes());
        meta.credential_key = hex::encode(new_ck.as_bytes());
        meta.wrapper_key = hex::encode(new_wk.as_bytes());
        self.persist()?;
        let mut framed = vec![CONTENT_CONTROL];
        framed.extend_from_slice(new.as_bytes());
        framed.extend_from_slice(new_ck.as_bytes());
        framed.extend_from_slice(new_wk.as_bytes());
        self.send_framed(group, &framed).await
    }

    /// Applies a control message from another member.
    fn control(&mut self, group: GroupHandle, body: &[u8]) -> Result<Event, ClientError> {
        if body.len() != 96 {
            return Err(ClientError::Unexpected("malformed key rotation"));
        }
        let key = EarKey::from_bytes(&body[..32])?;
        let ck = EarKey::from_bytes(&body[32..64])?;
        let wk = EarKey::from_bytes(&body[64..])?;
        let meta = self.meta_mut(&group)?;
        meta.ear_key = hex::encode(key.as_bytes());
        meta.credential_key = hex::encode(ck.as_bytes());
        meta.wrapper_key = hex::encode(wk.as_bytes());
        tracing::info!(group = %group, "group EAR key rotated by a member");
        Ok(Event::EarKeyRotated { group })
    }

    /// Whether the hub's current state is the one our pending commit produces (so the hub
    /// applied it); waits for the hub while it is unreachable.
    async fn commit_applied(&self, mls: &MlsGroup, ear_key: &EarKey) -> Result<bool, ClientError> {
        let pending = mls
            .pending_commit()
            .ok_or(ClientError::Unexpected("no pending commit"))?;
        let group = GroupHandle(mls.group_id().as_slice().to_vec());
        let mut attempt = 0;
        let info = loop {
            match self.external_commit_info(&group, ear_key).await {
                Ok(info) => break info,
                Err(ClientError::Transport(_)) if attempt < TRANSPORT_RETRIES => {
                    attempt += 1;
                    backoff(attempt).await;
                }
                Err(e) => return Err(e),
            }
        };
        let vgi = parse_group_info(info.group_info.as_slice())?;
        Ok(vgi.group_context() == pending.group_context())
    }

    /// Fetches, decrypts and processes everything queued for us, then acknowledges it.
    pub async fn receive(&mut self) -> Result<Vec<Event>, ClientError> {
        // Members from our contacts' providers must be verifiable before we process joins; a
        // provider that is down must not stop us from receiving, so this is best effort.
        if let Err(e) = self.ensure_contact_anchors().await {
            tracing::warn!(error = %e, "could not fetch a contact provider's AS credentials");
        }
        let mut events = std::mem::take(&mut self.pending);
        match self.receive_into(&mut events).await {
            Ok(()) => {
                if self.state.received_since_rekey >= REKEY_EVERY
                    && let Err(e) = self.rekey_queue().await
                {
                    tracing::warn!(error = %e, "queue rekey failed; will retry");
                }
                self.keep_alive().await;
                events.append(&mut self.pending);
                Ok(events)
            }
            // What was processed is persisted and must reach the caller; the rest (and the
            // acknowledgement) follows with the next call.
            Err(e) if !events.is_empty() => {
                tracing::warn!(error = %e, "receive interrupted; returning what arrived");
                Ok(events)
            }
            Err(e) => Err(e),
        }
    }

    /// Deletes this device's queue (and AddPackages) at our QS: whatever is sent to it
    /// afterwards is dropped, and the hub proposes removing this device from its groups.
    pub async fn delete_queue(&mut self) -> Result<(), ClientError> {
        let req = signed_qs(
            &self.client_auth()?,
            QsSender::Client(self.client_id()?),
            QsOperation::DeleteClient,
        )?;
        self.transport.qs(&req).await?;
        Ok(())
    }

    /// Updates in every group where we have been silent for the keepalive period (see
    /// [`Client::set_keepalive`]); failures are logged and retried at the next `receive`.
    async fn keep_alive(&mut self) {
        let due = now_ms().saturating_sub(self.keepalive_ms);
        let quiet: Vec<GroupHandle> = self
            .groups()
            .into_iter()
            .filter(|g| self.meta(g).is_ok_and(|m| m.last_request_ms < due))
            .collect();
        for group in quiet {
            if let Err(e) = self.update(&group).await {
                tracing::debug!(group = %group, error = %e, "keepalive update failed");
            }
        }
    }

    /// Mixes fresh randomness into our queue ratchet at the QS and here (post-compromise
    /// security: whoever copied the QS's ratchet state before cannot read what comes after).
    /// Safe to repeat after a failure: the same randomness is re-sent until confirmed.
    pub async fn rekey_queue(&mut self) -> Result<(), ClientError> {
        let fresh: [u8; 32] = match &self.state.in_flight_rekey {
            Some(h) => b32(&unhex(h)?)?,
            None => {
                let r = mimi_rm_crypto::ids::random_bytes();
                self.state.in_flight_rekey = Some(hex::encode(r));
                self.persist()?;
                r
            }
        };
        let req = signed_qs(
            &self.client_auth()?,
            QsSender::Client(self.client_id()?),
            QsOperation::RekeyQueue(fresh.to_vec().into()),
        )?;
        let QsResponse::Rekeyed(seq) = self.transport.qs(&req).await? else {
            return Err(ClientError::Unexpected("expected Rekeyed"));
        };
        self.state.pending_mixes.push((seq, hex::encode(fresh)));
        self.state.in_flight_rekey = None;
        self.state.received_since_rekey = 0;
        let mut ratchet = QueueRatchet::from_bytes(&unhex(&self.state.queue_ratchet)?)?;
        self.apply_due_mixes(&mut ratchet)?;
        self.state.queue_ratchet = hex::encode(ratchet.to_bytes());
        self.persist()
    }

    /// Applies the confirmed rekeys that take effect at the ratchet's current position; the
    /// caller saves the ratchet right after, keeping the saved state and the pending list in
    /// step.
    fn apply_due_mixes(&mut self, ratchet: &mut QueueRatchet) -> Result<(), ClientError> {
        while let Some(pos) = self
            .state
            .pending_mixes
            .iter()
            .position(|(s, _)| *s == ratchet.next_seq())
        {
            let (_, fresh) = self.state.pending_mixes.remove(pos);
            ratchet.mix(&b32(&unhex(&fresh)?)?);
        }
        Ok(())
    }

    async fn receive_into(&mut self, events: &mut Vec<Event>) -> Result<(), ClientError> {
        if self.state.in_flight_rekey.is_some() {
            // A rekey whose answer we never saw may be in force at the QS: learn where.
            self.rekey_queue().await?;
        }
        let auth = self.client_auth()?;
        let id = self.client_id()?;
        loop {
            let mut ratchet = QueueRatchet::from_bytes(&unhex(&self.state.queue_ratchet)?)?;
            let op = QsOperation::Dequeue(Dequeue {
                ack_below: ratchet.next_seq(),
                max: 100,
            });
            let QsResponse::Messages(batch) = self
                .transport
                .qs(&signed_qs(&auth, QsSender::Client(id), op)?)
                .await?
            else {
                return Err(ClientError::Unexpected("expected Messages"));
            };
            if batch.messages.is_empty() {
                break;
            }
            // Invariant: the saved ratchet has every confirmed rekey at its position applied, so
            // nothing is mixed before a message is decrypted, only right after it advanced.
            for m in batch.messages {
                if m.seq > ratchet.next_seq() {
                    // The QS expired messages we never fetched: step over them (applying any
                    // rekey on the way) and save that before going on.
                    tracing::warn!(
                        missing = m.seq - ratchet.next_seq(),
                        "queued messages expired before we fetched them"
                    );
                    while ratchet.next_seq() < m.seq {
                        ratchet.skip()?;
                        self.apply_due_mixes(&mut ratchet)?;
                    }
                    self.state.queue_ratchet = hex::encode(ratchet.to_bytes());
                    self.persist()?;
                }
                let plain = match ratchet.decrypt_next(m.seq, m.ciphertext.as_slice()) {
                    Ok(p) => p,
                    Err(e) => {
                        // Without this key no later message can be read either: stop here.
                        return Err(ClientError::Crypto(e));
                    }
                };
                let event = match decode_exact::<QueueMessage>(&plain, MAX_MESSAGE) {
                    Ok(msg) => self.handle(msg).await,
                    Err(e) => Err(ClientError::State(e.to_string())),
                };
                match event {
                    Ok(evs) => events.extend(evs),
                    // The hub went away while we handled this entry (e.g. fetching a Welcome's
                    // tree): leave it queued and unconsumed, and try again next time.
                    Err(e @ ClientError::Transport(_)) => return Err(e),
                    Err(e) => {
                        tracing::warn!(seq = m.seq, error = %e, "skipping queue entry");
                        events.push(Event::Undecryptable {
                            seq: m.seq,
                            reason: e.to_string(),
                        });
                    }
                }
                self.apply_due_mixes(&mut ratchet)?;
                self.state.queue_ratchet = hex::encode(ratchet.to_bytes());
                self.state.received_since_rekey += 1;
                self.persist()?;
            }
            if batch.remaining == 0 {
                break;
            }
        }
        // Acknowledge everything consumed so the QS deletes it.
        let ratchet = QueueRatchet::from_bytes(&unhex(&self.state.queue_ratchet)?)?;
        let op = QsOperation::Dequeue(Dequeue {
            ack_below: ratchet.next_seq(),
            max: 0,
        });
        self.transport
            .qs(&signed_qs(&auth, QsSender::Client(id), op)?)
            .await?;
        // Everything queued before our commits so far is read.
        if self.state.committed_since_receive {
            self.state.committed_since_receive = false;
            self.persist()?;
        }
        Ok(())
    }

    async fn handle(&mut self, msg: QueueMessage) -> Result<Vec<Event>, ClientError> {
        match msg {
            QueueMessage::Welcome(bundle) => self.join(bundle).await,
            QueueMessage::Mls(bytes) => match self.process_mls(bytes.as_slice())? {
                Processed::Done(event) => Ok(event),
                Processed::Rejected(group, report) => self.recover(group, Some(report)).await,
                Processed::Behind(group) => self.recover(group, None).await,
            },
        }
    }

    fn process_mls(&mut self, bytes: &[u8]) -> Result<Processed, ClientError> {
        let pm = MlsMessageIn::tls_deserialize_exact(bytes)
            .map_err(ClientError::mls)?
            .try_into_protocol_message()
            .map_err(ClientError::mls)?;
        let group = GroupHandle(pm.group_id().as_slice().to_vec());
        let mut mls = self.load_group(&group)?;
        let (msg_epoch, ours) = (pm.epoch().as_u64(), mls.epoch().as_u64());
        let is_commit = pm.content_type() == ContentType::Commit;
        if is_commit && msg_epoch < ours {
            // Superseded, e.g. another member's resync that lost to ours.
            tracing::debug!(group = %group, msg_epoch, ours, "ignoring an old commit");
            return Ok(Processed::Done(Vec::new()));
        }
        if is_commit && msg_epoch > ours {
            return Ok(Processed::Behind(group));
        }
        let processed = match mls.process_message(&self.provider, pm) {
            Ok(p) => p,
            // The hub fans out only commits it accepted, so this one moved the hub to an
            // epoch we cannot enter: report it and resync.
            Err(e) if is_commit => {
                tracing::warn!(group = %group, epoch = msg_epoch, error = %e,
                    "a commit the hub accepted fails our checks");
                let report = CommitRejected {
                    epoch: msg_epoch,
                    commit_ref: commit_ref(bytes),
                    reason: recovery::reason_of(&e),
                };
                return Ok(Processed::Rejected(group, report));
            }
            Err(e) if msg_epoch < self.joined_epoch(&group) => {
                tracing::debug!(group = %group, msg_epoch, error = %e,
                    "dropping a message from before we joined");
                return Ok(Processed::Done(Vec::new()));
            }
            // Say which epoch the message was for: the usual cause is an epoch we no longer keep.
            Err(e) => {
                return Err(ClientError::Mls(format!(
                    "{e} (message epoch {msg_epoch}, ours {ours})"
                )));
            }
        };
        let sender = match processed.sender() {
            Sender::Member(i) => i.u32(),
            _ => u32::MAX,
        };
        // Who committed, as we knew them before the commit.
        let committer = self
            .meta(&group)?
            .members
            .get(&sender)
            .and_then(|r| r.handle.clone());
        let aad = processed.aad().to_vec();
        let event = match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(m) => {
                let bytes = m.into_bytes();
                match bytes.split_first() {
                    Some((&CONTENT_USER, rest)) => Event::Message {
                        group,
                        sender,
                        plaintext: rest.to_vec(),
                    },
                    Some((&CONTENT_CONTROL, rest)) => self.control(group, rest)?,
                    Some((&devices::CONTENT_USER_SECRET, rest)) => {
                        let handle = self
                            .meta(&group)?
                            .members
                            .get(&sender)
                            .and_then(|r| r.handle.clone());
                        self.apply_user_secret(handle.as_deref(), rest)?;
                        return Ok(Processed::Done(Vec::new()));
                    }
                    _ => return Err(ClientError::Unexpected("unknown application content")),
                }
            }
            ProcessedMessageContent::ProposalMessage(p) => {
                mls.store_pending_proposal(self.provider.storage(), *p)
                    .map_err(ClientError::mls)?;
                Event::Proposal { group }
            }
            ProcessedMessageContent::StagedCommitMessage(sc) => {
                let adds: Vec<KeyPackage> = sc
                    .add_proposals()
                    .map(|p| p.add_proposal().key_package().clone())
                    .collect();
                mls.merge_staged_commit(&self.provider, *sc)
                    .map_err(ClientError::mls)?;
                if !mls.is_active() {
                    self.state.groups.remove(&hex::encode(&group.0));
                    return Ok(Processed::Done(vec![Event::Removed { group }]));
                }
                let mut events = vec![Event::Commit {
                    group: group.clone(),
                    epoch: mls.epoch().as_u64(),
                }];
                events.extend(self.track_members(&group, &mls, &adds, &aad, committer)?);
                // A re-initialisation names the group the conversation continues in.
                if let Some(next) = decode_aad(&aad)?.reinit {
                    events.push(Event::ReInitialised {
                        group: group.clone(),
                        new_group: GroupHandle(next.as_slice().to_vec()),
                    });
                }
                // A responder joining our connection group brings its contact card.
                if let Some(joiner) = decode_aad(&aad)?.joiner
                    && !joiner.friendship.as_slice().is_empty()
                {
                    match self.connection_joined(&group, joiner.friendship.as_slice()) {
                        Ok(Some(event)) => events.push(event),
                        Ok(None) => {}
                        Err(e) => tracing::warn!(group = %group, error = %e,
                            "a connection join with an unusable contact card"),
                    }
                }
                return Ok(Processed::Done(events));
            }
            _ => return Ok(Processed::Done(Vec::new())),
        };
        Ok(Processed::Done(vec![event]))
    }

    /// After a commit: members keep their records across leaf moves (by signature key), departed
    /// ones are dropped, and every added member is verified from the commit's authenticated data.
    fn track_members(
        &mut self,
        group: &GroupHandle,
        mls: &MlsGroup,
        adds: &[KeyPackage],
        aad: &[u8],
        committer: Option<String>,
    ) -> Result<Vec<Event>, ClientError> {
        let current: BTreeMap<String, u32> = mls
            .members()
            .map(|m| (hex::encode(&m.signature_key), m.index.u32()))
            .collect();
        let anchors = self.anchors()?;
        let (ck, wk) = group_keys(self.meta(group)?)?;
        let aad = decode_aad(aad)?;
        let mut fresh = Vec::new();
        // An external joiner (a new device, a connection responder) is the one member neither
        // known before nor added by KeyPackage; its material is in the commit's `joiner`.
        if let Some(joiner) = &aad.joiner {
            let known: std::collections::BTreeSet<&str> = self
                .meta(group)?
                .members
                .values()
                .map(|r| r.signature_key.as_str())
                .collect();
            let added: std::collections::BTreeSet<String> = adds
                .iter()
                .map(|kp| hex::encode(kp.leaf_node().signature_key().as_slice()))
                .collect();
            for m in mls.members() {
                let key = hex::encode(&m.signature_key);
                if !known.contains(key.as_str()) && !added.contains(&key) {
                    fresh.push((
                        m.index.u32(),
                        check_leaf(
                            self.state.mode,
                            m.credential.serialized_content(),
                            &m.signature_key,
                            &joiner.credential,
                            (&ck, &wk),
                            &anchors,
                        ),
                    ));
                }
            }
        }
        for kp in adds {
            let kp_ref = kp
                .hash_ref(self.provider.crypto())
                .map_err(ClientError::mls)?;
            let leaf = kp.leaf_node();
            let Some(&index) = current.get(&hex::encode(leaf.signature_key().as_slice())) else {
                continue;
            };
            let record = match aad
                .added
                .iter()
                .find(|a| a.key_package_ref.as_slice() == kp_ref.as_slice())
            {
                Some(a) => {
                    let record = check_leaf(
                        self.state.mode,
                        leaf.credential().serialized_content(),
                        leaf.signature_key().as_slice(),
                        &a.credential,
                        (&ck, &wk),
                        &anchors,
                    );
                    // A client added as the committer's own device must be the committer's.
                    if a.user == OWN_CLIENT && record.handle.is_some() && record.handle != committer
                    {
                        unverified_record(
                            leaf.signature_key().as_slice(),
                            "added as the committer's own device, but belongs to another user",
                        )
                    } else {
                        record
                    }
                }
                None => unverified_record(
                    leaf.signature_key().as_slice(),
                    "the commit carries no credential material for this member",
                ),
            };
            fresh.push((index, record));
        }
        let meta = self.meta_mut(group)?;
        let old = std::mem::take(&mut meta.members);
        for (_, record) in old {
            if let Some(&index) = current.get(&record.signature_key) {
                meta.members.insert(index, record);
            }
        }
        Ok(insert_records(group, meta, fresh))
    }

    /// Sends an external commit that brings this device into `group`; on success files the group
    /// (keys, leaf backup) and verifies its members. On refusal, our half-built group state is
    /// dropped and the group stays unknown to us. Returns the new epoch.
    pub(super) async fn enter_by_external_commit(
        &mut self,
        group: &GroupHandle,
        req: &DsRequest,
        entry: ExternalEntry,
        credentials: &[LeafCredentialEntry],
    ) -> Result<u64, ClientError> {
        if let Err(e) = self.transport.ds(req).await {
            self.forget_group_state(group)?;
            return Err(e);
        }
        let ExternalEntry {
            mls,
            signer,
            sek,
            ear_key,
            keys: (ck, wk),
        } = entry;
        let epoch = mls.epoch().as_u64();
        self.state.groups.insert(
            hex::encode(&group.0),
            GroupMeta {
                ear_key: hex::encode(ear_key.as_bytes()),
                signer_public: hex::encode(signer.public()),
                credential_key: hex::encode(ck.as_bytes()),
                wrapper_key: hex::encode(wk.as_bytes()),
                signature_ear_key: hex::encode(sek.as_bytes()),
                signer_private: leaf_key_backup(&signer)?,
                leaf_credential: hex::encode(encoded_credential(&mls)?),
                user_key_set: true,
                members: BTreeMap::new(),
                last_request_ms: now_ms(),
                joined_epoch: epoch,
            },
        );
        for event in self.verify_all(group, &mls, credentials)? {
            tracing::debug!(?event, "after an external join");
        }
        self.record_self(group)?;
        self.state.committed_since_receive = true;
        self.persist()?;
        Ok(epoch)
    }

    /// Files our own leaf in `group` as verified: after an external join the hub's material
    /// (fetched before the join) has no entry for it yet.
    pub(super) fn record_self(&mut self, group: &GroupHandle) -> Result<(), ClientError> {
        let mls = self.load_group(group)?;
        let leaf = mls.own_leaf_index().u32();
        let key = mls
            .own_leaf_node()
            .ok_or(ClientError::Unexpected("no own leaf"))?
            .signature_key()
            .as_slice()
            .to_vec();
        let record = verified_record(&key, &self.client_credential()?);
        self.meta_mut(group)?.members.insert(leaf, record);
        Ok(())
    }

    /// Verifies every current member from the hub's stored material (on join and resync).
    fn verify_all(
        &mut self,
        group: &GroupHandle,
        mls: &MlsGroup,
        entries: &[LeafCredentialEntry],
    ) -> Result<Vec<Event>, ClientError> {
        let anchors = self.anchors()?;
        let (ck, wk) = group_keys(self.meta(group)?)?;
        let fresh: Vec<(u32, MemberRecord)> = mls
            .members()
            .map(|m| {
                let record = match entries.iter().find(|e| e.leaf == m.index.u32()) {
                    Some(e) => check_leaf(
                        self.state.mode,
                        m.credential.serialized_content(),
                        &m.signature_key,
                        &e.info,
                        (&ck, &wk),
                        &anchors,
                    ),
                    None => unverified_record(&m.signature_key, "the hub has no material for it"),
                };
                (m.index.u32(), record)
            })
            .collect();
        let meta = self.meta_mut(group)?;
        meta.members.clear();
        Ok(insert_records(group, meta, fresh))
    }

    async fn join(&mut self, bundle: WelcomeBundle) -> Result<Vec<Event>, ClientError> {
        let MlsMessageBodyIn::Welcome(welcome) =
            MlsMessageIn::tls_deserialize_exact(bundle.welcome.as_slice())
                .map_err(ClientError::mls)?
                .extract()
        else {
            return Err(ClientError::Unexpected("not a Welcome"));
        };
        let (kp_ref, pending) = welcome
            .secrets()
            .iter()
            .find_map(|s| {
                let r = hex::encode(s.new_member().as_slice());
                self.state
                    .key_packages
                    .get(&r)
                    .map(|p| (s.new_member(), p.clone()))
            })
            .ok_or(ClientError::Unexpected(
                "Welcome for none of our KeyPackages",
            ))?;
        // Who invites us? Only contacts may; the hub cannot tell us, and does not know.
        let attribution = match self.attribution(&bundle, kp_ref.as_slice()) {
            Ok(a) => a,
            Err(reason) => {
                return Ok(vec![Event::InviteRejected {
                    inviter: None,
                    reason,
                }]);
            }
        };
        let inviter = attribution.tbs.sender.tbs.identity.handle_str();
        // Our own other devices add us to their groups (with our user's key already set).
        let by_own_user = inviter == self.state.name;
        if !by_own_user && !self.state.contacts.contains_key(&inviter) {
            tracing::warn!(inviter = %inviter, "refusing an invitation from a non-contact");
            return Ok(vec![Event::InviteRejected {
                inviter: Some(inviter),
                reason: "not a contact".into(),
            }]);
        }
        let init = HpkePrivateKey::from_bytes(&unhex(&pending.init_private)?)?;
        let ct = HpkeCiphertext {
            kem_output: bundle.joiner_info.kem_output.as_slice().to_vec(),
            ciphertext: bundle.joiner_info.ciphertext.as_slice().to_vec(),
        };
        let info: JoinerInfo = decode_exact(
            &hpke_seal::open(&init, JOINER_INFO_HPKE_LABEL, kp_ref.as_slice(), &ct)?,
            4096,
        )
        .map_err(|e| ClientError::State(e.to_string()))?;
        if info.group_id != attribution.tbs.group_id {
            return Err(ClientError::Unexpected(
                "attribution and joiner info name different groups",
            ));
        }
        let ear_key = match self.state.mode {
            DsMode::Rm => EarKey::from_bytes(info.ear_key.as_slice())?,
            // A baseline hub has no group key; a local one keeps the group records uniform.
            DsMode::Baseline => EarKey::random(),
        };
        let signer = self.signer(&pending.signer_public)?;
        // Fetch the tree before touching the Welcome: a failed join consumes the KeyPackage.
        let req = self.ds_request(
            info.group_id.as_slice(),
            Some(&ear_key),
            DsSender::Joiner(signer.public().to_vec().into()),
            DsOperation::WelcomeInfo(info.epoch),
            Some(&signer),
        )?;
        let DsResponse::WelcomeInfo(wi) = self.transport.ds(&req).await? else {
            return Err(ClientError::Unexpected("expected WelcomeInfo"));
        };
        let tree = RatchetTreeIn::tls_deserialize_exact(wi.ratchet_tree.as_slice())
            .map_err(ClientError::mls)?;
        let group =
            StagedWelcome::new_from_welcome(&self.provider, &join_config(), welcome, Some(tree))
                .map_err(ClientError::mls)?
                .into_group(&self.provider)
                .map_err(ClientError::mls)?;
        let handle = GroupHandle(group.group_id().as_slice().to_vec());
        if handle.0 != info.group_id.as_slice() {
            return Err(ClientError::Unexpected(
                "Welcome and joiner info name different groups",
            ));
        }
        self.state.groups.insert(
            hex::encode(&handle.0),
            GroupMeta {
                ear_key: hex::encode(ear_key.as_bytes()),
                signer_public: pending.signer_public.clone(),
                credential_key: hex::encode(attribution.tbs.credential_key),
                wrapper_key: hex::encode(attribution.tbs.wrapper_key),
                signature_ear_key: pending.signature_ear_key.clone(),
                signer_private: leaf_key_backup(&signer)?,
                leaf_credential: hex::encode(encoded_credential(&group)?),
                user_key_set: by_own_user,
                members: BTreeMap::new(),
                last_request_ms: now_ms(),
                joined_epoch: group.epoch().as_u64(),
            },
        );
        self.state
            .key_packages
            .remove(&hex::encode(kp_ref.as_slice()));
        let mut events = vec![Event::Joined {
            group: handle.clone(),
        }];
        events.extend(self.verify_all(&handle, &group, &wi.credentials)?);
        self.persist()?;
        Ok(events)
    }

    /// Opens and verifies the inviter's attribution; the error is the reason to refuse.
    fn attribution(
        &self,
        bundle: &WelcomeBundle,
        kp_ref: &[u8],
    ) -> Result<WelcomeAttributionInfo, String> {
        let key = unhex(&self.state.wai_key)
            .ok()
            .and_then(|k| EarKey::from_bytes(&k).ok())
            .ok_or("no attribution key")?;
        let plain = ear::open(
            &key,
            identity::ATTRIBUTION_DOMAIN,
            kp_ref,
            bundle.attribution.as_slice(),
        )
        .map_err(|_| "the attribution is not for us".to_string())?;
        let wai: WelcomeAttributionInfo =
            decode_exact(&plain, MAX_MESSAGE).map_err(|e| format!("attribution: {e}"))?;
        if wai.tbs.key_package_ref.as_slice() != kp_ref {
            return Err("the attribution is for another invitation".into());
        }
        let anchors = self.anchors().map_err(|e| e.to_string())?;
        wai.verify(&anchors, now_ms() / 1000)
            .map_err(|e| format!("attribution: {e}"))?;
        Ok(wai)
    }
}

/// How we join groups: plaintext handshakes (the hub validates them), no tree in messages.
fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(false)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .sender_ratchet_configuration(SenderRatchetConfiguration::new(
            OUT_OF_ORDER_TOLERANCE,
            MAX_FORWARD_DISTANCE,
        ))
        .build()
}

/// Decodes an `MLSMessage` that must carry a GroupInfo.
fn parse_group_info(
    bytes: &[u8],
) -> Result<openmls::messages::group_info::VerifiableGroupInfo, ClientError> {
    match MlsMessageIn::tls_deserialize_exact(bytes)
        .map_err(ClientError::mls)?
        .extract()
    {
        MlsMessageBodyIn::GroupInfo(vgi) => Ok(vgi),
        _ => Err(ClientError::Unexpected("not a GroupInfo")),
    }
}

/// Waits a little longer after each failed attempt to reach the hub (20 ms steps, capped).
async fn backoff(attempt: u32) {
    let ms = (20 * u64::from(attempt)).min(500);
    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
}

/// The group's credential key and wrapper key.
fn group_keys(meta: &GroupMeta) -> Result<(EarKey, EarKey), ClientError> {
    Ok((
        EarKey::from_bytes(&unhex(&meta.credential_key)?)?,
        EarKey::from_bytes(&unhex(&meta.wrapper_key)?)?,
    ))
}

/// Verifies one leaf into a member record (a failure becomes an unverified record).
fn check_leaf(
    mode: DsMode,
    leaf_identity: &[u8],
    signature_key: &[u8],
    info: &LeafCredentialInfo,
    (ck, wk): (&EarKey, &EarKey),
    anchors: &AsCredentials,
) -> MemberRecord {
    let now = now_ms() / 1000;
    let verified = match mode {
        DsMode::Rm => {
            identity::verify_leaf(leaf_identity, signature_key, info, ck, wk, anchors, now)
        }
        DsMode::Baseline => identity::verify_plain_leaf(leaf_identity, signature_key, anchors, now),
    };
    match verified {
        Ok(credential) => verified_record(signature_key, &credential),
        Err(e) => unverified_record(signature_key, &e.to_string()),
    }
}

fn unverified_record(signature_key: &[u8], problem: &str) -> MemberRecord {
    MemberRecord {
        signature_key: hex::encode(signature_key),
        handle: None,
        device: None,
        problem: Some(problem.to_owned()),
    }
}

/// Stores fresh records and reports each one that did not verify.
fn insert_records(
    group: &GroupHandle,
    meta: &mut GroupMeta,
    fresh: Vec<(u32, MemberRecord)>,
) -> Vec<Event> {
    let mut events = Vec::new();
    for (leaf, record) in fresh {
        if let Some(reason) = &record.problem {
            tracing::warn!(group = %group, leaf, reason = %reason, "member does not verify");
            events.push(Event::UnverifiedMember {
                group: group.clone(),
                leaf,
                reason: reason.clone(),
            });
        }
        meta.members.insert(leaf, record);
    }
    events
}

/// A member record for a verified credential.
fn verified_record(signature_key: &[u8], credential: &ClientCredential) -> MemberRecord {
    MemberRecord {
        signature_key: hex::encode(signature_key),
        handle: Some(credential.tbs.identity.handle_str()),
        device: Some(hex::encode(credential.tbs.identity.device)),
        problem: None,
    }
}

fn encoded<T: tls_codec::Serialize>(value: &T) -> Result<Vec<u8>, ClientError> {
    encode(value).map_err(|e| ClientError::State(e.to_string()))
}

fn anonymous_as(operation: AsOperation) -> AsRequest {
    AsRequest {
        tbs: AsRequestTbs {
            timestamp_ms: now_ms(),
            nonce: mimi_rm_crypto::ids::random_id(),
            sender: AsSender::Anonymous,
            operation,
        },
        signature: Vec::new().into(),
    }
}

fn anonymous_qs(operation: QsOperation) -> QsRequest {
    QsRequest {
        tbs: QsRequestTbs {
            timestamp_ms: now_ms(),
            nonce: mimi_rm_crypto::ids::random_id(),
            sender: QsSender::Anonymous,
            operation,
        },
        signature: Vec::new().into(),
    }
}

fn signed_qs(
    key: &SigningKey,
    sender: QsSender,
    operation: QsOperation,
) -> Result<QsRequest, ClientError> {
    let tbs = QsRequestTbs {
        timestamp_ms: now_ms(),
        nonce: mimi_rm_crypto::ids::random_id(),
        sender,
        operation,
    };
    let bytes = encode(&tbs).map_err(|e| ClientError::State(e.to_string()))?;
    let signature = key.sign(QS_REQUEST_SIGNATURE_LABEL, &bytes);
    Ok(QsRequest {
        tbs,
        signature: signature.into(),
    })
}

/// The serialized content of our own leaf's credential in `group`.
fn encoded_credential(group: &MlsGroup) -> Result<Vec<u8>, ClientError> {
    Ok(group
        .own_leaf_node()
        .ok_or(ClientError::Unexpected("no own leaf"))?
        .credential()
        .serialized_content()
        .to_vec())
}

/// An AS request signed by our client credential key.
fn signed_as(
    key: &SigningKey,
    identity: ClientIdentity,
    operation: AsOperation,
) -> Result<AsRequest, ClientError> {
    let tbs = AsRequestTbs {
        timestamp_ms: now_ms(),
        nonce: mimi_rm_crypto::ids::random_id(),
        sender: AsSender::Client(identity),
        operation,
    };
    let bytes = encode(&tbs).map_err(|e| ClientError::State(e.to_string()))?;
    Ok(AsRequest {
        signature: key.sign(AS_REQUEST_SIGNATURE_LABEL, &bytes).into(),
        tbs,
    })
}

/// Decodes a commit's authenticated data (empty means nothing).
fn decode_aad(aad: &[u8]) -> Result<CommitAad, ClientError> {
    if aad.is_empty() {
        return Ok(CommitAad::default());
    }
    decode_exact(aad, MAX_MESSAGE).map_err(|e| ClientError::State(e.to_string()))
}

/// Our leaf's signature key pair, serialised for the key file (see `GroupMeta::signer_private`).
fn leaf_key_backup(signer: &SignatureKeyPair) -> Result<String, ClientError> {
    serde_json::to_vec(signer)
        .map(hex::encode)
        .map_err(|e| ClientError::State(e.to_string()))
}

/// Restores a key pair saved by [`leaf_key_backup`].
fn leaf_key_restore(backup: &str) -> Result<SignatureKeyPair, ClientError> {
    serde_json::from_slice(&unhex(backup)?).map_err(|e| ClientError::State(e.to_string()))
}
