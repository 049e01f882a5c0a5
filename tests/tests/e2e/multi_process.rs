//! Several hub processes on one PostgreSQL database, played against as an attacker and as an
//! operator would: a token or a signed request used at one process is refused at every other,
//! a SIGKILL of any process at any moment loses no acknowledged message while clients fail
//! over to the others, and a peer's outbox is drained by exactly one process per item.
//!
//! (The fork-freedom race over three processes is `concurrency::three_processes_…`.)

use mimi_client_rm::{Client, Event};
use mimi_rm_protocol::{ErrorCode, paths};
use mimi_rm_tests::balancer::Balancer;
use mimi_rm_tests::common::*;
use mimi_rm_tests::postgres::fresh_database;
use mimi_rm_tests::tls::generate_test_ca;
use mimi_rm_tests::{HubProcess, error_of, free_port, get_bytes, post_paid, post_with_ca};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `n` hub processes of `domain` on `database`, each in a directory of its own under `dir`.
fn processes(dir: &Path, n: usize, database: &str, extra_config: &str) -> Vec<HubProcess> {
    (0..n)
        .map(|i| {
            let d = dir.join(format!("process{i}"));
            std::fs::create_dir_all(&d).unwrap();
            HubProcess::start_shared(&hub_binary(), &d, DOMAIN, database, extra_config)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_or_a_request_used_at_one_process_is_refused_at_every_other() {
    let dir = tempfile::tempdir().unwrap();
    let database = fresh_database();
    let hubs = processes(dir.path(), 3, &database, "");
    let alice = client(&hubs[0], dir.path(), "alice").await;
    let bob = client(&hubs[1], dir.path(), "bob").await;
    let fetch = || add_package_fetch(&bob.contact_card().unwrap().friendship_token);

    // One token at two processes at once, twenty times: exactly one acceptance each time.
    for round in 0..20 {
        let token = alice.take_token().await.unwrap();
        let (a, b) = (hubs[round % 3].url(), hubs[(round + 1) % 3].url());
        let (ra, rb) = tokio::join!(
            post_paid(&a, paths::QS, fetch(), &token),
            post_paid(&b, paths::QS, fetch(), &token)
        );
        let mut ok = 0;
        for (status, body) in [ra, rb] {
            if status == 200 {
                ok += 1;
            } else {
                assert_eq!((status, error_of(&body).code), (401, ErrorCode::TokenSpent));
            }
        }
        assert_eq!(ok, 1, "round {round}: one token, {ok} acceptances");
    }
    // A spent token stays spent at the third process, and a fresh one works there (control).
    let token = alice.take_token().await.unwrap();
    let (status, _) = post_paid(&hubs[0].url(), paths::QS, fetch(), &token).await;
    assert_eq!(status, 200);
    let (status, body) = post_paid(&hubs[2].url(), paths::QS, fetch(), &token).await;
    assert_eq!((status, error_of(&body).code), (401, ErrorCode::TokenSpent));
    let fresh = alice.take_token().await.unwrap();
    assert_eq!(
        post_paid(&hubs[2].url(), paths::QS, fetch(), &fresh)
            .await
            .0,
        200
    );
}

/// An accepted group operation (a message, which enqueues for every member), replayed to
/// the other processes as a recorded request: refused, nothing stored changes, and the member
/// reads the message once. The replay is a request the hub did accept (the positive control).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_replayed_to_another_process_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let database = fresh_database();
    // Without tokens, so the replay reaches the replay check (with tokens its spent token
    // would be refused first, which the test above covers).
    let hubs = processes(dir.path(), 3, &database, NO_TOKENS);
    let mut alice = client(&hubs[0], dir.path(), "alice").await;
    let mut bob = client(&hubs[1], dir.path(), "bob").await;
    let g = group_of(&mut alice, &mut [&mut bob]).await;
    let recorder = Arc::new(Mutex::new(Vec::new()));
    alice.set_recorder(recorder.clone());
    alice.send(&g, b"once").await.unwrap();
    let send = last_recorded(&recorder, paths::GROUP_OPERATION);
    for other in [&hubs[1], &hubs[2], &hubs[0]] {
        let before = other.dump();
        let (status, body) =
            post_with_ca(None, &other.url(), paths::GROUP_OPERATION, send.clone()).await;
        assert_eq!((status, error_of(&body).code), (403, ErrorCode::Replayed));
        let after = other.dump();
        assert!(
            before == after,
            "a refused replay changed {:?}",
            changed_families(&before, &after)
        );
    }
    assert_eq!(
        messages(&bob.receive().await.unwrap()),
        vec![b"once".to_vec()]
    );
    assert!(messages(&bob.receive().await.unwrap()).is_empty());
}

/// Processes started together on an empty database make the hub's keys once: every process
/// serves the same AS anchors, token issuer keys, OHTTP key configuration, federation key and
/// push key (each would differ if two processes each made their own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_starting_together_on_an_empty_database_share_one_set_of_keys() {
    // Each round races four first starts on a fresh database; without the key lock some
    // rounds end with processes holding keys of their own (seen: one round in three).
    for round in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let dirs: Vec<_> = (0..4)
            .map(|i| {
                let d = dir.path().join(format!("together{i}"));
                std::fs::create_dir_all(&d).unwrap();
                d
            })
            .collect();
        let hubs =
            HubProcess::start_shared_together(&hub_binary(), &dirs, DOMAIN, &fresh_database(), "");
        let mut served = Vec::new();
        for h in &hubs {
            served.push(served_keys(h).await);
        }
        for what in &served[0] {
            assert!(what.len() > 16, "a key answer is empty");
        }
        assert!(
            served.iter().all(|s| *s == served[0]),
            "round {round}: processes serve different keys"
        );
    }
}

