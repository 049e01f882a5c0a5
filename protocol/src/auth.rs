//! Authentication-service requests: users with handles and their client credentials.
//!
//! The AS is the one place that knows real identities (handles and client credentials). It
//! knows nothing about groups, queues or leaf pseudonyms; the DS and QS in the same process never
//! read its column families.

use crate::connection::{ConnectionPackage, ConnectionRequest};
use crate::credentials::{AsCredentials, ClientCredential, ClientCredentialCsr, ClientIdentity};
use tls_codec::{TlsDeserialize, TlsSerialize, TlsSize, VLBytes};

/// Signature label of AS requests signed by a client credential key.
pub const AS_REQUEST_SIGNATURE_LABEL: &str = "as request";

/// One AS operation.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[repr(u8)]
pub enum AsOperation {
    /// Register a new handle with its first client; anonymous (the CSR proves key possession).
    #[tls_codec(discriminant = 0)]
    RegisterUser(ClientCredentialCsr),
    /// Issue a credential for another client of the sender's user; signed by a current client
    /// credential of that user.
    #[tls_codec(discriminant = 1)]
    AddClient(ClientCredentialCsr),
    /// The AS roots and intermediates, for verifiers; anonymous.
    #[tls_codec(discriminant = 2)]
    AsCredentials,
    /// Every current client credential of a handle, so contacts can pin them; anonymous.
    #[tls_codec(discriminant = 3)]
    UserClients(VLBytes),
    /// Replace the signing client's published connection packages.
    #[tls_codec(discriminant = 4)]
    PublishConnectionPackages(Vec<ConnectionPackage>),
    /// One connection package of a handle (consumed unless it is a client's last); anonymous.
    #[tls_codec(discriminant = 5)]
    FetchConnectionPackage(VLBytes),
    /// Leave an encrypted connection request for a handle; anonymous.
    #[tls_codec(discriminant = 6)]
    SendConnectionRequest(SendConnectionRequest),
    /// Fetch and delete the connection requests waiting for the signing client's user.
    #[tls_codec(discriminant = 7)]
    FetchConnectionRequests,
    /// Revoke a device of the signing client's own user: its credential leaves the user's
    /// current list (so `UserClients` omits it and contacts refuse to add it), it signs nothing
    /// at the AS any more and gets no tokens, and its connection packages and waiting
    /// connection requests are deleted. A user's last device cannot be revoked.
    #[tls_codec(discriminant = 8)]
    RevokeClient([u8; 16]),
    /// `RegisterUser` with a single-use invitation code, for providers that register by
    /// invitation only (`registration = "invite"`); anonymous.
    #[tls_codec(discriminant = 9)]
    RegisterInvited(InvitedRegistration),
    /// The AS's signed list of revoked devices whose credentials have not expired
    /// ([`crate::revocation`]); anonymous. Verifiers fetch the whole list, so the AS never
    /// learns which credential they are checking.
    #[tls_codec(discriminant = 10)]
    RevocationList,
}

/// A registration with an invitation code the operator handed out (`ds-rm invite`).
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct InvitedRegistration {
    /// As for `RegisterUser`.
    pub csr: ClientCredentialCsr,
    /// The invitation code (the AS keeps only its SHA-256 until it is used).
    pub invite: VLBytes,
}

/// An anonymous connection request for `handle`.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct SendConnectionRequest {
    /// The responder's handle.
    pub handle: VLBytes,
    /// The device whose package the request is sealed to (named in the package's credential):
    /// only that device can open it, so only it is handed the request.
    pub device: [u8; 16],
    /// What only the responder can open.
    pub request: ConnectionRequest,
}

/// Who signs an AS request.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[repr(u8)]
pub enum AsSender {
    /// Unsigned.
    #[tls_codec(discriminant = 0)]
    Anonymous,
    /// A registered client, verified with its stored client credential.
    #[tls_codec(discriminant = 1)]
    Client(ClientIdentity),
}

/// The signed part of an AS request.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct AsRequestTbs {
    /// Milliseconds since the Unix epoch when the client signed.
    pub timestamp_ms: u64,
    /// Random per request.
    pub nonce: [u8; 16],
    /// The signer.
    pub sender: AsSender,
    /// What to do.
    pub operation: AsOperation,
}

/// An AS request: body plus signature under [`AS_REQUEST_SIGNATURE_LABEL`] by the sender's
/// client credential key (empty for anonymous requests).
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct AsRequest {
    /// Signed content.
    pub tbs: AsRequestTbs,
    /// Ed25519 signature.
    pub signature: VLBytes,
}

/// A successful AS response.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[repr(u8)]
pub enum AsResponse {
    /// The newly issued credential.
    #[tls_codec(discriminant = 0)]
    ClientCredential(ClientCredential),
    /// Answer to `AsCredentials`.
    #[tls_codec(discriminant = 1)]
    AsCredentials(AsCredentials),
    /// Answer to `UserClients`.
    #[tls_codec(discriminant = 2)]
    UserClients(Vec<ClientCredential>),
    /// Answer to `FetchConnectionPackage`.
    #[tls_codec(discriminant = 3)]
    ConnectionPackage(ConnectionPackage),
    /// Answer to `FetchConnectionRequests`.
    #[tls_codec(discriminant = 4)]
    ConnectionRequests(Vec<ConnectionRequest>),
    /// Done.
    #[tls_codec(discriminant = 5)]
    Ok,
    /// Answer to `RevocationList`.
    #[tls_codec(discriminant = 6)]
    RevocationList(crate::revocation::RevocationList),
}
