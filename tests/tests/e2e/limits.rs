//! Configured limits are enforced with their error codes and change nothing.

use mimi_ds_rm::store::Cf;
use mimi_rm_protocol::ErrorCode;
use mimi_rm_tests::common::*;
use std::io::{Read, Write};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_cannot_grow_past_its_limit() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_with_config(dir.path(), "max_group_size = 2");
    let mut alice = client(&hub, dir.path(), "alice").await;
    let mut bob = client(&hub, dir.path(), "bob").await;
    let mut carol = client(&hub, dir.path(), "carol").await;
    let g = group_of(&mut alice, &mut [&mut bob]).await;
    carol.add_contact(&alice.contact_card().unwrap()).unwrap();
    let row = |hub: &mimi_rm_tests::HubProcess| group_row(&hub.dump(), &g);
    let before = row(&hub);
    let epoch = alice.epoch(&g).unwrap();
    let err = alice
        .invite(&g, &carol.contact_card().unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::LimitExceeded), "{err}");
    assert_eq!(row(&hub), before, "the group row is unchanged");
    assert_eq!(alice.epoch(&g).unwrap(), epoch);
    // Below the limit everything still works.
    alice.send(&g, b"still two of us").await.unwrap();
    assert_eq!(
        messages(&bob.receive().await.unwrap()),
        vec![b"still two of us".to_vec()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_times_out_while_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_with_config(dir.path(), "request_timeout_secs = 1");
    let before = hub.dump();
    // Announce 100 bytes, send 10, then stall.
    let mut slow = std::net::TcpStream::connect(hub.addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        slow,
        "POST /group_operation HTTP/1.1\r\nHost: hub\r\nContent-Type: application/octet-stream\r\nContent-Length: 100\r\n\r\n"
    )
    .unwrap();
    slow.write_all(&[0u8; 10]).unwrap();
    // Meanwhile the hub serves others.
    let mut alice = client(&hub, dir.path(), "alice").await;
    alice.create_group().await.unwrap();
    let mut response = String::new();
    let mut buf = [0u8; 1024];
    let n = slow.read(&mut buf).unwrap();
    response.push_str(&String::from_utf8_lossy(&buf[..n]));
    assert!(
        response.starts_with("HTTP/1.1 408"),
        "slow upload answered: {response}"
    );
    // The stalled request stored nothing (alice's registration and group did).
    let after = hub.dump();
    assert!(after.len() > before.len());
    assert!(
        after
            .iter()
            .filter(|(cf, _, _)| *cf == Cf::DsGroups)
            .count()
            == 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetches_are_capped_and_the_client_comes_back_for_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_with_config(dir.path(), "max_messages_per_fetch = 2");
    let mut alice = client(&hub, dir.path(), "alice").await;
    let mut bob = client(&hub, dir.path(), "bob").await;
    let g = group_of(&mut alice, &mut [&mut bob]).await;
    for i in 0..5 {
        alice.send(&g, format!("m{i}").as_bytes()).await.unwrap();
    }
    let wire: mimi_client_rm::Recorder = Default::default();
    bob.set_recorder(wire.clone());
    let got = messages(&bob.receive().await.unwrap());
    assert_eq!(got.len(), 5, "all messages, over several fetches");
    let fetches = wire
        .lock()
        .unwrap()
        .iter()
        .filter(|(p, _)| p == mimi_rm_protocol::paths::QS)
        .count();
    // 3 fetches of at most 2, one empty fetch, one acknowledgement (plus none for the group).
    assert!(fetches >= 4, "{fetches} QS requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_new_messages_without_blocking_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_with_config(dir.path(), "max_queue_length = 3");
    let mut alice = client(&hub, dir.path(), "alice").await;
    let mut bob = client(&hub, dir.path(), "bob").await;
    let g = group_of(&mut alice, &mut [&mut bob]).await;
    // Bob stops fetching; alice's sends keep succeeding.
    for i in 0..5 {
        alice.send(&g, format!("m{i}").as_bytes()).await.unwrap();
    }
    let queued = hub
        .dump()
        .iter()
        .filter(|(cf, _, _)| *cf == Cf::QsQueues)
        .count();
    assert_eq!(queued, 3, "the queue holds at most its limit");
    assert_eq!(
        messages(&bob.receive().await.unwrap()),
        vec![b"m0".to_vec(), b"m1".to_vec(), b"m2".to_vec()]
    );
    // Once fetched, there is room again.
    alice.send(&g, b"m5").await.unwrap();
    assert_eq!(
        messages(&bob.receive().await.unwrap()),
        vec![b"m5".to_vec()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_groups_and_queues_expire() {
    let dir = tempfile::tempdir().unwrap();
    let mut hub = hub(dir.path());
    let mut alice = client(&hub, dir.path(), "alice").await;
    let mut bob = client(&hub, dir.path(), "bob").await;
    let g = group_of(&mut alice, &mut [&mut bob]).await;
    alice.send(&g, b"never fetched").await.unwrap();
    hub.stop();
    let now = mimi_ds_rm::now_ms();
    // Nothing is idle yet.
    assert!(expire(&hub, 2, now).contains("expired 0 groups and 0 queued"));
    // Three months later, both the group and bob's unfetched message go.
    let later = now + 92 * 24 * 3600 * 1000;
    let printed = expire(&hub, 2, later);
    assert!(
        printed.contains("expired 1 groups and 1 queued"),
        "{printed}"
    );
    hub.restart();
    let err = alice.send(&g, b"too late").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownGroup), "{err}");
    assert!(bob.receive().await.unwrap().is_empty());
    // Bob's queue has a gap where the expired message was; he steps over it and reads on.
    let g2 = alice.create_group().await.unwrap();
    alice
        .invite(&g2, &bob.contact_card().unwrap())
        .await
        .unwrap();
    let events = bob.receive().await.unwrap();
    assert!(
        events.contains(&mimi_client_rm::Event::Joined { group: g2.clone() }),
        "{events:?}"
    );
    alice.send(&g2, b"after the gap").await.unwrap();
    assert_eq!(
        messages(&bob.receive().await.unwrap()),
        vec![b"after the gap".to_vec()]
    );
}
