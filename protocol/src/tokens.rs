//! Privacy Pass (RFC 9576–9578) pieces the hub and its clients must agree on: which requests
//! cost a token, the challenge every token is bound to, the RFC 9577 header syntax, the
//! issuer directory, and how a client authenticates an issuance request.
//!
//! Cryptography (blind RSA, VOPRF) lives in `privacypass` / `blind-rsa-signatures`; this module
//! only frames. The token decoder is ours so that both token types share one exact-length
//! parser that the fuzz and property tests can reach.

use crate::credentials::ClientCredential;
use base64::Engine as _;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use privacypass::TokenType;
use privacypass::auth::authenticate::TokenChallenge;
use tls_codec::{TlsDeserialize, TlsSerialize, TlsSize, VLBytes};

/// Where clients ask for tokens (RFC 9578 `issuer-request-uri`, relative to the hub's base URL).
pub const ISSUER_REQUEST_PATH: &str = "/privacy-pass/token-request";
/// Where the issuer publishes its keys (RFC 9578 §4).
pub const ISSUER_DIRECTORY_PATH: &str = "/.well-known/private-token-issuer-directory";
/// Content type of a single (type 0x0002) token request.
pub const TOKEN_REQUEST_CONTENT_TYPE: &str = "application/private-token-request";
/// Content type of a single token response.
pub const TOKEN_RESPONSE_CONTENT_TYPE: &str = "application/private-token-response";
/// Content type of an amortized batch (type 0x0005) token request.
pub const BATCH_REQUEST_CONTENT_TYPE: &str = "application/private-token-amortized-batch-request";
/// Content type of an amortized batch token response.
pub const BATCH_RESPONSE_CONTENT_TYPE: &str = "application/private-token-amortized-batch-response";
/// Where clients obtain a registration token: type 2 only, from a key of its own, so a
/// registration token never pays for a request nor a request token for a registration.
pub const REGISTRATION_REQUEST_PATH: &str = "/privacy-pass/registration-token-request";
/// The registration issuer's keys (an RFC 9578 directory naming the path above).
pub const REGISTRATION_DIRECTORY_PATH: &str =
    "/.well-known/private-token-issuer-directory/registration";
/// Header carrying an invitation code that pays for one registration token.
pub const INVITE_HEADER: &str = "mimi-invite";
/// Header carrying the client's issuance authentication (base64url of [`IssuanceAuth`]).
pub const ISSUANCE_AUTH_HEADER: &str = "mimi-issuance-auth";
/// Most tokens one amortized batch request may ask for.
pub const MAX_BATCH: usize = 100;

/// Longest `Authorization` value worth parsing (a type 2 token is 472 base64 characters).
pub const MAX_AUTHORIZATION_LEN: usize = 1024;

/// Token type 0x0002: publicly verifiable, blind RSA-2048 (RFC 9578 §6).
pub const TYPE_PUBLIC: u16 = 0x0002;
/// Token type 0x0005: privately verifiable VOPRF over Ristretto255, issued in amortized batches.
pub const TYPE_AMORTIZED: u16 = 0x0005;

/// Length of a type 0x0002 authenticator (RSA-2048 signature).
const PUBLIC_AUTHENTICATOR: usize = 256;
/// Length of a type 0x0005 authenticator (SHA-512 VOPRF output).
const AMORTIZED_AUTHENTICATOR: usize = 64;
/// `token_type ‖ nonce ‖ challenge_digest ‖ token_key_id`.
const TOKEN_PREFIX: usize = 2 + 32 + 32 + 32;

