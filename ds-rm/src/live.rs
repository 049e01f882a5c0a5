//! Live delivery: the WebSocket at `/qs/live` (protocol in `mimi_rm_protocol::live`).
//!
//! The socket is bound to one queue by its first frame, a signed `Dequeue` the core validates
//! as any other QS request, so it is authenticated by the queue's client key and nothing else:
//! no identity, no token. Afterwards the hub only says "your queue grew"; messages still leave
//! through authenticated dequeues. The socket holds its connection slot until it closes
//! (`listener.rs`), answers pings, and is closed when it stops answering ours.

use crate::core::{ClientRequest, Hub, HubError, RequestError};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::response::Response;
use mimi_rm_protocol::live::{AUTH_TIMEOUT_SECS, ERROR, MAX_FRAME, PING_SECS, READY, WAKE};
use mimi_rm_protocol::qs::{QsOperation, QsSender};
use mimi_rm_protocol::{TransactionType, encode};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// How often a live socket looks at its queue when other processes share the store (their
/// enqueues signal no listener in this one): the extra latency of live delivery there.
const SHARED_POLL: Duration = Duration::from_millis(500);

/// `GET /qs/live`: upgrades to the live-delivery WebSocket.
pub fn live(hub: Arc<Hub>, ws: WebSocketUpgrade) -> Response {
    ws.max_message_size(MAX_FRAME)
        .max_frame_size(MAX_FRAME)
        .on_upgrade(move |socket| serve(hub, socket))
}

/// Closes `socket` with `code` and a short reason.
async fn close(mut socket: WebSocket, code: u16, reason: &'static str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = socket.send(Message::Close(Some(frame))).await;
}

/// The client's queue id, if `bytes` is a QS dequeue request signed as a client (the core then
/// checks the signature).
fn dequeuer(hub: &Hub, bytes: &[u8]) -> Result<(ClientRequest, [u8; 16]), HubError> {
    let request = hub.decode_request(TransactionType::QueueService, bytes)?;
    match &request {
        ClientRequest::Qs(r) => match (&r.tbs.sender, &r.tbs.operation) {
            (QsSender::Client(id), QsOperation::Dequeue(_)) => Ok((request.clone(), *id)),
            _ => Err(HubError::Request(RequestError::Invalid(
                "a live socket opens with a client's dequeue",
            ))),
        },
        _ => Err(HubError::Request(RequestError::Invalid(
            "a live socket opens with a QS request",
        ))),
    }
}

async fn serve(hub: Arc<Hub>, mut socket: WebSocket) {
    let first = tokio::time::timeout(Duration::from_secs(AUTH_TIMEOUT_SECS), socket.recv()).await;
    let bytes = match first {
        Ok(Some(Ok(Message::Binary(b)))) => b,
        Ok(Some(Ok(_))) => {
            return close(socket, close_code::UNSUPPORTED, "binary frames only").await;
        }
        Ok(_) => return,
        Err(_) => return close(socket, close_code::POLICY, "no subscription in time").await,
    };
    // Validated by the core, on a blocking thread, exactly as a POST to /qs/request.
    let checked = {
        let hub = hub.clone();
        tokio::task::spawn_blocking(move || {
            let (request, id) = dequeuer(&hub, &bytes)?;
            let admission = crate::privacy_pass::admission(None);
            hub.handle_request(request, crate::now_ms(), &admission)
                .map(|body| (body, id))
        })
        .await
    };
    let (body, client) = match checked {
        Ok(Ok(ok)) => ok,
        Ok(Err(e)) => {
            tracing::info!(code = ?e.to_response().code, error = %e, "live subscription refused");
            let mut frame = vec![ERROR];
            frame.extend(encode(&e.to_response()).unwrap_or_default());
            let _ = socket.send(Message::Binary(frame.into())).await;
            return close(socket, close_code::POLICY, "refused").await;
        }
        Err(join) => {
            tracing::error!(error = %join, "live subscription task failed");
            return close(socket, close_code::ERROR, "internal error").await;
        }
    };
    let mut listening = hub.queue_signal.listen(client);
    let mut frame = vec![READY];
    frame.extend(body);
    if socket.send(Message::Binary(frame.into())).await.is_err() {
        return;
    }
    hub.metrics.live_opened.fetch_add(1, Relaxed);
    tracing::debug!("live socket open");
    let mut ping = tokio::time::interval(Duration::from_secs(PING_SECS));
    ping.tick().await;
    let mut answered = true;
    // Processes sharing a database do not see each other's enqueues: poll the queue, and
    // wake the client once per new oldest message.
    let shared = hub.is_shared();
    let mut poll = tokio::time::interval(SHARED_POLL);
    let mut woken_for: Option<Vec<u8>> = None;
    loop {
        tokio::select! {
            _ = poll.tick(), if shared => {
                let h = hub.clone();
                let head = match tokio::task::spawn_blocking(move || h.queue_head(&client)).await {
                    Ok(Ok(head)) => head,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "live socket: polling the queue failed");
                        None
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "live socket: queue poll task failed");
                        None
                    }
                };
                if let Some(head) = head
                    && woken_for.as_ref() != Some(&head)
                {
                    if socket.send(Message::Binary(vec![WAKE].into())).await.is_err() {
                        break;
                    }
                    woken_for = Some(head);
                    hub.metrics.live_wakes.fetch_add(1, Relaxed);
                }
            }
            grown = listening.grown() => {
                if !grown || socket.send(Message::Binary(vec![WAKE].into())).await.is_err() {
                    break;
                }
                hub.metrics.live_wakes.fetch_add(1, Relaxed);
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Pong(_))) => answered = true,
                // axum answers pings itself.
                Some(Ok(Message::Ping(_))) => {}
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {
                    close(socket, close_code::POLICY, "only the first frame is read").await;
                    break;
                }
            },
            _ = ping.tick() => {
                if !answered || socket.send(Message::Ping(Vec::new().into())).await.is_err() {
                    break;
                }
                answered = false;
            }
        }
    }
    hub.metrics.live_closed.fetch_add(1, Relaxed);
    tracing::debug!("live socket closed");
    // A message that came while the socket was open (perhaps already dead) and that the client
    // did not fetch is owed a push now that nobody listens.
    drop(listening);
    hub.push_after_socket_closed(&client, crate::now_ms());
}
