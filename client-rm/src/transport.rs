//! HTTP transport to a hub: envelope, POST, decode the answer or the error.

use crate::connections::Pools;
pub use crate::connections::{ConnectionOptions, ConnectionPolicy, Scope};
use crate::error::ClientError;
use crate::tokens::Wallet;
use mimi_rm_protocol::ds::{DsRequest, DsResponse};
use mimi_rm_protocol::qs::{QsRequest, QsResponse};
use mimi_rm_protocol::tokens::{PresentedToken, RateClass};
use mimi_rm_protocol::{
    Envelope, ErrorCode, ErrorResponse, TransactionType, decode_exact, encode, oblivious, paths,
};

pub(crate) const MAX_RESPONSE: usize = 64 << 20;

/// Every request body sent, by path: a wire log for debugging and for tests that replay traffic.
pub type Recorder = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

/// A hub's base URL plus its connection pools, one per [`Scope`] (see
/// [`crate::connections`]).
#[derive(Clone)]
pub struct Transport {
    pools: std::sync::Arc<Pools>,
    base: String,
    recorder: Option<Recorder>,
    wallet: Option<std::sync::Arc<Wallet>>,
    /// Extra PEM roots trusted for the hub's certificate (for the live socket's own TLS).
    root_ca: Option<Vec<u8>>,
    /// The OHTTP relay pseudonymous requests go through, and the gateway's key configuration
    /// once fetched.
    oblivious: Option<std::sync::Arc<Oblivious>>,
}

/// Where pseudonymous requests go when they go through a relay.
struct Oblivious {
    relay: String,
    keys: tokio::sync::Mutex<Option<Vec<u8>>>,
}

/// How a [`Transport`] connects.
#[derive(Debug, Clone, Default)]
pub struct TransportOptions {
    /// Extra PEM root certificate(s) trusted for the hub, for hubs whose certificate comes from
    /// a private CA (tests, intranets); the public web roots stay trusted as well.
    pub root_ca: Option<Vec<u8>>,
    /// Connection policy and local address.
    pub connections: ConnectionOptions,
}

/// How often discovery is retried after a connection failure.
const DISCOVERY_RETRIES: u64 = 5;

impl Transport {
    /// A transport to the hub at `base` (e.g. `http://127.0.0.1:8080`), with scoped
    /// connections.
    pub fn new(base: impl Into<String>) -> Result<Self, ClientError> {
        Self::with_options(base, TransportOptions::default())
    }

    /// A transport to the hub at `base` that also trusts the PEM root certificate(s) in `pem`,
    /// for hubs whose certificate comes from a private CA (tests, intranets) rather than a
    /// public one. The public web roots stay trusted as well.
    pub fn with_root_ca(base: impl Into<String>, pem: &[u8]) -> Result<Self, ClientError> {
        Self::with_options(
            base,
            TransportOptions {
                root_ca: Some(pem.to_vec()),
                ..TransportOptions::default()
            },
        )
    }

    /// A transport to the hub at `base` connecting as `options` say.
    pub fn with_options(
        base: impl Into<String>,
        options: TransportOptions,
    ) -> Result<Self, ClientError> {
        let pools = Pools::new(&options.connections, options.root_ca.clone())?;
        Ok(Self {
            pools: std::sync::Arc::new(pools),
            base: base.into().trim_end_matches('/').to_owned(),
            recorder: None,
            wallet: None,
            root_ca: options.root_ca,
            oblivious: oblivious_for(&options.connections),
        })
    }

    /// Which requests share connections.
    pub fn policy(&self) -> ConnectionPolicy {
        self.pools.policy()
    }

    /// The OHTTP relay pseudonymous requests go through, if any.
    pub fn ohttp_relay(&self) -> Option<&str> {
        self.oblivious.as_deref().map(|o| o.relay.as_str())
    }

    /// This transport with new connection pools built as `connections` says; the hub, the
    /// trusted roots, the wallet and the recorder stay.
    pub fn reconnected(&self, connections: &ConnectionOptions) -> Result<Self, ClientError> {
        let pools = Pools::new(connections, self.root_ca.clone())?;
        Ok(Self {
            pools: std::sync::Arc::new(pools),
            oblivious: oblivious_for(connections),
            ..self.clone()
        })
    }