/// Groups of requests that an operator can put behind tokens (config names in
/// [`RateClass::name`]). Dequeue/listen, token issuance and AS lookups have no class: they are
/// never rate-limited, so a client can always read its queue and obtain tokens.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum RateClass {
    /// Reserving a group id and creating the group.
    GroupCreation,
    /// Commits and group reads (welcome / external-commit information, reports, resyncs).
    GroupOperation,
    /// Application messages.
    ApplicationMessage,
    /// Fetching another user's AddPackages.
    AddPackageFetch,
    /// Creating a pseudonymous QS user/client record.
    QsRecordCreation,
    /// Asking a stranger to connect: fetching its connection package and leaving the sealed
    /// request (both anonymous, so only tokens stop one client from flooding an inbox or
    /// draining a user's packages).
    ConnectionRequest,
    /// Registering a handle (`RegisterUser`): paid with a *registration* token, from a separate
    /// issuer key and a low allowance, so registering cannot multiply allowances.
    Registration,
}

impl RateClass {
    /// Every class, in a fixed order (the default rate-limited set).
    pub const ALL: [RateClass; 7] = [
        RateClass::GroupCreation,
        RateClass::GroupOperation,
        RateClass::ApplicationMessage,
        RateClass::AddPackageFetch,
        RateClass::QsRecordCreation,
        RateClass::ConnectionRequest,
        RateClass::Registration,
    ];

    /// The name used in config files.
    pub fn name(self) -> &'static str {
        match self {
            Self::GroupCreation => "group_creation",
            Self::GroupOperation => "group_operation",
            Self::ApplicationMessage => "application_message",
            Self::AddPackageFetch => "add_package_fetch",
            Self::QsRecordCreation => "qs_record_creation",
            Self::ConnectionRequest => "connection_request",
            Self::Registration => "registration",
        }
    }

    /// Parses a config name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The class of a DS operation.
    pub fn of_ds(op: &crate::ds::DsOperation) -> Option<Self> {
        use crate::ds::DsOperation::*;
        Some(match op {
            RequestGroupId | CreateGroup(_) => Self::GroupCreation,
            SendMessage(_) => Self::ApplicationMessage,
            AddMembers(_)
            | RemoveMembers(_)
            | Update(_)
            | SelfRemove(_)
            | DeleteGroup(_)
            | WelcomeInfo(_)
            | ExternalCommitInfo
            | ReportCommit(_)
            | Resync(_)
            | RotateEarKey(_)
            | AddClients(_)
            | RemoveClients(_)
            | ExternalJoin(_)
            | JoinConnectionGroup(_)
            | SetRole(_)
            | ReInit(_) => Self::GroupOperation,
        })
    }

    /// The class of an AS operation (`None` for lookups and signed maintenance).
    pub fn of_as(op: &crate::auth::AsOperation) -> Option<Self> {
        use crate::auth::AsOperation::*;
        match op {
            FetchConnectionPackage(_) | SendConnectionRequest(_) => Some(Self::ConnectionRequest),
            RegisterUser(_) => Some(Self::Registration),
            // The invitation code is the payment.
            RegisterInvited(_)
            | AddClient(_)
            | AsCredentials
            | UserClients(_)
            | PublishConnectionPackages(_)
            | FetchConnectionRequests
            | RevokeClient(_)
            | RevocationList => None,
        }
    }

    /// The class of a QS operation (`None` for the queue owner's own maintenance and reads).
    pub fn of_qs(op: &crate::qs::QsOperation) -> Option<Self> {
        use crate::qs::QsOperation::*;
        match op {
            CreateUser(_) | CreateClient(_) => Some(Self::QsRecordCreation),
            FetchAddPackages(_) => Some(Self::AddPackageFetch),
            EncryptionKey
            | PublishAddPackages(_)
            | Dequeue(_)
            | RekeyQueue(_)
            | DeleteClient
            | RemoveUserClient(_)
            | RotateUser(_)
            | SetPushToken(_)
            | FetchStored(_) => None,
        }
    }
}

/// The challenge every token for `domain`'s hub is bound to: issuer and origin are the hub, no
/// redemption context. Fixed per domain and type, so clients can fetch tokens before they need
/// them, and every client's tokens look alike.
pub fn challenge(domain: &str, token_type: u16) -> Result<TokenChallenge, TokenError> {
    let tt = match token_type {
        TYPE_PUBLIC => TokenType::Public,
        TYPE_AMORTIZED => TokenType::PrivateRistretto255,
        other => return Err(TokenError::WrongType(other)),
    };
    Ok(TokenChallenge::new(tt, domain, None, &[domain.to_owned()]))
}

