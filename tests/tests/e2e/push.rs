//! Web Push wake-ups against a real hub process and a test push service.
//!
//! The push service is the receiving side of RFC 8030: it checks each push's VAPID signature
//! (RFC 8292) against the key the hub publishes and decrypts the RFC 8291 payload with the
//! subscription's own keys, as a user agent would. Checked: one wake-up per burst for an offline
//! client and none for a connected one; nothing about the subscription readable in the hub's
//! files; 404/410 drop the subscription and nothing else breaks; bad `SetPushToken` requests are
//! refused and change nothing.

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use mimi_client_rm::Event;
use mimi_ds_rm::store::Cf;
use mimi_rm_protocol::push::{PushSubscription, wake_payload};
use mimi_rm_protocol::qs::QsOperation;
use mimi_rm_protocol::{ErrorCode, paths};
use mimi_rm_tests::common::*;
use mimi_rm_tests::{HubProcess, contains};
use p256::ecdsa::signature::Verifier as _;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Lets the hub push to the loopback test service.
const PUSH_CONFIG: &str = "[push]\nallow_insecure_endpoints = true\n";

/// One subscriber of the test push service: its user-agent keys and what it answers.
struct Subscriber {
    secret: p256::SecretKey,
    auth: [u8; 16],
    status: u16,
}

/// What the push service saw.
#[derive(Default)]
struct Seen {
    /// Decrypted wake-ups per subscriber.
    wakes: HashMap<String, Vec<Vec<u8>>>,
    /// Requests per subscriber, whatever they were answered.
    requests: HashMap<String, usize>,
    /// Pushes that failed a check (bad VAPID, undecryptable, wrong headers).
    bad: Vec<String>,
}

#[derive(Clone)]
struct PushService {
    subscribers: Arc<Mutex<HashMap<String, Subscriber>>>,
    seen: Arc<Mutex<Seen>>,
    vapid: Arc<Vec<u8>>,
    origin: String,
}

