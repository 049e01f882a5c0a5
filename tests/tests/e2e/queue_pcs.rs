//! Queue post-compromise security: a copy of a client's QS ratchet state (a one-time
//! compromise of the server) decrypts that client's queued messages until the client mixes in
//! fresh randomness; afterwards it decrypts nothing new, while the client reads on.

use mimi_ds_rm::core::qs::RatchetRecord;
use mimi_ds_rm::store::Cf;
use mimi_rm_crypto::ratchet::QueueRatchet;
use mimi_rm_protocol::decode_exact;
use mimi_rm_tests::HubProcess;
use mimi_rm_tests::common::*;

/// The attacker's copy of `client`'s ratchet, from the server's store.
fn steal(hub: &HubProcess, client: &[u8; 16]) -> QueueRatchet {
    let (_, _, v) = hub
        .dump()
        .into_iter()
        .find(|(cf, k, _)| *cf == Cf::QsRatchets && k == client)
        .expect("ratchet record");
    let record: RatchetRecord = decode_exact(&v, 1 << 16).unwrap();
    QueueRatchet::from_bytes(&record.ratchet).unwrap()
}

/// The queued ciphertexts of `client`, by sequence number.
fn queued(hub: &HubProcess, client: &[u8; 16]) -> Vec<(u64, Vec<u8>)> {
    hub.dump()
        .into_iter()
        .filter(|(cf, k, _)| *cf == Cf::QsQueues && k.starts_with(client))
        .map(|(_, k, v)| (u64::from_be_bytes(k[16..24].try_into().unwrap()), v))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_ratchet_reads_nothing_after_a_rekey() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path());
    let mut alice = client(&hub, dir.path(), "alice").await;
    let mut bob = client(&hub, dir.path(), "bob").await;
    let g = group_of(&mut alice, &mut [&mut bob]).await;
    let id = bob.client_id_bytes().unwrap();

    // Positive control: the stolen state decrypts what is queued after the theft.
    let mut stolen = steal(&hub, &id);
    alice.send(&g, b"before the rekey").await.unwrap();
    let q = queued(&hub, &id);
    assert_eq!(q.len(), 1);
    assert!(
        stolen.decrypt_next(q[0].0, &q[0].1).is_ok(),
        "the attack is real"
    );
    assert_eq!(
        messages(&bob.receive().await.unwrap()),
        vec![b"before the rekey".to_vec()]
    );

    // Bob mixes in fresh randomness; the attacker keeps following the old chain.
    bob.rekey_queue().await.unwrap();
    alice.send(&g, b"after the rekey").await.unwrap();
    let q = queued(&hub, &id);
    assert_eq!(q.len(), 1);
    assert!(
        stolen.clone().decrypt_next(q[0].0, &q[0].1).is_err(),
        "a stolen ratchet must not read messages after a rekey"
    );
    assert_eq!(
        messages(&bob.receive().await.unwrap()),
        vec![b"after the rekey".to_vec()]
    );
    // Several rekeys in a row (no message between) and more traffic still line up.
    bob.rekey_queue().await.unwrap();
    bob.rekey_queue().await.unwrap();
    for i in 0..3 {
        alice
            .send(&g, format!("later {i}").as_bytes())
            .await
            .unwrap();
    }
    assert_eq!(messages(&bob.receive().await.unwrap()).len(), 3);
}