/// The challenge registration tokens are bound to: type 2, issuer the hub, origin
/// `registration.<domain>`. Its digest tells the hub which of its two issuer keys to verify
/// a token with.
pub fn registration_challenge(domain: &str) -> TokenChallenge {
    TokenChallenge::new(
        TokenType::Public,
        domain,
        None,
        &[format!("registration.{domain}")],
    )
}

/// SHA-256 of [`registration_challenge`].
pub fn registration_challenge_digest(domain: &str) -> Result<[u8; 32], TokenError> {
    registration_challenge(domain)
        .digest()
        .map_err(|_| TokenError::Malformed("challenge does not encode"))
}

/// SHA-256 of the encoded challenge, as carried in each token.
pub fn challenge_digest(domain: &str, token_type: u16) -> Result<[u8; 32], TokenError> {
    challenge(domain, token_type)?
        .digest()
        .map_err(|_| TokenError::Malformed("challenge does not encode"))
}

/// Why a presented token was refused before any cryptography ran.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The header or token does not parse.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// A token type this hub does not redeem.
    #[error("token type {0:#06x} is not accepted")]
    WrongType(u16),
}

/// A token as presented in `Authorization: PrivateToken token=…` (RFC 9577 §2.2), decoded but
/// not yet verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresentedToken {
    /// [`TYPE_PUBLIC`] or [`TYPE_AMORTIZED`].
    pub token_type: u16,
    /// Client-chosen nonce: the double-spend key.
    pub nonce: [u8; 32],
    /// SHA-256 of the challenge the token was issued for.
    pub challenge_digest: [u8; 32],
    /// SHA-256 of the issuer key that signed it.
    pub token_key_id: [u8; 32],
    /// The signature (type 2) or VOPRF output (type 5).
    pub authenticator: Vec<u8>,
}

impl PresentedToken {
    /// Decodes the TLS encoding of a token of either accepted type (exact length, no trailing
    /// bytes).
    pub fn decode(bytes: &[u8]) -> Result<Self, TokenError> {
        if bytes.len() > TOKEN_PREFIX + PUBLIC_AUTHENTICATOR {
            return Err(TokenError::Malformed("token too long"));
        }
        let tt = bytes
            .get(..2)
            .ok_or(TokenError::Malformed("token truncated"))?;
        let token_type = u16::from_be_bytes([tt[0], tt[1]]);
        let auth_len = match token_type {
            TYPE_PUBLIC => PUBLIC_AUTHENTICATOR,
            TYPE_AMORTIZED => AMORTIZED_AUTHENTICATOR,
            other => return Err(TokenError::WrongType(other)),
        };
        if bytes.len() != TOKEN_PREFIX + auth_len {
            return Err(TokenError::Malformed("token has the wrong length"));
        }
        let field = |at: usize| -> [u8; 32] {
            let mut out = [0u8; 32];
            out.copy_from_slice(&bytes[at..at + 32]);
            out
        };
        Ok(Self {
            token_type,
            nonce: field(2),
            challenge_digest: field(34),
            token_key_id: field(66),
            authenticator: bytes[TOKEN_PREFIX..].to_vec(),
        })
    }

