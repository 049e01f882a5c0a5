//! The client: key custody, OpenMLS groups, and every hub operation.
//!
//! This module holds [`Client`] itself, opening a saved client and the small helpers every
//! capability shares; each capability lives in its own submodule, as more `impl Client` blocks.

use crate::contact::ContactCard;
use crate::error::ClientError;
use crate::provider::ClientProvider;
use crate::state::{ClientState, GroupMeta, unhex};
use crate::store::{ClientStore, StoreOptions, WriteStats};
use crate::transport::Transport;
use mimi_rm_crypto::sign::SigningKey;
use mimi_rm_protocol::credentials::*;
use mimi_rm_protocol::{DsMode, decode_exact, encode};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use std::path::{Path, PathBuf};

mod commit;
mod connect;
mod devices;
mod events;
mod friendship;
mod groups;
mod join;
mod leaves;
mod link;
mod listen;
mod membership;
mod messaging;
mod process;
mod push;
mod queue;
mod recovery;
mod register;
mod requests;
mod revocation;
mod stored;
#[cfg(feature = "adversary")]
mod tamper;
mod verify;
pub use connect::{IncomingConnection, seal_offer};
pub use events::{Event, MemberIdentity};
pub use link::PendingDevice;
pub use listen::{Events, ListenStats, Listening};
#[cfg(feature = "adversary")]
pub use tamper::Tamper;

/// The one ciphersuite this client speaks (MLS MTI).
pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;
/// EAR domain of AddPackages under a user's `AddPackageEarKey` (public so adversary tests can
/// try old keys against stored packages).
pub const ADD_PACKAGE_DOMAIN: &str = "add package";
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
/// Most bytes of a queue message, AddPackage, attribution or commit AAD we decode.
const MAX_MESSAGE: usize = 16 << 20;

/// A group, by its MLS group id.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
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

/// A client with its keys, its groups and a connection to its home hub.
pub struct Client {
    transport: Transport,
    dir: PathBuf,
    state: ClientState,
    provider: ClientProvider,
    /// Where state, OpenMLS entries and events are committed.
    store: ClientStore,
    /// Events not yet committed: the next [`Client::persist`] writes them in the same
    /// transaction as the state change that produced them (kept here when ephemeral).
    unsaved: Vec<Event>,
    /// The live socket and how [`Client::next_events`] waits.
    live: listen::Live,
    /// When set, state changes stay in memory (see [`Client::set_ephemeral`]).
    ephemeral: bool,
    /// After this long without a signed request of ours in a group, `receive` updates in it.
    keepalive_ms: u64,
    /// How often `receive` refreshes the revocation lists (see [`revocation`]).
    revocation_refresh: std::time::Duration,
    /// When they were last refreshed in this process.
    last_revocation_refresh: Option<std::time::Instant>,
}

/// Now, in milliseconds since the Unix epoch (0 if the clock is before it).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The transport to `hub_url`, trusting `ca_pem` as an extra root when given, with scoped
/// connections.
fn transport_for(hub_url: &str, ca_pem: Option<&[u8]>) -> Result<Transport, ClientError> {
    match ca_pem {
        Some(pem) => Transport::with_root_ca(hub_url, pem),
        None => Transport::new(hub_url),
    }
}

/// The token wallet's file in the client directory of older clients (moved into the store).
const WALLET_FILE: &str = "tokens.json";

/// `v` as a 32-byte array (a key or token), or a state error.
fn b32(v: &[u8]) -> Result<[u8; 32], ClientError> {
    v.try_into()
        .map_err(|_| ClientError::State("expected 32 bytes".into()))
}

/// How [`Client::register_with`] registers.
#[derive(Default, Debug)]
pub struct RegisterOptions<'a> {
    /// A PEM root to trust for the hub's HTTPS certificate (a private CA).
    pub ca_pem: Option<&'a [u8]>,
    /// The hub's mode.
    pub mode: DsMode,
    /// An invitation code, at a hub that registers by invitation only: it buys the
    /// registration token.
    pub invite: Option<&'a str>,
    /// A registration token someone vouched with ([`Client::vouch`]), instead of a code.
    pub registration_token: Option<&'a str>,
    /// How the new client's store is created (its passphrase).
    pub store: StoreOptions,
    /// How it connects (connection scopes, local address).
    pub connections: crate::connections::ConnectionOptions,
}

