//! The hub's error enum and its mapping to stable wire codes.

use crate::store::StoreError;
use mimi_rm_protocol::{ErrorCode, ErrorResponse};

/// Every way a request can fail. Client-caused variants carry enough context for a useful
/// `detail`; server faults (`Store`, `Internal`) are logged but reported without internals.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The body does not decode as the expected type.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// Which structure failed.
        what: &'static str,
        /// Decoder message.
        detail: String,
    },
    /// The body exceeds the limit.
    #[error("request too large")]
    TooLarge,
    /// Unknown protocol version.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u16),
    /// Envelope type does not belong to this path.
    #[error("transaction type not served at this endpoint")]
    WrongEndpoint,
    /// Timestamp outside the accepted window.
    #[error("request timestamp outside the accepted window")]
    Stale,
    /// Same signed request seen before.
    #[error("request was already processed")]
    Replayed,
    /// Signature check failed.
    #[error("invalid request signature")]
    InvalidSignature,
    /// Signer may not do this.
    #[error("not authorized: {0}")]
    NotAuthorized(&'static str),
    /// The EAR key does not open the group state.
    #[error("the group state EAR key is wrong")]
    WrongEarKey,
    /// No such group.
    #[error("unknown group")]
    UnknownGroup,
    /// Group id foreign, unreserved or malformed.
    #[error("invalid group id: {0}")]
    InvalidGroupId(&'static str),
    /// Group already exists.
    #[error("group already exists")]
    GroupExists,
    /// Commit for another epoch.
    #[error("wrong epoch: the group is at epoch {current}")]
    WrongEpoch {
        /// The group's current epoch.
        current: u64,
    },
    /// OpenMLS rejected the message.
    #[error("invalid MLS message: {0}")]
    InvalidMls(String),
    /// Proposals do not match the operation.
    #[error("commit does not fit the operation: {0}")]
    WrongOperation(&'static str),
    /// GroupInfo does not match the new state.
    #[error("invalid GroupInfo: {0}")]
    InvalidGroupInfo(String),
    /// Unknown QS client record.
    #[error("unknown client")]
    UnknownClient,
    /// Unknown friendship token.
    #[error("unknown friendship token")]
    UnknownToken,
    /// Otherwise invalid.
    #[error("invalid request: {0}")]
    InvalidRequest(&'static str),
    /// No tree stored for that epoch (or not for this joiner).
    #[error("nothing stored for that epoch")]
    UnknownEpoch,
    /// A report names a commit the hub does not remember.
    #[error("unknown commit: not among the recently accepted commits")]
    UnknownCommit,
    /// AS: the handle is already registered.
    #[error("handle is taken")]
    HandleTaken,
    /// AS: the handle is empty, too long or uses characters outside `[a-z0-9._-]`.
    #[error("invalid handle: {0}")]
    InvalidHandle(&'static str),
    /// AS: the sender's client credential is outside its validity period.
    #[error("client credential is expired or not yet valid")]
    ExpiredCredential,
    /// AS: no such handle, or no such client of that handle.
    #[error("unknown user or client")]
    UnknownUser,
    /// A server-to-server message for another domain, group or queue.
    #[error("wrong recipient: {0}")]
    WrongRecipient(&'static str),
    /// A configured limit would be exceeded.
    #[error("limit exceeded: {0}")]
    LimitExceeded(&'static str),
    /// The client took too long to send its request.
    #[error("request timed out")]
    Timeout,
    /// The domain is not one this provider federates with.
    #[error("not a federation peer of this provider")]
    NotAPeer,
    /// A peer provider could not be reached.
    #[error("peer unavailable: {0}")]
    PeerUnavailable(String),
    /// A rate-limited request without a token.
    #[error("this request needs a Privacy Pass token")]
    TokenRequired,
    /// The `Authorization: PrivateToken` header does not parse.
    #[error("malformed token: {0}")]
    TokenMalformed(String),
    /// A token type this hub does not accept.
    #[error("token type {0:#06x} is not accepted")]
    TokenWrongType(u16),
    /// The token's key was never ours.
    #[error("unknown token key")]
    TokenUnknownKey,
    /// The token's key no longer redeems.
    #[error("the token's key has expired; refresh the issuer directory")]
    TokenExpiredKey,
    /// The token does not verify.
    #[error("invalid token: {0}")]
    TokenInvalid(&'static str),
    /// The token was spent before.
    #[error("token already spent")]
    TokenSpent,
    /// The device used its token allowance for this key epoch.
    #[error("token allowance exhausted: {used} of {limit} used this key epoch")]
    AllowanceExhausted {
        /// Tokens already issued this epoch.
        used: u32,
        /// The allowance.
        limit: u32,
    },
    /// Baseline mode: the signing client identity exceeded its request rate.
    #[error("rate limited: more than {per_minute} requests this minute from this client")]
    RateLimited {
        /// The configured limit.
        per_minute: u32,
    },
    /// Storage failed.
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    /// A bug or an inconsistent state.
    #[error("internal: {0}")]
    Internal(String),
}

impl HubError {
    /// The stable wire code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Malformed { .. } => ErrorCode::Malformed,
            Self::TooLarge => ErrorCode::TooLarge,
            Self::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            Self::WrongEndpoint => ErrorCode::WrongEndpoint,
            Self::Stale => ErrorCode::StaleRequest,
            Self::Replayed => ErrorCode::Replayed,
            Self::InvalidSignature => ErrorCode::InvalidSignature,
            Self::NotAuthorized(_) => ErrorCode::NotAuthorized,
            Self::WrongEarKey => ErrorCode::WrongEarKey,
            Self::UnknownGroup => ErrorCode::UnknownGroup,
            Self::InvalidGroupId(_) => ErrorCode::InvalidGroupId,
            Self::GroupExists => ErrorCode::GroupExists,
            Self::WrongEpoch { .. } => ErrorCode::WrongEpoch,
            Self::InvalidMls(_) => ErrorCode::InvalidMlsMessage,
            Self::WrongOperation(_) => ErrorCode::WrongOperation,
            Self::InvalidGroupInfo(_) => ErrorCode::InvalidGroupInfo,
            Self::UnknownClient => ErrorCode::UnknownClient,
            Self::UnknownToken => ErrorCode::UnknownToken,
            Self::InvalidRequest(_) => ErrorCode::InvalidRequest,
            Self::UnknownEpoch => ErrorCode::UnknownEpoch,
            Self::UnknownCommit => ErrorCode::UnknownCommit,
            Self::WrongRecipient(_) => ErrorCode::WrongRecipient,
            Self::PeerUnavailable(_) => ErrorCode::PeerUnavailable,
            Self::NotAPeer => ErrorCode::NotAPeer,
            Self::LimitExceeded(_) => ErrorCode::LimitExceeded,
            Self::Timeout => ErrorCode::Timeout,
            Self::HandleTaken => ErrorCode::HandleTaken,
            Self::InvalidHandle(_) => ErrorCode::InvalidHandle,
            Self::ExpiredCredential => ErrorCode::ExpiredCredential,
            Self::UnknownUser => ErrorCode::UnknownUser,
            Self::TokenRequired => ErrorCode::TokenRequired,
            Self::TokenMalformed(_) => ErrorCode::TokenMalformed,
            Self::TokenWrongType(_) => ErrorCode::TokenWrongType,
            Self::TokenUnknownKey => ErrorCode::TokenUnknownKey,
            Self::TokenExpiredKey => ErrorCode::TokenExpiredKey,
            Self::TokenInvalid(_) => ErrorCode::TokenInvalid,
            Self::TokenSpent => ErrorCode::TokenSpent,
            Self::AllowanceExhausted { .. } => ErrorCode::AllowanceExhausted,
            Self::RateLimited { .. } => ErrorCode::RateLimited,
            Self::Store(_) | Self::Internal(_) => ErrorCode::Internal,
        }
    }

    /// The body sent to the client; server faults say only "internal error".
    pub fn to_response(&self) -> ErrorResponse {
        let detail = match self {
            Self::Store(_) | Self::Internal(_) => "internal error".to_owned(),
            other => other.to_string(),
        };
        let mut resp = ErrorResponse::new(self.code(), detail);
        if let Self::WrongEpoch { current } = self {
            resp.current_epoch = Some(*current);
        }
        resp
    }

    /// Whether a request refused with this error still spends the token it was admitted with:
    /// every refusal that is the client's doing (4xx) except the token's own errors. Otherwise
    /// one valid token could be replayed with failing requests to make the hub validate forever.
    pub fn spends_token(&self) -> bool {
        let status = self.code().http_status();
        (400..500).contains(&status)
            && !matches!(
                self,
                Self::TokenRequired
                    | Self::TokenMalformed(_)
                    | Self::TokenWrongType(_)
                    | Self::TokenUnknownKey
                    | Self::TokenExpiredKey
                    | Self::TokenInvalid(_)
                    | Self::TokenSpent
                    | Self::AllowanceExhausted { .. }
            )
    }

    /// Shorthand for decode failures.
    pub fn malformed(what: &'static str, e: impl std::fmt::Display) -> Self {
        Self::Malformed {
            what,
            detail: e.to_string(),
        }
    }
}
