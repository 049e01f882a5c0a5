//! Two providers, `a.test` and `b.test`, as two real hub processes serving HTTPS under a
//! throwaway CA: groups hosted on A with members on both, forwarding (B → A), durable delivery
//! (A → B) across an outage, and forged server-to-server messages refused.

use mimi_client_rm::{Client, Event, GroupHandle};
use mimi_ds_rm::store::Cf;
use mimi_rm_crypto::hpke_seal;
use mimi_rm_crypto::sign::SigningKey;
use mimi_rm_protocol::federation::*;
use mimi_rm_protocol::qs::{QsOperation, QsRequest, QsRequestTbs, QsResponse, QsSender};
use mimi_rm_protocol::queue::*;
use mimi_rm_protocol::{Envelope, ErrorCode, TransactionType, decode_exact, encode, paths};
use mimi_rm_tests::common::{client, hub_binary, messages, metric, rejected};
use mimi_rm_tests::tls::{TestCa, generate_test_ca};
use mimi_rm_tests::{HubProcess, contains, error_of, free_port, post_with_ca};
use std::path::Path;
use std::time::{Duration, Instant};

struct Providers {
    ca: TestCa,
    a: HubProcess,
    b: HubProcess,
}

/// Starts A and B, each knowing the other's URL and trusting the test CA.
fn providers(dir: &Path) -> Providers {
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    let ca = generate_test_ca(&tls, &["a.test", "b.test"]).unwrap();
    let (addr_a, addr_b) = (free_port(), free_port());
    let config = |peer: &str, addr: std::net::SocketAddr| {
        format!(
            "peer_ca_cert = {:?}\n[peers]\n{peer:?} = \"https://{addr}\"\n",
            ca.ca_cert.display().to_string()
        )
    };
    let dir_a = dir.join("a");
    let dir_b = dir.join("b");
    std::fs::create_dir_all(&dir_a).unwrap();
    std::fs::create_dir_all(&dir_b).unwrap();
    let bin = hub_binary();
    let a = HubProcess::start_tls_at(
        &bin,
        &dir_a,
        "a.test",
        &ca,
        addr_a,
        &config("b.test", addr_b),
    );
    let b = HubProcess::start_tls_at(
        &bin,
        &dir_b,
        "b.test",
        &ca,
        addr_b,
        &config("a.test", addr_a),
    );
    Providers { ca, a, b }
}

/// Alice on A and bob on B, contacts, in a group hosted on A.
async fn pair(p: &Providers, dir: &Path) -> (Client, Client, GroupHandle) {
    let mut alice = client(&p.a, dir, "alice").await;
    let mut bob = client(&p.b, dir, "bob").await;
    befriend(&mut [&mut alice, &mut bob]);
    let g = alice.create_group().await.unwrap();
    let e = alice
        .invite(&g, &bob.contact_card().unwrap())
        .await
        .unwrap();
    receive_until(&mut bob, has_epoch(&g, e)).await;
    (alice, bob, g)
}

/// Everyone accepts everyone's contact card.
fn befriend(clients: &mut [&mut Client]) {
    let cards: Vec<_> = clients.iter().map(|c| c.contact_card().unwrap()).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        for (j, card) in cards.iter().enumerate() {
            if i != j {
                c.add_contact(card).unwrap();
            }
        }
    }
}

