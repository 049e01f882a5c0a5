//! The federation shell: HTTP to peer providers, their verification keys, and the outbox
//! worker that delivers fan-out for their members. All decisions live in `core::federation`.

use crate::config::Config;
use crate::core::FederationError as PeerError;
use crate::core::{Hub, HubError};
use mimi_rm_crypto::sign::VerifyingKey;
use mimi_rm_protocol::federation::VerificationKey;
use mimi_rm_protocol::qs::{QsOperation, QsRequest, QsRequestTbs, QsResponse, QsSender};
use mimi_rm_protocol::{Envelope, TransactionType, decode_exact, encode, paths};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Largest response accepted from a peer.
const MAX_PEER_RESPONSE: usize = 64 << 20;
/// First retry delay after a failed delivery; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(200);
/// Longest delay between delivery attempts to a peer that is down.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often the worker looks at the outbox when nothing woke it (retries of peers in backoff).
const IDLE_POLL: Duration = Duration::from_millis(250);

/// Why a federation shell could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    /// The peer CA file could not be read or parsed.
    #[error("peer CA certificate {path}: {detail}")]
    PeerCa {
        /// File path.
        path: String,
        /// What went wrong.
        detail: String,
    },
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Client(String),
}

/// How to reach other providers, and their keys (fetched on first use, refreshed when a
/// signature does not verify).
pub struct Peers {
    http: reqwest::Client,
    urls: BTreeMap<String, String>,
    open: bool,
    keys: Mutex<HashMap<String, VerifyingKey>>,
}

