//! Every prefix and every single-byte corruption of real requests is refused with a 4xx, the hub
//! never fails with a 5xx (a panic in a handler would surface as 500), and nothing is stored.
//!
//! The hub asks no Privacy Pass tokens, so a corruption that still decodes gets past the token
//! gate into the checks behind it. The test decodes each corrupted body itself, with the
//! decoders the hub uses, and requires the hub to agree: one that decodes is refused by
//! validation (signature, EAR key, group, sender, freshness...), one that does not is refused
//! as malformed.

use mimi_rm_protocol::{Envelope, ErrorCode, decode_exact};
use mimi_rm_tests::common::*;
use mimi_rm_tests::post;
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_and_bit_flipped_requests_are_refused_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_without_tokens(dir.path());
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
    let chosen: Vec<&(String, Vec<u8>)> = recorded.iter().rev().take(3).collect();
    let before = hub.dump();
    let started = Instant::now();
    // Corruptions first, while the recorded requests are well inside the freshness window.
    let mut flips = Refusals::default();
    let mut decodable = 0usize;
    for (path, body) in &chosen {
        let endpoint = decode_exact::<Envelope>(body, 1 << 20)
            .unwrap()
            .transaction_type;
        assert!(
            decoded_ds_request(endpoint, body).is_some(),
            "the original decodes"
        );
        for i in (0..body.len()).step_by(3) {
            let mut m = body.clone();
            m[i] ^= 0x41;
            let decodes = decoded_ds_request(endpoint, &m).is_some();
            let (s, resp) = post(&hub.url(), path, m).await;
            let (reached, code) = flips.record(&format!("flip at {i}"), s, &resp);
            let expected = if decodes {
                decodable += 1;
                Reached::Validation
            } else {
                Reached::Decoding
            };
            assert_eq!(
                reached,
                expected,
                "flip at {i} of {} bytes (decodes: {decodes}): {code:?}",
                body.len()
            );
        }
    }
    let flip_time = started.elapsed();
    let mut prefixes = Refusals::default();
    for (path, body) in &chosen {
        for cut in 0..body.len() {
            let (s, resp) = post(&hub.url(), path, body[..cut].to_vec()).await;
            assert_eq!(s, 400, "prefix of {cut} bytes");
            let (reached, code) = prefixes.record(&format!("prefix of {cut} bytes"), s, &resp);
            assert_eq!(
                (reached, code),
                (Reached::Decoding, ErrorCode::Malformed),
                "prefix of {cut} bytes"
            );
        }
    }
    println!(
        "mangled: {} single-byte corruptions of {} real requests in {} ms, {decodable} still \
         decodable; {flips}",
        flips.total(),
        chosen.len(),
        flip_time.as_millis()
    );
    println!("mangled: prefixes: {prefixes}");
    assert!(
        before == hub.dump(),
        "a refused request changed stored data"
    );
    // Corruptions are caught at different layers (decode 400, signature/key 403, ...).
    let statuses: std::collections::BTreeSet<u16> = flips.by_code.keys().map(|(s, _)| *s).collect();
    assert!(statuses.len() >= 2, "{flips}");
    // Past the (open) token gate, the hub's decoding agreed with ours on every corruption (checked
    // one by one above), so exactly the decodable ones reached validation. A flipped byte breaks
    // decoding only where it hits framing (a length, a tag, the version or transaction type):
    // a few dozen bytes of these requests, whose bulk is keys, signatures and ciphertext.
    assert_eq!(flips.count(Reached::TokenGate), 0, "{flips}");
    assert_eq!(flips.count(Reached::Validation), decodable, "{flips}");
    assert!(
        decodable * 10 >= flips.total() * 9,
        "only {decodable} of {} corruptions reached validation: {flips}",
        flips.total()
    );
    // The hub is still healthy.
    alice.send(&g, b"still alive").await.unwrap();
    assert_eq!(
        messages(&bob.receive().await.unwrap()).last().unwrap(),
        b"still alive"
    );
}
