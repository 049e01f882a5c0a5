//! Queueing-service requests: pseudonymous records, AddPackages, queues.

use tls_codec::{TlsDeserialize, TlsSerialize, TlsSize, VLBytes};

/// Signature label of QS requests (signed with the client's QS auth key).
pub const QS_REQUEST_SIGNATURE_LABEL: &str = "qs request";

/// Create a pseudonymous user with its first client.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct CreateUser {
    /// Ed25519 key authorising user-level changes.
    pub user_auth_key: VLBytes,
    /// Ed25519 key authorising this client's requests; the request is signed with it.
    pub client_auth_key: VLBytes,
    /// 32 random bytes; contacts present it to fetch AddPackages. The QS keeps only its hash.
    pub friendship_token: VLBytes,
    /// Initial secret of the queue ratchet (the QS only ever keeps the current one).
    pub initial_ratchet_secret: VLBytes,
    /// The client's device tag (32 bytes, or empty): a keyed hash of its device id under a key
    /// only the user's devices hold, so a sibling can later name this client for removal
    /// ([`RemoveUserClient`]) while the QS learns nothing from it.
    pub device_tag: VLBytes,
}

/// Add another client (device) to the signing pseudonymous user.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct CreateClient {
    /// Ed25519 key authorising the new client's requests.
    pub client_auth_key: VLBytes,
    /// Initial secret of the new client's queue ratchet.
    pub initial_ratchet_secret: VLBytes,
    /// The new client's device tag (see [`CreateUser::device_tag`]).
    pub device_tag: VLBytes,
}

/// A sibling device removes a client of its user (a removed device) and rotates the user auth
/// key in the same step, so the removed device can neither read that queue nor create another
/// client. Signed with the current user auth key (sender `User`).
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct RemoveUserClient {
    /// The removed client's device tag; no client of the user with it: nothing is deleted.
    pub device_tag: [u8; 32],
    /// The user's next auth key (Ed25519 public key).
    pub new_user_auth_key: VLBytes,
}

/// Replace this client's published AddPackages.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct PublishAddPackages {
    /// One-time AddPackages, each encrypted under the user's `AddPackageEarKey`.
    pub packages: Vec<VLBytes>,
    /// The last-resort AddPackage, handed out when no one-time package is left.
    pub last_resort: VLBytes,
}

/// What a client publishes for its contacts (encrypted at the QS under the `AddPackageEarKey`):
/// a KeyPackage with a fresh pseudonymous leaf, plus the material that links the leaf to the
/// client credential, readable only with the owner's friendship keys.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct AddPackage {
    /// TLS-encoded KeyPackage.
    pub key_package: VLBytes,
    /// The owner's ClientCredential under its friendship `ClientCredentialEarKey`.
    pub encrypted_client_credential: VLBytes,
    /// The leaf's `SignatureEarKey` under the owner's friendship `SignatureEarKeyWrapperKey`.
    pub encrypted_signature_ear_key: VLBytes,
}

/// Fetch and consume messages.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct Dequeue {
    /// Acknowledge (delete) every message with a sequence number below this.
    pub ack_below: u64,
    /// At most this many messages (capped by the server).
    pub max: u32,
    /// Tickets of stored messages whose queue entries this request acknowledges, released in
    /// the same transaction as the acknowledgement. Releasing an unknown or already released
    /// ticket does nothing, so a repeated request is harmless.
    pub release: Vec<StoredTicket>,
}

/// A recipient's release of a stored message (see `QueueMessage::Stored`).
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct StoredTicket {
    /// The stored message.
    pub id: [u8; crate::queue::STORED_ID_LEN],
    /// The ticket from the recipient's `StoredRef`.
    pub ticket: [u8; crate::queue::STORED_TICKET_LEN],
}

/// One stored message, as `FetchStored` answers it.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct StoredMessage {
    /// Its id.
    pub id: [u8; crate::queue::STORED_ID_LEN],
    /// The EAR ciphertext of a `QueueMessage` under the `StoredRef` key.
    pub ciphertext: VLBytes,
}

