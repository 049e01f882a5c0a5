//! The client's Privacy Pass wallet: tokens fetched in batches ahead of need, one spent per
//! rate-limited request, refilled when low, and 401 challenges handled without the caller
//! noticing.
//!
//! Batches use the amortized Ristretto255 type (one issuance proof for up to 100 tokens); single
//! blind-RSA (type 2) tokens are available too. Which requests need a token the wallet learns
//! from the hub's 401 answers, so an operator's policy needs no client configuration.

use crate::error::ClientError;
use mimi_rm_crypto::sign::SigningKey;
use mimi_rm_protocol::credentials::ClientCredential;
use mimi_rm_protocol::encode;
use mimi_rm_protocol::tokens::{
    BATCH_REQUEST_CONTENT_TYPE, ISSUANCE_AUTH_HEADER, ISSUANCE_AUTH_LABEL, ISSUER_DIRECTORY_PATH,
    ISSUER_REQUEST_PATH, IssuanceAuth, IssuerDirectory, PresentedToken, RateClass,
    TOKEN_REQUEST_CONTENT_TYPE, TYPE_AMORTIZED, TYPE_PUBLIC, challenge, decode_b64url,
    encode_b64url,
};
use privacypass::amortized_tokens::{AmortizedBatchTokenRequest, AmortizedBatchTokenResponse};
use privacypass::public_tokens::{PublicKey as RsaPublicKey, TokenRequest, TokenResponse};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, VecDeque};
use std::path::PathBuf;
use voprf::Ristretto255;

/// Tokens asked for per batch.
pub const DEFAULT_BATCH: u16 = 32;
/// Refill when this many or fewer tokens are left.
pub const LOW_WATER: usize = 4;

/// What the wallet persists (JSON next to the client state).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    /// Unspent tokens, hex of their TLS encoding.
    tokens: Vec<String>,
    /// Classes the hub has asked tokens for.
    limited: BTreeSet<RateClass>,
}

#[derive(Default)]
struct State {
    tokens: VecDeque<PresentedToken>,
    limited: BTreeSet<RateClass>,
}

/// A device's tokens for its home hub.
pub struct Wallet {
    domain: String,
    credential: ClientCredential,
    key: SigningKey,
    path: Option<PathBuf>,
    /// Whether `path` is written (off for ephemeral load-generator clients).
    persist: std::sync::atomic::AtomicBool,
    batch: u16,
    state: tokio::sync::Mutex<State>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn state_err(what: &str, e: impl std::fmt::Display) -> ClientError {
    ClientError::State(format!("privacy pass {what}: {e}"))
}

impl Wallet {
    /// A wallet for the device holding `credential` / `key` at the hub of `domain`, persisted at
    /// `path` (in memory only when `None`).
    pub fn new(
        domain: String,
        credential: ClientCredential,
        key: SigningKey,
        path: Option<PathBuf>,
    ) -> Result<Self, ClientError> {
        let mut state = State::default();
        if let Some(p) = &path
            && p.exists()
        {
            let text = std::fs::read_to_string(p).map_err(|e| state_err("wallet file", e))?;
            let saved: Saved =
                serde_json::from_str(&text).map_err(|e| state_err("wallet file", e))?;
            for t in saved.tokens {
                let bytes = hex::decode(&t).map_err(|e| state_err("wallet token", e))?;
                state.tokens.push_back(
                    PresentedToken::decode(&bytes).map_err(|e| state_err("wallet token", e))?,
                );
            }
            state.limited = saved.limited;
        }
        Ok(Self {
            domain,
            credential,
            key,
            path,
            persist: std::sync::atomic::AtomicBool::new(true),
            batch: DEFAULT_BATCH,
            state: tokio::sync::Mutex::new(state),
        })
    }

    /// Sets the batch size (1..=100).
    pub fn with_batch(mut self, batch: u16) -> Self {
        self.batch = batch.clamp(1, mimi_rm_protocol::tokens::MAX_BATCH as u16);
        self
    }

    /// Unspent tokens held.
    pub async fn len(&self) -> usize {
        self.state.lock().await.tokens.len()
    }

    /// Whether the wallet holds no token.
    pub async fn is_empty(&self) -> bool {
        self.len().await == 0
    }

