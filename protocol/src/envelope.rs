//! The versioned envelope every request body travels in.

use tls_codec::{TlsDeserialize, TlsSerialize, TlsSize, VLBytes};

/// The only protocol version this hub speaks; anything else is refused with `UnsupportedVersion`.
pub const PROTOCOL_VERSION: u16 = 1;

/// What the payload of an [`Envelope`] is; must match the endpoint it is posted to, so a body
/// meant for one endpoint can never be replayed against another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[repr(u16)]
pub enum TransactionType {
    /// A signed [`crate::ds::DsRequest`] at `/group_operation`.
    GroupOperation = 1,
    /// A signed [`crate::ds::DsRequest`] at `/welcome_information`.
    WelcomeInformation = 2,
    /// A signed [`crate::ds::DsRequest`] at `/external_commit_information`.
    ExternalCommitInformation = 3,
    /// A [`crate::qs::QsRequest`] under `/qs/`.
    QueueService = 16,
    /// A [`crate::auth::AsRequest`] at `/as/request`.
    AuthService = 17,
    /// A [`crate::federation::S2sEnvelope`] at `/federation/forward` or `/deliver_message`.
    Federation = 32,
    /// A [`crate::federation::ProxyRequest`] at `/federation/proxy`.
    Proxy = 33,
}

/// `{ version, transaction_type, payload }`: the outer frame of every request.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct Envelope {
    /// Protocol version, [`PROTOCOL_VERSION`].
    pub version: u16,
    /// Which request type `payload` holds.
    pub transaction_type: TransactionType,
    /// The encoded request.
    pub payload: VLBytes,
}

impl Envelope {
    /// Wraps an encoded payload in a current-version envelope.
    pub fn new(transaction_type: TransactionType, payload: Vec<u8>) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            transaction_type,
            payload: payload.into(),
        }
    }
}