impl PushService {
    /// Starts the service on a free loopback port; `vapid` is the hub's published key.
    async fn start(vapid: Vec<u8>) -> Self {
        let listener = tokio::net::TcpListener::bind(mimi_rm_tests::free_port())
            .await
            .unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        let service = Self {
            subscribers: Arc::default(),
            seen: Arc::default(),
            vapid: Arc::new(vapid),
            origin,
        };
        let app = axum::Router::new()
            .route("/push/{name}", axum::routing::post(receive))
            .with_state(service.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        service
    }

    /// A fresh subscription for `name`, answered with `status`.
    fn subscribe(&self, name: &str, status: u16) -> PushSubscription {
        let secret = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
        let auth: [u8; 16] = rand::random();
        let public = {
            use p256::elliptic_curve::sec1::ToEncodedPoint as _;
            secret
                .public_key()
                .to_encoded_point(false)
                .as_bytes()
                .to_vec()
        };
        self.subscribers.lock().unwrap().insert(
            name.into(),
            Subscriber {
                secret,
                auth,
                status,
            },
        );
        PushSubscription {
            endpoint: format!("{}/push/{name}", self.origin).into_bytes().into(),
            p256dh: public.into(),
            auth: auth.to_vec().into(),
        }
    }

    fn wakes(&self, name: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .wakes
            .get(name)
            .map_or(0, Vec::len)
    }

    fn requests(&self, name: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .requests
            .get(name)
            .copied()
            .unwrap_or(0)
    }

    fn bad(&self) -> Vec<String> {
        self.seen.lock().unwrap().bad.clone()
    }

    /// Waits (a guard against hanging, not a measurement) until `name` got `n` requests.
    async fn wait_for(&self, name: &str, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while self.requests(name) < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name}: {} pushes, waited for {n}",
                self.requests(name)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Checks a push as the push service and the user agent would, and records it.
async fn receive(
    State(svc): State<PushService>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let checked = check_push(&svc, &name, &headers, &body);
    let mut seen = svc.seen.lock().unwrap();
    *seen.requests.entry(name.clone()).or_default() += 1;
    match checked {
        Ok((status, plain)) => {
            seen.wakes.entry(name).or_default().push(plain);
            StatusCode::from_u16(status).unwrap()
        }
        Err(why) => {
            seen.bad.push(format!("{name}: {why}"));
            StatusCode::BAD_REQUEST
        }
    }
}

fn check_push(
    svc: &PushService,
    name: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(u16, Vec<u8>), String> {
    let header = |h: &str| {
        headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or(format!("no {h} header"))
    };
    if header("content-encoding")? != "aes128gcm" {
        return Err("not aes128gcm".into());
    }
    header("ttl")?
        .parse::<u64>()
        .map_err(|_| "TTL not a number")?;
    // RFC 8292: `vapid t=<JWT>, k=<key>`; the key must be the hub's, the JWT signed by it for
    // this service's origin.
    let auth = header("authorization")?;
    let (t, k) = auth
        .strip_prefix("vapid t=")
        .and_then(|r| r.split_once(", k="))
        .ok_or("not a VAPID authorization")?;
    let k = B64.decode(k).map_err(|_| "k not base64url")?;
    if k != *svc.vapid {
        return Err("k is not the hub's published key".into());
    }
    let (signing_input, sig) = t.rsplit_once('.').ok_or("JWT shape")?;
    let sig = p256::ecdsa::Signature::from_slice(&B64.decode(sig).map_err(|_| "sig b64")?)
        .map_err(|_| "signature shape")?;
    let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&k).map_err(|_| "k not a point")?;
    key.verify(signing_input.as_bytes(), &sig)
        .map_err(|_| "VAPID signature does not verify")?;
    let claims = signing_input.split_once('.').ok_or("JWT shape")?.1;
    let claims: serde_json::Value =
        serde_json::from_slice(&B64.decode(claims).map_err(|_| "claims b64")?)
            .map_err(|_| "claims JSON")?;
    if claims["aud"] != svc.origin.as_str() {
        return Err(format!("aud {} is not {}", claims["aud"], svc.origin));
    }
    let subs = svc.subscribers.lock().unwrap();
    let sub = subs.get(name).ok_or("unknown subscriber")?;
    let plain = web_push_native::decrypt(
        body.to_vec(),
        &sub.secret,
        &web_push_native::Auth::clone_from_slice(&sub.auth),
    )
    .map_err(|e| format!("RFC 8291 decryption: {e}"))?;
    Ok((sub.status, plain))
}

/// A hub with pushes to loopback allowed, and its VAPID key as served.
async fn push_hub(dir: &std::path::Path) -> (HubProcess, Vec<u8>) {
    let hub = hub_with_config(dir, PUSH_CONFIG);
    let key = mimi_rm_tests::get_bytes(None, &format!("{}{}", hub.url(), paths::QS_PUSH_KEY)).await;
    assert_eq!((key.len(), key[0]), (65, 4), "an uncompressed P-256 point");
    (hub, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_client_is_woken_once_per_burst_and_a_connected_one_never() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, vapid) = push_hub(dir.path()).await;
    let svc = PushService::start(vapid.clone()).await;
    let mut alice = client(&hub, dir.path(), "alice").await;
    let mut bob = client(&hub, dir.path(), "bob").await;
    let mut carol = client(&hub, dir.path(), "carol").await;
    assert_eq!(bob.push_server_key().await.unwrap(), vapid);
    let g = group_of(&mut alice, &mut [&mut bob, &mut carol]).await;
    let bob_sub = svc.subscribe("bob", 201);
    bob.set_push_subscription(&bob_sub).await.unwrap();
    carol
        .set_push_subscription(&svc.subscribe("carol", 201))
        .await
        .unwrap();
    alice.prefill_tokens(60).await.unwrap();

    // Carol keeps a live socket open; bob is offline.
    let carol_task = tokio::spawn(async move {
        let mut got = 0usize;
        while got < 30 {
            let events = carol.next_events().await.expect("next_events");
            let last = events.last().map(|(id, _)| *id).unwrap();
            got += events
                .iter()
                .filter(|(_, e)| matches!(e, Event::Message { .. }))
                .count();
            carol.events_shown(last).unwrap();
        }
        got
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    for i in 0..20 {
        alice
            .send(&g, format!("first {i}").as_bytes())
            .await
            .unwrap();
    }
    svc.wait_for("bob", 1).await;
    // Give a second, wrongly owed push time to arrive before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(svc.wakes("bob"), 1, "one wake-up for a burst of 20");
    let wake = &svc.seen.lock().unwrap().wakes["bob"][0].clone();
    assert_eq!(wake, &wake_payload(), "a fixed wake-up, no content");
    assert_eq!(wake.len(), 64, "one size for every push");

    // Woken, bob fetches: the next burst wakes it once more.
    assert_eq!(messages(&bob.receive().await.unwrap()).len(), 20);
    for i in 0..10 {
        alice
            .send(&g, format!("second {i}").as_bytes())
            .await
            .unwrap();
    }
    svc.wait_for("bob", 2).await;
    assert_eq!(
        carol_task.await.unwrap(),
        30,
        "carol saw every message live"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(svc.wakes("bob"), 2);
    assert_eq!(
        svc.requests("carol"),
        0,
        "a connected client is never pushed"
    );
    assert!(svc.bad().is_empty(), "{:?}", svc.bad());
    assert_eq!(metric(&hub, "mimi_pushes_sent").await, 2);

    // A seized disk shows that bob has a subscription, and nothing of it: no endpoint, no keys.
    let dump = hub.dump();
    let bob_id = bob.client_id_bytes().unwrap();
    let rows: Vec<_> = dump.iter().filter(|(cf, _, _)| *cf == Cf::QsPush).collect();
    assert_eq!(rows.len(), 2, "bob's and carol's sealed subscriptions");
    assert!(
        rows.iter().any(|(_, k, _)| contains(k, &bob_id)),
        "positive control: the scan reads the push family"
    );
    let secrets: [(&str, &[u8]); 4] = [
        ("endpoint", bob_sub.endpoint.as_slice()),
        ("endpoint path", b"/push/bob"),
        ("p256dh", bob_sub.p256dh.as_slice()),
        ("auth", bob_sub.auth.as_slice()),
    ];
    for (what, needle) in secrets {
        for (cf, k, v) in &dump {
            assert!(
                !contains(k, needle) && !contains(v, needle),
                "{what} readable in {cf:?}"
            );
        }
        for (file, bytes) in dir_files(&hub.data) {
            assert!(!contains(&bytes, needle), "{what} readable in file {file}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_subscription_is_dropped_and_nothing_else_breaks() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, vapid) = push_hub(dir.path()).await;
    let svc = PushService::start(vapid).await;
    let mut alice = client(&hub, dir.path(), "alice").await;
    let mut dave = client(&hub, dir.path(), "dave").await;
    let mut erin = client(&hub, dir.path(), "erin").await;
    let g = group_of(&mut alice, &mut [&mut dave, &mut erin]).await;
    dave.set_push_subscription(&svc.subscribe("dave", 410))
        .await
        .unwrap();
    erin.set_push_subscription(&svc.subscribe("erin", 404))
        .await
        .unwrap();
    let push_rows = |hub: &HubProcess| {
        hub.dump()
            .iter()
            .filter(|(cf, _, _)| *cf == Cf::QsPush)
            .count()
    };
    assert_eq!(push_rows(&hub), 2);

    alice.send(&g, b"one").await.unwrap();
    svc.wait_for("dave", 1).await;
    svc.wait_for("erin", 1).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while metric(&hub, "mimi_push_subscriptions_expired").await < 2 {
        assert!(tokio::time::Instant::now() < deadline, "subscriptions kept");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(push_rows(&hub), 0, "both gone subscriptions dropped");

    // The message itself is unaffected, and with no subscription left nobody is pushed again.
    assert_eq!(
        messages(&dave.receive().await.unwrap()),
        vec![b"one".to_vec()]
    );
    assert_eq!(
        messages(&erin.receive().await.unwrap()),
        vec![b"one".to_vec()]
    );
    alice.send(&g, b"two").await.unwrap();
    assert_eq!(
        messages(&dave.receive().await.unwrap()),
        vec![b"two".to_vec()]
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!((svc.requests("dave"), svc.requests("erin")), (1, 1));
    assert_eq!(metric(&hub, "mimi_pushes_sent").await, 0);
    assert!(svc.bad().is_empty(), "{:?}", svc.bad());

    // A fresh subscription works again.
    dave.set_push_subscription(&svc.subscribe("dave", 201))
        .await
        .unwrap();
    alice.send(&g, b"three").await.unwrap();
    svc.wait_for("dave", 2).await;
    assert_eq!(svc.wakes("dave"), 2, "the 410 answer and the new wake-up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_push_subscriptions_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, vapid) = push_hub(dir.path()).await;
    let svc = PushService::start(vapid).await;
    let mut alice = client(&hub, dir.path(), "alice").await;
    let mut bob = client(&hub, dir.path(), "bob").await;
    let g = group_of(&mut alice, &mut [&mut bob]).await;

    // Refused in the library before anything is sent.
    let good = svc.subscribe("bob", 201);
    let mut bad_key = good.clone();
    bad_key.p256dh = vec![4; 10].into();
    let mut bad_auth = good.clone();
    bad_auth.auth = vec![1; 15].into();
    let mut bad_url = good.clone();
    bad_url.endpoint = b"file:///etc/passwd".to_vec().into();
    for bad in [bad_key, bad_auth, bad_url] {
        assert!(matches!(
            bob.set_push_subscription(&bad).await,
            Err(mimi_client_rm::ClientError::InvalidInput(_))
        ));
    }

    // Refused by the hub, byte-identical store afterwards.
    let stranger = mimi_rm_crypto::sign::SigningKey::generate();
    let bob_id = bob.client_id_bytes().unwrap();
    let sealed = |n: usize| QsOperation::SetPushToken(vec![7; n].into());
    let fine = bob.signed_client_request(sealed(64)).unwrap();
    let mut flipped = fine.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    let mut truncated = fine.clone();
    truncated.truncate(fine.len() - 70);
    let cases: Vec<(&str, Vec<u8>, u16, ErrorCode)> = vec![
        (
            "oversized sealed subscription",
            bob.signed_client_request(sealed(5000)).unwrap(),
            400,
            ErrorCode::InvalidRequest,
        ),
        (
            "signed by another key",
            qs_signed(
                mimi_rm_protocol::qs::QsSender::Client(bob_id),
                sealed(64),
                &stranger,
            ),
            403,
            ErrorCode::InvalidSignature,
        ),
        ("wrongly signed", flipped, 403, ErrorCode::InvalidSignature),
        ("truncated", truncated, 400, ErrorCode::Malformed),
    ];
    for (case, body, status, code) in cases {
        rejected_case(&hub, case, paths::QS, body, status, code).await;
    }
    // Accepted once, then a replay is refused.
    let (status, _) = mimi_rm_tests::post(&hub.url(), paths::QS, fine.clone()).await;
    assert_eq!(status, 200);
    rejected_case(&hub, "replayed", paths::QS, fine, 403, ErrorCode::Replayed).await;

    // The stored blob is not sealed under bob's key: the push is dropped, delivery goes on.
    let dropped = metric(&hub, "mimi_pushes_dropped").await;
    alice.send(&g, b"still here").await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while metric(&hub, "mimi_pushes_dropped").await == dropped {
        assert!(tokio::time::Instant::now() < deadline, "push not dropped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(svc.requests("bob"), 0);
    assert_eq!(
        messages(&bob.receive().await.unwrap()),
        vec![b"still here".to_vec()]
    );

    // Clearing removes the stored subscription.
    bob.set_push_subscription(&good).await.unwrap();
    bob.clear_push_subscription().await.unwrap();
    assert!(!hub.dump().iter().any(|(cf, _, _)| *cf == Cf::QsPush));
    alice.send(&g, b"quiet").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(svc.requests("bob"), 0);
}

/// The offline client's own view: the CLI registers a subscription from the values a push
/// service gives, and prints the hub's key in the form browsers take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_registers_a_subscription_and_prints_the_server_key() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, vapid) = push_hub(dir.path()).await;
    let svc = PushService::start(vapid.clone()).await;
    let mut alice = client(&hub, dir.path(), "alice").await;
    let mut bob = client(&hub, dir.path(), "bob").await;
    let g = group_of(&mut alice, &mut [&mut bob]).await;
    drop(bob);
    let bob_dir = dir.path().join("bob");
    let cli = |args: &[&str]| run_cli(&hub.url(), &bob_dir, args);
    assert_eq!(cli(&["push", "server-key"]).trim(), B64.encode(&vapid));
    let sub = svc.subscribe("bob", 201);
    cli(&[
        "push",
        "set",
        "--endpoint",
        std::str::from_utf8(sub.endpoint.as_slice()).unwrap(),
        "--p256dh",
        &B64.encode(sub.p256dh.as_slice()),
        "--auth",
        &B64.encode(sub.auth.as_slice()),
    ]);
    alice.send(&g, b"wake").await.unwrap();
    svc.wait_for("bob", 1).await;
    assert_eq!(svc.wakes("bob"), 1);
    assert!(cli(&["receive"]).contains("wake"), "the woken client reads");
    cli(&["push", "clear"]);
    assert!(!hub.dump().iter().any(|(cf, _, _)| *cf == Cf::QsPush));
}

/// A socket that dies before its client fetched what it was woken for: the hub pushes once
/// the socket is gone, from the queue ref it kept (not the key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_left_unfetched_on_a_dead_socket_is_pushed_when_it_closes() {
    use futures_util::{SinkExt as _, StreamExt as _};
    use mimi_rm_protocol::qs::Dequeue;
    use tokio_tungstenite::tungstenite::Message;
    let dir = tempfile::tempdir().unwrap();
    let (hub, vapid) = push_hub(dir.path()).await;
    let svc = PushService::start(vapid).await;
    let mut alice = client(&hub, dir.path(), "alice").await;
    let mut carol = client(&hub, dir.path(), "carol").await;
    let g = group_of(&mut alice, &mut [&mut carol]).await;
    carol
        .set_push_subscription(&svc.subscribe("carol", 201))
        .await
        .unwrap();
    // A live socket of carol's, which will never fetch.
    let url = hub.url().replacen("http://", "ws://", 1) + paths::QS_LIVE;
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let first = carol
        .signed_client_request(QsOperation::Dequeue(Dequeue {
            ack_below: 0,
            max: 1,
            release: Vec::new(),
        }))
        .unwrap();
    ws.send(Message::Binary(first.into())).await.unwrap();
    let ready = ws.next().await.unwrap().unwrap();
    assert!(matches!(ready, Message::Binary(_)), "subscribed");
    alice.send(&g, b"while connected").await.unwrap();
    // The hub wakes the socket, not the push service.
    let wake = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("a wake-up on the socket");
    assert!(matches!(wake, Some(Ok(Message::Binary(_)))));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(svc.requests("carol"), 0, "connected: no push");
    drop(ws);
    svc.wait_for("carol", 1).await;
    assert_eq!(svc.wakes("carol"), 1, "pushed once the socket was gone");
    assert_eq!(
        messages(&carol.receive().await.unwrap()),
        vec![b"while connected".to_vec()]
    );
}
