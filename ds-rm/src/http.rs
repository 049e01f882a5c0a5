//! The axum shell: read bodies within their limits, decode each client request once (cheap:
//! exact TLS decoding, no cryptography) to route it, run the core on a blocking thread, map
//! errors to statuses.

use crate::core::{ClientRequest, Hub, HubError, Route};
use crate::core::{FederationError, RequestError};
use crate::federation::Peers;
use crate::privacy_pass::{PresentedVerified, admission};
use axum::Extension;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use mimi_rm_protocol::{TransactionType, encode, paths};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

/// Builds the router for a hub without federation peers (an embedded or test hub: requests
/// for other domains get `PeerUnavailable`).
pub fn router(hub: Arc<Hub>) -> Router {
    let peers = crate::federation::Peers::new(&crate::config::Config::default())
        .map(Arc::new)
        .ok();
    router_inner(hub, peers)
}

/// Builds the router for a hub that federates through `peers`.
pub fn router_with_peers(hub: Arc<Hub>, peers: Arc<Peers>) -> Router {
    router_inner(hub, Some(peers))
}

/// What every handler gets.
#[derive(Clone)]
struct App {
    hub: Arc<Hub>,
    peers: Option<Arc<Peers>>,
}

fn router_inner(hub: Arc<Hub>, peers: Option<Arc<Peers>>) -> Router {
    let direct = direct_router(hub.clone(), peers);
    // The OHTTP gateway dispatches into the direct routes (never into itself).
    let all = match crate::ohttp::Gateway::new(hub.clone(), direct.clone()) {
        Ok(gateway) => direct.merge(gateway.routes()),
        Err(e) => {
            tracing::error!(error = %e, "OHTTP gateway unavailable");
            direct
        }
    };
    // Latency per route as the client sees it (a relayed request once, as `/ohttp`).
    all.route_layer(axum::middleware::from_fn_with_state(hub, timed))
}

/// Records each answered request's latency under its route template and status.
async fn timed(
    State(hub): State<Arc<Hub>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    // A live socket's answer is its upgrade; what follows is not a request's latency.
    if let Some(route) = route.filter(|r| r != paths::QS_LIVE && r != "/metrics") {
        hub.metrics.observe_request(
            &route,
            response.status().as_u16(),
            started.elapsed().as_secs_f64(),
        );
    }
    response
}

/// Every route but the OHTTP gateway's.
fn direct_router(hub: Arc<Hub>, peers: Option<Arc<Peers>>) -> Router {
    let issuer = Router::new()
        .route(
            mimi_rm_protocol::tokens::ISSUER_REQUEST_PATH,
            post(crate::privacy_pass::issue),
        )
        .route(
            mimi_rm_protocol::tokens::ISSUER_DIRECTORY_PATH,
            get(crate::privacy_pass::directory),
        )
        .route(
            mimi_rm_protocol::tokens::REGISTRATION_REQUEST_PATH,
            post(crate::privacy_pass::issue_registration),
        )
        .route(
            mimi_rm_protocol::tokens::REGISTRATION_DIRECTORY_PATH,
            get(crate::privacy_pass::registration_directory),
        )
        .with_state(hub.clone());
    Router::new()
        .route(paths::GROUP_OPERATION, post(group_operation))
        .route(paths::WELCOME_INFORMATION, post(welcome_information))
        .route(
            paths::EXTERNAL_COMMIT_INFORMATION,
            post(external_commit_information),
        )
        .route(paths::QS, post(queue_service))
        .route(paths::QS_LIVE, get(live))
        .route(paths::QS_PUSH_KEY, get(push_key))
        .route(paths::AS, post(auth_service))
        .route(paths::FEDERATION_FORWARD, post(federation_forward))
        .route(paths::DELIVER_MESSAGE, post(deliver_message))
        .route(paths::FEDERATION_PROXY, post(federation_proxy))
        .route(paths::VERIFICATION_KEY, get(verification_key))
        .route(paths::DS_DOMAIN, get(ds_domain))
        .route("/metrics", get(metrics))
        // The core enforces the limit itself so it can answer with a TLS-encoded 413.
        .layer(DefaultBodyLimit::disable())
        .with_state(App {
            hub: hub.clone(),
            peers,
        })
        // Redemption (and its challenges) on the endpoints that take tokens, not the issuer's.
        .layer(axum::middleware::from_fn_with_state(
            hub.clone(),
            crate::privacy_pass::redeem,
        ))
        .merge(issuer)
        .layer(axum::middleware::from_fn_with_state(hub, declared_length))
}

