//! Live delivery against a real hub process: a recipient waiting on its WebSocket gets every
//! message of a 500-message burst, through a hub crash in the middle, exactly once and without
//! polling; and the socket refuses every subscription that is not a fresh, correctly signed
//! dequeue of the subscriber's own queue, leaving the store unchanged.

use futures_util::{SinkExt as _, StreamExt as _};
use mimi_client_rm::{Client, Event};
use mimi_rm_protocol::live::{ERROR, READY, WAKE};
use mimi_rm_protocol::qs::{Dequeue, QsOperation, QsSender};
use mimi_rm_protocol::{ErrorCode, ErrorResponse, decode_exact, paths};
use mimi_rm_tests::common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// Waits (at most two minutes, a guard against hanging, not a measurement) until `bob` has
/// shown `n` messages; returns each message's event numbers and bob.
async fn collect(mut bob: Client, n: usize) -> (Client, BTreeMap<Vec<u8>, BTreeSet<u64>>) {
    let mut seen: BTreeMap<Vec<u8>, BTreeSet<u64>> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while seen.len() < n {
        let events = tokio::time::timeout_at(deadline, bob.next_events())
            .await
            .expect("all messages arrive")
            .expect("next_events");
        let last = events.last().map(|(id, _)| *id).unwrap();
        for (id, e) in events {
            if let Event::Message { plaintext, .. } = e {
                seen.entry(plaintext).or_default().insert(id);
            }
        }
        bob.events_shown(last).unwrap();
    }
    (bob, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_recipient_gets_a_burst_through_a_hub_crash_once_each_without_polling() {
    let dir = tempfile::tempdir().unwrap();
    let mut hub = hub(dir.path());
    let mut alice = client(&hub, dir.path(), "alice").await;
    let mut bob = client(&hub, dir.path(), "bob").await;
    let g = group_of(&mut alice, &mut [&mut bob]).await;
    alice.prefill_tokens(600).await.unwrap();

    const N: usize = 500;
    let waiting = tokio::spawn(collect(bob, N));
    // Bob's socket is up before the burst starts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..N {
        if i == N / 2 {
            // The socket drops mid-burst; alice's sends wait the outage out.
            tokio::task::block_in_place(|| hub.crash_and_restart());
        }
        alice
            .send(&g, format!("burst {i}").as_bytes())
            .await
            .unwrap();
    }
    let (bob, seen) = waiting.await.unwrap();

    assert_eq!(seen.len(), N, "0 lost");
    for (text, ids) in &seen {
        assert_eq!(
            ids.len(),
            1,
            "{} shown as {ids:?}",
            String::from_utf8_lossy(text)
        );
    }
    for i in 0..N {
        assert!(seen.contains_key(format!("burst {i}").as_bytes()));
    }
    let stats = bob.listen_stats();
    eprintln!("live: {stats:?}");
    assert!(
        stats.connects >= 2,
        "reconnected after the crash: {stats:?}"
    );
    assert!(stats.wakes >= 10, "woken by the hub: {stats:?}");
    // Every fetch followed a wake-up, a (re)connection or a failed connection attempt while
    // the hub was down: none came from a timer.
    assert!(
        stats.fetches <= stats.wakes + stats.connects + stats.connect_failures,
        "{stats:?}"
    );
    assert!(metric(&hub, "mimi_live_wakes").await >= 1);
}

/// Opens a raw WebSocket to the hub's live endpoint.
async fn socket(
    hub: &mimi_rm_tests::HubProcess,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let url = hub.url().replacen("http://", "ws://", 1) + paths::QS_LIVE;
    tokio_tungstenite::connect_async(url)
        .await
        .expect("upgrade")
        .0
}

/// The first binary frame the hub answers `first` with, or `None` if it closed without one.
async fn answer(hub: &mimi_rm_tests::HubProcess, first: Message) -> Option<Vec<u8>> {
    let mut ws = socket(hub).await;
    ws.send(first).await.ok()?;
    while let Some(Ok(m)) = ws.next().await {
        match m {
            Message::Binary(b) => return Some(b.to_vec()),
            Message::Close(_) => return None,
            _ => {}
        }
    }
    None
}

/// The error code of an [`ERROR`] frame.
fn refusal(frame: &[u8]) -> ErrorCode {
    assert_eq!(frame.first(), Some(&ERROR), "{frame:?}");
    decode_exact::<ErrorResponse>(&frame[1..], 4096)
        .unwrap()
        .code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_socket_takes_only_a_fresh_signed_dequeue_and_changes_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path());
    let mut alice = client(&hub, dir.path(), "alice").await;
    let mut bob = client(&hub, dir.path(), "bob").await;
    let g = group_of(&mut alice, &mut [&mut bob]).await;
    bob.receive().await.unwrap();
    let dequeue = |ack_below| {
        QsOperation::Dequeue(Dequeue {
            ack_below,
            max: 0,
            release: Vec::new(),
        })
    };

    // A good subscription: READY, then a wake-up when alice sends.
    let good = bob.signed_client_request(dequeue(0)).unwrap();
    let mut ws = socket(&hub).await;
    ws.send(Message::Binary(good.clone().into())).await.unwrap();
    let ready = ws.next().await.unwrap().unwrap().into_data();
    assert_eq!(ready.first(), Some(&READY));
    alice.send(&g, b"wake up").await.unwrap();
    loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Binary(b) => {
                assert_eq!(b.as_ref(), [WAKE]);
                break;
            }
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        messages(&bob.receive().await.unwrap()),
        vec![b"wake up".to_vec()]
    );
    drop(ws);

    let before = hub.dump();
    let bob_id = bob.client_id_bytes().unwrap();
    let stranger = mimi_rm_crypto::sign::SigningKey::generate();
    let mut truncated = good.clone();
    truncated.truncate(good.len() / 2);
    let mut flipped = bob.signed_client_request(dequeue(0)).unwrap();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    let cases: Vec<(&str, Message, Option<ErrorCode>)> = vec![
        (
            "replayed",
            Message::Binary(good.clone().into()),
            Some(ErrorCode::Replayed),
        ),
        (
            "signed by another key",
            Message::Binary(qs_signed(QsSender::Client(bob_id), dequeue(0), &stranger).into()),
            Some(ErrorCode::InvalidSignature),
        ),
        (
            "wrongly signed",
            Message::Binary(flipped.into()),
            Some(ErrorCode::InvalidSignature),
        ),
        (
            "truncated",
            Message::Binary(truncated.into()),
            Some(ErrorCode::Malformed),
        ),
        (
            "not a dequeue",
            Message::Binary(
                bob.signed_client_request(QsOperation::DeleteClient)
                    .unwrap()
                    .into(),
            ),
            Some(ErrorCode::InvalidRequest),
        ),
        ("text", Message::Text("hello".into()), None),
        (
            "oversized",
            Message::Binary(vec![0u8; 64 * 1024].into()),
            None,
        ),
    ];
    for (case, frame, code) in cases {
        let got = answer(&hub, frame).await;
        match code {
            Some(code) => {
                let frame = got.unwrap_or_else(|| panic!("{case}: closed without an answer"));
                assert_eq!(refusal(&frame), code, "{case}");
            }
            None => assert!(got.is_none(), "{case}: answered {got:?}"),
        }
    }
    assert_eq!(hub.dump(), before, "refused subscriptions changed nothing");
    // Bob's client is unharmed: the queue still works.
    alice.send(&g, b"after").await.unwrap();
    assert_eq!(
        messages(&bob.receive().await.unwrap()),
        vec![b"after".to_vec()]
    );
}