    /// The local address this transport's connections bind to, if one was chosen (the live
    /// socket binds to it too).
    pub fn local_address(&self) -> Option<std::net::IpAddr> {
        self.pools.local_address()
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

    /// The connection pool for requests that carry our identity (token issuance, signed AS
    /// requests).
    pub fn http(&self) -> Result<reqwest::Client, ClientError> {
        self.http_for(&Scope::Identity)
    }

    /// The connection pool for requests of `scope` (a client of its own for a fresh one).
    pub fn http_for(&self, scope: &Scope) -> Result<reqwest::Client, ClientError> {
        self.pools.client(scope)
    }

    /// Posts raw bytes to a path on a fresh connection; returns the body of a 200 or the
    /// decoded error. With a wallet, a 401 token challenge is answered with a token and the
    /// request sent again.
    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> Result<Vec<u8>, ClientError> {
        self.post_classed(path, body, None, Scope::Fresh).await
    }

    /// Posts a request of rate class `class`: with a token up front when the hub is known to
    /// want one for that class, and with a fresh one after any token refusal (at most three
    /// retries, so a hub that refuses every token cannot loop us).
    async fn post_classed(
        &self,
        path: &str,
        body: Vec<u8>,
        class: Option<RateClass>,
        scope: Scope,
    ) -> Result<Vec<u8>, ClientError> {
        let Some(wallet) = &self.wallet else {
            return self.send(&scope, path, body, None).await;
        };
        // Issuance carries our credential: it goes on the identity connection, never on the
        // request's own.
        let issuer = self.http_for(&Scope::Identity)?;
        let mut token = match class {
            Some(c) if wallet.is_limited(c).await => Some(wallet.take(&issuer, &self.base).await?),
            _ => None,
        };
        let mut attempt = 0;
        loop {
            let result = self.send(&scope, path, body.clone(), token.as_ref()).await;
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
                    wallet.drop_stale(&issuer, &self.base).await?;
                }
                ErrorCode::TokenSpent | ErrorCode::TokenInvalid | ErrorCode::TokenMalformed => {}
                _ => return result,
            }
            token = Some(wallet.take(&issuer, &self.base).await?);
        }
    }

    pub(crate) async fn send(
        &self,
        scope: &Scope,
        path: &str,
        body: Vec<u8>,
        token: Option<&PresentedToken>,
    ) -> Result<Vec<u8>, ClientError> {
        if let Some(r) = &self.recorder {
            r.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((path.to_owned(), body.clone()));
        }
        let http = self.http_for(scope)?;
        if let Some(ob) = &self.oblivious
            && *scope != Scope::Identity
        {
            return self.send_oblivious(ob, &http, path, body, token).await;
        }
        let resp = http
            .post(format!("{}{}", self.base, path))
            .header("content-type", paths::CONTENT_TYPE);
        let resp = match token {
            Some(t) => resp.header("authorization", t.to_authorization()),
            None => resp,
        };
        exchange(resp.body(body)).await
    }

    /// Sends a request encapsulated for the hub's gateway through the relay (on `http`, the
    /// request's own scope, so the relay cannot join scopes either).
    async fn send_oblivious(
        &self,
        ob: &Oblivious,
        http: &reqwest::Client,
        path: &str,
        body: Vec<u8>,
        token: Option<&PresentedToken>,
    ) -> Result<Vec<u8>, ClientError> {
        let mut headers = vec![(
            "content-type".to_owned(),
            paths::CONTENT_TYPE.as_bytes().to_vec(),
        )];
        if let Some(t) = token {
            headers.push((
                "authorization".to_owned(),
                t.to_authorization().into_bytes(),
            ));
        }
        let inner = oblivious::InnerRequest {
            path: path.to_owned(),
            headers,
            body,
        };
        let inner = oblivious::encode_request(authority(&self.base), &inner)
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        // A gateway that changed its key answers 400 to the old one: fetch it again, once.
        for attempt in 0..2 {
            let keys = self.gateway_keys(ob, attempt > 0).await?;
            let request = ohttp::ClientRequest::from_encoded_config_list(&keys)
                .map_err(|e| ClientError::Transport(format!("OHTTP key configuration: {e}")))?;
            let (sealed, opener) = request
                .encapsulate(&inner)
                .map_err(|e| ClientError::Transport(format!("OHTTP: {e}")))?;
            let resp = http
                .post(&ob.relay)
                .header("content-type", oblivious::REQUEST_TYPE)
                .body(sealed)
                .send()
                .await
                .map_err(|e| ClientError::Transport(format!("OHTTP relay: {e}")))?;
            let status = resp.status().as_u16();
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| ClientError::Transport(format!("OHTTP relay: {e}")))?;
            if status == 400 && attempt == 0 {
                continue;
            }
            if status != 200 {
                return Err(ClientError::Transport(format!(
                    "OHTTP relay or gateway refused: status {status}"
                )));
            }
            let plain = opener
                .decapsulate(&bytes)
                .map_err(|e| ClientError::Transport(format!("OHTTP response: {e}")))?;
            let answer = oblivious::decode_response(&plain)
                .map_err(|e| ClientError::Transport(e.to_string()))?;
            return interpret(answer.status, &answer.body);
        }
        Err(ClientError::Transport(
            "OHTTP gateway refused the current key".into(),
        ))
    }

    /// The gateway's key configuration list, fetched once (again with `refresh`) through the
    /// relay, which serves every client the same one: asking the hub directly would show it
    /// our address just before our relayed requests.
    async fn gateway_keys(&self, ob: &Oblivious, refresh: bool) -> Result<Vec<u8>, ClientError> {
        let mut keys = ob.keys.lock().await;
        if let Some(k) = keys.as_ref()
            && !refresh
        {
            return Ok(k.clone());
        }
        let url = format!("{}{}", ob.relay.trim_end_matches('/'), oblivious::KEYS_PATH);
        let fetched = get_bytes(&self.http_for(&Scope::Fresh)?, &url, "OHTTP keys").await?;
        *keys = Some(fetched.clone());
        Ok(fetched)
    }

    /// Sends a DS request to the endpoint its operation belongs to.
    pub async fn ds(&self, req: &DsRequest) -> Result<DsResponse, ClientError> {
        let (path, class, scope) = ds_route(req);
        let body = envelope(ds_transaction(req), req)?;
        let bytes = self.post_classed(path, body, class, scope).await?;
        decode_exact(&bytes, MAX_RESPONSE).map_err(|e| ClientError::Transport(e.to_string()))
    }

    /// Sends a QS request.
    pub async fn qs(&self, req: &QsRequest) -> Result<QsResponse, ClientError> {
        let body = envelope(TransactionType::QueueService, req)?;
        let class = RateClass::of_qs(&req.tbs.operation);
        let bytes = self
            .post_classed(paths::QS, body, class, qs_scope(req))
            .await?;
        decode_exact(&bytes, MAX_RESPONSE).map_err(|e| ClientError::Transport(e.to_string()))
    }
}