/// How far over the limit a declared body must be to be refused without reading any of it.
const EARLY_REFUSAL_FACTOR: u64 = 4;

/// Refuses at once, before anything reads it, a body whose declared `Content-Length` is over
/// the limit and that the client has not started to send (`Expect: 100-continue`: no
/// `100 Continue` goes out, since hyper sends that only once a handler reads the body), or that
/// is far over the limit (more than [`EARLY_REFUSAL_FACTOR`] times): no waiting for bytes that
/// will be refused anyway. A body only somewhat over the limit is read up to the limit and then
/// refused, so a client still writing it gets the 413 instead of a reset connection.
async fn declared_length(
    State(hub): State<Arc<Hub>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let limit = u64::try_from(hub.config().max_body).unwrap_or(u64::MAX);
    let expects_continue = request
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let early = limit.saturating_mul(EARLY_REFUSAL_FACTOR);
    if declared.is_some_and(|n| n > limit && (expects_continue || n > early)) {
        hub.metrics.errors.fetch_add(1, Relaxed);
        let mut response = error_response(&HubError::Request(RequestError::TooLarge));
        // The unread body stays on the connection: close it rather than parse it as requests.
        response.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
        return response;
    }
    next.run(request).await
}

/// The verified token a request presented, if any (put there by the redemption middleware).
type Token = Option<Extension<PresentedVerified>>;

async fn group_operation(State(app): State<App>, token: Token, body: Body) -> Response {
    dispatch(app, TransactionType::GroupOperation, token, body).await
}

async fn welcome_information(State(app): State<App>, token: Token, body: Body) -> Response {
    dispatch(app, TransactionType::WelcomeInformation, token, body).await
}

async fn external_commit_information(State(app): State<App>, token: Token, body: Body) -> Response {
    dispatch(app, TransactionType::ExternalCommitInformation, token, body).await
}

async fn live(State(app): State<App>, ws: axum::extract::ws::WebSocketUpgrade) -> Response {
    crate::live::live(app.hub, ws)
}

async fn queue_service(State(app): State<App>, token: Token, body: Body) -> Response {
    dispatch(app, TransactionType::QueueService, token, body).await
}

async fn auth_service(State(app): State<App>, token: Token, body: Body) -> Response {
    dispatch(app, TransactionType::AuthService, token, body).await
}

async fn verification_key(State(app): State<App>) -> Response {
    match encode(&app.hub.verification_key()) {
        Ok(body) => ok(body),
        Err(e) => error_response(&HubError::Bug(e.to_string())),
    }
}

/// The hub's VAPID public key: clients subscribe to their push service with it.
async fn push_key(State(app): State<App>) -> Response {
    ok(app.hub.vapid_public())
}

/// A peer forwards its client's request to us (we host the group).
async fn federation_forward(State(app): State<App>, body: Body) -> Response {
    s2s(app, false, body).await
}

/// A hub delivers fan-out for our members.
async fn deliver_message(State(app): State<App>, body: Body) -> Response {
    s2s(app, true, body).await
}