/// One QS operation.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[repr(u8)]
pub enum QsOperation {
    /// The QS HPKE public key clients seal `QueueRef`s to (anonymous).
    #[tls_codec(discriminant = 0)]
    EncryptionKey,
    /// Create a user + client record (anonymous, signed by the new client key).
    #[tls_codec(discriminant = 1)]
    CreateUser(CreateUser),
    /// Replace the sender's AddPackages.
    #[tls_codec(discriminant = 2)]
    PublishAddPackages(PublishAddPackages),
    /// Fetch one AddPackage per client of the user behind a friendship token (anonymous).
    #[tls_codec(discriminant = 3)]
    FetchAddPackages(VLBytes),
    /// Read the sender's queue.
    #[tls_codec(discriminant = 4)]
    Dequeue(Dequeue),
    /// Mix 32 fresh random bytes into the sender's queue ratchet (post-compromise security).
    /// Idempotent: the same bytes again answer the same sequence number.
    #[tls_codec(discriminant = 5)]
    RekeyQueue(VLBytes),
    /// Add a client to the user (signed with the user auth key, sender `User`).
    #[tls_codec(discriminant = 6)]
    CreateClient(CreateClient),
    /// Delete the signing client: its queue, its AddPackages and its record. Groups it was in
    /// learn of it at their next fan-out (a tombstone the hub turns into a removal proposal).
    #[tls_codec(discriminant = 7)]
    DeleteClient,
    /// Delete a client of the signing user by its device tag, and rotate the user auth key.
    #[tls_codec(discriminant = 8)]
    RemoveUserClient(RemoveUserClient),
    /// Sets (or, empty, removes) this client's push subscription: a [`crate::push`]
    /// `PushSubscription` EAR-sealed under the client's `PushTokenEarKey`, which the QS never
    /// holds at rest — it learns it only from the sealed queue refs it opens during fan-out.
    #[tls_codec(discriminant = 9)]
    SetPushToken(VLBytes),
    /// Replace the signing user's auth key and friendship token (signed with the current user
    /// auth key): whoever held the old token — a removed contact, a removed device — fetches
    /// no AddPackage of the user afterwards. Repeating it with the same values answers `Ok`.
    #[tls_codec(discriminant = 10)]
    RotateUser(RotateUser),
    /// Read stored messages by id (sender `Client`); ids the QS does not hold (released,
    /// expired, never stored) are left out of the answer.
    #[tls_codec(discriminant = 11)]
    FetchStored(Vec<[u8; crate::queue::STORED_ID_LEN]>),
}

/// The user's next auth key and friendship token.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct RotateUser {
    /// The user's next auth key (Ed25519 public key).
    pub new_user_auth_key: VLBytes,
    /// The next friendship token (32 bytes); the QS keeps only its SHA-256.
    pub new_friendship_token: VLBytes,
}

/// Who signs a QS request.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[repr(u8)]
pub enum QsSender {
    /// Unauthenticated (key fetch, AddPackage fetch by token).
    #[tls_codec(discriminant = 0)]
    Anonymous,
    /// A client record, by its pseudonymous id.
    #[tls_codec(discriminant = 1)]
    Client([u8; 16]),
    /// A client being created (verified with `CreateUser::client_auth_key`).
    #[tls_codec(discriminant = 2)]
    NewClient,
    /// A pseudonymous user, verified with its user auth key.
    #[tls_codec(discriminant = 3)]
    User([u8; 16]),
}

/// The signed part of a QS request.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct QsRequestTbs {
    /// Milliseconds since the Unix epoch at signing.
    pub timestamp_ms: u64,
    /// Random per request.
    pub nonce: [u8; 16],
    /// The signer.
    pub sender: QsSender,
    /// What to do.
    pub operation: QsOperation,
}

/// A QS request with its signature (empty when anonymous).
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct QsRequest {
    /// Signed content.
    pub tbs: QsRequestTbs,
    /// Labelled Ed25519 signature over the encoded `tbs`.
    pub signature: VLBytes,
}

/// The ids of a created user/client.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct UserCreated {
    /// Pseudonymous user id.
    pub user_id: [u8; 16],
    /// Pseudonymous client (queue) id.
    pub client_id: [u8; 16],
}

/// One queued ciphertext.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct QueuedCiphertext {
    /// Sequence number (also the ratchet position).
    pub seq: u64,
    /// Ratchet ciphertext of a `QueueMessage`.
    pub ciphertext: VLBytes,
}

/// Answer to `Dequeue`.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct Messages {
    /// Messages in sequence order starting at `ack_below`.
    pub messages: Vec<QueuedCiphertext>,
    /// How many more are queued after these.
    pub remaining: u64,
}

/// A successful QS response.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[repr(u8)]
pub enum QsResponse {
    /// Done.
    #[tls_codec(discriminant = 0)]
    Ok,
    /// The QS HPKE public key.
    #[tls_codec(discriminant = 1)]
    EncryptionKey(VLBytes),
    /// Answer to `CreateUser`.
    #[tls_codec(discriminant = 2)]
    UserCreated(UserCreated),
    /// Encrypted AddPackages, one per client.
    #[tls_codec(discriminant = 3)]
    AddPackages(Vec<VLBytes>),
    /// Answer to `Dequeue`.
    #[tls_codec(discriminant = 4)]
    Messages(Messages),
    /// The mix takes effect from this sequence number on.
    #[tls_codec(discriminant = 5)]
    Rekeyed(u64),
    /// Answer to `CreateClient`: the new client id.
    #[tls_codec(discriminant = 6)]
    ClientCreated([u8; 16]),
    /// Answer to `FetchStored`: the stored messages found, in the order asked.
    #[tls_codec(discriminant = 7)]
    Stored(Vec<StoredMessage>),
}