impl Transport {
    /// Sends an AS request paying with `token` (a registration token), on the identity
    /// connection: registration is the one anonymous AS request that carries our handle.
    pub async fn auth_paid(
        &self,
        req: &mimi_rm_protocol::auth::AsRequest,
        token: &PresentedToken,
    ) -> Result<mimi_rm_protocol::auth::AsResponse, ClientError> {
        let body = envelope(TransactionType::AuthService, req)?;
        let bytes = self
            .send(&as_scope(req), paths::AS, body, Some(token))
            .await?;
        decode_exact(&bytes, MAX_RESPONSE).map_err(|e| ClientError::Transport(e.to_string()))
    }

    /// A registration token from our hub (`domain`), paid as `payment` says; fetched on a
    /// fresh connection, never the one the registration (our handle) travels on, so the hub
    /// cannot join an invitation code to the handle it paid for by connection.
    pub async fn registration_token(
        &self,
        domain: &str,
        payment: crate::tokens::RegistrationPayment<'_>,
    ) -> Result<PresentedToken, ClientError> {
        let http = self.http_for(&Scope::Fresh)?;
        crate::tokens::fetch_registration_token(&http, &self.base, domain, payment).await
    }

    /// A registration token from this device's registration allowance (see
    /// [`crate::tokens::Wallet::fetch_vouch`]).
    pub async fn vouch(&self) -> Result<PresentedToken, ClientError> {
        let wallet = self
            .wallet
            .as_ref()
            .ok_or(ClientError::Unexpected("no token wallet: register first"))?;
        let http = self.http_for(&Scope::Identity)?;
        wallet.fetch_vouch(&http, &self.base).await
    }

