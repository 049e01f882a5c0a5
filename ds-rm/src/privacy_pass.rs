//! The HTTP side of Privacy Pass: the redemption middleware (RFC 9577), the issuance endpoint and
//! issuer directory (RFC 9578), and the key-rotation task.
//!
//! The middleware verifies a presented token before the handler reads the body, and hands the
//! verified token to the core as a request extension; the core decides whether the request
//! needs one and records the spend in the request's own write batch. On the way out it adds the
//! `WWW-Authenticate: PrivateToken` challenges to every 401 — of the redeeming endpoints only:
//! the issuer's own answers carry no challenge, and a wrong token request there is a 422
//! (RFC 9578 §5.2, §6.2).

use crate::core::TokenError as Refusal;
use crate::core::tokens::issue::{Issued, Refused, RegistrationPayment};
use crate::core::tokens::{Admission, VerifiedToken};
use crate::core::{Hub, HubError};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use mimi_rm_protocol::tokens::{
    INVITE_HEADER, ISSUANCE_AUTH_HEADER, IssuerDirectory, PresentedToken, TokenError,
};
use std::sync::Arc;

/// The token a request presented, once verified (absent when it presented none).
#[derive(Debug, Clone)]
pub struct PresentedVerified(pub VerifiedToken);

/// The admission of a client request carrying `token`.
pub fn admission(token: Option<PresentedVerified>) -> Admission {
    Admission::Client(token.map(|t| t.0))
}

fn token_error(e: TokenError) -> HubError {
    match e {
        TokenError::Malformed(what) => HubError::Token(Refusal::Malformed(what.to_owned())),
        TokenError::WrongType(t) => HubError::Token(Refusal::WrongType(t)),
    }
}

/// Parses and verifies an `Authorization: PrivateToken` header.
fn verify_header(hub: &Hub, headers: &HeaderMap) -> Result<Option<VerifiedToken>, HubError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| HubError::Token(Refusal::Malformed("header is not ASCII".into())))?;
    let token = PresentedToken::from_authorization(text).map_err(token_error)?;
    hub.tokens().verify(&token, crate::now_ms()).map(Some)
}

/// Middleware: verify a presented token; add challenges to 401 answers.
pub async fn redeem(State(hub): State<Arc<Hub>>, mut req: Request, next: Next) -> Response {
    let mut verified = verify_header(&hub, req.headers());
    if hub.is_shared()
        && matches!(verified, Err(HubError::Token(Refusal::UnknownKey)))
        && reload_keys(&hub).await
    {
        // Another process may have made this epoch's keys a moment ago: load them, once.
        verified = verify_header(&hub, req.headers());
    }
    match verified {
        Ok(Some(t)) => {
            req.extensions_mut().insert(PresentedVerified(t));
        }
        Ok(None) => {}
        Err(e) => {
            hub.metrics
                .errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return with_challenges(&hub, crate::http::error_response(&e));
        }
    }
    let resp = next.run(req).await;
    with_challenges(&hub, resp)
}

/// Brings the issuer keys up to date from the store (a no-op unless an epoch began since the
/// last rotation); whether that succeeded.
async fn reload_keys(hub: &Arc<Hub>) -> bool {
    let h = hub.clone();
    let done =
        tokio::task::spawn_blocking(move || h.tokens().rotate(h.store().as_ref(), crate::now_ms()))
            .await;
    matches!(done, Ok(Ok(())))
}

fn with_challenges(hub: &Hub, mut resp: Response) -> Response {
    if resp.status() == StatusCode::UNAUTHORIZED {
        for ch in hub.tokens().challenges(crate::now_ms()) {
            if let Ok(v) = HeaderValue::from_str(&ch) {
                resp.headers_mut().append(header::WWW_AUTHENTICATE, v);
            }
        }
    }
    resp
}