impl Peers {
    /// Builds the peer client from the operator config (peer map, optional private CA).
    pub fn new(cfg: &Config) -> Result<Self, FederationError> {
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5));
        if let Some(path) = &cfg.peer_ca_cert {
            let fail = |detail: String| FederationError::PeerCa {
                path: path.display().to_string(),
                detail,
            };
            let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| fail(e.to_string()))?;
            builder = builder.add_root_certificate(cert);
        }
        Ok(Self {
            http: builder
                .build()
                .map_err(|e| FederationError::Client(e.to_string()))?,
            urls: cfg.peers.clone(),
            open: cfg.open_federation,
            keys: Mutex::new(HashMap::new()),
        })
    }

    /// The base URL of `domain`: from the peer map; with open federation, `https://<domain>`
    /// for any syntactically valid domain. Anything else is refused, so a client cannot make
    /// this server connect to a host of its choosing.
    pub fn url(&self, domain: &str) -> Result<String, HubError> {
        if let Some(url) = self.urls.get(domain) {
            return Ok(url.trim_end_matches('/').to_owned());
        }
        let valid = !domain.is_empty()
            && domain.len() <= 253
            && domain.contains('.')
            && domain
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
        if self.open && valid {
            Ok(format!("https://{domain}"))
        } else {
            Err(HubError::Federation(PeerError::NotAPeer))
        }
    }

    /// POSTs `body` to `path` at `domain`; returns the status and body.
    pub async fn post(
        &self,
        domain: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Vec<u8>), HubError> {
        let resp = self
            .http
            .post(format!("{}{path}", self.url(domain)?))
            .header(reqwest::header::CONTENT_TYPE, paths::CONTENT_TYPE)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                HubError::Federation(PeerError::PeerUnavailable(format!("{domain}: {e}")))
            })?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| {
            HubError::Federation(PeerError::PeerUnavailable(format!("{domain}: {e}")))
        })?;
        if bytes.len() > MAX_PEER_RESPONSE {
            return Err(HubError::Federation(PeerError::PeerUnavailable(format!(
                "{domain}: response too large"
            ))));
        }
        Ok((status, bytes.to_vec()))
    }

    /// The federation key of `domain`, from cache unless `refresh`.
    pub async fn key(&self, domain: &str, refresh: bool) -> Result<VerifyingKey, HubError> {
        if !refresh && let Some(k) = self.cached(domain) {
            return Ok(k);
        }
        let resp = self
            .http
            .get(format!("{}{}", self.url(domain)?, paths::VERIFICATION_KEY))
            .send()
            .await
            .map_err(|e| {
                HubError::Federation(PeerError::PeerUnavailable(format!("{domain}: {e}")))
            })?;
        if !resp.status().is_success() {
            return Err(HubError::Federation(PeerError::PeerUnavailable(format!(
                "{domain}: verification key status {}",
                resp.status()
            ))));
        }
        let bytes = resp.bytes().await.map_err(|e| {
            HubError::Federation(PeerError::PeerUnavailable(format!("{domain}: {e}")))
        })?;
        let vk: VerificationKey = decode_exact(&bytes, 1024).map_err(|e| {
            HubError::Federation(PeerError::PeerUnavailable(format!(
                "{domain}: bad key: {e}"
            )))
        })?;
        // The key must speak for the domain we asked about (TLS authenticated the host).
        if vk.domain.as_slice() != domain.as_bytes() {
            return Err(HubError::Federation(PeerError::PeerUnavailable(format!(
                "{domain}: key names another domain"
            ))));
        }
        let key = VerifyingKey::from_bytes(vk.key.as_slice()).map_err(|_| {
            HubError::Federation(PeerError::PeerUnavailable(format!("{domain}: bad key")))
        })?;
        if let Ok(mut keys) = self.keys.lock() {
            keys.insert(domain.to_owned(), key.clone());
        }
        Ok(key)
    }

    fn cached(&self, domain: &str) -> Option<VerifyingKey> {
        self.keys.lock().ok()?.get(domain).cloned()
    }

    /// The configured peer domains.
    pub fn configured(&self) -> impl Iterator<Item = &String> {
        self.urls.keys()
    }

    /// `domain`'s QS public key, asked of its QS with the anonymous `EncryptionKey` request
    /// (over TLS to the peer's configured URL, as for its federation key).
    pub async fn qs_key(&self, domain: &str) -> Result<Vec<u8>, HubError> {
        let request = QsRequest {
            tbs: QsRequestTbs {
                timestamp_ms: crate::now_ms(),
                nonce: mimi_rm_crypto::ids::random_id(),
                sender: QsSender::Anonymous,
                operation: QsOperation::EncryptionKey,
            },
            signature: Vec::new().into(),
        };
        let body = encode(&request)
            .and_then(|p| encode(&Envelope::new(TransactionType::QueueService, p)))
            .map_err(HubError::bug)?;
        let unavailable = |detail: String| {
            HubError::Federation(PeerError::PeerUnavailable(format!("{domain}: {detail}")))
        };
        let (status, resp) = self.post(domain, paths::QS, body).await?;
        if status != 200 {
            return Err(unavailable(format!("QS key status {status}")));
        }
        match decode_exact::<QsResponse>(&resp, 1024) {
            Ok(QsResponse::EncryptionKey(key)) => Ok(key.as_slice().to_vec()),
            Ok(_) => Err(unavailable("QS answered something else".into())),
            Err(e) => Err(unavailable(format!("bad QS key: {e}"))),
        }
    }
}

/// Fetches the QS key of every configured peer and every peer a request needed that this hub
/// does not have yet, skipping peers still backing off from a failed attempt.
async fn fetch_peer_keys(
    hub: &Arc<Hub>,
    peers: &Peers,
    backoff: &mut HashMap<String, (Instant, Duration)>,
) {
    let mut missing: Vec<String> = peers
        .configured()
        .filter(|d| hub.peer_key(d).is_none())
        .cloned()
        .collect();
    missing.extend(hub.wanted_peer_keys());
    missing.sort();
    missing.dedup();
    for domain in missing {
        if backoff
            .get(&domain)
            .is_some_and(|(until, _)| Instant::now() < *until)
        {
            continue;
        }
        let fetched = match peers.qs_key(&domain).await {
            Ok(key) => {
                let (h, d) = (hub.clone(), domain.clone());
                tokio::task::spawn_blocking(move || h.set_peer_key(&d, &key))
                    .await
                    .unwrap_or_else(|e| Err(HubError::Bug(e.to_string())))
            }
            Err(e) => Err(e),
        };
        match fetched {
            Ok(()) => {
                backoff.remove(&domain);
                tracing::info!(peer = %domain, "fetched the peer's QS key; its outbox items are sealed to it");
            }
            Err(e) => {
                let delay = backoff
                    .get(&domain)
                    .map_or(MIN_BACKOFF, |(_, d)| (*d * 2).min(MAX_BACKOFF));
                tracing::debug!(peer = %domain, error = %e, "fetching the peer's QS key failed");
                backoff.insert(domain, (Instant::now() + delay, delay));
            }
        }
    }
}