/// Opens the store of a client about to be created in `dir`: refuses a directory that already
/// holds one, before anything is registered.
fn new_store(dir: &Path, options: &StoreOptions) -> Result<ClientStore, ClientError> {
    match ClientStore::open(dir, options)? {
        (store, None) => Ok(store),
        (_, Some(_)) => Err(ClientError::State(format!(
            "{} already holds a client",
            dir.display()
        ))),
    }
}

impl Client {
    /// A client over an already set-up transport, state and (empty) store, with an empty
    /// OpenMLS key store.
    fn from_parts(
        transport: Transport,
        dir: &Path,
        state: ClientState,
        store: ClientStore,
    ) -> Self {
        Self {
            transport,
            dir: dir.to_owned(),
            state,
            provider: ClientProvider::default(),
            store,
            unsaved: Vec::new(),
            live: listen::Live::default(),
            ephemeral: false,
            keepalive_ms: DEFAULT_KEEPALIVE_MS,
            revocation_refresh: revocation::DEFAULT_REFRESH,
            last_revocation_refresh: None,
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
        Self::load_with(dir, hub_url, ca_pem, &StoreOptions::default())
    }

    /// Like [`Client::load_with_ca`] with store options (the passphrase of a protected store).
    /// A directory an older client left (`client.json`) is migrated into the store first.
    pub fn load_with(
        dir: &Path,
        hub_url: &str,
        ca_pem: Option<&[u8]>,
        options: &StoreOptions,
    ) -> Result<Self, ClientError> {
        let mut transport = transport_for(hub_url, ca_pem)?;
        let (store, loaded) = ClientStore::open(dir, options)?;
        let loaded = loaded.ok_or_else(|| {
            ClientError::State(format!("no client in {}: register first", dir.display()))
        })?;
        let (mut state, mls) = (loaded.state, loaded.mls);
        // A client from before push tokens gets its key now (saved below, before any leaf of
        // ours can carry it): its next leaves carry the key.
        let new_push_key = state.push_key.is_empty();
        if new_push_key {
            state.push_key = hex::encode(mimi_rm_crypto::ids::random_bytes::<32>());
        }
        let credential: ClientCredential =
            decode_exact(&unhex(&state.client_credential)?, 64 * 1024)
                .map_err(|e| ClientError::State(e.to_string()))?;
        transport.enable_tokens(crate::tokens::Wallet::new(
            state.domain.clone(),
            credential,
            SigningKey::from_bytes(&unhex(&state.client_key)?)?,
            Some(store.token_store()),
            Some(dir.join(WALLET_FILE)),
        )?);
        let mut client = Self {
            transport,
            dir: dir.to_owned(),
            state,
            provider: ClientProvider::from_entries(mls),
            store,
            unsaved: Vec::new(),
            live: listen::Live::default(),
            ephemeral: false,
            keepalive_ms: DEFAULT_KEEPALIVE_MS,
            revocation_refresh: revocation::DEFAULT_REFRESH,
            last_revocation_refresh: None,
        };
        if new_push_key {
            client.persist()?;
        }
        Ok(client)
    }

    /// Connects as `connections` says from now on (connection policy, local address): new
    /// connection pools; nothing else changes.
    pub fn set_connections(
        &mut self,
        connections: crate::connections::ConnectionOptions,
    ) -> Result<(), ClientError> {
        self.transport = self.transport.reconnected(&connections)?;
        // An open live socket is a connection of the old kind (and, with a relay, one that
        // shows our address next to our queue): it goes.
        self.live.socket = None;
        Ok(())
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
            .take(&self.transport.http()?, self.transport.base())
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
            .prefill(&self.transport.http()?, self.transport.base(), n)
            .await
    }

    /// Commits what changed in our state and the OpenMLS key store, with the events produced
    /// since the last commit, in one transaction (unless ephemeral: then the events wait in
    /// memory for [`Client::take_events`]).
    fn persist(&mut self) -> Result<(), ClientError> {
        if self.ephemeral {
            return Ok(());
        }
        let (store, state, unsaved) = (&mut self.store, &mut self.state, &self.unsaved);
        self.provider
            .with_entries(|mls| store.commit(state, mls, unsaved))?;
        self.unsaved.clear();
        Ok(())
    }

    /// Events to report, committed with the state change that produced them at the next
    /// [`Client::persist`].
    fn record(&mut self, events: impl IntoIterator<Item = Event>) {
        self.unsaved.extend(events);
    }

    /// Every event not yet taken, oldest first, with its sequence number, leaving them stored:
    /// an application shows them, then calls [`Client::events_shown`]. Events survive process
    /// exits and crashes until then; one shown just before a crash is offered again with the
    /// same number, so a screen keyed by it shows it once.
    pub fn stored_events(&self) -> Result<Vec<(u64, Event)>, ClientError> {
        let mut events = self.store.events()?;
        let next = events.last().map_or(0, |(n, _)| n + 1);
        // Ephemeral clients keep theirs in memory; numbered after the stored ones.
        events.extend((next..).zip(self.unsaved.iter().cloned()));
        Ok(events)
    }

    /// Forgets the stored events up to and including number `through` (shown to the user).
    pub fn events_shown(&mut self, through: u64) -> Result<(), ClientError> {
        if self.ephemeral {
            self.unsaved.clear();
            return Ok(());
        }
        self.store.events_shown(through)
    }

    /// Takes every event not yet taken (and forgets them): what `receive` returns. For a user
    /// interface that must not miss one across a crash, use [`Client::stored_events`] and
    /// [`Client::events_shown`] instead.
    pub fn take_events(&mut self) -> Result<Vec<Event>, ClientError> {
        let events = self.stored_events()?;
        if let Some((last, _)) = events.last() {
            self.events_shown(*last)?;
        }
        self.unsaved.clear();
        Ok(events.into_iter().map(|(_, e)| e).collect())
    }

    /// How many events wait to be taken.
    pub fn waiting_events(&self) -> Result<u64, ClientError> {
        Ok(self.store.event_count()? + self.unsaved.len() as u64)
    }

    /// The client directory (the store, the token wallet).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes this client's state and key store into `dir` in the format clients before the
    /// SQLite store used (`client.json`), for migration tests. The copy is the same device: use
    /// one of the two only.
    #[doc(hidden)]
    pub fn export_legacy(&self, dir: &Path) -> Result<(), ClientError> {
        crate::store::legacy::write(dir, &self.state, &self.provider.snapshot())
    }

    /// What the client store wrote since this client was opened (for measurements).
    pub fn store_stats(&self) -> WriteStats {
        self.store.stats()
    }

    /// The key that signs our requests to the QS as our client.
    fn client_auth(&self) -> Result<SigningKey, ClientError> {
        Ok(SigningKey::from_bytes(&unhex(
            &self.state.client_auth_key,
        )?)?)
    }

    /// Our QS client (queue) id.
    fn client_id(&self) -> Result<[u8; 16], ClientError> {
        unhex(&self.state.client_id)?
            .try_into()
            .map_err(|_| ClientError::State("client id".into()))
    }

    /// Our records of `group`, to change them.
    fn meta_mut(&mut self, group: &GroupHandle) -> Result<&mut GroupMeta, ClientError> {
        self.state
            .groups
            .get_mut(&hex::encode(&group.0))
            .ok_or(ClientError::UnknownGroup)
    }

    /// Our records of `group`: its keys, our leaf, its members.
    fn meta(&self, group: &GroupHandle) -> Result<&GroupMeta, ClientError> {
        self.state
            .groups
            .get(&hex::encode(&group.0))
            .ok_or(ClientError::UnknownGroup)
    }

    /// The OpenMLS state of `group`.
    fn load_group(&self, group: &GroupHandle) -> Result<MlsGroup, ClientError> {
        MlsGroup::load(self.provider.storage(), &GroupId::from_slice(&group.0))
            .map_err(ClientError::mls)?
            .ok_or(ClientError::UnknownGroup)
    }

    /// Our leaf signer with public key `public_hex`, from the OpenMLS store.
    fn signer(&self, public_hex: &str) -> Result<SignatureKeyPair, ClientError> {
        SignatureKeyPair::read(
            self.provider.storage(),
            &unhex(public_hex)?,
            CIPHERSUITE.signature_algorithm(),
        )
        .ok_or_else(|| ClientError::State("missing signature key".into()))
    }

    /// The hub mode this client was registered for.
    pub fn mode(&self) -> DsMode {
        self.state.mode
    }
}

/// `value` TLS-encoded, or a state error.
fn encoded<T: tls_codec::Serialize>(value: &T) -> Result<Vec<u8>, ClientError> {
    encode(value).map_err(|e| ClientError::State(e.to_string()))
}