/// What a hub serves of its keys: AS anchors, token issuer directory, OHTTP key
/// configuration, federation verification key, VAPID key.
async fn served_keys(h: &HubProcess) -> Vec<Vec<u8>> {
    let get = async |path: &str| get_bytes(None, &format!("{}{path}", h.url())).await;
    let (_, anchors) = post_with_ca(
        None,
        &h.url(),
        paths::AS,
        as_anonymous(mimi_rm_protocol::auth::AsOperation::AsCredentials),
    )
    .await;
    vec![
        anchors,
        get("/.well-known/private-token-issuer-directory").await,
        get(mimi_rm_protocol::oblivious::KEYS_PATH).await,
        get(paths::VERIFICATION_KEY).await,
        get(paths::QS_PUSH_KEY).await,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkills_of_any_process_lose_no_acknowledged_message() {
    let kills: usize = std::env::var("MIMI_MULTI_PROCESS_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let database = fresh_database();
    let mut hubs = processes(dir.path(), 3, &database, "");
    let balancer = Balancer::start(hubs.iter().map(|h| h.addr).collect()).await;
    let url = balancer.url();
    let mut members = Vec::new();
    for i in 0..4 {
        members.push(
            Client::register(&dir.path().join(format!("m{i}")), &url, &format!("m{i}"))
                .await
                .unwrap(),
        );
    }
    let g = {
        let (first, rest) = members.split_first_mut().unwrap();
        group_of(first, &mut rest.iter_mut().collect::<Vec<_>>()).await
    };
    for m in members.iter_mut() {
        m.receive().await.unwrap();
    }

    // A killer on its own thread: SIGKILL a random process, start it again, repeat.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            for _ in 0..kills {
                std::thread::sleep(Duration::from_millis(150 + rand::random::<u64>() % 250));
                let i = rand::random::<usize>() % hubs.len();
                hubs[i].crash_and_restart();
            }
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            hubs
        })
    };
    // Meanwhile every member sends, all at once; a send that fails (its process died under
    // it) is not acknowledged, so it may or may not arrive — but never twice.
    let mut tasks = tokio::task::JoinSet::new();
    for (i, mut member) in std::mem::take(&mut members).into_iter().enumerate() {
        let (g, stop) = (g.clone(), stop.clone());
        tasks.spawn(async move {
            let (mut acked, mut attempted, mut failed) = (Vec::new(), Vec::new(), 0usize);
            let mut n = 0usize;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) || n < 10 {
                let text = format!("m{i}-{n}").into_bytes();
                attempted.push(text.clone());
                match member.send(&g, &text).await {
                    Ok(()) => acked.push(text),
                    Err(_) => failed += 1,
                }
                n += 1;
            }
            (i, member, acked, attempted, failed)
        });
    }
    let mut done = Vec::new();
    while let Some(t) = tasks.join_next().await {
        done.push(t.unwrap());
    }
    done.sort_by_key(|d| d.0);
    let (mut acked, mut attempted, mut failed) = (Vec::new(), Vec::new(), 0usize);
    for (_, member, a, t, f) in done {
        members.push(member);
        acked.extend(a);
        attempted.extend(t);
        failed += f;
    }
    let hubs = killer.join().unwrap();

    // All processes up again: every member reads until it has every acknowledged message
    // of the others.
    let mut received: Vec<BTreeMap<Vec<u8>, usize>> = Vec::new();
    for (i, m) in members.iter_mut().enumerate() {
        let wanted: Vec<&Vec<u8>> = acked
            .iter()
            .filter(|t| !t.starts_with(format!("m{i}-").as_bytes()))
            .collect();
        let mut got: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
        let started = Instant::now();
        loop {
            match m.receive().await {
                Ok(events) => {
                    for e in events {
                        match e {
                            Event::Message { plaintext, .. } => {
                                *got.entry(plaintext).or_default() += 1
                            }
                            Event::Undecryptable { reason, .. } => {
                                panic!("m{i}: undecryptable: {reason}")
                            }
                            _ => {}
                        }
                    }
                }
                Err(e) => eprintln!("m{i}: receive failed ({e}); again"),
            }
            if wanted.iter().all(|t| got.contains_key(*t)) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "m{i} lost acknowledged messages"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        received.push(got);
    }
    for (i, got) in received.iter().enumerate() {
        for (text, count) in got {
            assert_eq!(
                *count,
                1,
                "m{i} read {:?} {count} times",
                String::from_utf8_lossy(text)
            );
            assert!(attempted.contains(text), "m{i} read a message nobody sent");
        }
    }
    let connections = balancer.connections();
    assert!(
        connections.iter().all(|c| *c > 0),
        "every process served connections: {connections:?}"
    );
    assert!(acked.len() >= 40, "{} acknowledged sends", acked.len());
    eprintln!(
        "multi-process: {kills} SIGKILLs, {} sends acknowledged, {failed} failed even after the \
         client's own retries (its process died under them), connections per process {connections:?}; every acknowledged message read \
         exactly once",
        acked.len()
    );
    drop(hubs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_outbox_is_drained_by_exactly_one_process_per_item() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    let ca = generate_test_ca(&tls, &["a.test", "b.test"]).unwrap();
    let a_addrs = [free_port(), free_port(), free_port()];
    let b_addr = free_port();
    let peer = |domain: &str, addr: std::net::SocketAddr| {
        format!(
            "peer_ca_cert = {:?}\n[peers]\n{domain:?} = \"https://{addr}\"\n",
            ca.ca_cert.display().to_string()
        )
    };
    let database = fresh_database();
    let a: Vec<HubProcess> = a_addrs
        .iter()
        .enumerate()
        .map(|(i, addr)| {
            let d = dir.path().join(format!("a{i}"));
            std::fs::create_dir_all(&d).unwrap();
            HubProcess::start_shared_tls_at(
                &hub_binary(),
                &d,
                "a.test",
                &database,
                &ca,
                *addr,
                &peer("b.test", b_addr),
            )
        })
        .collect();
    let b_dir = dir.path().join("b");
    std::fs::create_dir_all(&b_dir).unwrap();
    let mut b = HubProcess::start_tls_at(
        &hub_binary(),
        &b_dir,
        "b.test",
        &ca,
        b_addr,
        &peer("a.test", a_addrs[0]),
    );
    // One sender on each process, all in one group with bob on B: each message leaves one
    // item for B in the outbox that all three processes' workers drain.
    let mut senders = Vec::new();
    for (i, h) in a.iter().enumerate() {
        senders.push(client(h, dir.path(), &format!("alice{i}")).await);
    }
    let mut bob = client(&b, dir.path(), "bob").await;
    let g = {
        let (first, rest) = senders.split_first_mut().unwrap();
        let mut others: Vec<&mut Client> = rest.iter_mut().collect();
        others.push(&mut bob);
        group_of(first, &mut others).await
    };
    for s in senders.iter_mut() {
        s.receive().await.unwrap();
    }
    let sum = async |name: &str| {
        let mut sum = 0;
        for h in &a {
            sum += metric(h, name).await;
        }
        sum
    };
    let settled = async || {
        let started = Instant::now();
        loop {
            let (out, sent) = (
                sum("mimi_fanout_outboxed").await,
                sum("mimi_delivered_to_peers").await,
            );
            if sent >= out {
                // A little longer: a second delivery of an item would show now.
                tokio::time::sleep(Duration::from_millis(1000)).await;
                return (
                    sum("mimi_fanout_outboxed").await,
                    sum("mimi_delivered_to_peers").await,
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "items stuck: {sent} of {out}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (outboxed_before, delivered_before) = settled().await;
    assert_eq!(
        outboxed_before, delivered_before,
        "setup items delivered once each"
    );

    // All three send at once, so all three workers are woken together; then B goes down, the
    // items pile up, and all three race for them when it comes back.
    let burst = |round: usize| {
        let texts: Vec<Vec<Vec<u8>>> = (0..3)
            .map(|i| {
                (0..15)
                    .map(|n| format!("r{round} s{i} m{n}").into_bytes())
                    .collect()
            })
            .collect();
        texts
    };
    let mut expected = Vec::new();
    for round in 0..2 {
        if round == 1 {
            b.crash();
        }
        let texts = burst(round);
        let mut tasks = tokio::task::JoinSet::new();
        for (sender, texts) in std::mem::take(&mut senders).into_iter().zip(texts.clone()) {
            let g = g.clone();
            tasks.spawn(async move {
                let mut sender = sender;
                for t in &texts {
                    sender.send(&g, t).await.unwrap();
                }
                sender
            });
        }
        while let Some(s) = tasks.join_next().await {
            senders.push(s.unwrap());
        }
        expected.extend(texts.into_iter().flatten());
        if round == 1 {
            b.restart();
        }
    }
    let (outboxed, delivered) = settled().await;
    assert_eq!(
        outboxed - outboxed_before,
        90,
        "one outbox item per message for bob"
    );
    assert_eq!(
        delivered - delivered_before,
        outboxed - outboxed_before,
        "the processes delivered some items more than once"
    );
    // Bob reads each message once (B drops repeats anyway: the count above is what shows the
    // processes did not send any twice).
    let mut got = Vec::new();
    let started = Instant::now();
    while got.len() < expected.len() {
        got.extend(messages(&bob.receive().await.unwrap()));
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "bob got {}",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    got.sort();
    expected.sort();
    assert_eq!(got, expected);
}
