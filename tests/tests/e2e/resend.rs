//! A message whose acknowledgement the sender never saw (issue 19, part 4): the sender re-sends
//! the same ciphertext, the hub delivers both copies, and the recipient shows the message once
//! and reports nothing about the copy.

use mimi_client_rm::{Client, Event};
use mimi_rm_tests::common::{self, group_of, hub, messages};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One HTTP/1.1 message (head and `Content-Length` body) read from `s`; `None` at EOF.
async fn read_message(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let body = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            let total = end + 4 + body;
            if buf.len() >= total {
                return Some(buf.drain(..total).collect());
            }
        }
        let mut chunk = [0u8; 16 * 1024];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A proxy in front of the hub that passes everything, except that it swallows the hub's
/// answer to the next `lose` accepted group operations and closes the client's connection
/// instead: the request took effect, the client cannot know.
async fn lossy_proxy(hub: SocketAddr, lose: Arc<AtomicUsize>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let lose = lose.clone();
            tokio::spawn(async move {
                let Ok(mut upstream) = TcpStream::connect(hub).await else {
                    return;
                };
                let (mut from_client, mut from_hub) = (Vec::new(), Vec::new());
                while let Some(request) = read_message(&mut client, &mut from_client).await {
                    if upstream.write_all(&request).await.is_err() {
                        return;
                    }
                    let Some(response) = read_message(&mut upstream, &mut from_hub).await else {
                        return;
                    };
                    let accepted_group_op = request.starts_with(b"POST /group_operation ")
                        && response.starts_with(b"HTTP/1.1 200");
                    if accepted_group_op
                        && lose
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                            .is_ok()
                    {
                        return; // drops both connections: the answer never arrives
                    }
                    if client.write_all(&response).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_copy_is_shown_once_and_reported_never() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path());
    let lose = Arc::new(AtomicUsize::new(0));
    let proxy = lossy_proxy(hub.addr, lose.clone()).await;
    let mut alice = Client::register_with_ca(
        &dir.path().join("alice"),
        &format!("http://{proxy}"),
        "alice",
        None,
    )
    .await
    .expect("register alice through the proxy");
    let mut bob = common::client(&hub, dir.path(), "bob").await;
    let g = group_of(&mut alice, &mut [&mut bob]).await;
    lose.store(1, Ordering::SeqCst);
    alice
        .send(&g, b"said once")
        .await
        .expect("send, re-sent after the lost answer");
    // The hub accepted a SendMessage whose answer was lost, and `send` still succeeded: it
    // re-sent the ciphertext and the hub accepted that too, so bob's queue holds two copies.
    // (Without the client's duplicate check, bob reports the second as undecryptable.)
    assert_eq!(
        lose.load(Ordering::SeqCst),
        0,
        "the proxy lost an accepted answer"
    );
    let events = bob.receive().await.expect("receive");
    assert_eq!(messages(&events), vec![b"said once".to_vec()], "{events:?}");
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::Undecryptable { .. })),
        "the copy was reported: {events:?}"
    );
}
