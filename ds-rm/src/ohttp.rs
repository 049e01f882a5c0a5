//! The hub's Oblivious HTTP gateway (RFC 9458): pseudonymous requests arrive encapsulated
//! through a relay that another operator runs, so the hub never sees the client's address on
//! them, and the relay never sees their content.
//!
//! The gateway decapsulates a request, runs the Binary HTTP request inside (RFC 9292) through
//! the same router as a direct request — token redemption, body limit and all — and
//! encapsulates the answer. Only the endpoints a pseudonymous client uses are reachable this
//! way; the rest answer 403 inside the encapsulation.

use crate::core::Hub;
use crate::store::{Cf, Txn};
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

/// Prefix of the `server_keys` entries of the gateway's key seeds: one per key epoch, the
/// epoch (u64 BE) after the prefix. Only the current and the previous epoch's seeds are kept,
/// so a seized disk opens no relayed request recorded more than two epochs earlier.
pub const GATEWAY_SEED_PREFIX: &[u8] = b"ohttp_gateway_v2:";
/// The seed of the gateway's first, never-rotated key (deleted at start).
const LEGACY_SEED: &[u8] = b"ohttp_gateway_v1";
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

/// The gateway's keys of one moment: the current epoch's and the previous one's (a client
/// may hold a configuration fetched just before the rollover).
struct Keys {
    epoch: u64,
    servers: Vec<(u8, ohttp::Server)>,
    /// The configuration list served, current key last.
    encoded: Vec<u8>,
}

/// The gateway's keys and the router it dispatches into.
#[derive(Clone)]
pub struct Gateway {
    hub: Arc<Hub>,
    keys: Arc<std::sync::RwLock<Arc<Keys>>>,
    inner: Router,
}

/// The key id of `epoch`'s configuration (1–255, so consecutive epochs differ).
pub fn key_id(epoch: u64) -> u8 {
    (epoch % 255) as u8 + 1
}

/// The `server_keys` entry of `epoch`'s seed.
pub fn seed_name(epoch: u64) -> Vec<u8> {
    let mut name = GATEWAY_SEED_PREFIX.to_vec();
    name.extend_from_slice(&epoch.to_be_bytes());
    name
}

/// The epoch a `server_keys` entry name holds a gateway seed for, if it is one.
pub fn seed_epoch(name: &[u8]) -> Option<u64> {
    let bytes = name.strip_prefix(GATEWAY_SEED_PREFIX)?;
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

/// A key configuration with id `key_id`, derived from `seed` (X25519, HKDF-SHA256, AES-128-GCM
/// or ChaCha20-Poly1305): the same on every start within an epoch, so clients' cached
/// configurations stay valid.
pub fn key_config(key_id: u8, seed: &[u8]) -> Result<ohttp::KeyConfig, GatewayError> {
    use ohttp::hpke::{Aead, Kdf, Kem};
    ohttp::KeyConfig::derive(
        key_id,
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
        let keys = Keys::load(&hub, current_epoch(&hub))?;
        Ok(Self {
            hub,
            keys: Arc::new(std::sync::RwLock::new(Arc::new(keys))),
            inner,
        })
    }

    /// The keys of now, rotated first when a new epoch has begun.
    fn keys(&self) -> Result<Arc<Keys>, GatewayError> {
        let epoch = current_epoch(&self.hub);
        let held = self.keys.read().unwrap_or_else(|p| p.into_inner()).clone();
        if held.epoch == epoch {
            return Ok(held);
        }
        // Loading reads (and on a new epoch writes) the store: outside the lock, and off the
        // async worker (called from handlers), so other requests go on meanwhile. Two
        // handlers that load at once load the same seed.
        let load = || Keys::load(&self.hub, epoch);
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let loaded = Arc::new(if multi_thread {
            tokio::task::block_in_place(load)
        } else {
            load()
        }?);
        let mut slot = self.keys.write().unwrap_or_else(|p| p.into_inner());
        if slot.epoch != epoch {
            *slot = loaded;
            tracing::info!(epoch, "OHTTP gateway: new key");
        }
        Ok(slot.clone())
    }

    /// The routes of the gateway: its key configuration and its endpoint.
    pub fn routes(self) -> Router {
        Router::new()
            .route(oblivious::KEYS_PATH, axum::routing::get(keys))
            .route(oblivious::GATEWAY_PATH, axum::routing::post(gateway))
            .with_state(self)
    }
}

/// The gateway's key epoch at the hub's clock.
fn current_epoch(hub: &Hub) -> u64 {
    crate::now_ms() / 1000 / hub.config().ohttp_key_epoch_secs.max(1)
}

impl Keys {
    /// `epoch`'s keys: its seed (created if new) and the previous epoch's (if kept); every
    /// older seed, and the legacy one, is deleted in the same batch.
    fn load(hub: &Hub, epoch: u64) -> Result<Self, GatewayError> {
        let store = hub.store().as_ref();
        let current = hub.server_seed(&seed_name(epoch))?;
        let previous = match epoch.checked_sub(1) {
            Some(e) => store
                .get(Cf::ServerKeys, &seed_name(e))
                .map_err(crate::core::HubError::from)?
                .map(|seed| (e, zeroize::Zeroizing::new(seed))),
            None => None,
        };
        let mut txn = Txn::new(store);
        let stale = store
            .scan_prefix(Cf::ServerKeys, GATEWAY_SEED_PREFIX, usize::MAX)
            .map_err(crate::core::HubError::from)?;
        for (name, _) in stale {
            if seed_epoch(&name).is_none_or(|e| e.saturating_add(1) < epoch) {
                txn.delete(Cf::ServerKeys, name);
            }
        }
        txn.delete(Cf::ServerKeys, LEGACY_SEED.to_vec());
        txn.commit().map_err(crate::core::HubError::from)?;
        // The previous key first, the current one last: clients (the `ohttp` crate's among
        // them) take the last configuration of the list.
        let mut configs = Vec::with_capacity(2);
        if let Some((e, seed)) = &previous {
            configs.push((key_id(*e), key_config(key_id(*e), seed.as_slice())?));
        }
        configs.push((
            key_id(epoch),
            key_config(key_id(epoch), current.as_slice())?,
        ));
        let encoded =
            ohttp::KeyConfig::encode_list(&configs.iter().map(|(_, c)| c).collect::<Vec<_>>())
                .map_err(|e| GatewayError::Config(e.to_string()))?;
        let servers = configs
            .into_iter()
            .map(|(id, c)| {
                ohttp::Server::new(c)
                    .map(|s| (id, s))
                    .map_err(|e| GatewayError::Config(e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            epoch,
            servers,
            encoded,
        })
    }
}

async fn keys(State(gw): State<Gateway>) -> Response {
    match gw.keys() {
        Ok(keys) => (
            [(header::CONTENT_TYPE, oblivious::KEYS_TYPE)],
            keys.encoded.clone(),
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "OHTTP gateway keys unavailable");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
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
    let Ok(keys) = gw.keys() else {
        return refused(&gw, StatusCode::INTERNAL_SERVER_ERROR);
    };
    // RFC 9458 §5.2: a request that does not decapsulate — under a key id of neither the
    // current nor the previous epoch, say — gets a 400 outside the encapsulation (the client
    // then fetches the keys again).
    let server = body
        .first()
        .and_then(|id| keys.servers.iter().find(|(k, _)| k == id));
    let Some(Ok((plain, responder))) = server.map(|(_, s)| s.decapsulate(&body)) else {
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