    /// The TLS encoding (inverse of [`PresentedToken::decode`]).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(TOKEN_PREFIX + self.authenticator.len());
        out.extend_from_slice(&self.token_type.to_be_bytes());
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&self.challenge_digest);
        out.extend_from_slice(&self.token_key_id);
        out.extend_from_slice(&self.authenticator);
        out
    }

    /// The message the issuer signed / evaluated: `token_type ‖ nonce ‖ challenge_digest ‖
    /// token_key_id` (RFC 9578 §5.4, §6.4).
    pub fn token_input(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(TOKEN_PREFIX);
        out.extend_from_slice(&self.token_type.to_be_bytes());
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&self.challenge_digest);
        out.extend_from_slice(&self.token_key_id);
        out
    }

    /// Parses an `Authorization` header value: `PrivateToken token=<base64url>` (scheme name
    /// case-insensitive, padding optional, the value optionally quoted).
    pub fn from_authorization(value: &str) -> Result<Self, TokenError> {
        let value = value.trim_matches(|c| c == ' ' || c == '\t');
        if value.len() > MAX_AUTHORIZATION_LEN {
            return Err(TokenError::Malformed("authorization header too long"));
        }
        let (scheme, params) = value
            .split_once([' ', '\t'])
            .ok_or(TokenError::Malformed("no PrivateToken parameters"))?;
        if !scheme.eq_ignore_ascii_case("PrivateToken") {
            return Err(TokenError::Malformed("not a PrivateToken authorization"));
        }
        let mut token = None;
        for (key, val) in auth_params(params)? {
            if key.eq_ignore_ascii_case("token") {
                if token.is_some() {
                    return Err(TokenError::Malformed("two token parameters"));
                }
                token = Some(val);
            }
        }
        let encoded = token.ok_or(TokenError::Malformed("no token parameter"))?;
        let bytes =
            decode_b64url(&encoded).ok_or(TokenError::Malformed("token is not base64url"))?;
        Self::decode(&bytes)
    }

    /// The `Authorization` header value presenting this token (the value quoted, since
    /// base64url padding is not a `token` character).
    pub fn to_authorization(&self) -> String {
        format!("PrivateToken token=\"{}\"", URL_SAFE.encode(self.encode()))
    }
}

/// An RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A `token68` character (RFC 9110 §11.2), the form bare base64url values take.
fn is_token68_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)
}

/// The `#auth-param` list of credentials (RFC 9110 §11.2, §5.6.1): `name BWS "=" BWS value`,
/// comma-separated with optional whitespace, a value being a quoted-string (with quoted-pairs)
/// or a bare token68-like run (base64url, padding allowed at its end). Anything else — an
/// unclosed or stray quote, text after a value, a name without `=` — is refused.
fn auth_params(s: &str) -> Result<Vec<(String, String)>, TokenError> {
    let b = s.as_bytes();
    let ws = |i: &mut usize| {
        while *i < b.len() && (b[*i] == b' ' || b[*i] == b'\t') {
            *i += 1;
        }
    };
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        ws(&mut i);
        if i >= b.len() {
            return Ok(out);
        }
        if b[i] == b',' {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && is_tchar(b[i]) {
            i += 1;
        }
        if i == start {
            return Err(TokenError::Malformed("parameter name expected"));
        }
        let name = s[start..i].to_owned();
        ws(&mut i);
        if b.get(i) != Some(&b'=') {
            return Err(TokenError::Malformed("parameter without a value"));
        }
        i += 1;
        ws(&mut i);
        let value = if b.get(i) == Some(&b'"') {
            i += 1;
            let mut v = String::new();
            loop {
                match b.get(i) {
                    None => return Err(TokenError::Malformed("unterminated quoted value")),
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') => {
                        let c = *b
                            .get(i + 1)
                            .ok_or(TokenError::Malformed("unterminated quoted value"))?;
                        v.push(char::from(c));
                        i += 2;
                    }
                    Some(&c) if c == b'\t' || (0x20..0x7f).contains(&c) => {
                        v.push(char::from(c));
                        i += 1;
                    }
                    Some(_) => return Err(TokenError::Malformed("control character in a value")),
                }
            }
            v
        } else {
            let start = i;
            while i < b.len() && is_token68_char(b[i]) {
                i += 1;
            }
            while i < b.len() && b[i] == b'=' {
                i += 1;
            }
            if i == start {
                return Err(TokenError::Malformed("empty parameter value"));
            }
            s[start..i].to_owned()
        };
        out.push((name, value));
        ws(&mut i);
        if i < b.len() && b[i] != b',' {
            return Err(TokenError::Malformed(
                "unexpected text after a parameter value",
            ));
        }
    }
}

