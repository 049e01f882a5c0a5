//! The client's Privacy Pass wallet: tokens fetched in batches ahead of need, one spent per
//! rate-limited request, refilled when low, and 401 challenges handled without the caller
//! noticing.
//!
//! Batches use the amortized Ristretto255 type (one issuance proof for up to 100 tokens); single
//! blind-RSA (type 2) tokens are available too. Which requests need a token the wallet learns
//! from the hub's 401 answers, so an operator's policy needs no client configuration.

use crate::error::ClientError;
use crate::store::tokens::TokenStore;
use mimi_rm_crypto::sign::SigningKey;
use mimi_rm_protocol::credentials::ClientCredential;
use mimi_rm_protocol::encode;
use mimi_rm_protocol::tokens::{
    BATCH_REQUEST_CONTENT_TYPE, INVITE_HEADER, ISSUANCE_AUTH_HEADER, ISSUANCE_AUTH_LABEL,
    ISSUER_DIRECTORY_PATH, ISSUER_REQUEST_PATH, IssuanceAuth, IssuerDirectory, PresentedToken,
    REGISTRATION_DIRECTORY_PATH, REGISTRATION_REQUEST_PATH, RateClass, TOKEN_REQUEST_CONTENT_TYPE,
    TYPE_AMORTIZED, TYPE_PUBLIC, challenge, decode_b64url, encode_b64url, registration_challenge,
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

/// What older clients kept in `tokens.json` next to their state (read once, into the store).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    /// Unspent tokens, hex of their TLS encoding.
    tokens: Vec<String>,
    /// Classes the hub has asked tokens for.
    limited: BTreeSet<RateClass>,
}

#[derive(Default)]
struct State {
    /// Unspent tokens with their row numbers in the store, oldest first.
    tokens: VecDeque<(i64, PresentedToken)>,
    limited: BTreeSet<RateClass>,
    /// Row number of the next token stored.
    next_id: i64,
}

