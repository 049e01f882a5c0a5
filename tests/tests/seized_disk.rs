//! What a seized disk shows: a raw dump of every RocksDB key and value after a realistic
//! conversation holds no leaf credential identity, no queue id in DS records, no plaintext,
//! no group EAR key and no friendship token.

mod common;

use common::*;
use mimi_ds_rm::store::Cf;
use mimi_rm_tests::contains;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_dump_reveals_no_identities_queue_ids_or_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path());
    let mut alice = client(&hub, dir.path(), "alice").await;
    let mut bob = client(&hub, dir.path(), "bob").await;
    let mut carol = client(&hub, dir.path(), "carol").await;
    let g = group_of(&mut alice, &mut [&mut bob, &mut carol]).await;
    let g2 = group_of(&mut bob, &mut [&mut carol]).await;
    let plaintexts: Vec<Vec<u8>> = (0..6)
        .map(|i| {
            format!(
                "plaintext-marker-{i}-{}",
                hex::encode(rand::random::<[u8; 8]>())
            )
            .into_bytes()
        })
        .collect();
    alice.send(&g, &plaintexts[0]).await.unwrap();
    bob.send(&g, &plaintexts[1]).await.unwrap();
    carol.send(&g2, &plaintexts[2]).await.unwrap();
    bob.update(&g).await.unwrap();
    alice.receive().await.unwrap();
    carol.receive().await.unwrap();
    // Leave some messages queued (not yet fetched) too.
    carol.send(&g, &plaintexts[3]).await.unwrap();
    alice.send(&g, &plaintexts[4]).await.unwrap();
    bob.send(&g2, &plaintexts[5]).await.unwrap();

    let mut identities = Vec::new();
    let mut queue_ids = Vec::new();
    let mut secrets = Vec::new();
    for c in [&alice, &bob, &carol] {
        identities.extend(c.leaf_identities().unwrap());
        queue_ids.push(c.client_id_bytes().unwrap().to_vec());
        let card = c.contact_card().unwrap();
        secrets.push(card.friendship_token.to_vec());
        secrets.push(card.add_package_key.to_vec());
        for grp in c.groups() {
            secrets.push(c.group_ear_key(&grp).unwrap().to_vec());
        }
    }
    assert_eq!(identities.len(), 3 + 2, "one leaf per membership");

    let dump = hub.dump();
    assert!(
        dump.iter().any(|(cf, _, _)| *cf == Cf::DsGroups),
        "groups are stored"
    );
    assert!(
        dump.iter().any(|(cf, _, _)| *cf == Cf::QsQueues),
        "messages are queued"
    );
    for (cf, k, v) in &dump {
        for id in &identities {
            assert!(
                !contains(k, id) && !contains(v, id),
                "leaf identity in {cf:?}"
            );
        }
        for p in &plaintexts {
            assert!(!contains(k, p) && !contains(v, p), "plaintext in {cf:?}");
        }
        for s in &secrets {
            assert!(
                !contains(k, s) && !contains(v, s),
                "client-held key or token in {cf:?}"
            );
        }
        if matches!(cf, Cf::DsGroups | Cf::DsReservations) {
            for q in &queue_ids {
                assert!(!contains(k, q) && !contains(v, q), "queue id in {cf:?}");
            }
        }
    }
}