/// Decodes base64url with or without padding.
pub fn decode_b64url(s: &str) -> Option<Vec<u8>> {
    URL_SAFE
        .decode(s)
        .ok()
        .or_else(|| URL_SAFE_NO_PAD.decode(s).ok())
}

/// Encodes base64url with padding, as RFC 9577's examples do.
pub fn encode_b64url(bytes: &[u8]) -> String {
    URL_SAFE.encode(bytes)
}

/// One `WWW-Authenticate` challenge (RFC 9577 §2.1), values quoted as in the RFC's examples:
/// `PrivateToken challenge="…", token-key="…"`.
pub fn www_authenticate(
    challenge: &TokenChallenge,
    token_key: &[u8],
) -> Result<String, TokenError> {
    let encoded = challenge
        .serialize()
        .map_err(|_| TokenError::Malformed("challenge does not encode"))?;
    Ok(www_authenticate_encoded(&encoded, token_key))
}

/// Token types IANA reserves for greasing (RFC 9577 §8.2.1): an origin lists a challenge of
/// one with random contents, so clients keep ignoring types they do not know.
pub const GREASE_TYPES: [u16; 2] = [0x02AA, 0x1132];

/// A grease challenge: a reserved token type, random challenge bytes and a random key.
pub fn grease_www_authenticate(grease_type: u16, random: &[u8; 64]) -> String {
    let mut challenge = grease_type.to_be_bytes().to_vec();
    challenge.extend_from_slice(&random[..32]);
    www_authenticate_encoded(&challenge, &random[32..])
}

/// [`www_authenticate`] for an already encoded challenge (of any token type).
pub fn www_authenticate_encoded(challenge: &[u8], token_key: &[u8]) -> String {
    format!(
        "PrivateToken challenge=\"{}\", token-key=\"{}\"",
        encode_b64url(challenge),
        encode_b64url(token_key)
    )
}

/// A `PrivateToken` challenge read from a `WWW-Authenticate` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedChallenge {
    /// The encoded `TokenChallenge` (its first two bytes are the token type).
    pub challenge: Vec<u8>,
    /// The issuer key the origin names.
    pub token_key: Vec<u8>,
    /// `max-age`, if given.
    pub max_age: Option<u32>,
}

/// Parses a `WWW-Authenticate` value into its `PrivateToken` challenges (RFC 9577 §2.1, RFC 9110
/// §11.6.1 syntax): several challenges, other schemes, unknown parameters, quoted or bare values
/// and padded or unpadded base64url are all accepted; other schemes and unknown parameters are
/// skipped. A `PrivateToken` challenge without `challenge` or `token-key` is an error.
pub fn parse_www_authenticate(value: &str) -> Result<Vec<ParsedChallenge>, TokenError> {
    if value.len() > 64 * 1024 {
        return Err(TokenError::Malformed("header too long"));
    }
    let bytes = value.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    // Parameters of the challenge being read: (is PrivateToken, params).
    let mut current: Option<(bool, Vec<(String, String)>)> = None;
    loop {
        while i < bytes.len() && is_auth_separator(bytes[i]) {
            i += 1;
        }
        if i >= bytes.len() {
            break;
        }
        let start = i;
        while i < bytes.len() && !is_auth_separator(bytes[i]) && bytes[i] != b'=' {
            i += 1;
        }
        let name = &value[start..i];
        let mut j = i;
        while j < bytes.len() && bytes[j].is_ascii_whitespace() {
            j += 1;
        }
        if j < bytes.len() && bytes[j] == b'=' && !name.is_empty() {
            let (val, next) = auth_param_value(value, j + 1)?;
            let Some((_, params)) = current.as_mut() else {
                return Err(TokenError::Malformed("parameter before any scheme"));
            };
            params.push((name.to_owned(), val.to_owned()));
            i = next;
        } else if name.is_empty() {
            return Err(TokenError::Malformed("stray '='"));
        } else {
            // A new scheme.
            if let Some((true, params)) = current.take() {
                out.push(private_token_challenge(&params)?);
            }
            current = Some((name.eq_ignore_ascii_case("PrivateToken"), Vec::new()));
        }
    }
    if let Some((true, params)) = current {
        out.push(private_token_challenge(&params)?);
    }
    Ok(out)
}

