//! Authentication-service requests: users with handles and their client credentials.
//!
//! The AS is the one place that knows real identities (handles and client credentials). It
//! knows nothing about groups, queues or leaf pseudonyms; the DS and QS in the same process never
//! read its column families.

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
}
