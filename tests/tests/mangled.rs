//! Every prefix and every single-byte corruption of real requests is refused with a 4xx, the hub
//! never fails with a 5xx (a panic in a handler would surface as 500), and nothing is stored.

mod common;

use common::*;
use mimi_rm_tests::post;
use std::sync::{Arc, Mutex};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_and_bit_flipped_requests_are_refused_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path());
    let mut alice = client(&hub, dir.path(), "alice").await;
    let mut bob = client(&hub, dir.path(), "bob").await;
    let carol = client(&hub, dir.path(), "carol").await;
    let recorder = Arc::new(Mutex::new(Vec::new()));
    alice.set_recorder(recorder.clone());
    let g = group_of(&mut alice, &mut [&mut bob]).await;
    alice
        .invite(&g, &carol.contact_card().unwrap())
        .await
        .unwrap();
    alice.update(&g).await.unwrap();
    alice.send(&g, b"m").await.unwrap();
    // The recorded add (with KeyPackage and Welcome), update and send requests.
    let recorded: Vec<(String, Vec<u8>)> = recorder
        .lock()
        .unwrap()
        .iter()
        .filter(|(p, _)| p == mimi_rm_protocol::paths::GROUP_OPERATION)
        .cloned()
        .collect();
    assert!(recorded.len() >= 4);
    let before = hub.dump();
    let mut statuses = std::collections::BTreeMap::new();
    for (path, body) in recorded.iter().rev().take(3) {
        for cut in 0..body.len() {
            let (s, _) = post(&hub.url(), path, body[..cut].to_vec()).await;
            assert_eq!(s, 400, "prefix of {cut} bytes");
        }
        for i in (0..body.len()).step_by(3) {
            let mut m = body.clone();
            m[i] ^= 0x41;
            let (s, _) = post(&hub.url(), path, m).await;
            assert!((400..500).contains(&s), "flip at {i}: status {s}");
            *statuses.entry(s).or_insert(0) += 1;
        }
    }
    assert!(
        before == hub.dump(),
        "a refused request changed stored data"
    );
    // Corruptions are caught at different layers (decode 400, signature/key 403, ...).
    assert!(statuses.len() >= 2, "{statuses:?}");
    // The hub is still healthy.
    alice.send(&g, b"still alive").await.unwrap();
    assert_eq!(
        messages(&bob.receive().await.unwrap()).last().unwrap(),
        b"still alive"
    );
}
