//! HTTP transport to a hub: envelope, POST, decode the answer or the error.

use crate::error::ClientError;
use crate::tokens::Wallet;
use mimi_rm_protocol::ds::{DsRequest, DsResponse};
use mimi_rm_protocol::qs::{QsRequest, QsResponse};
use mimi_rm_protocol::tokens::{PresentedToken, RateClass};
use mimi_rm_protocol::{
    Envelope, ErrorCode, ErrorResponse, TransactionType, decode_exact, encode, paths,
};

const MAX_RESPONSE: usize = 64 << 20;

/// Every request body sent, by path: a wire log for debugging and for tests that replay traffic.
pub type Recorder = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

/// A hub's base URL plus a connection pool.
#[derive(Clone)]
pub struct Transport {
    http: reqwest::Client,
    base: String,
    recorder: Option<Recorder>,
    wallet: Option<std::sync::Arc<Wallet>>,
    /// Extra PEM roots trusted for the hub's certificate (for the live socket's own TLS).
    root_ca: Option<Vec<u8>>,
}

/// How often discovery is retried after a connection failure.
const DISCOVERY_RETRIES: u64 = 5;

impl Transport {
    /// A transport to the hub at `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: impl Into<String>) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: base.into().trim_end_matches('/').to_owned(),
            recorder: None,
            wallet: None,
            root_ca: None,
        }
    }

    /// A transport to the hub at `base` that also trusts the PEM root certificate(s) in `pem`,
    /// for hubs whose certificate comes from a private CA (tests, intranets) rather than a
    /// public one. The public web roots stay trusted as well.
    pub fn with_root_ca(base: impl Into<String>, pem: &[u8]) -> Result<Self, ClientError> {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| ClientError::Transport(format!("root CA certificate: {e}")))?;
        if certs.is_empty() {
            return Err(ClientError::Transport(
                "root CA certificate: no PEM certificate found".into(),
            ));
        }
        let http = certs
            .into_iter()
            .fold(reqwest::Client::builder(), |b, c| b.add_root_certificate(c))
            .build()
            .map_err(|e| ClientError::Transport(format!("building the HTTP client: {e}")))?;
        Ok(Self {
            http,
            base: base.into().trim_end_matches('/').to_owned(),
            recorder: None,
            wallet: None,
            root_ca: Some(pem.to_vec()),
        })
    }

    /// The extra PEM roots this transport trusts, if any.
    pub fn root_ca_pem(&self) -> Option<&[u8]> {
        self.root_ca.as_deref()
    }

    /// Records every request body posted from now on.
    pub fn set_recorder(&mut self, recorder: Recorder) {
        self.recorder = Some(recorder);
    }

    /// The hub base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Pays for rate-limited requests from `wallet` from now on.
    pub fn enable_tokens(&mut self, wallet: Wallet) {
        self.wallet = Some(std::sync::Arc::new(wallet));
    }

    /// The token wallet, once enabled.
    pub fn wallet(&self) -> Option<&Wallet> {
        self.wallet.as_deref()
    }

    /// The HTTP client (connection pool) this transport uses.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Posts raw bytes to a path; returns the body of a 200 or the decoded error. With a wallet,
    /// a 401 token challenge is answered with a token and the request sent again.
    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> Result<Vec<u8>, ClientError> {
        self.post_classed(path, body, None).await
    }

    /// Posts a request of rate class `class`: with a token up front when the hub is known to
    /// want one for that class, and with a fresh one after any token refusal (at most three
    /// retries, so a hub that refuses every token cannot loop us).
    async fn post_classed(
        &self,
        path: &str,
        body: Vec<u8>,
        class: Option<RateClass>,
    ) -> Result<Vec<u8>, ClientError> {
        let Some(wallet) = &self.wallet else {
            return self.send(path, body, None).await;
        };
        let mut token = match class {
            Some(c) if wallet.is_limited(c).await => {
                Some(wallet.take(&self.http, &self.base).await?)
            }
            _ => None,
        };
        let mut attempt = 0;
        loop {
            let result = self.send(path, body.clone(), token.as_ref()).await;
            let Err(ClientError::Hub {
                status: 401,
                response,
            }) = &result
            else {
                return result;
            };
            attempt += 1;
            if attempt > 3 {
                return result;
            }
            match response.code {
                ErrorCode::TokenRequired => {
                    if let Some(c) = class {
                        wallet.mark_limited(c).await?;
                    }
                }
                ErrorCode::TokenExpiredKey | ErrorCode::TokenUnknownKey => {
                    wallet.drop_stale(&self.http, &self.base).await?;
                }
                ErrorCode::TokenSpent | ErrorCode::TokenInvalid | ErrorCode::TokenMalformed => {}
                _ => return result,
            }
            token = Some(wallet.take(&self.http, &self.base).await?);
        }
    }

    async fn send(
        &self,
        path: &str,
        body: Vec<u8>,
        token: Option<&PresentedToken>,
    ) -> Result<Vec<u8>, ClientError> {
        if let Some(r) = &self.recorder {
            r.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((path.to_owned(), body.clone()));
        }
        let resp = self
            .http
            .post(format!("{}{}", self.base, path))
            .header("content-type", paths::CONTENT_TYPE);
        let resp = match token {
            Some(t) => resp.header("authorization", t.to_authorization()),
            None => resp,
        };
        exchange(resp.body(body)).await
    }

    /// Sends a DS request to the endpoint its operation belongs to.
    pub async fn ds(&self, req: &DsRequest) -> Result<DsResponse, ClientError> {
        use mimi_rm_protocol::ds::DsOperation::*;
        let (tt, path) = match req.tbs.operation {
            WelcomeInfo(_) => (
                TransactionType::WelcomeInformation,
                paths::WELCOME_INFORMATION,
            ),
            ExternalCommitInfo => (
                TransactionType::ExternalCommitInformation,
                paths::EXTERNAL_COMMIT_INFORMATION,
            ),
            _ => (TransactionType::GroupOperation, paths::GROUP_OPERATION),
        };
        let body = envelope(tt, req)?;
        let class = RateClass::of_ds(&req.tbs.operation);
        let bytes = self.post_classed(path, body, class).await?;
        decode_exact(&bytes, MAX_RESPONSE).map_err(|e| ClientError::Transport(e.to_string()))
    }

    /// Sends a QS request.
    pub async fn qs(&self, req: &QsRequest) -> Result<QsResponse, ClientError> {
        let body = envelope(TransactionType::QueueService, req)?;
        let class = RateClass::of_qs(&req.tbs.operation);
        let bytes = self.post_classed(paths::QS, body, class).await?;
        decode_exact(&bytes, MAX_RESPONSE).map_err(|e| ClientError::Transport(e.to_string()))
    }
}