/// A device's tokens for its home hub.
pub struct Wallet {
    domain: String,
    credential: ClientCredential,
    key: SigningKey,
    store: Option<TokenStore>,
    /// Whether `store` is written (off for ephemeral load-generator clients).
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

/// Moves the tokens of an older client's `tokens.json` into the store, then removes the file.
fn migrate(
    store: &TokenStore,
    path: &std::path::Path,
    state: &mut State,
) -> Result<(), ClientError> {
    let text = std::fs::read_to_string(path).map_err(|e| state_err("wallet file", e))?;
    let saved: Saved = serde_json::from_str(&text).map_err(|e| state_err("wallet file", e))?;
    let mut rows = Vec::new();
    for t in saved.tokens {
        let bytes = hex::decode(&t).map_err(|e| state_err("wallet token", e))?;
        let token = PresentedToken::decode(&bytes).map_err(|e| state_err("wallet token", e))?;
        rows.push((state.next_id, bytes));
        state.tokens.push_back((state.next_id, token));
        state.next_id += 1;
    }
    store.add(&rows)?;
    state.limited.extend(saved.limited);
    let json = serde_json::to_vec(&state.limited).map_err(|e| state_err("wallet", e))?;
    store.set_limited(&json)?;
    crate::store::files::remove_synced(path)
}

fn state_err(what: &str, e: impl std::fmt::Display) -> ClientError {
    ClientError::State(format!("privacy pass {what}: {e}"))
}

impl Wallet {
    /// A wallet for the device holding `credential` / `key` at the hub of `domain`, kept in
    /// `store` (in memory only when `None`). Tokens an older client left in the JSON file
    /// `legacy` are moved into the store, and the file removed.
    pub(crate) fn new(
        domain: String,
        credential: ClientCredential,
        key: SigningKey,
        store: Option<TokenStore>,
        legacy: Option<PathBuf>,
    ) -> Result<Self, ClientError> {
        let mut state = State {
            next_id: 1,
            ..State::default()
        };
        if let Some(store) = &store {
            let stored = store.load()?;
            for (id, bytes) in stored.tokens {
                state.tokens.push_back((
                    id,
                    PresentedToken::decode(&bytes).map_err(|e| state_err("wallet token", e))?,
                ));
                state.next_id = state.next_id.max(id + 1);
            }
            if let Some(json) = stored.limited {
                state.limited =
                    serde_json::from_slice(&json).map_err(|e| state_err("wallet classes", e))?;
            }
            if let Some(path) = legacy.filter(|p| p.exists()) {
                migrate(store, &path, &mut state)?;
            }
        }
        Ok(Self {
            domain,
            credential,
            key,
            store,
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
        if s.limited.insert(class)
            && let Some(store) = self.writing()
        {
            let json = serde_json::to_vec(&s.limited).map_err(|e| state_err("wallet", e))?;
            store.set_limited(&json)?;
        }
        Ok(())
    }

    /// The store, if this wallet writes it.
    fn writing(&self) -> Option<&TokenStore> {
        self.store
            .as_ref()
            .filter(|_| self.persist.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Adds fresh tokens: stored (one transaction), then held.
    fn stash(&self, s: &mut State, fresh: Vec<PresentedToken>) -> Result<(), ClientError> {
        let numbered: Vec<(i64, PresentedToken)> = fresh
            .into_iter()
            .map(|t| {
                let id = s.next_id;
                s.next_id += 1;
                (id, t)
            })
            .collect();
        if let Some(store) = self.writing() {
            let rows: Vec<(i64, Vec<u8>)> =
                numbered.iter().map(|(id, t)| (*id, t.encode())).collect();
            store.add(&rows)?;
        }
        s.tokens.extend(numbered);
        Ok(())
    }

    /// Stops writing the store (see `Client::set_ephemeral`): tokens then live only in
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
        self.fill_to(&mut s, http, base, n).await
    }

    /// Fetches batches into `s` until it holds at least `n` tokens.
    async fn fill_to(
        &self,
        s: &mut State,
        http: &reqwest::Client,
        base: &str,
        n: usize,
    ) -> Result<(), ClientError> {
        while s.tokens.len() < n {
            let fresh = self.fetch_batch(http, base).await?;
            if fresh.is_empty() {
                return Err(ClientError::Unexpected("the issuer returned no tokens"));
            }
            self.stash(s, fresh)?;
        }
        Ok(())
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
                Ok(fresh) => self.stash(&mut s, fresh)?,
                // Spend what is left rather than fail; the next request tries again.
                Err(e) if !s.tokens.is_empty() => {
                    tracing::warn!(error = %e, "privacy pass refill failed")
                }
                Err(e) => return Err(e),
            }
        }
        let (id, token) = s
            .tokens
            .pop_front()
            .ok_or(ClientError::Unexpected("the issuer returned no tokens"))?;
        // Deleted before it is handed out: a token shown once never comes back after a crash.
        if let Some(store) = self.writing() {
            store.remove(&[id])?;
        }
        Ok(token)
    }

    /// Takes `n` tokens at once, refilling as often as needed, and deletes them from the store
    /// in one transaction: paying for a burst of requests built ahead of time costs one write,
    /// not one per token. As with [`Wallet::take`], a token handed out counts as spent.
    pub async fn take_many(
        &self,
        http: &reqwest::Client,
        base: &str,
        n: usize,
    ) -> Result<Vec<PresentedToken>, ClientError> {
        let mut s = self.state.lock().await;
        self.fill_to(&mut s, http, base, n).await?;
        let (ids, tokens): (Vec<i64>, Vec<PresentedToken>) = s.tokens.drain(..n).unzip();
        if let Some(store) = self.writing() {
            store.remove(&ids)?;
        }
        Ok(tokens)
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
        let stale: Vec<i64> = s
            .tokens
            .iter()
            .filter(|(_, t)| !live.contains(&t.token_key_id))
            .map(|(id, _)| *id)
            .collect();
        if let Some(store) = self.writing() {
            store.remove(&stale)?;
        }
        s.tokens.retain(|(_, t)| live.contains(&t.token_key_id));
        Ok(stale.len())
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
        let ch = challenge(&self.domain, TYPE_PUBLIC).map_err(|e| state_err("challenge", e))?;
        let issuer = PublicIssuer {
            directory: ISSUER_DIRECTORY_PATH,
            request: ISSUER_REQUEST_PATH,
        };
        issuer
            .token(http, base, &ch, |body| {
                Ok(Some((ISSUANCE_AUTH_HEADER, self.auth_header(body)?)))
            })
            .await
    }

    /// Obtains a registration token from this device's registration allowance, for someone it
    /// vouches for (a friend's registration, or a new account): the hub learns that this
    /// device vouched, never for which handle the token is spent.
    pub async fn fetch_vouch(
        &self,
        http: &reqwest::Client,
        base: &str,
    ) -> Result<PresentedToken, ClientError> {
        fetch_registration_token(http, base, &self.domain, RegistrationPayment::Vouch(self)).await
    }
}

/// How a registration token is paid for (see the hub's registration issuer).
pub enum RegistrationPayment<'a> {
    /// A single-use invitation code from the operator (`ds-rm invite`).
    Invite(&'a str),
    /// A current device's vouch, from its registration allowance.
    Vouch(&'a Wallet),
    /// Nothing: an open provider hands a few per client address and key epoch.
    Open,
}

/// Obtains a registration token from `domain`'s hub at `base`, paid as `payment` says.
pub async fn fetch_registration_token(
    http: &reqwest::Client,
    base: &str,
    domain: &str,
    payment: RegistrationPayment<'_>,
) -> Result<PresentedToken, ClientError> {
    let issuer = PublicIssuer {
        directory: REGISTRATION_DIRECTORY_PATH,
        request: REGISTRATION_REQUEST_PATH,
    };
    let ch = registration_challenge(domain);
    issuer
        .token(http, base, &ch, |body| match &payment {
            RegistrationPayment::Invite(code) => Ok(Some((INVITE_HEADER, code.trim().to_owned()))),
            RegistrationPayment::Vouch(wallet) => {
                Ok(Some((ISSUANCE_AUTH_HEADER, wallet.auth_header(body)?)))
            }
            RegistrationPayment::Open => Ok(None),
        })
        .await
}

/// A type 2 issuer of the hub: where its directory and its request endpoint are.
struct PublicIssuer {
    directory: &'static str,
    request: &'static str,
}

impl PublicIssuer {
    /// One blind-RSA token for `ch`, the request carrying the header `payment` makes from the
    /// request body (if any).
    async fn token(
        &self,
        http: &reqwest::Client,
        base: &str,
        ch: &privacypass::auth::authenticate::TokenChallenge,
        payment: impl FnOnce(&[u8]) -> Result<Option<(&'static str, String)>, ClientError>,
    ) -> Result<PresentedToken, ClientError> {
        let dir = read_directory(http, base, self.directory).await?;
        let spki = issuing_key(&dir, TYPE_PUBLIC)?;
        let public = RsaPublicKey::from_spki(&spki).map_err(|e| state_err("issuer key", e))?;
        // The thread-local RNG must not live across an await (the future stays `Send`).
        let (request, pending) = {
            let mut rng = blind_rsa_signatures::reexports::rand::rng();
            TokenRequest::new(&mut rng, public, ch).map_err(|e| state_err("token request", e))?
        };
        let body = privacypass::Serialize::tls_serialize_detached(&request)
            .map_err(|e| state_err("token request", e))?;
        let mut post = http
            .post(format!("{base}{}", self.request))
            .header("content-type", TOKEN_REQUEST_CONTENT_TYPE);
        if let Some((name, value)) = payment(&body)? {
            post = post.header(name, value);
        }
        let answer = crate::transport::exchange(post.body(body)).await?;
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
    read_directory(http, base, ISSUER_DIRECTORY_PATH).await
}

/// Reads the issuer directory at `path`.
async fn read_directory(
    http: &reqwest::Client,
    base: &str,
    path: &str,
) -> Result<IssuerDirectory, ClientError> {
    let url = format!("{base}{path}");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn token(n: u8) -> PresentedToken {
        PresentedToken {
            token_type: TYPE_AMORTIZED,
            nonce: [n; 32],
            challenge_digest: [n; 32],
            token_key_id: [n; 32],
            authenticator: vec![n; 64],
        }
    }

    fn wallet(store: &crate::store::ClientStore, legacy: &std::path::Path) -> Wallet {
        let (_, key, credential) = crate::identity::tests::anchors_and_credential(1_800_000_000);
        Wallet::new(
            "a.test".into(),
            credential,
            key,
            Some(store.token_store()),
            Some(legacy.to_owned()),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn tokens_live_in_the_store_one_row_each_and_an_old_wallet_file_moves_in() {
        let tmp = tempfile::tempdir().unwrap();
        let legacy = tmp.path().join("tokens.json");
        let saved = Saved {
            tokens: (1..=3).map(|n| hex::encode(token(n).encode())).collect(),
            limited: [RateClass::ApplicationMessage].into(),
        };
        std::fs::write(&legacy, serde_json::to_vec(&saved).unwrap()).unwrap();
        let (store, _) =
            crate::store::ClientStore::open(tmp.path(), &crate::store::StoreOptions::default())
                .unwrap();
        let w = wallet(&store, &legacy);
        assert!(
            !legacy.exists(),
            "the old file is gone once its tokens are stored"
        );
        assert_eq!(w.len().await, 3);
        assert!(w.is_limited(RateClass::ApplicationMessage).await);
        // Low, so it tries a refill first; the issuer is unreachable, so it spends what it has.
        let http = reqwest::Client::new();
        let unreachable = "http://127.0.0.1:9";
        assert_eq!(w.take(&http, unreachable).await.unwrap(), token(1));
        drop(w);
        // Reopened: the spent token is gone, the others keep their order and the classes stay.
        let w = wallet(&store, &legacy);
        assert_eq!(w.len().await, 2);
        assert!(w.is_limited(RateClass::ApplicationMessage).await);
        assert_eq!(w.take(&http, unreachable).await.unwrap(), token(2));
        assert_eq!(store.token_store().load().unwrap().tokens.len(), 1);
    }
}
