//! The client's persisted state: keys and bookkeeping next to the OpenMLS key store.
//!
//! Kept in the client store ([`crate::store`]): the core as one row, each group and each
//! published KeyPackage as its own. Secrets are hex strings, wiped when the state is dropped; no
//! type here prints a secret through `Debug`.

use crate::error::ClientError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What we know about one member's identity.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberRecord {
    /// Hex leaf signature key (follows the member across leaf indices).
    pub signature_key: String,
    /// The verified handle, if the chain verified.
    pub handle: Option<String>,
    /// Hex device id of the verified client credential.
    pub device: Option<String>,
    /// Why verification failed, if it did.
    pub problem: Option<String>,
    /// The provider whose AS issued the verified credential (whose revocation list applies).
    #[serde(default)]
    pub domain: Option<String>,
}

/// Per-group secrets the hub never keeps.
#[derive(Clone, Serialize, Deserialize)]
pub struct GroupMeta {
    /// Hex `GroupStateEarKey`.
    pub ear_key: String,
    /// Hex public key of the leaf signer used in this group.
    pub signer_public: String,
    /// Hex group `CredentialEarKey`.
    pub credential_key: String,
    /// Hex group `SignatureEarKeyWrapperKey`.
    pub wrapper_key: String,
    /// Hex `SignatureEarKey` of our own leaf.
    pub signature_ear_key: String,
    /// Members by leaf index.
    pub members: BTreeMap<u32, MemberRecord>,
    /// Hex private key of our leaf's signature key. Kept here, next to the group keys, so a
    /// device whose OpenMLS state is lost can resync with its unchanged leaf.
    #[serde(default)]
    pub signer_private: String,
    /// Hex serialized content of our leaf's credential (the pseudonymous credential), for the
    /// same purpose.
    #[serde(default)]
    pub leaf_credential: String,
    /// Whether our user's per-group auth key is known to be set at the hub (false after a
    /// Welcome: an Update with the key follows).
    #[serde(default)]
    pub user_key_set: bool,
    /// When we last made a signed request in this group (ms since the Unix epoch): the hub
    /// counts only those as activity, so a member that only reads updates now and then.
    #[serde(default)]
    pub last_request_ms: u64,
    /// The epoch we joined at by Welcome (0 for groups we created). The hub accepts
    /// application messages a few epochs late and fans them out to every current member, so a
    /// message from before we joined can reach us; it was never meant for us and is dropped
    /// quietly rather than reported as undecryptable.
    #[serde(default)]
    pub joined_epoch: u64,
}

/// A KeyPackage we published and may be welcomed with.
#[derive(Clone, Serialize, Deserialize)]
pub struct PendingKeyPackage {
    /// Hex init private key (to open the hub's sealed JoinerInfo).
    pub init_private: String,
    /// Hex leaf signature public key.
    pub signer_public: String,
    /// Hex `SignatureEarKey` of the leaf credential.
    pub signature_ear_key: String,
    /// The last-resort package: kept after a Welcome (the QS hands it out again while no
    /// one-time package is left) until a fresh set replaces it.
    #[serde(default)]
    pub last_resort: bool,
}