impl Transport {
    /// Sends an AS request.
    pub async fn auth(
        &self,
        req: &mimi_rm_protocol::auth::AsRequest,
    ) -> Result<mimi_rm_protocol::auth::AsResponse, ClientError> {
        let body = envelope(TransactionType::AuthService, req)?;
        let class = RateClass::of_as(&req.tbs.operation);
        let bytes = self.post_classed(paths::AS, body, class).await?;
        decode_exact(&bytes, MAX_RESPONSE).map_err(|e| ClientError::Transport(e.to_string()))
    }
}

impl Transport {
    /// Asks our own provider to pass an anonymous QS/AS request to `domain`, so the other
    /// provider never sees our address. Returns the remote response body.
    pub async fn proxy(
        &self,
        domain: &str,
        transaction_type: TransactionType,
        envelope_bytes: Vec<u8>,
    ) -> Result<Vec<u8>, ClientError> {
        self.proxy_classed(domain, transaction_type, envelope_bytes, None)
            .await
    }

    /// [`Transport::proxy`] for a request of rate class `class` (our provider spends the token
    /// of the request it passes on).
    async fn proxy_classed(
        &self,
        domain: &str,
        transaction_type: TransactionType,
        envelope_bytes: Vec<u8>,
        class: Option<RateClass>,
    ) -> Result<Vec<u8>, ClientError> {
        use mimi_rm_protocol::federation::{ForwardedRequest, ProxyRequest};
        let req = ProxyRequest {
            domain: domain.as_bytes().to_vec().into(),
            request: ForwardedRequest {
                transaction_type,
                envelope: envelope_bytes.into(),
            },
        };
        let body = envelope(TransactionType::Proxy, &req)?;
        self.post_classed(paths::FEDERATION_PROXY, body, class)
            .await
    }