    /// Sends an AS request.
    pub async fn auth(
        &self,
        req: &mimi_rm_protocol::auth::AsRequest,
    ) -> Result<mimi_rm_protocol::auth::AsResponse, ClientError> {
        let body = envelope(TransactionType::AuthService, req)?;
        let class = RateClass::of_as(&req.tbs.operation);
        let bytes = self
            .post_classed(paths::AS, body, class, as_scope(req))
            .await?;
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
        // What we ask of another provider names someone there, never us: a fresh connection.
        self.post_classed(paths::FEDERATION_PROXY, body, class, Scope::Fresh)
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

/// The OHTTP state for `connections`, if it names a relay.
fn oblivious_for(connections: &ConnectionOptions) -> Option<std::sync::Arc<Oblivious>> {
    connections.ohttp_relay.as_ref().map(|relay| {
        std::sync::Arc::new(Oblivious {
            relay: relay.clone(),
            keys: tokio::sync::Mutex::new(None),
        })
    })
}

/// The authority (host and port) of a base URL, for the inner request.
fn authority(base: &str) -> &str {
    let rest = base.split_once("://").map_or(base, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

/// The connection scope of a DS request: its group (our leaf there), or a fresh connection
/// for the one request that names no group (`RequestGroupId`).
pub fn ds_scope(req: &DsRequest) -> Scope {
    if req.tbs.group_id.as_slice().is_empty() {
        Scope::Fresh
    } else {
        Scope::Group(req.tbs.group_id.as_slice().to_vec())
    }
}

/// The endpoint, rate class and connection scope of a DS request.
pub(crate) fn ds_route(req: &DsRequest) -> (&'static str, Option<RateClass>, Scope) {
    use mimi_rm_protocol::ds::DsOperation::*;
    let path = match req.tbs.operation {
        WelcomeInfo(_) => paths::WELCOME_INFORMATION,
        ExternalCommitInfo => paths::EXTERNAL_COMMIT_INFORMATION,
        _ => paths::GROUP_OPERATION,
    };
    (path, RateClass::of_ds(&req.tbs.operation), ds_scope(req))
}

/// The envelope's transaction type for a DS request.
pub(crate) fn ds_transaction(req: &DsRequest) -> TransactionType {
    use mimi_rm_protocol::ds::DsOperation::*;
    match req.tbs.operation {
        WelcomeInfo(_) => TransactionType::WelcomeInformation,
        ExternalCommitInfo => TransactionType::ExternalCommitInformation,
        _ => TransactionType::GroupOperation,
    }
}

/// The connection scope of a QS request: our queue for what our client signs, our QS user for
/// what the user signs (creating or removing a client); a fresh connection for anonymous
/// requests, which name another user (AddPackage fetches by friendship token) or nobody.
pub fn qs_scope(req: &QsRequest) -> Scope {
    use mimi_rm_protocol::qs::QsSender;
    match req.tbs.sender {
        QsSender::Anonymous => Scope::Fresh,
        QsSender::Client(_) => Scope::Queue,
        _ => Scope::User,
    }
}

/// The connection scope of an AS request: our identity for what carries it (signed requests,
/// registration); a fresh connection for anonymous lookups of others.
pub fn as_scope(req: &mimi_rm_protocol::auth::AsRequest) -> Scope {
    use mimi_rm_protocol::auth::{AsOperation, AsSender};
    match (&req.tbs.sender, &req.tbs.operation) {
        (AsSender::Client(_), _) => Scope::Identity,
        (_, AsOperation::RegisterUser(_) | AsOperation::RegisterInvited(_)) => Scope::Identity,
        _ => Scope::Fresh,
    }
}

/// GETs `url` on `http`: the body of a success, or a transport error naming `what`.
pub(crate) async fn get_bytes(
    http: &reqwest::Client,
    url: &str,
    what: &str,
) -> Result<Vec<u8>, ClientError> {
    let resp = http
        .get(url)
        .send()
        .await
        .map_err(|e| ClientError::Transport(format!("{what}: {e}")))?;
    if !resp.status().is_success() {
        return Err(ClientError::Transport(format!(
            "{what}: status {}",
            resp.status()
        )));
    }
    Ok(resp
        .bytes()
        .await
        .map_err(|e| ClientError::Transport(format!("{what}: {e}")))?
        .to_vec())
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
    interpret(status, &bytes)
}

/// A hub's answer: the body of a 200, or its decoded error.
fn interpret(status: u16, bytes: &[u8]) -> Result<Vec<u8>, ClientError> {
    if status == 200 {
        return Ok(bytes.to_vec());
    }
    let response: ErrorResponse = decode_exact(bytes, MAX_RESPONSE)
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
            .http_for(&Scope::Fresh)?
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
