//! The hub's Oblivious HTTP gateway (RFC 9458): pseudonymous requests arrive encapsulated
//! through a relay that another operator runs, so the hub never sees the client's address on
//! them, and the relay never sees their content.
//!
//! The gateway decapsulates a request, runs the Binary HTTP request inside (RFC 9292) through
//! the same router as a direct request — token redemption, body limit and all — and
//! encapsulates the answer. Only the endpoints a pseudonymous client uses are reachable this
//! way; the rest answer 403 inside the encapsulation.

use crate::core::Hub;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mimi_rm_protocol::oblivious::{self, InnerRequest, InnerResponse};
use mimi_rm_protocol::paths;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use tower::ServiceExt as _;

/// `server_keys` entry of the gateway's key seed.
pub const GATEWAY_SEED: &[u8] = b"ohttp_gateway_v1";
/// Key id of the gateway's one key configuration.
const KEY_ID: u8 = 1;
/// Room for the encapsulation around a request of the hub's largest body.
const ENCAPSULATION_OVERHEAD: usize = 4096;
/// Paths a client may reach through the gateway: the pseudonymous ones.
const REACHABLE: [&str; 6] = [
    paths::GROUP_OPERATION,
    paths::WELCOME_INFORMATION,
    paths::EXTERNAL_COMMIT_INFORMATION,
    paths::QS,
    paths::AS,
    paths::FEDERATION_PROXY,
];

/// Why the gateway could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The seed could not be read or stored.
    #[error("gateway key: {0}")]
    Store(#[from] crate::core::HubError),
    /// The key configuration could not be derived.
    #[error("gateway key configuration: {0}")]
    Config(String),
}

/// The gateway's key and the router it dispatches into.
#[derive(Clone)]
pub struct Gateway {
    hub: Arc<Hub>,
    server: Arc<ohttp::Server>,
    keys: Arc<Vec<u8>>,
    inner: Router,
}

/// The gateway's key configuration, derived from `seed` (X25519, HKDF-SHA256, AES-128-GCM or
/// ChaCha20-Poly1305): the same on every start, so clients' cached configurations stay valid.
pub fn key_config(seed: &[u8]) -> Result<ohttp::KeyConfig, GatewayError> {
    use ohttp::hpke::{Aead, Kdf, Kem};
    ohttp::KeyConfig::derive(
        KEY_ID,
        Kem::X25519Sha256,
        vec![
            ohttp::SymmetricSuite::new(Kdf::HkdfSha256, Aead::Aes128Gcm),
            ohttp::SymmetricSuite::new(Kdf::HkdfSha256, Aead::ChaCha20Poly1305),
        ],
        seed,
    )
    .map_err(|e| GatewayError::Config(e.to_string()))
}

impl Gateway {
    /// The gateway of `hub`, dispatching into `inner` (the hub's router without the gateway).
    pub fn new(hub: Arc<Hub>, inner: Router) -> Result<Self, GatewayError> {
        let seed = hub.server_seed(GATEWAY_SEED)?;
        let config = key_config(seed.as_slice())?;
        let keys = ohttp::KeyConfig::encode_list(&[&config])
            .map_err(|e| GatewayError::Config(e.to_string()))?;
        let server = ohttp::Server::new(config).map_err(|e| GatewayError::Config(e.to_string()))?;
        Ok(Self {
            hub,
            server: Arc::new(server),
            keys: Arc::new(keys),
            inner,
        })
    }

    /// The routes of the gateway: its key configuration and its endpoint.
    pub fn routes(self) -> Router {
        Router::new()
            .route(oblivious::KEYS_PATH, axum::routing::get(keys))
            .route(oblivious::GATEWAY_PATH, axum::routing::post(gateway))
            .with_state(self)
    }
}

async fn keys(State(gw): State<Gateway>) -> Response {
    (
        [(header::CONTENT_TYPE, oblivious::KEYS_TYPE)],
        gw.keys.as_ref().clone(),
    )
        .into_response()
}

/// A refusal of the encapsulation itself (the relay passes it on; nothing inside was run).
fn refused(gw: &Gateway, status: StatusCode) -> Response {
    gw.hub.metrics.ohttp_refused.fetch_add(1, Relaxed);
    status.into_response()
}

async fn gateway(State(gw): State<Gateway>, request: Request<Body>) -> Response {
    let content_type = request.headers().get(header::CONTENT_TYPE);
    if content_type.is_none_or(|v| v.as_bytes() != oblivious::REQUEST_TYPE.as_bytes()) {
        return refused(&gw, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
    let limit = gw.hub.config().max_body + ENCAPSULATION_OVERHEAD;
    let body = match crate::http::read_body_limited(&gw.hub, request.into_body(), limit).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    // RFC 9458 §5.2: a request that does not decapsulate gets a 400 outside the encapsulation.
    let Ok((plain, responder)) = gw.server.decapsulate(&body) else {
        return refused(&gw, StatusCode::BAD_REQUEST);
    };
    let inner = match oblivious::decode_request(&plain) {
        Ok(inner) => run(&gw, inner).await,
        Err(_) => InnerResponse {
            status: 400,
            content_type: None,
            body: Vec::new(),
        },
    };
    gw.hub.metrics.ohttp_requests.fetch_add(1, Relaxed);
    let Ok(encoded) = oblivious::encode_response(&inner) else {
        return refused(&gw, StatusCode::INTERNAL_SERVER_ERROR);
    };
    match responder.encapsulate(&encoded) {
        Ok(sealed) => ([(header::CONTENT_TYPE, oblivious::RESPONSE_TYPE)], sealed).into_response(),
        Err(_) => refused(&gw, StatusCode::INTERNAL_SERVER_ERROR),
    }
}

/// Runs one inner request through the hub's router.
async fn run(gw: &Gateway, inner: InnerRequest) -> InnerResponse {
    if !REACHABLE.contains(&inner.path.as_str()) {
        return InnerResponse {
            status: 403,
            content_type: None,
            body: Vec::new(),
        };
    }
    let mut builder = Request::builder().method(Method::POST).uri(&inner.path);
    for (name, value) in &inner.headers {
        if let Ok(v) = HeaderValue::from_bytes(value) {
            builder = builder.header(name.as_str(), v);
        }
    }
    let Ok(request) = builder.body(Body::from(inner.body)) else {
        return InnerResponse {
            status: 400,
            content_type: None,
            body: Vec::new(),
        };
    };
    let response = match gw.inner.clone().oneshot(request).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.as_bytes().to_vec());
    // Responses are the hub's own and bounded by what it serves (at most a tree or a queue
    // page); the limit only guards against a bug.
    match axum::body::to_bytes(response.into_body(), 64 << 20).await {
        Ok(body) => InnerResponse {
            status,
            content_type,
            body: body.to_vec(),
        },
        Err(_) => InnerResponse {
            status: 500,
            content_type: None,
            body: Vec::new(),
        },
    }
}
