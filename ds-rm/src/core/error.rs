//! The hub's errors, one enum per service (rustls' `Error` with its sub-enums is the model),
//! and their mapping to stable wire codes.
//!
//! A refusal says which part of the hub refused: the request as such ([`RequestError`]), the
//! group ([`GroupError`]), the queueing service ([`QueueError`]), the identity service
//! ([`IdentityError`]), Privacy Pass ([`TokenError`]) or federation ([`FederationError`]).
//! Server faults are apart from all of them and from each other: the storage backend or data
//! on disk that does not decode ([`StoreError`]), and a violated invariant of our own code
//! ([`HubError::Bug`]). Both are logged and reported to the client as "internal error" only.

use crate::store::StoreError;
use mimi_rm_protocol::{ErrorCode, ErrorResponse};

/// Every way a request can fail.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The request as such: framing, freshness, signature, authorisation, limits.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The DS refused a group operation.
    #[error(transparent)]
    Group(#[from] GroupError),
    /// The QS refused a queue or record operation.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The AS refused an identity operation.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// Privacy Pass (or, in baseline mode, the per-identity rate limit) refused the request.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// A server-to-server exchange failed or was refused.
    #[error(transparent)]
    Federation(#[from] FederationError),
    /// Storage failed, or stored data does not decode (server fault).
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    /// An invariant of the hub's own code does not hold (server fault; never the client's
    /// doing and never damaged data: that is [`StoreError::Corrupt`]).
    #[error("bug: {0}")]
    Bug(String),
}

/// Refusals of the request as such, before or besides any service logic.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
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
    /// Otherwise invalid.
    #[error("invalid request: {0}")]
    Invalid(&'static str),
    /// A configured limit would be exceeded.
    #[error("limit exceeded: {0}")]
    LimitExceeded(&'static str),
    /// The client took too long to send its request.
    #[error("request timed out")]
    Timeout,
}

/// Refusals of the DS for a group.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// The EAR key does not open the group state.
    #[error("the group state EAR key is wrong")]
    WrongEarKey,
    /// No such group.
    #[error("unknown group")]
    Unknown,
    /// Group id foreign, unreserved or malformed.
    #[error("invalid group id: {0}")]
    InvalidId(&'static str),
    /// Group already exists.
    #[error("group already exists")]
    Exists,
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
    /// No tree stored for that epoch (or not for this joiner).
    #[error("nothing stored for that epoch")]
    UnknownEpoch,
    /// A report names a commit the hub does not remember.
    #[error("unknown commit: not among the recently accepted commits")]
    UnknownCommit,
    /// A removing commit without the key rotation, or a rotation without a removal.
    #[error("key rotation: {0}")]
    RotationRequired(&'static str),
}

/// Refusals of the QS.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Unknown QS client record.
    #[error("unknown client")]
    UnknownClient,
    /// Unknown friendship token.
    #[error("unknown friendship token")]
    UnknownFriendshipToken,
}

/// Refusals of the AS.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The handle is already registered.
    #[error("handle is taken")]
    HandleTaken,
    /// The handle is empty, too long or uses characters outside `[a-z0-9._-]`.
    #[error("invalid handle: {0}")]
    InvalidHandle(&'static str),
    /// The sender's client credential is outside its validity period.
    #[error("client credential is expired or not yet valid")]
    ExpiredCredential,
    /// No such handle, or no such client of that handle (also: no such QS user).
    #[error("unknown user or client")]
    UnknownUser,
}

/// Refusals of the rate limiter: Privacy Pass tokens, or baseline mode's identity limit.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// A rate-limited request without a token.
    #[error("this request needs a Privacy Pass token")]
    Required,
    /// The `Authorization: PrivateToken` header does not parse.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// A token type this hub does not accept.
    #[error("token type {0:#06x} is not accepted")]
    WrongType(u16),
    /// The token's key was never ours.
    #[error("unknown token key")]
    UnknownKey,
    /// The token's key no longer redeems.
    #[error("the token's key has expired; refresh the issuer directory")]
    ExpiredKey,
    /// The token does not verify.
    #[error("invalid token: {0}")]
    Invalid(&'static str),
    /// The token was spent before.
    #[error("token already spent")]
    Spent,
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
}

/// Failures and refusals between providers.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    /// A server-to-server message for another domain, group or queue.
    #[error("wrong recipient: {0}")]
    WrongRecipient(&'static str),
    /// The domain is not one this provider federates with.
    #[error("not a federation peer of this provider")]
    NotAPeer,
    /// A peer provider could not be reached.
    #[error("peer unavailable: {0}")]
    PeerUnavailable(String),
}

impl RequestError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::Malformed { .. } => ErrorCode::Malformed,
            Self::TooLarge => ErrorCode::TooLarge,
            Self::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            Self::WrongEndpoint => ErrorCode::WrongEndpoint,
            Self::Stale => ErrorCode::StaleRequest,
            Self::Replayed => ErrorCode::Replayed,
            Self::InvalidSignature => ErrorCode::InvalidSignature,
            Self::NotAuthorized(_) => ErrorCode::NotAuthorized,
            Self::Invalid(_) => ErrorCode::InvalidRequest,
            Self::LimitExceeded(_) => ErrorCode::LimitExceeded,
            Self::Timeout => ErrorCode::Timeout,
        }
    }
}

