//! What a live operator can link: a recording proxy stands where the hub's listener is and
//! notes, per request, the connection, the address and what the request names (a handle, a
//! group, a queue). The 5-user scenario (3 groups, a removal, a leave, a connection, a linked
//! device, messages) runs through it with each device on its own loopback address.
//!
//! With connection scopes (the default) no connection joins a handle to a pseudonym or two
//! pseudonyms; with one shared pool (the positive control, and what a conventional client
//! does) many do. The address still joins everything of a device, in both: that is what
//! Oblivious HTTP is for.

use mimi_client_rm::{ConnectionOptions, ConnectionPolicy};
use mimi_rm_protocol::DsMode;
use mimi_rm_tests::common::*;
use mimi_rm_tests::observer::{self, Links, Observer};
use mimi_rm_tests::scenario;
use std::net::IpAddr;

/// Device `i`'s own address.
fn address(i: usize) -> IpAddr {
    IpAddr::from([127, 0, 0, 20 + i as u8])
}

/// What the scenario let the operator link, by connection and by address, and how many
/// connections each device opened.
struct Observation {
    by_connection: Links,
    by_address: Links,
    connections_per_device: f64,
    requests: usize,
}

async fn observe(mode: DsMode, policy: ConnectionPolicy) -> Observation {
    let dir = tempfile::tempdir().unwrap();
    let hub = match mode {
        DsMode::Rm => hub(dir.path()),
        DsMode::Baseline => hub_with_config(dir.path(), "mode = \"baseline\"\n"),
    };
    let proxy = Observer::start(hub.addr).await;
    let users = 5;
    scenario::run_with(&proxy.url(), dir.path(), users, mode, &|i| {
        ConnectionOptions {
            policy,
            local_address: Some(address(i)),
            ohttp_relay: None,
            request_timeout: None,
        }
    })
    .await
    .expect("scenario");
    let records = proxy.records();
    let named = records
        .iter()
        .filter(|o| observer::names(o).is_some())
        .count();
    assert!(
        named > 100,
        "the proxy read the scenario's requests ({named})"
    );
    // Devices 0..=users have their own addresses; anything else came from elsewhere.
    let devices: Vec<IpAddr> = (0..=users).map(address).collect();
    assert!(
        records
            .iter()
            .filter(|o| observer::names(o).is_some())
            .all(|o| devices.contains(&o.peer)),
        "every naming request came from a device address"
    );
    let observation = Observation {
        by_connection: observer::links(&records, |o| o.conn),
        by_address: observer::links(&records, |o| o.peer),
        connections_per_device: observer::connections(&records) as f64 / (users + 1) as f64,
        requests: records.len(),
    };
    eprintln!(
        "live operator, {mode:?} {policy:?}: {} requests; by connection {:?}; by address {:?}; \
         {:.1} connections per device",
        observation.requests,
        observation.by_connection,
        observation.by_address,
        observation.connections_per_device
    );
    observation
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_connections_join_no_identity_to_a_pseudonym_and_no_two_pseudonyms() {
    let seen = observe(DsMode::Rm, ConnectionPolicy::Scoped).await;
    assert_eq!(
        seen.by_connection,
        Links::default(),
        "no link by connection"
    );
    // The address is the device's: it joins everything, until requests go through a relay.
    assert!(seen.by_address.identity_pseudonym > 0);
    assert!(seen.by_address.pseudonym_pseudonym > 0);
}

/// The live socket leaves from the device's chosen local address, as its HTTP requests do:
/// the operator sees the socket's upgrade request come from that address, not from another
/// one of the machine (here 127.0.0.1, which the positive control shows the proxy records).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_socket_binds_the_device_address() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path());
    let proxy = Observer::start(hub.addr).await;
    let chosen = address(9);
    let options = mimi_client_rm::RegisterOptions {
        connections: ConnectionOptions {
            local_address: Some(chosen),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut bob = mimi_client_rm::Client::register_with(
        &dir.path().join("bob"),
        &proxy.url(),
        "bob",
        &options,
    )
    .await
    .unwrap();
    let mut alice =
        mimi_client_rm::Client::register(&dir.path().join("alice"), &proxy.url(), "alice")
            .await
            .unwrap();
    let g = group_of(&mut alice, &mut [&mut bob]).await;
    alice.send(&g, b"over the socket").await.unwrap();
    let events = bob.next_events().await.unwrap();
    assert!(!events.is_empty());
    assert_eq!(bob.listen_stats().connects, 1, "the live socket opened");
    let live: Vec<IpAddr> = proxy
        .records()
        .iter()
        .filter(|o| o.path == mimi_rm_protocol::paths::QS_LIVE)
        .map(|o| o.peer)
        .collect();
    assert_eq!(live, vec![chosen]);
    // Control: alice, with no local address, came from the default one.
    assert!(
        proxy
            .records()
            .iter()
            .any(|o| o.peer == IpAddr::from([127, 0, 0, 1]))
    );
}

/// Positive control: the same harness finds the links one shared pool makes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_pool_lets_the_operator_link_by_connection() {
    let seen = observe(DsMode::Rm, ConnectionPolicy::Shared).await;
    assert!(
        seen.by_connection.identity_pseudonym > 0,
        "{:?}",
        seen.by_connection
    );
    assert!(
        seen.by_connection.pseudonym_pseudonym > 0,
        "{:?}",
        seen.by_connection
    );
    assert!(
        seen.connections_per_device < 20.0,
        "a shared pool reuses connections: {:.1} per device",
        seen.connections_per_device
    );
}

/// The conventional DS for comparison: baseline mode, one pool per client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conventional_ds_and_client_link_by_connection() {
    let seen = observe(DsMode::Baseline, ConnectionPolicy::Shared).await;
    assert!(
        seen.by_connection.identity_pseudonym > 0,
        "{:?}",
        seen.by_connection
    );
}