/// Everything but the OpenMLS key store.
#[derive(Clone, Serialize, Deserialize)]
pub struct ClientState {
    /// Our handle at the AS (sent only to the AS; members and contacts see it).
    pub name: String,
    /// Hex device id of our client credential.
    pub device: String,
    /// Hex Ed25519 key of our client credential.
    pub client_key: String,
    /// Hex TLS-encoded `ClientCredential`.
    pub client_credential: String,
    /// Hex TLS-encoded `AsCredentials` of our provider, pinned at registration.
    pub as_credentials: String,
    /// Hex friendship `ClientCredentialEarKey`.
    pub credential_key: String,
    /// Hex friendship `SignatureEarKeyWrapperKey`.
    pub wrapper_key: String,
    /// Hex friendship `WelcomeAttributionInfoEarKey`.
    pub wai_key: String,
    /// Contact cards (text form) by handle: whom we accept invitations from.
    pub contacts: BTreeMap<String, String>,
    /// Hex TLS-encoded `AsCredentials` of other providers, by domain, fetched (through our
    /// provider) the first time a contact there needed verifying.
    #[serde(default)]
    pub peer_anchors: BTreeMap<String, String>,
    /// Hex TLS-encoded newest signed revocation list of each provider we verify members of,
    /// by domain (public data; kept so an older list replayed later is refused).
    #[serde(default)]
    pub revocation_lists: BTreeMap<String, String>,
    /// This device's AddPackages are still under friendship keys that were rotated away (a
    /// rotation by us or a sibling device): republished after the next receive.
    #[serde(default)]
    pub republish_pending: bool,
    /// Our rotated contact card has not yet reached every contact it can reach.
    #[serde(default)]
    pub cards_pending: bool,
    /// Our QS user has not yet moved to the friendship token (and user key) of our current
    /// user secret.
    #[serde(default)]
    pub qs_rotation_pending: bool,
    /// Hex randomness of a queue rekey sent but not yet confirmed (re-sent until it is; the QS
    /// answers a repeat with the same sequence number).
    #[serde(default)]
    pub in_flight_rekey: Option<String>,
    /// Confirmed rekeys not yet reached by our ratchet: (sequence number, hex randomness).
    #[serde(default)]
    pub pending_mixes: Vec<(u64, String)>,
    /// Messages received since the last queue rekey.
    #[serde(default)]
    pub received_since_rekey: u64,
    /// Hex `id ‖ ticket` of stored messages whose queue entries we consumed, released with our
    /// next dequeue (kept until one was answered, so a crash releases them later).
    #[serde(default)]
    pub pending_releases: Vec<String>,
    /// Whether one of our commits moved us to a new epoch since we last read our whole queue
    /// (then the next commit reads the queue first).
    #[serde(default)]
    pub committed_since_receive: bool,
    /// The hub's mode this client was registered for: `rm`, or `baseline` (full metadata:
    /// real credentials in leaves, plain queue ids, no EAR key sent).
    #[serde(default)]
    pub mode: mimi_rm_protocol::DsMode,
    /// Pseudonymous QS user id (hex).
    pub user_id: String,
    /// Pseudonymous QS client id (hex).
    pub client_id: String,
    /// Hex Ed25519 QS client auth key.
    pub client_auth_key: String,
    /// Hex Ed25519 QS user auth key.
    pub user_auth_key: String,
    /// Hex friendship token.
    pub friendship_token: String,
    /// Hex AddPackage EAR key.
    pub add_package_key: String,
    /// Hex queue ratchet state (secret ‖ next seq).
    pub queue_ratchet: String,
    /// Hex QS HPKE public key.
    pub qs_public_key: String,
    /// Hub domain.
    pub domain: String,
    /// Groups by hex group id.
    pub groups: BTreeMap<String, GroupMeta>,
    /// Published KeyPackages by hex KeyPackageRef.
    pub key_packages: BTreeMap<String, PendingKeyPackage>,
    /// Hex secret shared by all devices of our user; per-group user auth keys derive from it.
    #[serde(default)]
    pub user_secret: String,
    /// Hex key shared by all devices of our user (never by the hub) that turns a device id into
    /// the device tag its QS client carries, so a sibling can have that client removed.
    #[serde(default)]
    pub device_tag_key: String,
    /// Hex `PushTokenEarKey`: seals this device's push subscription at the QS, and travels
    /// only inside our sealed queue refs (empty for a client from before push tokens until it
    /// is next loaded).
    #[serde(default)]
    pub push_key: String,
    /// Generation of `user_secret` (bumped whenever a device is removed).
    #[serde(default)]
    pub user_secret_generation: u32,
    /// Hex user secret of a device removal in progress (kept until every group is rotated).
    #[serde(default)]
    pub pending_user_secret: Option<String>,
    /// Hex X25519 private key of this device's link key (what siblings seal user secrets to).
    #[serde(default)]
    pub link_private: String,
    /// Our user's devices: hex device id → hex link public key.
    #[serde(default)]
    pub devices: BTreeMap<String, String>,
    /// Private keys of our published connection packages, by hex package hash.
    #[serde(default)]
    pub connection_keys: BTreeMap<String, String>,
    /// Hex package hashes in the order their keys were made (oldest first), to bound the keys.
    #[serde(default)]
    pub connection_key_order: Vec<String>,
    /// Connection groups we created, waiting for their responder, by hex group id.
    #[serde(default)]
    pub pending_connections: BTreeMap<String, PendingConnection>,
    /// Verified connection requests waiting for our decision: id → hex encoded offer.
    #[serde(default)]
    pub connection_requests: BTreeMap<String, String>,
}