    /// Whether the hub has asked for tokens on `class`.
    pub async fn is_limited(&self, class: RateClass) -> bool {
        self.state.lock().await.limited.contains(&class)
    }

    /// Remembers that the hub wants tokens on `class`.
    pub async fn mark_limited(&self, class: RateClass) -> Result<(), ClientError> {
        let mut s = self.state.lock().await;
        if s.limited.insert(class) {
            self.save(&s)?;
        }
        Ok(())
    }

    /// Stops writing the wallet file (see `Client::set_ephemeral`): tokens then live only in
    /// memory and are lost with the process.
    pub fn set_ephemeral(&self) {
        self.persist
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// Fetches batches until at least `n` tokens are held (to pay for a burst up front).
    pub async fn prefill(
        &self,
        http: &reqwest::Client,
        base: &str,
        n: usize,
    ) -> Result<(), ClientError> {
        let mut s = self.state.lock().await;
        while s.tokens.len() < n {
            let fresh = self.fetch_batch(http, base).await?;
            if fresh.is_empty() {
                return Err(ClientError::Unexpected("the issuer returned no tokens"));
            }
            s.tokens.extend(fresh);
        }
        self.save(&s)
    }

    fn save(&self, s: &State) -> Result<(), ClientError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        if !self.persist.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        let saved = Saved {
            tokens: s.tokens.iter().map(|t| hex::encode(t.encode())).collect(),
            limited: s.limited.clone(),
        };
        let text = serde_json::to_string(&saved).map_err(|e| state_err("wallet file", e))?;
        // Losing the newest state costs a refill (a spent token shown again is refused and
        // replaced), so this is not synced on every token.
        crate::store::files::write_private(
            path,
            text.as_bytes(),
            crate::store::files::Durability::Atomic,
        )
    }

    /// Takes one token, refilling first when the wallet runs low. A token handed out counts as
    /// spent whatever happens to the request.
    pub async fn take(
        &self,
        http: &reqwest::Client,
        base: &str,
    ) -> Result<PresentedToken, ClientError> {
        let mut s = self.state.lock().await;
        if s.tokens.len() <= LOW_WATER {
            match self.fetch_batch(http, base).await {
                Ok(fresh) => s.tokens.extend(fresh),
                // Spend what is left rather than fail; the next request tries again.
                Err(e) if !s.tokens.is_empty() => {
                    tracing::warn!(error = %e, "privacy pass refill failed")
                }
                Err(e) => return Err(e),
            }
        }
        let token = s
            .tokens
            .pop_front()
            .ok_or(ClientError::Unexpected("the issuer returned no tokens"))?;
        self.save(&s)?;
        Ok(token)
    }

    /// Drops tokens whose key the hub no longer lists (after an expired/unknown-key answer).
    pub async fn drop_stale(
        &self,
        http: &reqwest::Client,
        base: &str,
    ) -> Result<usize, ClientError> {
        let dir = fetch_directory(http, base).await?;
        let live: BTreeSet<[u8; 32]> = dir
            .token_keys
            .iter()
            .filter_map(|k| decode_b64url(&k.token_key))
            .map(|k| Sha256::digest(&k).into())
            .collect();
        let mut s = self.state.lock().await;
        let before = s.tokens.len();
        s.tokens.retain(|t| live.contains(&t.token_key_id));
        self.save(&s)?;
        Ok(before - s.tokens.len())
    }

    /// Signs the issuance authentication for `body` (the value of the `mimi-issuance-auth`
    /// header).
    pub fn auth_header(&self, body: &[u8]) -> Result<String, ClientError> {
        let ts = now_ms();
        let signed = IssuanceAuth::signed_bytes(&self.domain, ts, body);
        let auth = IssuanceAuth {
            credential: self.credential.clone(),
            timestamp_ms: ts,
            signature: self.key.sign(ISSUANCE_AUTH_LABEL, &signed).into(),
        };
        Ok(encode_b64url(
            &encode(&auth).map_err(|e| state_err("auth", e))?,
        ))
    }

