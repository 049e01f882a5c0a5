//! The axum shell: decode nothing, call the core on a blocking thread, map errors to statuses.

use crate::core::{Hub, HubError};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use mimi_rm_protocol::{TransactionType, encode, paths};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

/// Builds the router for a hub.
pub fn router(hub: Arc<Hub>) -> Router {
    Router::new()
        .route(paths::GROUP_OPERATION, post(group_operation))
        .route(paths::WELCOME_INFORMATION, post(welcome_information))
        .route(
            paths::EXTERNAL_COMMIT_INFORMATION,
            post(external_commit_information),
        )
        .route(paths::QS, post(queue_service))
        .route(paths::AS, post(auth_service))
        .route(paths::DS_DOMAIN, get(ds_domain))
        .route("/metrics", get(metrics))
        // The core enforces the limit itself so it can answer with a TLS-encoded 413.
        .layer(DefaultBodyLimit::disable())
        .with_state(hub)
}

async fn group_operation(State(hub): State<Arc<Hub>>, body: Body) -> Response {
    dispatch(hub, TransactionType::GroupOperation, body).await
}

async fn welcome_information(State(hub): State<Arc<Hub>>, body: Body) -> Response {
    dispatch(hub, TransactionType::WelcomeInformation, body).await
}

async fn external_commit_information(State(hub): State<Arc<Hub>>, body: Body) -> Response {
    dispatch(hub, TransactionType::ExternalCommitInformation, body).await
}

async fn queue_service(State(hub): State<Arc<Hub>>, body: Body) -> Response {
    dispatch(hub, TransactionType::QueueService, body).await
}

async fn auth_service(State(hub): State<Arc<Hub>>, body: Body) -> Response {
    dispatch(hub, TransactionType::AuthService, body).await
}

async fn ds_domain(State(hub): State<Arc<Hub>>) -> String {
    hub.config().domain.clone()
}

async fn metrics(State(hub): State<Arc<Hub>>) -> String {
    let m = &hub.metrics;
    format!(
        "# TYPE mimi_requests_ok counter\nmimi_requests_ok {}\n\
         # TYPE mimi_requests_error counter\nmimi_requests_error {}\n\
         # TYPE mimi_messages_enqueued counter\nmimi_messages_enqueued {}\n\
         # TYPE mimi_fanout_undeliverable counter\nmimi_fanout_undeliverable {}\n",
        m.ok.load(Relaxed),
        m.errors.load(Relaxed),
        m.enqueued.load(Relaxed),
        m.undeliverable.load(Relaxed),
    )
}

async fn dispatch(hub: Arc<Hub>, endpoint: TransactionType, body: Body) -> Response {
    let limit = hub.config().max_body;
    let bytes: Bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => {
            hub.metrics.errors.fetch_add(1, Relaxed);
            return error_response(&HubError::TooLarge);
        }
    };
    let result =
        tokio::task::spawn_blocking(move || hub.handle(endpoint, &bytes, crate::now_ms())).await;
    match result {
        Ok(Ok(body)) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, paths::CONTENT_TYPE)],
            body,
        )
            .into_response(),
        Ok(Err(e)) => error_response(&e),
        Err(join) => {
            tracing::error!(error = %join, "request task failed");
            error_response(&HubError::Internal("task failed".into()))
        }
    }
}

fn error_response(e: &HubError) -> Response {
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
