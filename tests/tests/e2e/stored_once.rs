//! Commits stored once: a message fanned out to several local queues is written once (sealed
//! under a fresh key), each queue getting a ratchet-encrypted reference with a release ticket;
//! the message goes when its last reader releases it. Real hub processes, real clients.
//!
//! The hubs here store every shared message once (`store_once_min_bytes = 0`), so small test
//! groups take the path large groups take in production.

use mimi_client_rm::{Client, GroupHandle};
use mimi_ds_rm::core::ds::state::{AtRest, DsGroupState, GroupRow};
use mimi_ds_rm::store::Cf;
use mimi_rm_crypto::ear::{self, EarKey};
use mimi_rm_protocol::qs::{Dequeue, QsOperation, StoredTicket};
use mimi_rm_protocol::queue::STORED_EAR_DOMAIN;
use mimi_rm_protocol::{ErrorCode, decode_exact, paths};
use mimi_rm_tests::common::*;
use mimi_rm_tests::{HubProcess, post_with_ca};

const STORE_ALL: &str = "store_once_min_bytes = 0\n";

type Dump = Vec<(Cf, Vec<u8>, Vec<u8>)>;

fn rows(dump: &Dump, cf: Cf) -> Vec<(Vec<u8>, Vec<u8>)> {
    dump.iter()
        .filter(|(c, _, _)| *c == cf)
        .map(|(_, k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The queue entries in `after` that are not in `before`.
fn new_entries(before: &Dump, after: &Dump) -> Vec<Vec<u8>> {
    let old = rows(before, Cf::QsQueues);
    rows(after, Cf::QsQueues)
        .into_iter()
        .filter(|r| !old.contains(r))
        .map(|(_, v)| v)
        .collect()
}

/// Four members, everyone caught up.
async fn group_of_four(hub: &HubProcess, dir: &std::path::Path) -> (Vec<Client>, GroupHandle) {
    let mut alice = client(hub, dir, "alice").await;
    let mut bob = client(hub, dir, "bob").await;
    let mut carol = client(hub, dir, "carol").await;
    let mut dave = client(hub, dir, "dave").await;
    let g = group_of(&mut alice, &mut [&mut bob, &mut carol, &mut dave]).await;
    alice.receive().await.unwrap();
    (vec![alice, bob, carol, dave], g)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_is_written_once_and_goes_with_its_last_reader() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_with_config(dir.path(), STORE_ALL);
    let (mut m, g) = group_of_four(&hub, dir.path()).await;
    // Dave's add went to bob and carol as one stored commit; both read it, so it is gone.
    let before = hub.dump();
    assert!(metric(&hub, "mimi_messages_stored_once").await >= 1);
    assert!(
        rows(&before, Cf::QsStored).is_empty(),
        "released by its readers"
    );
    assert!(rows(&before, Cf::QsStoredTickets).is_empty());
    let stored_before = metric(&hub, "mimi_messages_stored_once").await;

    m[0].update(&g).await.unwrap();
    let after = hub.dump();
    assert_eq!(
        metric(&hub, "mimi_messages_stored_once").await,
        stored_before + 1
    );
    let stored = rows(&after, Cf::QsStored);
    assert_eq!(stored.len(), 1, "one commit, stored once");
    assert_eq!(
        rows(&after, Cf::QsStoredTickets).len(),
        3,
        "a ticket per reader"
    );
    // Each reader's queue got one entry: a reference, all of one size, smaller than the
    // commit, so entry sizes no longer tell which queues got the same commit.
    let entries = new_entries(&before, &after);
    assert_eq!(entries.len(), 3);
    assert!(entries.iter().all(|e| e.len() == entries[0].len()));
    assert!(entries[0].len() < stored[0].1.len());

    // Playing a seized disk with every key the members hold for the group: the group's own
    // record opens (positive control: the keys and the routine work), the stored commit does
    // not — its key exists only inside the ratchet-encrypted queue entries.
    let mut keys = Vec::new();
    for c in &m {
        keys.push(c.group_ear_key(&g).unwrap());
        let (credential, wrapper) = c.group_credential_keys(&g).unwrap();
        keys.extend([credential, wrapper]);
    }
    let group_row = group_row(&after, &g).expect("group row");
    let row: GroupRow = decode_exact(&group_row, 1 << 26).unwrap();
    let ear_key = EarKey::from_bytes(&m[1].group_ear_key(&g).unwrap()).unwrap();
    assert!(DsGroupState::open(&row, &AtRest::Ear(ear_key), &g.0).is_ok());
    let (id, value) = &stored[0];
    let record: mimi_ds_rm::core::stored::StoredRecord = decode_exact(value, 1 << 27).unwrap();
    for k in &keys {
        let k = EarKey::from_bytes(k).unwrap();
        for domain in [STORED_EAR_DOMAIN, "mimi-rm group state"] {
            assert!(ear::open(&k, domain, id, record.ciphertext.as_slice()).is_err());
            assert!(ear::open(&k, domain, &g.0, record.ciphertext.as_slice()).is_err());
        }
    }

    // Readers process the commit from the stored copy; the copy goes with the last of them.
    let epoch = m[0].epoch(&g).unwrap();
    m[1].receive().await.unwrap();
    assert_eq!(m[1].epoch(&g).unwrap(), epoch);
    let mid = hub.dump();
    assert_eq!(rows(&mid, Cf::QsStored).len(), 1, "two readers left");
    assert_eq!(rows(&mid, Cf::QsStoredTickets).len(), 2);
    for c in &mut m[2..] {
        c.receive().await.unwrap();
        assert_eq!(c.epoch(&g).unwrap(), epoch);
    }
    let end = hub.dump();
    assert!(rows(&end, Cf::QsStored).is_empty());
    assert!(rows(&end, Cf::QsStoredTickets).is_empty());
    // The group works on: a message after the stored commit reaches everyone.
    m[3].send(&g, b"after the stored commit").await.unwrap();
    for c in &mut m[..3] {
        assert_eq!(
            messages(&c.receive().await.unwrap()),
            vec![b"after the stored commit".to_vec()]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_never_comes_keeps_the_copy_until_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_with_config(dir.path(), STORE_ALL);
    let (mut m, g) = group_of_four(&hub, dir.path()).await;
    m[0].update(&g).await.unwrap();
    for c in &mut m[1..3] {
        c.receive().await.unwrap();
    }
    // Dave never reads: his ticket keeps the commit.
    let dump = hub.dump();
    assert_eq!(rows(&dump, Cf::QsStored).len(), 1);
    assert_eq!(rows(&dump, Cf::QsStoredTickets).len(), 1);
    drop(m);
    let mut hub = hub;
    hub.stop();
    // Offline expiry a year on removes the stored commit and its ticket.
    let printed = expire(&hub, 3, mimi_ds_rm::now_ms() + 365 * 24 * 3600 * 1000);
    assert!(printed.contains("1 stored messages"), "{printed}");
    let after = hub.dump();
    assert!(rows(&after, Cf::QsStored).is_empty());
    assert!(rows(&after, Cf::QsStoredTickets).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_message_requests_that_are_wrong_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_with_config(dir.path(), &format!("{STORE_ALL}{NO_TOKENS}"));
    let (mut m, g) = group_of_four(&hub, dir.path()).await;
    m[0].update(&g).await.unwrap();
    let dump = hub.dump();
    let (id, _) = rows(&dump, Cf::QsStored).remove(0);
    let id: [u8; 16] = id.try_into().unwrap();
    let bob = &m[1];
    use ErrorCode::*;
    let too_many_ids = bob
        .signed_client_request(QsOperation::FetchStored(vec![id; 65]))
        .unwrap();
    rejected_case(&hub, "65 ids", paths::QS, too_many_ids, 400, InvalidRequest).await;
    let too_many_releases = bob
        .signed_client_request(QsOperation::Dequeue(Dequeue {
            ack_below: 0,
            max: 0,
            release: vec![
                StoredTicket {
                    id,
                    ticket: [1; 16]
                };
                257
            ],
        }))
        .unwrap();
    rejected_case(
        &hub,
        "257 releases",
        paths::QS,
        too_many_releases,
        400,
        InvalidRequest,
    )
    .await;
    let fetch = bob
        .signed_client_request(QsOperation::FetchStored(vec![id]))
        .unwrap();
    let mut truncated = fetch.clone();
    truncated.truncate(fetch.len() - 10);
    rejected_case(
        &hub,
        "truncated fetch",
        paths::QS,
        truncated,
        400,
        Malformed,
    )
    .await;
    let (ok, _) = post_with_ca(hub.ca_pem(), &hub.url(), paths::QS, fetch.clone()).await;
    assert_eq!(ok, 200, "bob's own fetch is fine");
    rejected_case(&hub, "replayed fetch", paths::QS, fetch, 403, Replayed).await;

    // A forged ticket releases nothing, and the request still succeeds (a client repeating a
    // release it made before must not fail).
    let forged = bob
        .signed_client_request(QsOperation::Dequeue(Dequeue {
            ack_below: 0,
            max: 0,
            release: vec![StoredTicket {
                id,
                ticket: [7; 16],
            }],
        }))
        .unwrap();
    let (s, _) = post_with_ca(hub.ca_pem(), &hub.url(), paths::QS, forged).await;
    assert_eq!(s, 200);
    let after = hub.dump();
    assert_eq!(rows(&after, Cf::QsStored), rows(&dump, Cf::QsStored));
    assert_eq!(
        rows(&after, Cf::QsStoredTickets),
        rows(&dump, Cf::QsStoredTickets)
    );
    // The real readers still get the commit.
    let epoch = m[0].epoch(&g).unwrap();
    for c in &mut m[1..] {
        c.receive().await.unwrap();
        assert_eq!(c.epoch(&g).unwrap(), epoch);
    }
    assert!(rows(&hub.dump(), Cf::QsStored).is_empty());
}
