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

/// Largest encapsulated request or response the relay passes.
pub const MAX_MESSAGE: usize = 2 << 20;
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
    http: reqwest::Client,
    forwarded: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
}

impl Relay {
    /// A relay for the gateway at `gateway` (e.g. `https://hub.example/ohttp`).
    pub fn new(gateway: &str) -> Result<Self, RelayError> {
        if !(gateway.starts_with("https://") || gateway.starts_with("http://")) {
            return Err(RelayError::GatewayUrl(gateway.to_owned()));
        }
        let http = reqwest::Client::builder()
            .timeout(GATEWAY_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| RelayError::Client(e.to_string()))?;
        Ok(Self {
            gateway: Arc::new(gateway.to_owned()),
            http,
            forwarded: Arc::default(),
            refused: Arc::default(),
        })
    }

    /// The relay's routes: `POST /` (and the gateway's own path) forward; `GET /metrics`.
    pub fn router(self) -> Router {
        Router::new()
            .route("/", axum::routing::post(forward))
            .route(oblivious::GATEWAY_PATH, axum::routing::post(forward))
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
    let Ok(answer) = response.bytes().await else {
        return refuse(&relay, StatusCode::BAD_GATEWAY);
    };
    if answer.len() > MAX_MESSAGE {
        return refuse(&relay, StatusCode::BAD_GATEWAY);
    }
    relay.forwarded.fetch_add(1, Relaxed);
    let mut out = (status, answer).into_response();
    if let Some(Ok(media)) = media.map(|m| axum::http::HeaderValue::from_bytes(&m)) {
        out.headers_mut().insert(header::CONTENT_TYPE, media);
    }
    out
}
