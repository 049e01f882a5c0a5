//! An Oblivious HTTP relay (RFC 9458 §6): run by an operator other than the hub's, it passes
//! encapsulated requests from clients to one gateway and the answers back. It sees client
//! addresses and opaque ciphertexts; the gateway sees plaintext requests from the relay's
//! address only. Neither alone links a client's address to what it asks.
//!
//! The relay forwards nothing of the client but the body: no address, no headers beyond the
//! media type. It logs no client address at `info`.

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mimi_rm_protocol::oblivious;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Largest encapsulated request the relay passes.
pub const MAX_MESSAGE: usize = 2 << 20;
/// Largest encapsulated response it passes back (a ratchet tree of a large group fits).
pub const MAX_RESPONSE: usize = 64 << 20;
/// How long the relay serves the gateway's key configuration before fetching it again. Every
/// client of the relay gets the same one in that time, so a gateway cannot hand each client its
/// own key to recognise it.
const KEYS_TTL: Duration = Duration::from_secs(300);
/// How long the gateway may take to answer.
const GATEWAY_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The gateway URL is not an http(s) URL.
    #[error("gateway URL {0:?} is not an http(s) URL")]
    GatewayUrl(String),
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Client(String),
}

/// The relay: where it forwards, and its counters.
#[derive(Clone)]
pub struct Relay {
    gateway: Arc<String>,
    keys_url: Arc<String>,
    keys: Arc<tokio::sync::Mutex<Option<(std::time::Instant, axum::body::Bytes)>>>,
    http: reqwest::Client,
    forwarded: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
}

impl Relay {
    /// A relay for the gateway at `gateway` (e.g. `https://hub.example/ohttp`).
    pub fn new(gateway: &str) -> Result<Self, RelayError> {
        let Some((scheme, rest)) = gateway.split_once("://") else {
            return Err(RelayError::GatewayUrl(gateway.to_owned()));
        };
        if scheme != "https" && scheme != "http" {
            return Err(RelayError::GatewayUrl(gateway.to_owned()));
        }
        let authority = rest.split('/').next().unwrap_or(rest);
        let keys_url = format!("{scheme}://{authority}{}", oblivious::KEYS_PATH);
        let http = reqwest::Client::builder()
            .timeout(GATEWAY_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| RelayError::Client(e.to_string()))?;
        Ok(Self {
            gateway: Arc::new(gateway.to_owned()),
            keys_url: Arc::new(keys_url),
            keys: Arc::default(),
            http,
            forwarded: Arc::default(),
            refused: Arc::default(),
        })
    }

    /// The relay's routes: `POST /` (and the gateway's own path) forward; `GET` of the key
    /// configuration path serves the gateway's keys (fetched by the relay, so clients never ask
    /// the hub from their own address); `GET /metrics`.
    pub fn router(self) -> Router {
        Router::new()
            .route("/", axum::routing::post(forward))
            .route(oblivious::GATEWAY_PATH, axum::routing::post(forward))
            .route(oblivious::KEYS_PATH, axum::routing::get(keys))
            .route("/metrics", axum::routing::get(metrics))
            .with_state(self)
    }
}

async fn metrics(State(relay): State<Relay>) -> String {
    format!(
        "# TYPE mimi_relay_forwarded counter\nmimi_relay_forwarded {}\n\
         # TYPE mimi_relay_refused counter\nmimi_relay_refused {}\n",
        relay.forwarded.load(Relaxed),
        relay.refused.load(Relaxed)
    )
}

/// The gateway's key configuration, from the relay's cache or fetched anew.
async fn keys(State(relay): State<Relay>) -> Response {
    let mut cached = relay.keys.lock().await;
    let fresh = cached
        .as_ref()
        .filter(|(at, _)| at.elapsed() < KEYS_TTL)
        .map(|(_, k)| k.clone());
    let keys = match fresh {
        Some(k) => k,
        None => {
            let fetched = async {
                let r = relay.http.get(relay.keys_url.as_str()).send().await.ok()?;
                if !r.status().is_success() {
                    return None;
                }
                r.bytes().await.ok().filter(|b| b.len() <= 64 << 10)
            };
            match fetched.await {
                Some(k) => {
                    *cached = Some((std::time::Instant::now(), k.clone()));
                    k
                }
                None => return refuse(&relay, StatusCode::BAD_GATEWAY),
            }
        }
    };
    ([(header::CONTENT_TYPE, oblivious::KEYS_TYPE)], keys).into_response()
}

fn refuse(relay: &Relay, status: StatusCode) -> Response {
    relay.refused.fetch_add(1, Relaxed);
    status.into_response()
}

async fn forward(State(relay): State<Relay>, headers: HeaderMap, body: Body) -> Response {
    let media = headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes());
    if media != Some(oblivious::REQUEST_TYPE.as_bytes()) {
        return refuse(&relay, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
    let Ok(body) = axum::body::to_bytes(body, MAX_MESSAGE).await else {
        return refuse(&relay, StatusCode::PAYLOAD_TOO_LARGE);
    };
    let sent = relay
        .http
        .post(relay.gateway.as_str())
        .header(header::CONTENT_TYPE, oblivious::REQUEST_TYPE)
        .body(body)
        .send()
        .await;
    let response = match sent {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "gateway unreachable");
            return refuse(&relay, StatusCode::BAD_GATEWAY);
        }
    };
    let status = response.status();
    let media = response
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.as_bytes().to_vec());
    if response
        .content_length()
        .is_some_and(|n| n > MAX_RESPONSE as u64)
    {
        return refuse(&relay, StatusCode::BAD_GATEWAY);
    }
    let Ok(answer) = response.bytes().await else {
        return refuse(&relay, StatusCode::BAD_GATEWAY);
    };
    if answer.len() > MAX_RESPONSE {
        return refuse(&relay, StatusCode::BAD_GATEWAY);
    }
    relay.forwarded.fetch_add(1, Relaxed);
    let mut out = (status, answer).into_response();
    if let Some(Ok(media)) = media.map(|m| axum::http::HeaderValue::from_bytes(&m)) {
        out.headers_mut().insert(header::CONTENT_TYPE, media);
    }
    out
}