/// Delivers the outbox for ever: per peer, oldest first, in batches; a failing peer backs off
/// exponentially without holding up the others. Items leave the outbox only after the peer
/// answered 2xx, so a crash or an outage loses nothing (the peer deduplicates retries).
pub async fn run_outbox(hub: Arc<Hub>, peers: Arc<Peers>) {
    let mut backoff: HashMap<String, (Instant, Duration)> = HashMap::new();
    let mut key_backoff: HashMap<String, (Instant, Duration)> = HashMap::new();
    loop {
        fetch_peer_keys(&hub, &peers, &mut key_backoff).await;
        let h = hub.clone();
        let domains = tokio::task::spawn_blocking(move || h.outbox_domains())
            .await
            .unwrap_or_else(|e| Err(HubError::Bug(e.to_string())));
        let domains = match domains {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "reading the outbox");
                Vec::new()
            }
        };
        let mut progressed = false;
        for domain in domains {
            if backoff
                .get(&domain)
                .is_some_and(|(until, _)| Instant::now() < *until)
            {
                continue;
            }
            match deliver_batch(&hub, &peers, &domain).await {
                Ok(n) => {
                    backoff.remove(&domain);
                    progressed |= n > 0;
                }
                Err(e) => {
                    let delay = backoff
                        .get(&domain)
                        .map_or(MIN_BACKOFF, |(_, d)| (*d * 2).min(MAX_BACKOFF));
                    tracing::warn!(peer = %domain, error = %e, retry_in_ms = delay.as_millis() as u64,
                        "delivery to peer failed");
                    backoff.insert(domain, (Instant::now() + delay, delay));
                }
            }
        }
        if !progressed {
            tokio::select! {
                _ = hub.outbox_signal.notified() => {}
                _ = tokio::time::sleep(IDLE_POLL) => {}
            }
        }
    }
}

async fn deliver_batch(hub: &Arc<Hub>, peers: &Peers, domain: &str) -> Result<usize, HubError> {
    let h = hub.clone();
    let d = domain.to_owned();
    let batch = tokio::task::spawn_blocking(move || {
        // Held until the delivered items are deleted: no other process sends them meanwhile.
        let Some(claim) = h.claim_outbox(&d)? else {
            return Ok(None);
        };
        let batch = h.outbox_batch(&d, crate::core::federation::DELIVERY_BATCH)?;
        let body = h.delivery_envelope(&batch, crate::now_ms())?;
        Ok::<_, HubError>(Some((claim, batch, body)))
    })
    .await
    .map_err(|e| HubError::Bug(e.to_string()))?;
    let Some((claim, batch, body)) = batch? else {
        return Ok(0);
    };
    if batch.items.is_empty() {
        return Ok(0);
    }
    let (status, resp) = peers.post(domain, paths::DELIVER_MESSAGE, body).await?;
    if status != 200 {
        let detail = decode_exact::<mimi_rm_protocol::ErrorResponse>(&resp, 64 * 1024)
            .map(|r| r.to_string())
            .unwrap_or_else(|_| format!("status {status}"));
        return Err(HubError::Federation(PeerError::PeerUnavailable(format!(
            "{domain}: {detail}"
        ))));
    }
    let n = batch.items.len();
    let h = hub.clone();
    tokio::task::spawn_blocking(move || h.outbox_delivered(&batch))
        .await
        .map_err(|e| HubError::Bug(e.to_string()))??;
    drop(claim);
    tracing::debug!(peer = %domain, items = n, "delivered to peer");
    Ok(n)
}
