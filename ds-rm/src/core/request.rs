//! A client request, decoded once.
//!
//! Every body a client posts (directly, through a peer's forward, or inside a proxy request) is
//! turned into a [`ClientRequest`] exactly once: size limit, exact envelope decode, version,
//! endpoint, payload decode. Everything later — the rate class for Privacy Pass, the freshness
//! check, routing to another provider, the forwarding rules — asks the decoded value instead of
//! decoding the bytes again.

use super::HubError;
use crate::core::{FederationError, RequestError};
use mimi_rm_protocol::auth::{AsOperation, AsRequest};
use mimi_rm_protocol::ds::{DsOperation, DsRequest, QualifiedGroupId};
use mimi_rm_protocol::qs::{QsOperation, QsRequest};
use mimi_rm_protocol::tokens::RateClass;
use mimi_rm_protocol::{Envelope, PROTOCOL_VERSION, TransactionType, decode_exact};

/// Longest qualified group id the router decodes (uuid, length prefix, a DNS name).
const MAX_QUALIFIED_GROUP_ID: usize = 1024;

/// Where a client request must be processed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Here.
    Local,
    /// At the hub of this domain, forwarded by us.
    Forward(String),
}

/// One decoded client request of any service, with the endpoint it was posted to.
#[derive(Debug, Clone)]
pub enum ClientRequest {
    /// A DS request (group operation, welcome or external-commit information).
    Ds {
        /// The endpoint: it must match the operation.
        endpoint: TransactionType,
        /// The request.
        request: DsRequest,
    },
    /// A QS request.
    Qs(QsRequest),
    /// An AS request.
    As(AsRequest),
}

/// Size limit, exact decode, version and transaction type of any request body.
pub(crate) fn open_envelope(
    body: &[u8],
    expected: TransactionType,
    max_body: usize,
) -> Result<Envelope, HubError> {
    if body.len() > max_body {
        return Err(HubError::Request(RequestError::TooLarge));
    }
    let env: Envelope =
        decode_exact(body, max_body).map_err(|e| HubError::malformed("envelope", e))?;
    if env.version != PROTOCOL_VERSION {
        return Err(HubError::Request(RequestError::UnsupportedVersion(
            env.version,
        )));
    }
    if env.transaction_type != expected {
        return Err(HubError::Request(RequestError::WrongEndpoint));
    }
    Ok(env)
}

impl ClientRequest {
    /// Decodes a body posted to `endpoint`. A DS operation must arrive at its own endpoint
    /// (welcome information at `/welcome_information`, and so on).
    pub fn decode(
        endpoint: TransactionType,
        body: &[u8],
        max_body: usize,
    ) -> Result<Self, HubError> {
        let env = open_envelope(body, endpoint, max_body)?;
        let payload = env.payload.as_slice();
        match endpoint {
            TransactionType::QueueService => Ok(Self::Qs(
                decode_exact(payload, max_body)
                    .map_err(|e| HubError::malformed("QS request", e))?,
            )),
            TransactionType::AuthService => Ok(Self::As(
                decode_exact(payload, max_body)
                    .map_err(|e| HubError::malformed("AS request", e))?,
            )),
            TransactionType::GroupOperation
            | TransactionType::WelcomeInformation
            | TransactionType::ExternalCommitInformation => {
                let request: DsRequest = decode_exact(payload, max_body)
                    .map_err(|e| HubError::malformed("DS request", e))?;
                if ds_endpoint(&request.tbs.operation) != endpoint {
                    return Err(HubError::Request(RequestError::WrongEndpoint));
                }
                Ok(Self::Ds { endpoint, request })
            }
            _ => Err(HubError::Request(RequestError::WrongEndpoint)),
        }
    }

    /// The endpoint the request was posted to.
    pub fn endpoint(&self) -> TransactionType {
        match self {
            Self::Ds { endpoint, .. } => *endpoint,
            Self::Qs(_) => TransactionType::QueueService,
            Self::As(_) => TransactionType::AuthService,
        }
    }

    /// The Privacy Pass allowance the request draws on; `None` for free requests.
    pub fn rate_class(&self) -> Option<RateClass> {
        match self {
            Self::Ds { request, .. } => RateClass::of_ds(&request.tbs.operation),
            Self::Qs(r) => RateClass::of_qs(&r.tbs.operation),
            Self::As(r) => RateClass::of_as(&r.tbs.operation),
        }
    }

    /// The signed creation time, checked against the freshness window.
    pub fn timestamp_ms(&self) -> u64 {
        match self {
            Self::Ds { request, .. } => request.tbs.timestamp_ms,
            Self::Qs(r) => r.tbs.timestamp_ms,
            Self::As(r) => r.tbs.timestamp_ms,
        }
    }

    /// Where the request is processed: a DS request for a group whose qualified id names
    /// another domain goes to that domain's hub. A group id that does not decode as a
    /// qualified id stays here (and is refused by the DS).
    pub fn route(&self, local_domain: &str) -> Route {
        let Self::Ds { request, .. } = self else {
            return Route::Local;
        };
        match decode_exact::<QualifiedGroupId>(
            request.tbs.group_id.as_slice(),
            MAX_QUALIFIED_GROUP_ID,
        ) {
            Ok(q) if q.domain.as_slice() != local_domain.as_bytes() => {
                match String::from_utf8(q.domain.as_slice().to_vec()) {
                    Ok(d) => Route::Forward(d),
                    Err(_) => Route::Local,
                }
            }
            _ => Route::Local,
        }
    }

    /// Whether a peer may hand this request to us, or a client may have us proxy it: only
    /// requests the hub would serve to an anonymous client anyway, or that the client signed
    /// itself — DS requests for groups hosted at `local_domain`, the anonymous QS/AS lookups
    /// (AddPackage fetch, QS key, AS credentials, a user's clients, the revocation list) and the anonymous
    /// connection-request steps (fetch a connection package, leave a sealed request).
    pub fn check_forwardable(&self, local_domain: &str) -> Result<(), HubError> {
        match self {
            Self::Ds { .. } => match self.route(local_domain) {
                Route::Local => Ok(()),
                Route::Forward(_) => Err(HubError::Federation(FederationError::WrongRecipient(
                    "group hosted elsewhere",
                ))),
            },
            Self::Qs(r) => match r.tbs.operation {
                QsOperation::FetchAddPackages(_) | QsOperation::EncryptionKey => Ok(()),
                _ => Err(HubError::Request(RequestError::NotAuthorized(
                    "not forwardable",
                ))),
            },
            Self::As(r) => match r.tbs.operation {
                AsOperation::AsCredentials
                | AsOperation::UserClients(_)
                | AsOperation::RevocationList
                | AsOperation::FetchConnectionPackage(_)
                | AsOperation::SendConnectionRequest(_) => Ok(()),
                _ => Err(HubError::Request(RequestError::NotAuthorized(
                    "not forwardable",
                ))),
            },
        }
    }
}

/// The endpoint each DS operation belongs to.
fn ds_endpoint(op: &DsOperation) -> TransactionType {
    match op {
        DsOperation::WelcomeInfo(_) => TransactionType::WelcomeInformation,
        DsOperation::ExternalCommitInfo => TransactionType::ExternalCommitInformation,
        _ => TransactionType::GroupOperation,
    }
}