/// A connection we initiated.
#[derive(Clone, Serialize, Deserialize)]
pub struct PendingConnection {
    /// The responder's handle.
    pub handle: String,
    /// Hex key the responder's contact card arrives under.
    pub friendship_key: String,
}

// Secrets are wiped from memory when the state goes, and never printed: `Debug` shows what is
// needed to tell states apart in a log or a test failure, and no key.

impl Drop for GroupMeta {
    fn drop(&mut self) {
        wipe(&mut self.ear_key);
        wipe(&mut self.credential_key);
        wipe(&mut self.wrapper_key);
        wipe(&mut self.signature_ear_key);
        wipe(&mut self.signer_private);
    }
}

impl std::fmt::Debug for GroupMeta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupMeta")
            .field("signer_public", &self.signer_public)
            .field("members", &self.members)
            .field("joined_epoch", &self.joined_epoch)
            .finish_non_exhaustive()
    }
}

impl Drop for PendingKeyPackage {
    fn drop(&mut self) {
        wipe(&mut self.init_private);
        wipe(&mut self.signature_ear_key);
    }
}

impl std::fmt::Debug for PendingKeyPackage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingKeyPackage")
            .field("signer_public", &self.signer_public)
            .finish_non_exhaustive()
    }
}

impl Drop for PendingConnection {
    fn drop(&mut self) {
        wipe(&mut self.friendship_key);
    }
}

impl std::fmt::Debug for PendingConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingConnection")
            .field("handle", &self.handle)
            .finish_non_exhaustive()
    }
}

impl Drop for ClientState {
    fn drop(&mut self) {
        for s in [
            &mut self.client_key,
            &mut self.credential_key,
            &mut self.wrapper_key,
            &mut self.wai_key,
            &mut self.client_auth_key,
            &mut self.user_auth_key,
            &mut self.friendship_token,
            &mut self.add_package_key,
            &mut self.queue_ratchet,
            &mut self.user_secret,
            &mut self.device_tag_key,
            &mut self.push_key,
            &mut self.link_private,
        ] {
            wipe(s);
        }
        for s in [&mut self.in_flight_rekey, &mut self.pending_user_secret]
            .into_iter()
            .flatten()
        {
            wipe(s);
        }
        for (_, s) in &mut self.pending_mixes {
            wipe(s);
        }
        for s in self
            .contacts
            .values_mut()
            .chain(self.connection_keys.values_mut())
            .chain(self.connection_requests.values_mut())
        {
            wipe(s);
        }
    }
}

impl std::fmt::Debug for ClientState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientState")
            .field("name", &self.name)
            .field("device", &self.device)
            .field("domain", &self.domain)
            .field("mode", &self.mode)
            .field("groups", &self.groups.len())
            .field("key_packages", &self.key_packages.len())
            .field("contacts", &self.contacts.len())
            .finish_non_exhaustive()
    }
}

/// Overwrites a secret string's bytes before its memory is freed.
fn wipe(s: &mut String) {
    zeroize::Zeroize::zeroize(s);
}

/// Hex decode for stored fields.
pub fn unhex(s: &str) -> Result<Vec<u8>, ClientError> {
    hex::decode(s).map_err(|e| ClientError::State(format!("stored hex: {e}")))
}
