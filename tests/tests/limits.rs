//! Configured limits are enforced with their error codes and change nothing.

mod common;

use common::*;
use mimi_ds_rm::store::Cf;
use mimi_rm_protocol::ErrorCode;
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
    let row = |hub: &mimi_rm_tests::HubProcess| {
        hub.dump()
            .into_iter()
            .find(|(cf, k, _)| *cf == Cf::DsGroups && *k == g.0)
            .map(|(_, _, v)| v)
    };
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