/// Our client asks us to pass an anonymous lookup to another provider.
async fn federation_proxy(State(app): State<App>, token: Token, body: Body) -> Response {
    let bytes = match read_body(&app.hub, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let hub = app.hub.clone();
    let target = match tokio::task::spawn_blocking(move || {
        hub.proxy_target(&bytes, crate::now_ms())
    })
    .await
    {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return error_response(&e),
        Err(join) => return error_response(&HubError::Bug(join.to_string())),
    };
    let admission = admission(token.map(|Extension(t)| t));
    if let Err(r) = admit_forward(&app, &target.domain, target.request, admission).await {
        return r;
    }
    relay(&app, &target.domain, target.envelope).await
}

/// Before a request leaves for another provider: the peer must be one we talk to, and the
/// request's token is spent here, at the provider that issued it.
async fn admit_forward(
    app: &App,
    domain: &str,
    request: ClientRequest,
    admission: crate::core::tokens::Admission,
) -> Result<(), Response> {
    match &app.peers {
        Some(peers) => peers
            .url(domain)
            .map(|_| ())
            .map_err(|e| error_response(&e))?,
        None => {
            return Err(error_response(&HubError::Federation(
                FederationError::PeerUnavailable("federation is off".into()),
            )));
        }
    }
    let hub = app.hub.clone();
    match tokio::task::spawn_blocking(move || hub.admit_forward(&request, &admission)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(error_response(&e)),
        Err(join) => Err(error_response(&HubError::Bug(join.to_string()))),
    }
}

async fn s2s(app: App, deliver: bool, body: Body) -> Response {
    let bytes = match read_body(&app.hub, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let env = match app.hub.s2s_decode(&bytes) {
        Ok(e) => Arc::new(e),
        Err(e) => return error_response(&e),
    };
    let Some(peers) = app.peers.clone() else {
        return error_response(&HubError::Federation(FederationError::PeerUnavailable(
            "federation is off".into(),
        )));
    };
    let sender = String::from_utf8_lossy(env.tbs.sender_domain.as_slice()).into_owned();
    // Cached key first; if it does not verify, the peer may have rotated: fetch once more.
    for refresh in [false, true] {
        let key = match peers.key(&sender, refresh).await {
            Ok(k) => k,
            Err(e) => return error_response(&e),
        };
        let (hub, env) = (app.hub.clone(), env.clone());
        let result = tokio::task::spawn_blocking(move || {
            hub.handle_s2s(deliver, &env, &key, crate::now_ms())
        })
        .await;
        match result {
            Ok(Err(HubError::Request(RequestError::InvalidSignature))) if !refresh => continue,
            Ok(Ok(body)) => return ok(body),
            Ok(Err(e)) => return error_response(&e),
            Err(join) => return error_response(&HubError::Bug(join.to_string())),
        }
    }
    error_response(&HubError::Request(RequestError::InvalidSignature))
}

/// Forwards a signed envelope to `domain` and answers with its status and body unchanged.
async fn relay(app: &App, domain: &str, envelope: Vec<u8>) -> Response {
    let Some(peers) = &app.peers else {
        return error_response(&HubError::Federation(FederationError::PeerUnavailable(
            "federation is off".into(),
        )));
    };
    match peers
        .post(domain, paths::FEDERATION_FORWARD, envelope)
        .await
    {
        Ok((status, body)) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            [(header::CONTENT_TYPE, paths::CONTENT_TYPE)],
            body,
        )
            .into_response(),
        Err(e) => error_response(&e),
    }
}

fn ok(body: Vec<u8>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, paths::CONTENT_TYPE)],
        body,
    )
        .into_response()
}

/// Reads the body within the size limit and the request timeout, so neither a large nor a slow
/// upload can hold a connection: 413 past the limit, 408 past the timeout, 400 for broken
/// framing (bad chunk sizes, a body shorter than declared).
pub(crate) async fn read_body(hub: &Hub, body: Body) -> Result<Bytes, Response> {
    read_body_limited(hub, body, hub.config().max_body).await
}