/// The gateway key the hub stored for the current epoch (its key id and seed): what the
/// operator running the gateway holds.
fn gateway_key(hub: &mimi_rm_tests::HubProcess) -> (u8, Vec<u8>) {
    hub.dump()
        .into_iter()
        .filter(|(cf, _, _)| *cf == mimi_ds_rm::store::Cf::ServerKeys)
        .filter_map(|(_, k, v)| mimi_ds_rm::ohttp::seed_epoch(&k).map(|e| (e, v)))
        .max_by_key(|(e, _)| *e)
        .map(|(e, v)| (mimi_ds_rm::ohttp::key_id(e), v))
        .expect("the hub made its gateway key")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_an_ohttp_relay_no_pseudonymous_request_shows_a_device_address() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path());
    let (key_id, seed) = gateway_key(&hub);
    let proxy = Observer::start_with_gateway(hub.addr, Some((key_id, &seed))).await;
    let relay = mimi_rm_tests::RelayProcess::start(&format!(
        "{}{}",
        proxy.url(),
        mimi_rm_protocol::oblivious::GATEWAY_PATH
    ));
    let users = 5;
    let seen = scenario::run_with(&proxy.url(), dir.path(), users, DsMode::Rm, &|i| {
        ConnectionOptions {
            policy: ConnectionPolicy::Scoped,
            local_address: Some(address(i)),
            ohttp_relay: Some(relay.url()),
            request_timeout: None,
        }
    })
    .await
    .expect("scenario through the relay");
    let records = proxy.records();
    let relayed = records.iter().filter(|o| o.oblivious).count();
    assert!(
        relayed > 100,
        "the operator still reads every relayed request ({relayed})"
    );
    let devices: Vec<IpAddr> = (0..=users).map(address).collect();
    let named: Vec<_> = records
        .iter()
        .filter_map(|o| observer::names(o).map(|n| (n, o)))
        .collect();
    for (name, o) in &named {
        if name.is_identity() {
            assert!(devices.contains(&o.peer), "{name:?} came direct");
        } else {
            assert!(
                o.oblivious && !devices.contains(&o.peer),
                "{name:?} arrived from a device address {}",
                o.peer
            );
        }
    }
    // So what arrives from a device's own address names only its identity: no address joins
    // it to a pseudonym, nor two pseudonyms (the loop above is the check; the counts below are
    // for the record).
    let direct: Vec<_> = records
        .iter()
        .filter(|o| devices.contains(&o.peer))
        .cloned()
        .collect();
    eprintln!(
        "live operator, OHTTP: {} requests, {relayed} through the relay; device-address links {:?}",
        records.len(),
        observer::links(&direct, |o| o.peer)
    );

    // Waiting for events through a relay polls through it: no live socket shows the hub the
    // device's address next to its queue.
    let mut clients = seen.clients;
    let mut bob = clients.remove(1);
    let g = seen.groups[1].clone();
    bob.set_listening(mimi_client_rm::Listening::Live {
        fallback: std::time::Duration::from_millis(200),
    });
    let sender = clients
        .iter_mut()
        .find(|c| c.groups().contains(&g))
        .unwrap();
    sender.send(&g, b"through the relay").await.unwrap();
    let events = tokio::time::timeout(std::time::Duration::from_secs(30), bob.next_events())
        .await
        .expect("an event arrives by polling through the relay")
        .unwrap();
    assert!(!events.is_empty());
    assert!(
        !proxy
            .records()
            .iter()
            .any(|o| o.path == mimi_rm_protocol::paths::QS_LIVE),
        "no live socket was opened"
    );
    assert_eq!(bob.listen_stats().connects, 0);
}