/// Receives until `done` holds for everything received so far (fan-out to the other provider
/// arrives asynchronously, from the hub's outbox); panics after a generous bound.
async fn receive_until(c: &mut Client, done: impl Fn(&[Event]) -> bool) -> Vec<Event> {
    let mut all = Vec::new();
    let start = Instant::now();
    loop {
        all.extend(c.receive().await.expect("receive"));
        if done(&all) {
            return all;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{} still waiting; got {all:?}",
            c.name()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn has_epoch(g: &GroupHandle, epoch: u64) -> impl Fn(&[Event]) -> bool + '_ {
    move |evs: &[Event]| {
        evs.iter().any(|e| {
            matches!(e, Event::Commit { group, epoch: x } if group == g && *x >= epoch)
                || matches!(e, Event::Joined { group } if group == g)
        })
    }
}

/// Sends `text` from `from` and checks every client in `to` reads it exactly once.
async fn say(from: &mut Client, to: &mut [&mut Client], g: &GroupHandle, text: &str) {
    from.send(g, text.as_bytes()).await.expect("send");
    for c in to.iter_mut() {
        let got = receive_until(c, |e| messages(e).iter().any(|t| t == text.as_bytes())).await;
        assert_eq!(
            messages(&got)
                .iter()
                .filter(|t| *t == text.as_bytes())
                .count(),
            1,
            "{} reads {text:?} exactly once",
            c.name()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_on_a_with_members_on_both_providers() {
    let dir = tempfile::tempdir().unwrap();
    let p = providers(dir.path());
    let mut alice = client(&p.a, dir.path(), "alice").await;
    let mut carol = client(&p.a, dir.path(), "carol").await;
    let mut erin = client(&p.a, dir.path(), "erin").await;
    let mut bob = client(&p.b, dir.path(), "bob").await;
    let mut dave = client(&p.b, dir.path(), "dave").await;
    befriend(&mut [&mut alice, &mut carol, &mut erin, &mut bob, &mut dave]);

    // Alice (A) hosts the group and adds bob (B), carol (A) and dave (B): bob's and dave's
    // AddPackages and AS credentials come through A from B.
    let g = alice.create_group().await.unwrap();
    assert!(g.0.ends_with(b"a.test"));
    for (i, card) in [
        bob.contact_card().unwrap(),
        carol.contact_card().unwrap(),
        dave.contact_card().unwrap(),
    ]
    .iter()
    .enumerate()
    {
        let epoch = alice.invite(&g, card).await.unwrap();
        let members: [&mut Client; 3] = [&mut bob, &mut carol, &mut dave];
        for (j, m) in members.into_iter().enumerate() {
            if j <= i {
                receive_until(m, has_epoch(&g, epoch)).await;
            }
        }
    }
    for m in [&bob, &carol, &dave] {
        assert_eq!(m.epoch(&g).unwrap(), alice.epoch(&g).unwrap());
        assert_eq!(m.members(&g).unwrap().len(), 4);
    }
    // Messages both ways: from A (local + outbox) and from B (forwarded to A, then fanned out).
    say(
        &mut alice,
        &mut [&mut carol, &mut bob, &mut dave],
        &g,
        "hello from a",
    )
    .await;
    say(
        &mut bob,
        &mut [&mut alice, &mut carol, &mut dave],
        &g,
        "hello from b",
    )
    .await;
    // An update from B, an add from B (of a user on A), a remove from A of a member on B.
    let e = bob.update(&g).await.unwrap();
    for m in [&mut alice, &mut carol, &mut dave] {
        receive_until(m, has_epoch(&g, e)).await;
    }
    // Adding users is for admins: alice makes dave (on B) one, through his provider.
    let dave_leaf = dave.own_leaf(&g).unwrap();
    alice
        .set_role(&g, dave_leaf, mimi_rm_protocol::ds::Role::Admin)
        .await
        .unwrap();
    let e = dave
        .invite(&g, &erin.contact_card().unwrap())
        .await
        .unwrap();
    for m in [&mut alice, &mut carol, &mut bob, &mut erin] {
        receive_until(m, has_epoch(&g, e)).await;
    }
    let dave_leaf = dave.own_leaf(&g).unwrap();
    let e = alice.remove(&g, &[dave_leaf]).await.unwrap();
    for m in [&mut carol, &mut bob, &mut erin] {
        receive_until(m, has_epoch(&g, e)).await;
    }
    receive_until(&mut dave, |evs| {
        evs.iter()
            .any(|x| matches!(x, Event::Removed { group } if *group == g))
    })
    .await;
    say(
        &mut erin,
        &mut [&mut alice, &mut carol, &mut bob],
        &g,
        "erin joined from b's add",
    )
    .await;
    // Everyone agrees, and sees verified handles across providers.
    let auth = alice.epoch_authenticator(&g).unwrap();
    for m in [&carol, &bob, &erin] {
        assert_eq!(m.epoch_authenticator(&g).unwrap(), auth);
    }
    let ids = bob.member_identities(&g).unwrap();
    assert!(
        ids.values()
            .all(|i| matches!(i, mimi_client_rm::MemberIdentity::Verified { .. })),
        "{ids:?}"
    );

    // A's disk shows B's members only as sealed queue refs: no B handle, credential or queue id.
    let dump = p.a.dump();
    for c in [&bob, &dave] {
        let cred = encode(&c.client_credential().unwrap()).unwrap();
        let qid = c.client_id_bytes().unwrap();
        for (cf, k, v) in &dump {
            for needle in [c.name().as_bytes(), &cred[..], &qid[..]] {
                assert!(
                    !contains(k, needle) && !contains(v, needle),
                    "{}'s identity or queue id in A's {cf:?}",
                    c.name()
                );
            }
        }
    }
    assert!(
        !dump.iter().any(|(cf, _, _)| *cf == Cf::FedOutbox),
        "everything was delivered"
    );
    // The traffic really crossed providers, both ways.
    assert!(metric(&p.a, "mimi_delivered_to_peers").await > 0);
    assert!(metric(&p.b, "mimi_received_from_peers").await > 0);
    assert!(
        metric(&p.b, "mimi_delivered_to_peers").await == 0,
        "B hosts nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_outage_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = providers(dir.path());
    let (mut alice, mut bob, g) = pair(&p, dir.path()).await;
    say(&mut alice, &mut [&mut bob], &g, "before the outage").await;

    // B goes down hard; A keeps accepting messages for bob into its durable outbox.
    p.b.crash();
    let sent: Vec<String> = (0..5).map(|i| format!("during the outage {i}")).collect();
    for t in &sent {
        alice.send(&g, t.as_bytes()).await.unwrap();
    }
    let dump = p.a.dump();
    let outbox: Vec<&Vec<u8>> = dump
        .iter()
        .filter(|(cf, _, _)| *cf == Cf::FedOutbox)
        .map(|(_, _, v)| v)
        .collect();
    assert_eq!(outbox.len(), 5, "A holds the undelivered messages durably");
    // A disk seized now shows sealed items only: each is an HPKE ciphertext for B's QS, none
    // decodes as a delivery item, and none holds the group id that every MLS message carries
    // in its clear header (the id A keys the group's state by: the needle is real).
    assert!(
        dump.iter()
            .any(|(cf, k, _)| *cf == Cf::DsGroups && k == &g.0)
    );
    for value in &outbox {
        assert!(
            decode_exact::<DeliveryItem>(value, usize::MAX).is_err(),
            "an outbox item is stored readable"
        );
        decode_exact::<HpkeCiphertextWire>(value, usize::MAX).expect("a sealed item");
        assert!(
            !contains(value, &g.0),
            "the group id is readable in the outbox"
        );
    }
    // A restarts too (the outbox survives), then B comes back.
    p.a.crash_and_restart();
    p.b.restart();
    let got = receive_until(&mut bob, |evs| messages(evs).len() >= sent.len()).await;
    assert_eq!(
        messages(&got),
        sent.iter()
            .map(|t| t.as_bytes().to_vec())
            .collect::<Vec<_>>(),
        "every message exactly once, in order"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        messages(&bob.receive().await.unwrap()).is_empty(),
        "no duplicates"
    );
    say(&mut bob, &mut [&mut alice], &g, "after the outage").await;
}

/// A's federation signing key, read from its store (the test plays a forger who has it, or not).
fn s2s_key(hub: &HubProcess) -> SigningKey {
    let (_, _, v) = hub
        .dump()
        .into_iter()
        .find(|(cf, k, _)| *cf == Cf::ServerKeys && k == b"s2s_signing_v1")
        .expect("federation key");
    SigningKey::from_bytes(&v).unwrap()
}

fn s2s(key: &SigningKey, sender: &str, recipient: &str, ts: u64, payload: S2sPayload) -> Vec<u8> {
    let tbs = S2sEnvelopeTbs {
        sender_domain: sender.as_bytes().to_vec().into(),
        recipient_domain: recipient.as_bytes().to_vec().into(),
        id: rand::random(),
        timestamp_ms: ts,
        payload,
    };
    let signature = key.sign(S2S_SIGNATURE_LABEL, &encode(&tbs).unwrap()).into();
    encode(&Envelope::new(
        TransactionType::Federation,
        encode(&S2sEnvelope { tbs, signature }).unwrap(),
    ))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_misaddressed_server_messages_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = providers(dir.path());
    let bob = client(&p.b, dir.path(), "bob").await;
    // A delivery item for bob's queue, sealed to B's QS key as bob's own client would.
    let ca = p.ca.ca_pem.clone();
    let qs_key = {
        let req = QsRequest {
            tbs: QsRequestTbs {
                timestamp_ms: mimi_ds_rm::now_ms(),
                nonce: rand::random(),
                sender: QsSender::Anonymous,
                operation: QsOperation::EncryptionKey,
            },
            signature: Vec::new().into(),
        };
        let body = mimi_client_rm::envelope(TransactionType::QueueService, &req).unwrap();
        let (_, resp) = post_with_ca(Some(&ca), &p.b.url(), paths::QS, body).await;
        match decode_exact::<QsResponse>(&resp, 1 << 16).unwrap() {
            QsResponse::EncryptionKey(k) => {
                hpke_seal::HpkePublicKey::from_bytes(k.as_slice()).unwrap()
            }
            other => panic!("{other:?}"),
        }
    };
    let plain = encode(&QueueRefPlain {
        client_id: bob.client_id_bytes().unwrap(),
    })
    .unwrap();
    let sealed = hpke_seal::seal(&qs_key, QUEUE_REF_HPKE_LABEL, b"b.test", &plain).unwrap();
    let item = DeliveryItem {
        id: rand::random(),
        created_ms: mimi_ds_rm::now_ms(),
        queue_ref: QueueRef {
            domain: b"b.test".to_vec().into(),
            address: QueueAddress::Sealed(HpkeCiphertextWire {
                kem_output: sealed.kem_output.into(),
                ciphertext: sealed.ciphertext.into(),
            }),
        },
        message: QueueMessage::Mls(b"not really MLS".to_vec().into()),
    };
    let deliver = || S2sPayload::Deliver(vec![item.clone()]);
    let now = mimi_ds_rm::now_ms;
    let a_key = s2s_key(&p.a);
    let b_key = s2s_key(&p.b);
    let path = paths::DELIVER_MESSAGE;

    // A key nobody published, claiming to be A.
    let rogue = SigningKey::generate();
    let body = s2s(&rogue, "a.test", "b.test", now(), deliver());
    rejected(&p.b, path, body, 403, ErrorCode::InvalidSignature).await;
    // A valid key of another domain (B's own) claiming to be A.
    let body = s2s(&b_key, "a.test", "b.test", now(), deliver());
    rejected(&p.b, path, body, 403, ErrorCode::InvalidSignature).await;
    // A domain B does not federate with: refused without B ever connecting to it.
    let body = s2s(&rogue, "c.test", "b.test", now(), deliver());
    rejected(&p.b, path, body, 403, ErrorCode::NotAPeer).await;
    // A client asking B to forward to a non-peer gets the same answer (no connection made).
    let foreign = mimi_rm_protocol::ds::QualifiedGroupId {
        uuid: rand::random(),
        domain: b"internal.example".to_vec().into(),
    };
    let req = mimi_rm_protocol::ds::DsRequest {
        tbs: mimi_rm_protocol::ds::DsRequestTbs {
            group_id: encode(&foreign).unwrap().into(),
            ear_key: Some(vec![0; 32].into()),
            timestamp_ms: now(),
            nonce: rand::random(),
            sender: mimi_rm_protocol::ds::DsSender::Anonymous,
            operation: mimi_rm_protocol::ds::DsOperation::ExternalCommitInfo,
        },
        signature: Vec::new().into(),
    };
    let body = mimi_client_rm::envelope(TransactionType::ExternalCommitInformation, &req).unwrap();
    rejected(
        &p.b,
        paths::EXTERNAL_COMMIT_INFORMATION,
        body,
        403,
        ErrorCode::NotAPeer,
    )
    .await;
    // A's real key, but addressed to another domain.
    let body = s2s(&a_key, "a.test", "c.test", now(), deliver());
    rejected(&p.b, path, body, 403, ErrorCode::WrongRecipient).await;
    // A's real key, but stale.
    let body = s2s(&a_key, "a.test", "b.test", now() - 600_000, deliver());
    rejected(&p.b, path, body, 403, ErrorCode::StaleRequest).await;
    // Positive control: the genuine delivery is enqueued once.
    let before = p.b.dump();
    let body = s2s(&a_key, "a.test", "b.test", now(), deliver());
    let (status, resp) = post_with_ca(Some(&ca), &p.b.url(), path, body.clone()).await;
    assert_eq!(status, 200, "{}", error_of(&resp));
    let queued =
        |d: &[(Cf, Vec<u8>, Vec<u8>)]| d.iter().filter(|(cf, _, _)| *cf == Cf::QsQueues).count();
    assert_eq!(queued(&p.b.dump()), queued(&before) + 1);
    // The same envelope replayed is refused; a retry (new envelope, same item) is answered 2xx
    // and enqueues nothing.
    rejected(&p.b, path, body, 403, ErrorCode::Replayed).await;
    let before = p.b.dump();
    let retry = s2s(&a_key, "a.test", "b.test", now(), deliver());
    let (status, _) = post_with_ca(Some(&ca), &p.b.url(), path, retry).await;
    assert_eq!(status, 200);
    assert!(before == p.b.dump(), "a retried item is not enqueued twice");
    // Sealed deliveries (what A's outbox sends): only an item sealed to B's QS key for the
    // pair (A, B) is enqueued; one that does not open is dropped, the delivery still answered
    // 2xx (so one bad item cannot block the rest), and nothing is stored for it.
    let seal_for = |key: &hpke_seal::HpkePublicKey, sender: &[u8]| {
        let fresh = DeliveryItem {
            id: rand::random(),
            ..item.clone()
        };
        let aad = outbox_item_aad(sender, b"b.test");
        hpke_seal::seal(key, OUTBOX_ITEM_HPKE_LABEL, &aad, &encode(&fresh).unwrap())
            .unwrap()
            .into()
    };
    let rogue_qs = hpke_seal::HpkeKeyPair::generate().public;
    let truncated: HpkeCiphertextWire = {
        let mut w: HpkeCiphertextWire = seal_for(&qs_key, b"a.test");
        w.kem_output = w.kem_output.as_slice()[..16].to_vec().into();
        w
    };
    for (what, sealed) in [
        ("sealed to another key", seal_for(&rogue_qs, b"a.test")),
        ("sealed as if from c.test", seal_for(&qs_key, b"c.test")),
        ("truncated encapsulation", truncated),
        (
            "garbage",
            HpkeCiphertextWire {
                kem_output: vec![7; 32].into(),
                ciphertext: vec![7; 64].into(),
            },
        ),
    ] {
        let before = p.b.dump();
        let body = s2s(
            &a_key,
            "a.test",
            "b.test",
            now(),
            S2sPayload::DeliverSealed(vec![sealed]),
        );
        let (status, resp) = post_with_ca(Some(&ca), &p.b.url(), path, body).await;
        assert_eq!(status, 200, "{what}: {}", error_of(&resp));
        assert!(before == p.b.dump(), "{what}: something was stored");
    }
    let before = p.b.dump();
    let sealed = S2sPayload::DeliverSealed(vec![seal_for(&qs_key, b"a.test")]);
    let body = s2s(&a_key, "a.test", "b.test", now(), sealed.clone());
    let (status, resp) = post_with_ca(Some(&ca), &p.b.url(), path, body.clone()).await;
    assert_eq!(status, 200, "{}", error_of(&resp));
    assert_eq!(
        queued(&p.b.dump()),
        queued(&before) + 1,
        "the sealed item is enqueued"
    );
    rejected(&p.b, path, body, 403, ErrorCode::Replayed).await;
    let body = s2s(&rogue, "a.test", "b.test", now(), sealed);
    rejected(&p.b, path, body, 403, ErrorCode::InvalidSignature).await;
    // A forwarded request must concern the recipient: B does not host groups of A.
    let mut a_client = client(&p.a, dir.path(), "alice").await;
    let g = a_client.create_group().await.unwrap();
    let req = a_client
        .signed_member_request(&g, mimi_rm_protocol::ds::DsOperation::ExternalCommitInfo)
        .unwrap();
    let inner = mimi_client_rm::envelope(TransactionType::ExternalCommitInformation, &req).unwrap();
    let body = s2s(
        &a_key,
        "a.test",
        "b.test",
        now(),
        S2sPayload::Forward(ForwardedRequest {
            transaction_type: TransactionType::ExternalCommitInformation,
            envelope: inner.into(),
        }),
    );
    rejected(
        &p.b,
        paths::FEDERATION_FORWARD,
        body,
        403,
        ErrorCode::WrongRecipient,
    )
    .await;
}

/// Measurement, not a check (run with `--ignored --nocapture`): how long a message takes from
/// a sender on A to a member's client on B, on loopback. The client polls every 2 ms, so the
/// figure includes up to 2 ms of polling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_cross_provider_delivery_latency() {
    let dir = tempfile::tempdir().unwrap();
    let p = providers(dir.path());
    let (mut alice, mut bob, g) = pair(&p, dir.path()).await;
    let mut samples = Vec::new();
    for i in 0..100 {
        let text = format!("latency probe {i}");
        let start = Instant::now();
        alice.send(&g, text.as_bytes()).await.unwrap();
        let sent = start.elapsed();
        loop {
            if messages(&bob.receive().await.unwrap())
                .iter()
                .any(|t| t == text.as_bytes())
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        samples.push((sent, start.elapsed()));
    }
    let mut totals: Vec<u128> = samples.iter().map(|(_, t)| t.as_micros()).collect();
    let mut sends: Vec<u128> = samples.iter().map(|(s, _)| s.as_micros()).collect();
    totals.sort_unstable();
    sends.sort_unstable();
    let pct = |v: &[u128], q: f64| v[((v.len() as f64 - 1.0) * q) as usize] as f64 / 1000.0;
    eprintln!(
        "cross-provider delivery over HTTPS (100 messages): send acknowledged p50 {:.1} ms; \
         arrival at the B client p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms",
        pct(&sends, 0.5),
        pct(&totals, 0.5),
        pct(&totals, 0.9),
        pct(&totals, 1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_server_and_proxy_bodies_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = providers(dir.path());
    let a_key = s2s_key(&p.a);
    let now = mimi_ds_rm::now_ms;
    let genuine = s2s(
        &a_key,
        "a.test",
        "b.test",
        now(),
        S2sPayload::Deliver(Vec::new()),
    );
    // Truncated, garbage and oversized server-to-server bodies.
    for cut in [0, 3, genuine.len() / 2, genuine.len() - 1] {
        let body = genuine[..cut].to_vec();
        rejected(
            &p.b,
            paths::DELIVER_MESSAGE,
            body,
            400,
            ErrorCode::Malformed,
        )
        .await;
    }
    let oversized = vec![0u8; (1 << 20) + 1];
    rejected(
        &p.b,
        paths::FEDERATION_FORWARD,
        oversized,
        413,
        ErrorCode::TooLarge,
    )
    .await;
    // A client envelope posted where a server envelope belongs.
    let qs = QsRequest {
        tbs: QsRequestTbs {
            timestamp_ms: now(),
            nonce: rand::random(),
            sender: QsSender::Anonymous,
            operation: QsOperation::EncryptionKey,
        },
        signature: Vec::new().into(),
    };
    let client_body = mimi_client_rm::envelope(TransactionType::QueueService, &qs).unwrap();
    rejected(
        &p.b,
        paths::DELIVER_MESSAGE,
        client_body.clone(),
        400,
        ErrorCode::WrongEndpoint,
    )
    .await;
    // Proxy: garbage, a lookup at ourselves, a non-peer, and an operation that is not a lookup.
    rejected(
        &p.b,
        paths::FEDERATION_PROXY,
        vec![1, 2, 3],
        400,
        ErrorCode::Malformed,
    )
    .await;
    let proxy = |domain: &str, tt: TransactionType, env: Vec<u8>| {
        mimi_client_rm::envelope(
            TransactionType::Proxy,
            &ProxyRequest {
                domain: domain.as_bytes().to_vec().into(),
                request: ForwardedRequest {
                    transaction_type: tt,
                    envelope: env.into(),
                },
            },
        )
        .unwrap()
    };
    let body = proxy("b.test", TransactionType::QueueService, client_body.clone());
    rejected(
        &p.b,
        paths::FEDERATION_PROXY,
        body,
        400,
        ErrorCode::InvalidRequest,
    )
    .await;
    let body = proxy("c.test", TransactionType::QueueService, client_body.clone());
    rejected(
        &p.b,
        paths::FEDERATION_PROXY,
        body,
        403,
        ErrorCode::NotAPeer,
    )
    .await;
    let dequeue = QsRequest {
        tbs: QsRequestTbs {
            operation: QsOperation::Dequeue(mimi_rm_protocol::qs::Dequeue {
                ack_below: 0,
                max: 1,
                release: Vec::new(),
            }),
            ..qs.tbs.clone()
        },
        signature: Vec::new().into(),
    };
    let env = mimi_client_rm::envelope(TransactionType::QueueService, &dequeue).unwrap();
    let body = proxy("a.test", TransactionType::QueueService, env);
    rejected(
        &p.b,
        paths::FEDERATION_PROXY,
        body,
        403,
        ErrorCode::NotAuthorized,
    )
    .await;
    // Positive control: the anonymous lookup itself is passed on and answered by A.
    let body = proxy("a.test", TransactionType::QueueService, client_body);
    let (status, resp) =
        post_with_ca(p.b.ca_pem(), &p.b.url(), paths::FEDERATION_PROXY, body).await;
    assert_eq!(status, 200, "{}", error_of(&resp));
    assert!(matches!(
        decode_exact::<QsResponse>(&resp, 1 << 16).unwrap(),
        QsResponse::EncryptionKey(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_across_providers() {
    let dir = tempfile::tempdir().unwrap();
    let p = providers(dir.path());
    let mut alice = client(&p.a, dir.path(), "alice").await;
    let mut bob = client(&p.b, dir.path(), "bob").await;
    // Alice (A) asks bob (B): package fetch and request go through A's proxy to B's AS.
    let g = alice.connect("bob", "b.test").await.unwrap();
    assert!(g.0.ends_with(b"a.test"));
    let requests = bob.fetch_connection_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        (requests[0].handle.as_str(), requests[0].domain.as_str()),
        ("alice", "a.test")
    );
    assert_eq!(requests[0].rejected, None);
    // Bob joins the group hosted on A through his own provider.
    bob.accept_connection(&requests[0].id).await.unwrap();
    let events = receive_until(&mut alice, |e| {
        e.iter()
            .any(|e| matches!(e, Event::ConnectionAccepted { handle, .. } if handle == "bob"))
    })
    .await;
    assert!(!events.is_empty());
    say(&mut alice, &mut [&mut bob], &g, "hello across").await;
    say(&mut bob, &mut [&mut alice], &g, "hello back").await;
}