    /// A QS request to `domain`: direct when it is our provider's, proxied otherwise.
    pub async fn qs_at(
        &self,
        own_domain: &str,
        domain: &str,
        req: &QsRequest,
    ) -> Result<QsResponse, ClientError> {
        if domain == own_domain {
            return self.qs(req).await;
        }
        let env = envelope(TransactionType::QueueService, req)?;
        let class = RateClass::of_qs(&req.tbs.operation);
        let bytes = self
            .proxy_classed(domain, TransactionType::QueueService, env, class)
            .await?;
        decode_exact(&bytes, MAX_RESPONSE).map_err(|e| ClientError::Transport(e.to_string()))
    }

    /// An AS request to `domain`: direct when it is our provider's, proxied otherwise.
    pub async fn auth_at(
        &self,
        own_domain: &str,
        domain: &str,
        req: &mimi_rm_protocol::auth::AsRequest,
    ) -> Result<mimi_rm_protocol::auth::AsResponse, ClientError> {
        if domain == own_domain {
            return self.auth(req).await;
        }
        let env = envelope(TransactionType::AuthService, req)?;
        let class = RateClass::of_as(&req.tbs.operation);
        let bytes = self
            .proxy_classed(domain, TransactionType::AuthService, env, class)
            .await?;
        decode_exact(&bytes, MAX_RESPONSE).map_err(|e| ClientError::Transport(e.to_string()))
    }
}

/// Sends a prepared request: the body of a 200, or the hub's decoded error.
pub(crate) async fn exchange(req: reqwest::RequestBuilder) -> Result<Vec<u8>, ClientError> {
    let resp = req
        .send()
        .await
        .map_err(|e| ClientError::Transport(e.to_string()))?;
    let status = resp.status().as_u16();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| ClientError::Transport(e.to_string()))?;
    if status == 200 {
        return Ok(bytes.to_vec());
    }
    let response: ErrorResponse = decode_exact(&bytes, MAX_RESPONSE)
        .map_err(|e| ClientError::Transport(format!("status {status}, undecodable error: {e}")))?;
    if response.code == ErrorCode::PeerUnavailable {
        return Err(ClientError::PeerUnavailable(
            String::from_utf8_lossy(response.detail.as_slice()).into_owned(),
        ));
    }
    Err(ClientError::Hub { status, response })
}

/// Encodes a request inside a current-version envelope.
pub fn envelope<T: tls_codec::Serialize>(
    tt: TransactionType,
    req: &T,
) -> Result<Vec<u8>, ClientError> {
    let payload = encode(req).map_err(|e| ClientError::State(e.to_string()))?;
    encode(&Envelope::new(tt, payload)).map_err(|e| ClientError::State(e.to_string()))
}

impl Transport {
    /// The domain the hub serves (discovery endpoint).
    pub async fn domain(&self) -> Result<String, ClientError> {
        // Discovery is a client's first contact with a hub (one just started, or restarting):
        // a connection failure is retried a few times, as every later request is.
        let mut attempt = 0u64;
        loop {
            match self.domain_once().await {
                Err(ClientError::Transport(e)) if attempt < DISCOVERY_RETRIES => {
                    attempt += 1;
                    tracing::debug!(error = %e, attempt, "discovery failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(100 * attempt)).await;
                }
                other => return other,
            }
        }
    }

    async fn domain_once(&self) -> Result<String, ClientError> {
        let resp = self
            .http
            .get(format!("{}{}", self.base, paths::DS_DOMAIN))
            .send()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(ClientError::Transport(format!(
                "discovery: status {}",
                resp.status()
            )));
        }
        resp.text()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))
    }
}