/// Separators between challenges and parameters in an authentication header.
fn is_auth_separator(b: u8) -> bool {
    b == b',' || b.is_ascii_whitespace()
}

/// The value of an auth parameter starting after its `=` at `from` (quoted or a bare token),
/// and the index after it.
fn auth_param_value(value: &str, from: usize) -> Result<(&str, usize), TokenError> {
    let bytes = value.as_bytes();
    let mut j = from;
    while j < bytes.len() && bytes[j].is_ascii_whitespace() {
        j += 1;
    }
    if j < bytes.len() && bytes[j] == b'"' {
        let close = value[j + 1..]
            .find('"')
            .ok_or(TokenError::Malformed("unterminated quoted value"))?;
        return Ok((&value[j + 1..j + 1 + close], j + close + 2));
    }
    let mut k = j;
    while k < bytes.len() && !is_auth_separator(bytes[k]) {
        k += 1;
    }
    Ok((&value[j..k], k))
}

/// A `PrivateToken` challenge from its parameters: `challenge` and `token-key` are required.
fn private_token_challenge(params: &[(String, String)]) -> Result<ParsedChallenge, TokenError> {
    let get = |k: &str| {
        params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v)
    };
    let challenge = get("challenge")
        .and_then(|v| decode_b64url(v))
        .ok_or(TokenError::Malformed("challenge missing or not base64url"))?;
    let token_key = get("token-key")
        .and_then(|v| decode_b64url(v))
        .ok_or(TokenError::Malformed("token-key missing or not base64url"))?;
    let max_age = match get("max-age") {
        Some(v) => Some(v.parse().map_err(|_| TokenError::Malformed("max-age"))?),
        None => None,
    };
    Ok(ParsedChallenge {
        challenge,
        token_key,
        max_age,
    })
}

/// What a client signs to obtain tokens: proof that it holds a current client credential of
/// this provider, bound to this exact request body. It names the device, which is why the
/// issuer forgets it after counting the allowance (`spec-notes/privacy-pass.md`).
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct IssuanceAuth {
    /// The client's credential from the AS.
    pub credential: ClientCredential,
    /// Milliseconds since the epoch; outside the freshness window the request is refused.
    pub timestamp_ms: u64,
    /// Signature with the credential's key over [`IssuanceAuth::signed_bytes`].
    pub signature: VLBytes,
}

/// Signature label of [`IssuanceAuth`].
pub const ISSUANCE_AUTH_LABEL: &str = "mimi-rm token issuance v1";

impl IssuanceAuth {
    /// `domain ‖ timestamp ‖ SHA-256(body)`, length-prefixed, so a signature cannot be moved to
    /// another hub, time or request.
    pub fn signed_bytes(domain: &str, timestamp_ms: u64, body: &[u8]) -> Vec<u8> {
        let body_hash = mimi_rm_crypto::kdf::labelled_digest("token request body", body);
        let mut out = Vec::with_capacity(8 + domain.len() + 8 + 32);
        out.extend_from_slice(&(domain.len() as u64).to_be_bytes());
        out.extend_from_slice(domain.as_bytes());
        out.extend_from_slice(&timestamp_ms.to_be_bytes());
        out.extend_from_slice(&body_hash);
        out
    }
}

/// One key in the issuer directory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DirectoryKey {
    /// [`TYPE_PUBLIC`] or [`TYPE_AMORTIZED`].
    #[serde(rename = "token-type")]
    pub token_type: u16,
    /// base64url of the key: SPKI (RSASSA-PSS) for type 2, the compressed Ristretto255 point
    /// for type 5.
    #[serde(rename = "token-key")]
    pub token_key: String,
    /// Unix seconds from which the key issues.
    #[serde(rename = "not-before")]
    pub not_before: u64,
}

