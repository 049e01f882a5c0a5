//! Client errors.

use mimi_rm_protocol::{ErrorCode, ErrorResponse};

/// What can go wrong in the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The hub refused the request with a stable error code.
    #[error("hub refused ({status}): {response}")]
    Hub {
        /// HTTP status.
        status: u16,
        /// Decoded error body.
        response: ErrorResponse,
    },
    /// The hub could not be reached or answered garbage.
    #[error("transport: {0}")]
    Transport(String),
    /// Another provider the request needs is out of reach, or not yet known to our hub (its
    /// key for sealing what waits for it): the hub applied nothing, so the same change can be
    /// sent again in a new request.
    #[error("peer unavailable: {0}")]
    PeerUnavailable(String),
    /// OpenMLS failed.
    #[error("mls: {0}")]
    Mls(String),
    /// Our own cryptography failed (e.g. a wrong key).
    #[error("crypto: {0}")]
    Crypto(#[from] mimi_rm_crypto::CryptoError),
    /// Local state could not be read or written.
    #[error("state: {0}")]
    State(String),
    /// The client store's database failed (or is in use by another process).
    #[error("client store: {0}")]
    Store(String),
    /// The client store's passphrase is missing or wrong, or one was given for a store without.
    #[error("client store: {0}")]
    Passphrase(&'static str),
    /// The hub answered something that does not fit the request.
    #[error("unexpected response: {0}")]
    Unexpected(&'static str),
    /// An argument the caller gave is not acceptable (what is wrong with it is said).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The operation does not exist in this client's DS mode.
    #[error("not supported: {0}")]
    Unsupported(&'static str),
    /// Unknown group handle.
    #[error("unknown group")]
    UnknownGroup,
    /// A credential chain did not verify.
    #[error("identity: {0}")]
    Identity(#[from] crate::identity::IdentityError),
    /// A contact has no AddPackage left.
    #[error("no AddPackage available for that contact")]
    NoAddPackage,
    /// Every AddPackage the contact's provider handed out belongs to a device its user has
    /// revoked at the AS: nothing was added.
    #[error("the contact's only AddPackages are of revoked devices")]
    Revoked,
    /// The members named for a commit changed while we caught up with the group before it;
    /// nothing was sent. Look at the group again and retry.
    #[error("the group's members changed before the commit; nothing was sent")]
    MembersChanged,
    /// The hub has just proposed removals that a commit must include; fetch them and retry.
    #[error("the hub has pending proposals to commit first")]
    ProposalsPending,
}

impl ClientError {
    /// The hub's error code, if this is a hub refusal.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Hub { response, .. } => Some(response.code),
            _ => None,
        }
    }

    pub(crate) fn mls(e: impl std::fmt::Display) -> Self {
        Self::Mls(e.to_string())
    }
}
