//! The stable error body every non-2xx response carries.

use tls_codec::{TlsDeserialize, TlsSerialize, TlsSize, VLBytes};

/// Stable error codes. Values never change meaning; new codes are only appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, TlsSerialize, TlsDeserialize, TlsSize)]
#[repr(u16)]
pub enum ErrorCode {
    /// The body is not a valid encoding of the expected type.
    Malformed = 1,
    /// The envelope's version is not [`crate::PROTOCOL_VERSION`].
    UnsupportedVersion = 2,
    /// The body exceeds the configured limit.
    TooLarge = 3,
    /// The envelope's transaction type does not belong to this endpoint.
    WrongEndpoint = 4,
    /// The request's timestamp is outside the accepted window.
    StaleRequest = 5,
    /// The same signed request was already processed.
    Replayed = 6,
    /// The request signature does not verify.
    InvalidSignature = 7,
    /// The signer is not (or no longer) a member allowed to do this.
    NotAuthorized = 8,
    /// The EAR key does not decrypt the group state.
    WrongEarKey = 9,
    /// The group does not exist (or was deleted).
    UnknownGroup = 10,
    /// The group id belongs to another domain or was not reserved here.
    InvalidGroupId = 11,
    /// A group with this id already exists.
    GroupExists = 12,
    /// The commit is for an epoch other than the current one.
    WrongEpoch = 13,
    /// MLS validation of the handshake message failed.
    InvalidMlsMessage = 14,
    /// The commit's proposals do not fit the requested operation.
    WrongOperation = 15,
    /// The uploaded GroupInfo does not match the group after the commit.
    InvalidGroupInfo = 16,
    /// Unknown pseudonymous client/queue record.
    UnknownClient = 17,
    /// Unknown friendship token.
    UnknownToken = 18,
    /// The request is well-formed but invalid for another stated reason.
    InvalidRequest = 19,
    /// Nothing is stored for the requested epoch.
    UnknownEpoch = 20,
    /// A report names a commit the hub does not remember.
    UnknownCommit = 21,
    /// The handle is taken.
    HandleTaken = 22,
    /// The handle is not a valid handle (length or characters).
    InvalidHandle = 23,
    /// A credential in the request is expired or not yet valid.
    ExpiredCredential = 24,
    /// Unknown handle or client at the AS.
    UnknownUser = 25,
    /// A server-to-server message addressed to another domain, or for a group or queue this
    /// provider does not host.
    WrongRecipient = 26,
    /// The peer provider could not be reached or answered garbage.
    PeerUnavailable = 27,
    /// The domain is not one this provider federates with.
    NotAPeer = 28,
    /// A configured limit (e.g. group size) would be exceeded.
    LimitExceeded = 29,
    /// The request body did not arrive in time.
    Timeout = 30,
    /// The request needs a Privacy Pass token and carried none (answered with a challenge).
    TokenRequired = 31,
    /// The `Authorization: PrivateToken` header or the token in it does not parse.
    TokenMalformed = 32,
    /// A token type this hub does not redeem.
    TokenWrongType = 33,
    /// The token names an issuer key this hub never had, or a challenge it never issued.
    TokenUnknownKey = 34,
    /// The token's issuer key has expired: refresh the directory and fetch new tokens.
    TokenExpiredKey = 35,
    /// The token's signature or authenticator does not verify.
    TokenInvalid = 36,
    /// The token was already spent.
    TokenSpent = 37,
    /// The client has used its token allowance for this key epoch.
    AllowanceExhausted = 38,
    /// Baseline mode: this client identity sent more requests per minute than the hub allows.
    RateLimited = 39,
    /// A commit that removes a member must rotate the group's keys in the same request
    /// (`CommitBundle::rotation`), and only such a commit may.
    KeyRotationRequired = 40,
    /// A server fault; never caused by input.
    Internal = 100,
}

impl ErrorCode {
    /// HTTP status for the class of error (DESIGN.md §5).
    pub fn http_status(self) -> u16 {
        match self {
            Self::Malformed
            | Self::UnsupportedVersion
            | Self::WrongEndpoint
            | Self::InvalidMlsMessage
            | Self::WrongOperation
            | Self::InvalidGroupInfo
            | Self::InvalidRequest
            | Self::InvalidGroupId
            | Self::InvalidHandle
            | Self::KeyRotationRequired
            | Self::LimitExceeded => 400,
            Self::Timeout => 408,
            Self::StaleRequest | Self::Replayed | Self::InvalidSignature | Self::NotAuthorized => {
                403
            }
            Self::WrongEarKey => 403,
            Self::UnknownGroup
            | Self::UnknownClient
            | Self::UnknownToken
            | Self::UnknownEpoch
            | Self::UnknownCommit
            | Self::UnknownUser => 404,
            Self::GroupExists | Self::WrongEpoch | Self::HandleTaken => 409,
            Self::ExpiredCredential | Self::WrongRecipient | Self::NotAPeer => 403,
            Self::PeerUnavailable => 502,
            Self::TokenRequired
            | Self::TokenMalformed
            | Self::TokenWrongType
            | Self::TokenUnknownKey
            | Self::TokenExpiredKey
            | Self::TokenInvalid
            | Self::TokenSpent => 401,
            Self::AllowanceExhausted | Self::RateLimited => 429,
            Self::TooLarge => 413,
            Self::Internal => 500,
        }
    }
}

/// `{ code, detail, current_epoch }`: `detail` is human-readable and never contains secrets;
/// `current_epoch` is set with `WrongEpoch` so the loser of a commit race can catch up.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct ErrorResponse {
    /// Stable code.
    pub code: ErrorCode,
    /// Human-readable explanation (UTF-8).
    pub detail: VLBytes,
    /// The group's current epoch, for `WrongEpoch`.
    pub current_epoch: Option<u64>,
}

impl ErrorResponse {
    /// Builds an error with a detail message.
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into().into_bytes().into(),
            current_epoch: None,
        }
    }

    /// The detail as text (lossy).
    pub fn detail_str(&self) -> String {
        String::from_utf8_lossy(self.detail.as_slice()).into_owned()
    }
}

impl std::fmt::Display for ErrorResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.detail_str())
    }
}