impl GroupError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::WrongEarKey => ErrorCode::WrongEarKey,
            Self::Unknown => ErrorCode::UnknownGroup,
            Self::InvalidId(_) => ErrorCode::InvalidGroupId,
            Self::Exists => ErrorCode::GroupExists,
            Self::WrongEpoch { .. } => ErrorCode::WrongEpoch,
            Self::InvalidMls(_) => ErrorCode::InvalidMlsMessage,
            Self::WrongOperation(_) => ErrorCode::WrongOperation,
            Self::InvalidGroupInfo(_) => ErrorCode::InvalidGroupInfo,
            Self::UnknownEpoch => ErrorCode::UnknownEpoch,
            Self::UnknownCommit => ErrorCode::UnknownCommit,
            Self::RotationRequired(_) => ErrorCode::KeyRotationRequired,
        }
    }
}

impl TokenError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::Required => ErrorCode::TokenRequired,
            Self::Malformed(_) => ErrorCode::TokenMalformed,
            Self::WrongType(_) => ErrorCode::TokenWrongType,
            Self::UnknownKey => ErrorCode::TokenUnknownKey,
            Self::ExpiredKey => ErrorCode::TokenExpiredKey,
            Self::Invalid(_) => ErrorCode::TokenInvalid,
            Self::Spent => ErrorCode::TokenSpent,
            Self::AllowanceExhausted { .. } => ErrorCode::AllowanceExhausted,
            Self::RateLimited { .. } => ErrorCode::RateLimited,
        }
    }

    /// Whether the refusal concerns the token itself (so the request was never admitted and
    /// must not cost a token).
    fn is_about_the_token(&self) -> bool {
        !matches!(self, Self::RateLimited { .. })
    }
}

impl HubError {
    /// The stable wire code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Request(e) => e.code(),
            Self::Group(e) => e.code(),
            Self::Queue(QueueError::UnknownClient) => ErrorCode::UnknownClient,
            Self::Queue(QueueError::UnknownFriendshipToken) => ErrorCode::UnknownToken,
            Self::Identity(e) => match e {
                IdentityError::HandleTaken => ErrorCode::HandleTaken,
                IdentityError::InvalidHandle(_) => ErrorCode::InvalidHandle,
                IdentityError::ExpiredCredential => ErrorCode::ExpiredCredential,
                IdentityError::UnknownUser => ErrorCode::UnknownUser,
            },
            Self::Token(e) => e.code(),
            Self::Federation(e) => match e {
                FederationError::WrongRecipient(_) => ErrorCode::WrongRecipient,
                FederationError::NotAPeer => ErrorCode::NotAPeer,
                FederationError::PeerUnavailable(_) => ErrorCode::PeerUnavailable,
            },
            Self::Store(_) | Self::Bug(_) => ErrorCode::Internal,
        }
    }

    /// Whether this is a fault of the server (storage, damaged data or a bug), not a refusal.
    pub fn is_server_fault(&self) -> bool {
        matches!(self, Self::Store(_) | Self::Bug(_))
    }

    /// The body sent to the client; server faults say only "internal error".
    pub fn to_response(&self) -> ErrorResponse {
        let detail = if self.is_server_fault() {
            "internal error".to_owned()
        } else {
            self.to_string()
        };
        let mut resp = ErrorResponse::new(self.code(), detail);
        if let Self::Group(GroupError::WrongEpoch { current }) = self {
            resp.current_epoch = Some(*current);
        }
        resp
    }

    /// Whether a request refused with this error still spends the token it was admitted with:
    /// every refusal that is the client's doing (4xx) except the token's own errors. Otherwise
    /// one valid token could be replayed with failing requests to make the hub validate forever.
    pub fn spends_token(&self) -> bool {
        let status = self.code().http_status();
        (400..500).contains(&status) && !matches!(self, Self::Token(e) if e.is_about_the_token())
    }

    /// Shorthand for decode failures of a request.
    pub fn malformed(what: &'static str, e: impl std::fmt::Display) -> Self {
        Self::Request(RequestError::Malformed {
            what,
            detail: e.to_string(),
        })
    }

    /// Shorthand for stored data that does not decode or does not fit together.
    pub fn corrupt(record: &'static str, e: impl std::fmt::Display) -> Self {
        Self::Store(StoreError::Corrupt {
            record,
            reason: e.to_string(),
        })
    }

    /// Shorthand for a violated invariant of our own code, e.g. a value we built that does
    /// not encode.
    pub fn bug(e: impl std::fmt::Display) -> Self {
        Self::Bug(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_faults_reveal_nothing_and_refusals_say_why() {
        let fault = HubError::corrupt("qs_clients", "trailing bytes");
        assert_eq!(fault.code(), ErrorCode::Internal);
        assert_eq!(fault.to_response().detail.as_slice(), b"internal error");
        let bug = HubError::bug("group info does not encode");
        assert!(bug.is_server_fault());
        let refusal = HubError::from(GroupError::WrongEpoch { current: 7 });
        assert_eq!(refusal.code(), ErrorCode::WrongEpoch);
        assert_eq!(refusal.to_response().current_epoch, Some(7));
        assert!(!refusal.is_server_fault());
    }

    #[test]
    fn token_refusals_cost_no_token_but_other_refusals_do() {
        assert!(!HubError::from(TokenError::Spent).spends_token());
        assert!(
            !HubError::from(TokenError::AllowanceExhausted { used: 1, limit: 1 }).spends_token()
        );
        assert!(HubError::from(GroupError::WrongEarKey).spends_token());
        assert!(HubError::from(RequestError::Replayed).spends_token());
        assert!(!HubError::bug("x").spends_token());
    }
}