/// [`read_body`] with a limit of `max` bytes (the OHTTP gateway's, which adds room for the
/// encapsulation).
pub(crate) async fn read_body_limited(
    hub: &Hub,
    body: Body,
    max: usize,
) -> Result<Bytes, Response> {
    let timeout = std::time::Duration::from_millis(hub.config().request_timeout_ms);
    let result = match tokio::time::timeout(timeout, collect(body, max)).await {
        Ok(read) => read,
        Err(_) => Err(HubError::Request(RequestError::Timeout)),
    };
    result.map_err(|e| {
        hub.metrics.errors.fetch_add(1, Relaxed);
        error_response(&e)
    })
}

/// The body's data frames, at most `max` bytes.
async fn collect(mut body: Body, max: usize) -> Result<Bytes, HubError> {
    use axum::body::HttpBody;
    let mut out = Vec::new();
    while let Some(frame) =
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
    {
        let frame = frame.map_err(|e| HubError::malformed("HTTP body framing", e))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > max {
                return Err(HubError::Request(RequestError::TooLarge));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(out))
}

async fn ds_domain(State(app): State<App>) -> String {
    app.hub.config().domain.clone()
}

/// `GET /metrics`: every total, the latency histograms, and the store's figures as gauges
/// (including the queue depths: undelivered messages, outbox items), in Prometheus text.
async fn metrics(
    State(app): State<App>,
    peer: Option<Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
) -> Response {
    // No address: an embedded router without a listener, i.e. in-process.
    let local = peer.is_none_or(|p| p.0.0.ip().is_loopback());
    if !local && !app.hub.config().metrics_public {
        return error_response(&HubError::Request(RequestError::NotAuthorized(
            "metrics are served to loopback clients (metrics_public = false)",
        )));
    }
    let hub = app.hub.clone();
    let rendered =
        tokio::task::spawn_blocking(move || hub.metrics.render_with(hub.store().statistics()))
            .await;
    match rendered {
        Ok(text) => (
            StatusCode::OK,
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(join) => error_response(&HubError::Bug(join.to_string())),
    }
}

async fn dispatch(app: App, endpoint: TransactionType, token: Token, body: Body) -> Response {
    let bytes = match read_body(&app.hub, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let admission = admission(token.map(|Extension(t)| t));
    // A request for a group hosted by another provider goes there, signed by us; the client's
    // own signature travels inside unchanged, and the hub never sees the client's address.
    // Its token is spent here, at the provider that issued it.
    let request = match app.hub.decode_request(endpoint, &bytes) {
        Ok(r) => r,
        Err(e) => return error_response(&e),
    };
    if let Route::Forward(domain) = app.hub.route(&request) {
        if let Err(r) = admit_forward(&app, &domain, request, admission).await {
            return r;
        }
        let envelope = match app
            .hub
            .forward_envelope(&domain, endpoint, &bytes, crate::now_ms())
        {
            Ok(e) => e,
            Err(e) => return error_response(&e),
        };
        return relay(&app, &domain, envelope).await;
    }
    let hub = app.hub.clone();
    let result = tokio::task::spawn_blocking(move || {
        hub.handle_request(request, crate::now_ms(), &admission)
    })
    .await;
    match result {
        Ok(Ok(body)) => ok(body),
        Ok(Err(e)) => error_response(&e),
        Err(join) => {
            tracing::error!(error = %join, "request task failed");
            error_response(&HubError::Bug("task failed".into()))
        }
    }
}

/// The TLS-encoded error body with the status of its class.
pub(crate) fn error_response(e: &HubError) -> Response {
    let resp = e.to_response();
    let status =
        StatusCode::from_u16(resp.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if status.is_server_error() {
        tracing::error!(error = %e, "request failed");
    } else {
        tracing::info!(code = ?resp.code, error = %e, "request rejected");
    }
    let body = encode(&resp).unwrap_or_default();
    (status, [(header::CONTENT_TYPE, paths::CONTENT_TYPE)], body).into_response()
}