/// A request encapsulated for the hub's gateway, as a client builds it.
async fn encapsulate(
    hub: &mimi_rm_tests::HubProcess,
    path: &str,
    body: Vec<u8>,
) -> (Vec<u8>, ohttp::ClientResponse) {
    use mimi_rm_protocol::oblivious;
    let keys = mimi_rm_tests::http_client(None)
        .get(format!("{}{}", hub.url(), oblivious::KEYS_PATH))
        .send()
        .await
        .unwrap();
    assert_eq!(
        keys.headers()["content-type"].as_bytes(),
        oblivious::KEYS_TYPE.as_bytes()
    );
    let keys = keys.bytes().await.unwrap();
    let inner = oblivious::encode_request(
        "hub",
        &oblivious::InnerRequest {
            path: path.into(),
            headers: vec![(
                "content-type".into(),
                mimi_rm_protocol::paths::CONTENT_TYPE.as_bytes().to_vec(),
            )],
            body,
        },
    )
    .unwrap();
    ohttp::ClientRequest::from_encoded_config_list(&keys)
        .unwrap()
        .encapsulate(&inner)
        .unwrap()
}

/// Posts `body` to the relay as an encapsulated request; returns the status and body.
async fn relay_post(
    relay: &mimi_rm_tests::RelayProcess,
    body: Vec<u8>,
    media: &str,
) -> (u16, Vec<u8>) {
    let resp = mimi_rm_tests::http_client(None)
        .post(relay.url())
        .header("content-type", media)
        .body(body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.bytes().await.unwrap().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_and_relay_refuse_what_they_must_and_change_nothing() {
    use mimi_rm_protocol::oblivious::{self, REQUEST_TYPE};
    use mimi_rm_protocol::qs::{Dequeue, QsOperation};
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path());
    let relay =
        mimi_rm_tests::RelayProcess::start(&format!("{}{}", hub.url(), oblivious::GATEWAY_PATH));
    let bob = client(&hub, dir.path(), "bob").await;
    let dequeue = || {
        QsOperation::Dequeue(Dequeue {
            ack_below: 0,
            max: 10,
            release: Vec::new(),
        })
    };
    let qs = mimi_rm_protocol::paths::QS;

    // A good request goes through.
    let signed = bob.signed_client_request(dequeue()).unwrap();
    let (sealed, opener) = encapsulate(&hub, qs, signed.clone()).await;
    let (status, answer) = relay_post(&relay, sealed.clone(), REQUEST_TYPE).await;
    assert_eq!(status, 200);
    let inner = oblivious::decode_response(&opener.decapsulate(&answer).unwrap()).unwrap();
    assert_eq!(inner.status, 200, "the dequeue ran");
    let before = hub.dump();
    // The same signed request in a new encapsulation is refused inside as a replay; the same
    // encapsulation sent again opens, and its inside is refused the same way.
    let (again, opener) = encapsulate(&hub, qs, signed).await;
    let (status, answer) = relay_post(&relay, again, REQUEST_TYPE).await;
    assert_eq!(status, 200);
    let inner = oblivious::decode_response(&opener.decapsulate(&answer).unwrap()).unwrap();
    assert_eq!(inner.status, 403, "a replayed inner request is refused");
    assert_eq!(
        mimi_rm_tests::error_of(&inner.body).code,
        mimi_rm_protocol::ErrorCode::Replayed
    );
    let (status, _) = relay_post(&relay, sealed, REQUEST_TYPE).await;
    assert_eq!(
        status, 200,
        "a replayed encapsulation opens; its inside is refused"
    );

    // Refused outside (nothing inside runs): wrong media type at the relay and the gateway,
    // garbage, truncation, a request for another key.
    let (good, _) = encapsulate(&hub, qs, bob.signed_client_request(dequeue()).unwrap()).await;
    let mut truncated = good.clone();
    truncated.truncate(good.len() / 2);
    let mut other_key = good.clone();
    other_key[0] ^= 0xff;
    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    for (case, body, media, status) in [
        (
            "wrong media type",
            good.clone(),
            "application/octet-stream",
            415,
        ),
        ("garbage", vec![0u8; 64], REQUEST_TYPE, 400),
        ("empty", vec![], REQUEST_TYPE, 400),
        ("truncated", truncated, REQUEST_TYPE, 400),
        ("unknown key id", other_key, REQUEST_TYPE, 400),
        ("tampered", flipped, REQUEST_TYPE, 400),
        ("oversized", vec![0u8; 3 << 20], REQUEST_TYPE, 413),
    ] {
        let (got, _) = relay_post(&relay, body, media).await;
        assert_eq!(got, status, "{case}");
    }
    let (got, _) = mimi_rm_tests::post(&hub.url(), oblivious::GATEWAY_PATH, vec![1, 2, 3]).await;
    assert_eq!(got, 415, "the gateway itself checks the media type");

    // Refused inside: a path that is not a pseudonymous endpoint.
    for path in ["/metrics", oblivious::GATEWAY_PATH, "/qs/live"] {
        let (sealed, opener) = encapsulate(&hub, path, vec![]).await;
        let (status, answer) = relay_post(&relay, sealed, REQUEST_TYPE).await;
        assert_eq!(status, 200, "{path}");
        let inner = oblivious::decode_response(&opener.decapsulate(&answer).unwrap()).unwrap();
        assert_eq!(
            inner.status, 403,
            "{path} is not reachable through the gateway"
        );
    }
    assert_eq!(hub.dump(), before, "no refusal changed the store");
    assert!(metric(&hub, "mimi_ohttp_refused").await >= 6);
    assert!(metric(&hub, "mimi_ohttp_requests").await >= 5);

    // The CLI sends through the relay when told to.
    drop(bob);
    let relay_base = format!("http://{}", relay.addr);
    let forwarded = || metric_at(&relay_base, None, "mimi_relay_forwarded");
    let relayed_before = forwarded().await;
    run_cli(
        &hub.url(),
        &dir.path().join("bob"),
        &["--ohttp-relay", &relay.url(), "receive"],
    );
    assert!(
        forwarded().await > relayed_before,
        "the CLI's receive went through the relay"
    );
}

/// The gateway's key rotates every epoch (2 s here): it still opens the previous epoch's key,
/// refuses (400, outside the encapsulation) one two epochs old, and has deleted that key's
/// seed, so a disk seized later opens no relayed request recorded back then. A client through
/// the relay goes on working across rotations (it fetches the keys again after a 400).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_key_rotates_and_old_seeds_are_deleted() {
    use mimi_rm_protocol::oblivious::{self, REQUEST_TYPE};
    use mimi_rm_protocol::qs::QsOperation;
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_with_config(dir.path(), "ohttp_key_epoch_secs = 2\n");
    let lookup = || {
        let req = mimi_rm_protocol::qs::QsRequest {
            tbs: mimi_rm_protocol::qs::QsRequestTbs {
                timestamp_ms: mimi_ds_rm::now_ms(),
                nonce: rand::random(),
                sender: mimi_rm_protocol::qs::QsSender::Anonymous,
                operation: QsOperation::EncryptionKey,
            },
            signature: Vec::new().into(),
        };
        mimi_client_rm::envelope(mimi_rm_protocol::TransactionType::QueueService, &req).unwrap()
    };
    let post = |body: Vec<u8>| {
        let url = format!("{}{}", hub.url(), oblivious::GATEWAY_PATH);
        async move {
            let resp = mimi_rm_tests::http_client(None)
                .post(url)
                .header("content-type", REQUEST_TYPE)
                .body(body)
                .send()
                .await
                .unwrap();
            resp.status().as_u16()
        }
    };
    let seeds = || -> Vec<u64> {
        hub.dump()
            .into_iter()
            .filter(|(cf, _, _)| *cf == mimi_ds_rm::store::Cf::ServerKeys)
            .filter_map(|(_, k, _)| mimi_ds_rm::ohttp::seed_epoch(&k))
            .collect()
    };
    // Sealed to the key of the epoch the hub is in now; it opens (control).
    let (old, _) = encapsulate(&hub, mimi_rm_protocol::paths::QS, lookup()).await;
    let first = seeds();
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(post(old.clone()).await, 200);
    // The next key, as soon as the epoch rolls over (polled, so the test never lands two
    // epochs on by accident).
    let (hub_ref, lookup_ref) = (&hub, &lookup);
    let next_key = move |after: u8| async move {
        loop {
            let (sealed, _) = encapsulate(hub_ref, mimi_rm_protocol::paths::QS, lookup_ref()).await;
            if sealed[0] != after {
                return sealed;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    // Right after the rollover the previous key still opens, beside the new one.
    let fresh = next_key(old[0]).await;
    assert_eq!(
        post(old.clone()).await,
        200,
        "the previous epoch's key still opens"
    );
    assert_eq!(post(fresh.clone()).await, 200);
    // One more rollover: the old key is two epochs behind, refused, and its seed is gone.
    next_key(fresh[0]).await;
    assert_eq!(post(old).await, 400);
    let later = seeds();
    assert!(!later.contains(&first[0]), "{first:?} {later:?}");
    assert!(later.len() <= 2, "{later:?}");
    // A client through a relay works after the rotations.
    let relay =
        mimi_rm_tests::RelayProcess::start(&format!("{}{}", hub.url(), oblivious::GATEWAY_PATH));
    let mut bob = client(&hub, dir.path(), "bob").await;
    bob.set_connections(ConnectionOptions {
        ohttp_relay: Some(relay.url()),
        ..Default::default()
    })
    .unwrap();
    bob.receive().await.unwrap();
    assert!(metric(&hub, "mimi_ohttp_requests").await >= 4);
}