/// `POST` issuance: a type 2 token request or an amortized type 5 batch, authenticated with the
/// client's credential.
pub async fn issue(State(hub): State<Arc<Hub>>, headers: HeaderMap, body: Body) -> Response {
    let bytes = match crate::http::read_body(&hub, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = text(header::CONTENT_TYPE.as_str());
    let auth = text(ISSUANCE_AUTH_HEADER);
    let h = hub.clone();
    let result = tokio::task::spawn_blocking(move || {
        h.issue_tokens(
            content_type.as_deref(),
            auth.as_deref(),
            &bytes,
            crate::now_ms(),
        )
    })
    .await;
    issued_response(result)
}

/// `POST` a registration token request (type 2), paid with an invitation code
/// (`mimi-invite`), a device's vouch (`mimi-issuance-auth`), or — at an open provider — the
/// client's address alone. The address is counted in memory only.
pub async fn issue_registration(
    State(hub): State<Arc<Hub>>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let bytes = match crate::http::read_body(&hub, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = text(header::CONTENT_TYPE.as_str());
    let invite = text(INVITE_HEADER);
    let auth = text(ISSUANCE_AUTH_HEADER);
    // Without a listener (an embedded router) there is no address: all such clients share one.
    let address = peer.map_or(std::net::IpAddr::from([0, 0, 0, 0]), |p| p.0.0.ip());
    let h = hub.clone();
    let result = tokio::task::spawn_blocking(move || {
        let payment = match (&invite, &auth) {
            (Some(code), _) => RegistrationPayment::Invite(code),
            (None, Some(auth)) => RegistrationPayment::Device(auth),
            (None, None) => RegistrationPayment::Address(address),
        };
        h.issue_registration_token(payment, content_type.as_deref(), &bytes, crate::now_ms())
    })
    .await;
    issued_response(result)
}

/// The HTTP answer of an issuance: the response body, or the refusal (422 when the token
/// request itself is wrong, RFC 9578 §5.2, §6.2).
fn issued_response(result: Result<Result<Issued, Refused>, tokio::task::JoinError>) -> Response {
    match result {
        Ok(Ok(issued)) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, issued.content_type)],
            issued.body,
        )
            .into_response(),
        Ok(Err(refused)) => {
            let mut resp = crate::http::error_response(&refused.error);
            if refused.unprocessable {
                *resp.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
            }
            resp
        }
        Err(join) => crate::http::error_response(&HubError::Bug(join.to_string())),
    }
}

/// `GET` the registration issuer's directory (JSON, RFC 9578 §4).
pub async fn registration_directory(State(hub): State<Arc<Hub>>) -> Response {
    let h = hub.clone();
    let result = tokio::task::spawn_blocking(move || {
        h.tokens()
            .registration_directory(h.store().as_ref(), crate::now_ms())
    })
    .await;
    directory_response(result)
}

/// `GET` the issuer directory (JSON, RFC 9578 §4).
pub async fn directory(State(hub): State<Arc<Hub>>) -> Response {
    let h = hub.clone();
    let result = tokio::task::spawn_blocking(move || {
        h.tokens().directory(h.store().as_ref(), crate::now_ms())
    })
    .await;
    directory_response(result)
}

/// The HTTP answer of a directory read.
fn directory_response(
    result: Result<Result<IssuerDirectory, HubError>, tokio::task::JoinError>,
) -> Response {
    match result {
        Ok(Ok(dir)) => match serde_json::to_vec(&dir) {
            Ok(body) => (
                StatusCode::OK,
                [
                    (
                        header::CONTENT_TYPE,
                        "application/private-token-issuer-directory",
                    ),
                    (header::CACHE_CONTROL, "max-age=60"),
                ],
                body,
            )
                .into_response(),
            Err(e) => crate::http::error_response(&HubError::Bug(e.to_string())),
        },
        Ok(Err(e)) => crate::http::error_response(&e),
        Err(join) => crate::http::error_response(&HubError::Bug(join.to_string())),
    }
}

/// Rotates issuer keys ahead of need (new epoch keys, expiry of old ones and of their spent
/// nonces), so no request waits for RSA key generation.
pub async fn run_rotation(hub: Arc<Hub>) {
    let period =
        std::time::Duration::from_secs(hub.config().tokens.schedule.epoch_secs.clamp(1, 60));
    loop {
        let h = hub.clone();
        let done = tokio::task::spawn_blocking(move || {
            h.tokens().rotate(h.store().as_ref(), crate::now_ms())
        })
        .await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "privacy pass key rotation failed"),
            Err(e) => tracing::error!(error = %e, "privacy pass key rotation task failed"),
        }
        // Also wake just after each epoch begins, so processes sharing a store load the new
        // keys together rather up to a period apart.
        let epoch_ms = hub.config().tokens.schedule.epoch_secs.max(1) * 1000;
        let to_next = epoch_ms - crate::now_ms() % epoch_ms + 50;
        tokio::time::sleep(period.min(std::time::Duration::from_millis(to_next))).await;
    }
}