    async fn issue(
        &self,
        http: &reqwest::Client,
        base: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, ClientError> {
        let auth = self.auth_header(&body)?;
        crate::transport::exchange(
            http.post(format!("{base}{ISSUER_REQUEST_PATH}"))
                .header("content-type", content_type)
                .header(ISSUANCE_AUTH_HEADER, auth)
                .body(body),
        )
        .await
    }

    /// Obtains one amortized batch from the issuer.
    pub async fn fetch_batch(
        &self,
        http: &reqwest::Client,
        base: &str,
    ) -> Result<Vec<PresentedToken>, ClientError> {
        let dir = fetch_directory(http, base).await?;
        let key = issuing_key(&dir, TYPE_AMORTIZED)?;
        let public = privacypass::common::private::deserialize_public_key::<Ristretto255>(&key)
            .map_err(|e| state_err("issuer key", e))?;
        let ch = challenge(&self.domain, TYPE_AMORTIZED).map_err(|e| state_err("challenge", e))?;
        let (request, pending) =
            AmortizedBatchTokenRequest::<Ristretto255>::new(public, &ch, self.batch)
                .map_err(|e| state_err("token request", e))?;
        let body = privacypass::Serialize::tls_serialize_detached(&request)
            .map_err(|e| state_err("token request", e))?;
        let answer = self
            .issue(http, base, BATCH_REQUEST_CONTENT_TYPE, body)
            .await?;
        let response = AmortizedBatchTokenResponse::<Ristretto255>::try_from_bytes(&answer)
            .map_err(|e| state_err("token response", e))?;
        let tokens = response
            .issue_tokens(&pending)
            .map_err(|e| state_err("token response", e))?;
        tokens
            .iter()
            .map(|t| {
                let bytes = privacypass::Serialize::tls_serialize_detached(t)
                    .map_err(|e| state_err("token", e))?;
                PresentedToken::decode(&bytes).map_err(|e| state_err("token", e))
            })
            .collect()
    }

    /// Obtains one publicly verifiable (blind RSA, type 2) token.
    pub async fn fetch_public(
        &self,
        http: &reqwest::Client,
        base: &str,
    ) -> Result<PresentedToken, ClientError> {
        let dir = fetch_directory(http, base).await?;
        let spki = issuing_key(&dir, TYPE_PUBLIC)?;
        let public = RsaPublicKey::from_spki(&spki).map_err(|e| state_err("issuer key", e))?;
        let ch = challenge(&self.domain, TYPE_PUBLIC).map_err(|e| state_err("challenge", e))?;
        let mut rng = blind_rsa_signatures::reexports::rand::rng();
        let (request, pending) =
            TokenRequest::new(&mut rng, public, &ch).map_err(|e| state_err("token request", e))?;
        let body = privacypass::Serialize::tls_serialize_detached(&request)
            .map_err(|e| state_err("token request", e))?;
        let answer = self
            .issue(http, base, TOKEN_REQUEST_CONTENT_TYPE, body)
            .await?;
        let response: TokenResponse =
            <TokenResponse as privacypass::Deserialize>::tls_deserialize_exact(&answer)
                .map_err(|e| state_err("token response", e))?;
        let token = response
            .issue_token(&pending)
            .map_err(|e| state_err("token response", e))?;
        let bytes = privacypass::Serialize::tls_serialize_detached(&token)
            .map_err(|e| state_err("token", e))?;
        PresentedToken::decode(&bytes).map_err(|e| state_err("token", e))
    }
}

/// Reads the hub's issuer directory.
pub async fn fetch_directory(
    http: &reqwest::Client,
    base: &str,
) -> Result<IssuerDirectory, ClientError> {
    let url = format!("{base}{ISSUER_DIRECTORY_PATH}");
    let bytes = crate::transport::get_bytes(http, &url, "issuer directory").await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ClientError::Transport(format!("issuer directory: {e}")))
}

/// The issuing key of `token_type`: the directory lists the newest first.
fn issuing_key(dir: &IssuerDirectory, token_type: u16) -> Result<Vec<u8>, ClientError> {
    dir.token_keys
        .iter()
        .find(|k| k.token_type == token_type)
        .and_then(|k| decode_b64url(&k.token_key))
        .ok_or(ClientError::Unexpected(
            "the issuer publishes no key of this type",
        ))
}