/// The issuer directory (RFC 9578 §4): every client of this hub sees the same keys, which is
/// the key-consistency defence of RFC 9576 §6.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IssuerDirectory {
    /// Path of the issuance endpoint.
    #[serde(rename = "issuer-request-uri")]
    pub issuer_request_uri: String,
    /// Keys currently accepted for redemption, the issuing one first per type.
    #[serde(rename = "token-keys")]
    pub token_keys: Vec<DirectoryKey>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(token_type: u16, auth_len: usize) -> PresentedToken {
        PresentedToken {
            token_type,
            nonce: [1; 32],
            challenge_digest: [2; 32],
            token_key_id: [3; 32],
            authenticator: vec![4; auth_len],
        }
    }

    #[test]
    fn tokens_round_trip_through_the_header() {
        for t in [sample(TYPE_PUBLIC, 256), sample(TYPE_AMORTIZED, 64)] {
            let header = t.to_authorization();
            assert_eq!(PresentedToken::from_authorization(&header).unwrap(), t);
            let b64 = encode_b64url(&t.encode());
            let unpadded = format!("PrivateToken token={}", b64.trim_end_matches('='));
            assert_eq!(PresentedToken::from_authorization(&unpadded).unwrap(), t);
            let quoted = format!("privatetoken token=\"{}\"", encode_b64url(&t.encode()));
            assert_eq!(PresentedToken::from_authorization(&quoted).unwrap(), t);
        }
    }

    #[test]
    fn bad_headers_and_tokens_are_refused() {
        let good = sample(TYPE_PUBLIC, 256).encode();
        assert!(matches!(
            PresentedToken::decode(&good[..good.len() - 1]),
            Err(TokenError::Malformed(_))
        ));
        let mut long = good.clone();
        long.push(0);
        assert!(matches!(
            PresentedToken::decode(&long),
            Err(TokenError::Malformed(_))
        ));
        let mut p384 = good.clone();
        p384[1] = 1;
        assert_eq!(PresentedToken::decode(&p384), Err(TokenError::WrongType(1)));
        assert!(PresentedToken::decode(&[]).is_err());
        for h in [
            "",
            "PrivateToken",
            "Bearer token=AAAA",
            "PrivateToken token=***",
            "PrivateToken nonsense",
            "PrivateToken token=AAAA, token=AAAA",
        ] {
            assert!(PresentedToken::from_authorization(h).is_err(), "{h:?}");
        }
    }

    /// RFC 9110 syntax only: the forms a conforming client sends are accepted, every broken
    /// quote or trailing text is refused (each of these parsed before).
    #[test]
    fn authorization_syntax_is_rfc_9110() {
        let t = sample(TYPE_PUBLIC, 256);
        let b64 = encode_b64url(&t.encode());
        for good in [
            format!("PrivateToken token=\"{b64}\""),
            format!("PrivateToken token={b64}"),
            format!("PrivateToken  token = \"{b64}\" , other=\"x\""),
            format!("PrivateToken other=1,token=\"{b64}\""),
            format!("privatetoken\ttoken=\"{b64}\""),
        ] {
            assert_eq!(
                PresentedToken::from_authorization(&good).as_ref(),
                Ok(&t),
                "{good:?}"
            );
        }
        for bad in [
            format!("PrivateToken token=\"{b64}"),
            format!("PrivateToken token={b64}\""),
            format!("PrivateToken token=\"{b64}\"x"),
            format!("PrivateToken token=\"{b64}\" junk"),
            format!("PrivateToken token {b64}"),
            "PrivateToken token=".to_string(),
            format!("PrivateToken =\"{b64}\""),
            format!("PrivateToken token=\"{b64}\", other=\"unclosed"),
            format!("PrivateToken token=\"{b64}\u{7}\""),
        ] {
            assert!(
                PresentedToken::from_authorization(&bad).is_err(),
                "accepted {bad:?}"
            );
        }
    }

    fn rfc9577_vectors() -> Vec<serde_json::Value> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/vectors/rfc9577-headers.json"
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn hexf(v: &serde_json::Value, k: &str) -> Vec<u8> {
        hex::decode(v[k].as_str().unwrap().trim_start_matches("0x")).unwrap()
    }

    #[test]
    fn rfc9577_token_inputs_match_the_vectors() {
        let mut checked = 0;
        for v in rfc9577_vectors() {
            if v["_kind"] != "challenge_redemption" {
                continue;
            }
            let input = hexf(&v, "token_authenticator_input");
            let tt = u16::from_be_bytes(hexf(&v, "token_type").try_into().unwrap());
            if v.get("issuer_name").is_none() {
                // The greasing vector: a hub never accepts token type 0.
                assert_eq!(
                    PresentedToken::decode(&input),
                    Err(TokenError::WrongType(tt))
                );
                continue;
            }
            let ctx = hexf(&v, "redemption_context");
            let origin = String::from_utf8(hexf(&v, "origin_info")).unwrap();
            let origins: Vec<String> = if origin.is_empty() {
                vec![]
            } else {
                vec![origin]
            };
            let ch = TokenChallenge::new(
                TokenType::Public,
                &String::from_utf8(hexf(&v, "issuer_name")).unwrap(),
                (!ctx.is_empty()).then(|| ctx.try_into().unwrap()),
                &origins,
            );
            let token = PresentedToken {
                token_type: tt,
                nonce: hexf(&v, "nonce").try_into().unwrap(),
                challenge_digest: ch.digest().unwrap(),
                token_key_id: hexf(&v, "token_key_id").try_into().unwrap(),
                authenticator: vec![0; 256],
            };
            assert_eq!(token.token_input(), input, "vector {}", v["_vector"]);
            checked += 1;
        }
        assert_eq!(checked, 5);
    }

    #[test]
    fn rfc9577_header_vectors_parse_and_our_headers_round_trip() {
        let mut checked = 0;
        for v in rfc9577_vectors() {
            if v["_kind"] != "http_header" {
                continue;
            }
            let parsed = parse_www_authenticate(v["www_authenticate"].as_str().unwrap()).unwrap();
            let expected: Vec<ParsedChallenge> = v["challenges"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| ParsedChallenge {
                    challenge: hexf(c, "token_challenge"),
                    token_key: hexf(c, "token_key"),
                    max_age: c["max_age"].as_str().map(|a| a.parse().unwrap()),
                })
                .collect();
            assert_eq!(parsed, expected, "vector {}", v["_vector"]);
            for c in &parsed {
                let ours = www_authenticate_encoded(&c.challenge, &c.token_key);
                let again = parse_www_authenticate(&ours).unwrap();
                assert_eq!(again.len(), 1);
                assert_eq!(
                    (&again[0].challenge, &again[0].token_key),
                    (&c.challenge, &c.token_key)
                );
            }
            checked += 1;
        }
        assert_eq!(checked, 3);
    }

    #[test]
    fn challenge_headers_with_missing_parts_are_refused() {
        for h in [
            "PrivateToken token-key=AAAA",
            "PrivateToken challenge=AAAA",
            "PrivateToken challenge=\"AAAA",
            "challenge=AAAA",
            "PrivateToken challenge=AAAA, token-key=AAAA, max-age=soon",
        ] {
            assert!(parse_www_authenticate(h).is_err(), "{h:?}");
        }
        assert!(
            parse_www_authenticate("Basic realm=\"x\"")
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn classes_have_unique_config_names() {
        for c in RateClass::ALL {
            assert_eq!(RateClass::from_name(c.name()), Some(c));
        }
        assert_eq!(RateClass::from_name("dequeue"), None);
    }

    #[test]
    fn challenges_differ_by_type_and_domain() {
        let a = challenge_digest("a.example", TYPE_PUBLIC).unwrap();
        assert_ne!(a, challenge_digest("b.example", TYPE_PUBLIC).unwrap());
        assert_ne!(a, challenge_digest("a.example", TYPE_AMORTIZED).unwrap());
        assert_eq!(
            challenge("a.example", 1).unwrap_err(),
            TokenError::WrongType(1)
        );
    }
}
