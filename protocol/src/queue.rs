//! What travels through a client's queue, and the sealed address that routes it there.

use tls_codec::{TlsDeserialize, TlsSerialize, TlsSize, VLBytes};

/// MLS extension type of the leaf-node extension that carries a [`QueueRef`] (private range).
pub const QUEUE_REF_EXTENSION_TYPE: u16 = 0xff00;

/// The leaf capabilities every member's leaf must declare: OpenMLS only accepts a leaf
/// extension of a type the leaf lists, and every leaf carries a [`QueueRef`].
pub fn leaf_capabilities() -> openmls::prelude::Capabilities {
    openmls::prelude::Capabilities::new(
        None,
        None,
        // The last-resort marker is a KeyPackage extension, and OpenMLS refuses to add a
        // KeyPackage whose extensions its leaf does not list: without it, a contact whose
        // one-time AddPackages are used up could not be added with the last-resort one.
        Some(&[
            openmls::prelude::ExtensionType::Unknown(QUEUE_REF_EXTENSION_TYPE),
            openmls::prelude::ExtensionType::LastResort,
        ]),
        None,
        None,
    )
}

/// HPKE label under which clients seal a [`QueueRefPlain`] to their QS.
pub const QUEUE_REF_HPKE_LABEL: &str = "queue ref";
/// HPKE label under which the hub seals a [`JoinerInfo`] to a KeyPackage init key.
pub const JOINER_INFO_HPKE_LABEL: &str = "joiner info";

/// An HPKE ciphertext on the wire.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct HpkeCiphertextWire {
    /// Encapsulated key.
    pub kem_output: VLBytes,
    /// AEAD ciphertext.
    pub ciphertext: VLBytes,
}

impl From<mimi_rm_crypto::hpke_seal::HpkeCiphertext> for HpkeCiphertextWire {
    fn from(ct: mimi_rm_crypto::hpke_seal::HpkeCiphertext) -> Self {
        Self {
            kem_output: ct.kem_output.into(),
            ciphertext: ct.ciphertext.into(),
        }
    }
}

impl HpkeCiphertextWire {
    /// The ciphertext in the form [`mimi_rm_crypto::hpke_seal::open`] takes.
    pub fn to_ciphertext(&self) -> mimi_rm_crypto::hpke_seal::HpkeCiphertext {
        mimi_rm_crypto::hpke_seal::HpkeCiphertext {
            kem_output: self.kem_output.as_slice().to_vec(),
            ciphertext: self.ciphertext.as_slice().to_vec(),
        }
    }
}

/// A member's fan-out address as the hub sees it: in RM mode only the QS domain is readable.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct QueueRef {
    /// Domain of the QS holding the queue.
    pub domain: VLBytes,
    /// Which queue on that QS.
    pub address: QueueAddress,
}

/// How a [`QueueRef`] names its queue. The variant is explicit so a hub in one mode refuses the
/// other mode's addresses instead of misreading them.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[repr(u8)]
pub enum QueueAddress {
    /// RM mode: [`QueueRefPlain`] sealed to the QS's HPKE key; fresh per leaf, so unlinkable.
    #[tls_codec(discriminant = 1)]
    Sealed(HpkeCiphertextWire),
    /// Baseline (full-metadata) mode only: the queue id in the clear, as a conventional DS
    /// stores it. An RM hub refuses it.
    #[tls_codec(discriminant = 2)]
    Plain(QueueRefPlain),
}

/// A queue id: inside a sealed [`QueueRef`] from before push tokens, and in the clear in a
/// baseline ref.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct QueueRefPlain {
    /// The pseudonymous client (queue) id.
    pub client_id: [u8; 16],
}

/// What the QS finds inside a sealed [`QueueRef`] now: the queue id and the client's
/// `PushTokenEarKey`. A sealed ref of exactly 16 bytes is the older [`QueueRefPlain`] (no key).
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct SealedQueueRef {
    /// The pseudonymous client (queue) id.
    pub client_id: [u8; 16],
    /// The client's `PushTokenEarKey` (32 bytes), or empty: with it the QS opens the client's
    /// stored push subscription while it enqueues for this address, and at no other time.
    pub push_key: VLBytes,
}

/// What the hub tells a Welcome joiner, sealed to its KeyPackage init key.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct JoinerInfo {
    /// The MLS group id (the Welcome hides it until processed, but the tree request needs it).
    pub group_id: VLBytes,
    /// The group's `GroupStateEarKey`: needed for every later request.
    pub ear_key: VLBytes,
    /// The epoch the Welcome is for (so the joiner asks for that epoch's tree).
    pub epoch: u64,
    /// Domain of the hub that hosts the group.
    pub hub_domain: VLBytes,
}

/// A Welcome for one joiner.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct WelcomeBundle {
    /// `MLSMessage` with the Welcome.
    pub welcome: VLBytes,
    /// [`JoinerInfo`] sealed to the joiner's KeyPackage init key.
    pub joiner_info: HpkeCiphertextWire,
    /// The inviter's `WelcomeAttributionInfo`, encrypted under the joiner's friendship key (the
    /// hub copies it from the commit's authenticated data and cannot read it).
    pub attribution: VLBytes,
}

/// The plaintext of one queue entry (encrypted at rest under the queue ratchet).
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[repr(u8)]
pub enum QueueMessage {
    /// An `MLSMessage` (commit, proposal or application message).
    #[tls_codec(discriminant = 1)]
    Mls(VLBytes),
    /// A Welcome for this client.
    #[tls_codec(discriminant = 2)]
    Welcome(WelcomeBundle),
    /// A message the QS stored once for all its local recipients (a large commit): where it
    /// is and the key it is under. Fetch it with `FetchStored`, release the ticket with the
    /// `Dequeue` that acknowledges this entry.
    #[tls_codec(discriminant = 3)]
    Stored(StoredRef),
}

/// Length of a stored message's id.
pub const STORED_ID_LEN: usize = 16;
/// The EAR use label a stored message is sealed under (its id is the associated data).
pub const STORED_EAR_DOMAIN: &str = "mimi-rm stored message";
/// Length of a release ticket.
pub const STORED_TICKET_LEN: usize = 16;
/// Length of a stored message's key.
pub const STORED_KEY_LEN: usize = 32;

/// One recipient's reference to a message stored once (inside its ratchet-encrypted queue
/// entry, so a seized disk cannot tell which queues share a stored message).
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct StoredRef {
    /// Random id of the stored message.
    pub id: [u8; STORED_ID_LEN],
    /// The fresh key it is EAR-sealed under (held only inside queue entries).
    pub key: [u8; STORED_KEY_LEN],
    /// This recipient's release ticket: the QS deletes the stored message once every
    /// recipient has released its ticket.
    pub ticket: [u8; STORED_TICKET_LEN],
}
