//! A group's whole life over real HTTP against a real hub process.

use mimi_client_rm::Event;
use mimi_rm_protocol::ds::*;
use mimi_rm_protocol::{ErrorCode, TransactionType, paths};
use mimi_rm_tests::common::*;
use mimi_rm_tests::error_of;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clients_create_talk_update_remove_leave_delete() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path());
    let mut alice = client(&hub, dir.path(), "alice").await;
    let mut bob = client(&hub, dir.path(), "bob").await;
    let mut carol = client(&hub, dir.path(), "carol").await;

    let g = group_of(&mut alice, &mut [&mut bob, &mut carol]).await;
    assert_eq!(alice.members(&g).unwrap().len(), 3);
    assert_eq!(alice.epoch(&g).unwrap(), 2);
    assert_eq!(bob.epoch(&g).unwrap(), 2);
    assert_eq!(carol.epoch(&g).unwrap(), 2);

    // Messages in every direction; each member decrypts the others'.
    alice.send(&g, b"hello from alice").await.unwrap();
    bob.send(&g, b"hi from bob").await.unwrap();
    carol.send(&g, b"carol here").await.unwrap();
    let mut a = messages(&alice.receive().await.unwrap());
    a.sort();
    assert_eq!(a, vec![b"carol here".to_vec(), b"hi from bob".to_vec()]);
    let b = messages(&bob.receive().await.unwrap());
    assert_eq!(
        b,
        vec![b"hello from alice".to_vec(), b"carol here".to_vec()]
    );
    let c = messages(&carol.receive().await.unwrap());
    assert_eq!(
        c,
        vec![b"hello from alice".to_vec(), b"hi from bob".to_vec()]
    );

    // Update (fresh UpdatePath) by bob.
    assert_eq!(bob.update(&g).await.unwrap(), 3);
    assert!(alice.receive().await.unwrap().contains(&Event::Commit {
        group: g.clone(),
        epoch: 3
    }));
    assert!(carol.receive().await.unwrap().contains(&Event::Commit {
        group: g.clone(),
        epoch: 3
    }));
    alice.send(&g, b"after update").await.unwrap();
    assert_eq!(
        messages(&bob.receive().await.unwrap()),
        vec![b"after update".to_vec()]
    );
    assert_eq!(
        messages(&carol.receive().await.unwrap()),
        vec![b"after update".to_vec()]
    );

    // Carol leaves: her proposal is stored by the hub and committed by alice.
    carol.leave(&g).await.unwrap();
    assert!(
        alice
            .receive()
            .await
            .unwrap()
            .contains(&Event::Proposal { group: g.clone() })
    );
    assert!(
        bob.receive()
            .await
            .unwrap()
            .contains(&Event::Proposal { group: g.clone() })
    );
    assert_eq!(alice.update(&g).await.unwrap(), 4);
    assert!(
        carol
            .receive()
            .await
            .unwrap()
            .contains(&Event::Removed { group: g.clone() })
    );
    assert!(bob.receive().await.unwrap().contains(&Event::Commit {
        group: g.clone(),
        epoch: 4
    }));
    assert_eq!(alice.members(&g).unwrap().len(), 2);
    assert!(carol.groups().is_empty());

    // Alice removes bob; bob learns it and reads nothing afterwards.
    let bob_leaf = bob.own_leaf(&g).unwrap();
    assert_eq!(alice.remove(&g, &[bob_leaf]).await.unwrap(), 5);
    assert!(
        bob.receive()
            .await
            .unwrap()
            .contains(&Event::Removed { group: g.clone() })
    );
    alice.send(&g, b"only alice is left").await.unwrap();
    assert!(messages(&bob.receive().await.unwrap()).is_empty());
    assert!(messages(&carol.receive().await.unwrap()).is_empty());

    // Delete: afterwards the hub answers 404 for the group even with the right key.
    let ear = alice.group_ear_key(&g).unwrap();
    alice.delete_group(&g).await.unwrap();
    assert!(alice.groups().is_empty());
    let req = DsRequest {
        tbs: DsRequestTbs {
            group_id: g.0.clone().into(),
            ear_key: Some(ear.to_vec().into()),
            timestamp_ms: mimi_ds_rm::now_ms(),
            nonce: [1; 16],
            sender: DsSender::Anonymous,
            operation: DsOperation::ExternalCommitInfo,
        },
        signature: Vec::new().into(),
    };
    let body = mimi_client_rm::envelope(TransactionType::ExternalCommitInformation, &req).unwrap();
    let token = alice.take_token().await.unwrap();
    let (status, resp) =
        mimi_rm_tests::post_paid(&hub.url(), paths::EXTERNAL_COMMIT_INFORMATION, body, &token)
            .await;
    assert_eq!(status, 404);
    assert_eq!(error_of(&resp).code, ErrorCode::UnknownGroup);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_and_crash_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut hub = hub(dir.path());
    let mut alice = client(&hub, dir.path(), "alice").await;
    let mut bob = client(&hub, dir.path(), "bob").await;
    let g = group_of(&mut alice, &mut [&mut bob]).await;

    alice.send(&g, b"before restart 1").await.unwrap();
    alice.send(&g, b"before restart 2").await.unwrap();
    hub.restart();
    assert_eq!(
        messages(&bob.receive().await.unwrap()),
        vec![b"before restart 1".to_vec(), b"before restart 2".to_vec()]
    );
    bob.send(&g, b"after restart").await.unwrap();
    assert_eq!(
        messages(&alice.receive().await.unwrap()),
        vec![b"after restart".to_vec()]
    );

    // An acknowledged commit and message survive SIGKILL.
    assert_eq!(alice.update(&g).await.unwrap(), 2);
    alice.send(&g, b"before crash").await.unwrap();
    hub.crash_and_restart();
    let events = bob.receive().await.unwrap();
    assert!(
        events.contains(&Event::Commit {
            group: g.clone(),
            epoch: 2
        }),
        "{events:?}"
    );
    assert_eq!(messages(&events), vec![b"before crash".to_vec()]);

    // The clients restart too, from their directories, and carry on.
    drop(alice);
    drop(bob);
    let mut alice = mimi_client_rm::Client::load(&dir.path().join("alice"), &hub.url()).unwrap();
    let mut bob = mimi_client_rm::Client::load(&dir.path().join("bob"), &hub.url()).unwrap();
    assert_eq!(bob.update(&g).await.unwrap(), 3);
    assert!(alice.receive().await.unwrap().contains(&Event::Commit {
        group: g.clone(),
        epoch: 3
    }));
    bob.send(&g, b"both restarted").await.unwrap();
    assert_eq!(
        messages(&alice.receive().await.unwrap()),
        vec![b"both restarted".to_vec()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_for_one_epoch_exactly_one_wins() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path());
    let mut alice = client(&hub, dir.path(), "alice").await;
    let mut bob = client(&hub, dir.path(), "bob").await;
    let g = group_of(&mut alice, &mut [&mut bob]).await;
    for round in 0..5u64 {
        let ga = g.clone();
        let gb = g.clone();
        let ta = tokio::spawn(async move {
            let r = alice.update(&ga).await;
            (alice, r)
        });
        let tb = tokio::spawn(async move {
            let r = bob.update(&gb).await;
            (bob, r)
        });
        let (a, ra) = ta.await.unwrap();
        let (b, rb) = tb.await.unwrap();
        alice = a;
        bob = b;
        let expected_epoch = 2 + round;
        match (&ra, &rb) {
            (Ok(e), Err(err)) | (Err(err), Ok(e)) => {
                assert_eq!(*e, expected_epoch);
                assert_eq!(err.code(), Some(ErrorCode::WrongEpoch), "{err}");
            }
            _ => panic!("round {round}: expected exactly one winner, got {ra:?} / {rb:?}"),
        }
        // The loser catches up by processing the winner's commit; both agree again.
        alice.receive().await.unwrap();
        bob.receive().await.unwrap();
        assert_eq!(alice.epoch(&g).unwrap(), expected_epoch);
        assert_eq!(bob.epoch(&g).unwrap(), expected_epoch);
    }
    alice.send(&g, b"converged").await.unwrap();
    assert_eq!(
        messages(&bob.receive().await.unwrap()),
        vec![b"converged".to_vec()]
    );
}

/// Regression: a member that commits several times in a row, without reading its queue in
/// between, must still read what others sent before. Each of its own commits moves it one epoch
/// on while a message of an older epoch waits in its queue; past `MAX_PAST_EPOCHS` commits that
/// epoch's secrets were gone and OpenMLS refused the message as "generation too old" (the rare
/// loss of the concurrency test). The client now reads its queue before committing again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_own_commits_keep_queued_messages_readable() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path());
    let mut alice = client(&hub, dir.path(), "alice").await;
    let mut bob = client(&hub, dir.path(), "bob").await;
    let g = group_of(&mut alice, &mut [&mut bob]).await;
    let start = alice.epoch(&g).unwrap();
    bob.send(&g, b"before the commits").await.unwrap();
    let commits = mimi_client_rm::MAX_PAST_EPOCHS as u64 + 2;
    for i in 1..=commits {
        assert_eq!(alice.update(&g).await.unwrap(), start + i);
    }
    let events = alice.receive().await.unwrap();
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::Undecryptable { .. })),
        "{events:?}"
    );
    assert_eq!(messages(&events), vec![b"before the commits".to_vec()]);
    // Bob follows every commit and the group still talks both ways.
    bob.receive().await.unwrap();
    assert_eq!(bob.epoch(&g).unwrap(), start + commits);
    bob.send(&g, b"after").await.unwrap();
    alice.send(&g, b"and back").await.unwrap();
    assert_eq!(
        messages(&alice.receive().await.unwrap()),
        vec![b"after".to_vec()]
    );
    assert_eq!(
        messages(&bob.receive().await.unwrap()),
        vec![b"and back".to_vec()]
    );
}

/// The hub accepts an application message a few epochs late and fans it out to every current
/// member, including one who joined after the message's epoch. That member must neither see it
/// nor report it as undecryptable; the members it was meant for read it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_message_from_before_a_join_is_not_reported_to_the_joiner() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path());
    let mut alice = client(&hub, dir.path(), "alice").await;
    let mut bob = client(&hub, dir.path(), "bob").await;
    let mut carol = client(&hub, dir.path(), "carol").await;
    let g = group_of(&mut alice, &mut [&mut bob]).await;
    // Carol joins while bob has not read the commit that added her.
    carol.add_contact(&alice.contact_card().unwrap()).unwrap();
    alice
        .invite(&g, &carol.contact_card().unwrap())
        .await
        .unwrap();
    let events = carol.receive().await.unwrap();
    assert!(events.contains(&Event::Joined { group: g.clone() }));
    // Bob, one epoch behind, sends; the hub accepts it and fans it out to carol too.
    let behind = bob.epoch(&g).unwrap();
    assert!(behind < carol.epoch(&g).unwrap());
    bob.send(&g, b"from the old epoch").await.unwrap();
    assert_eq!(bob.epoch(&g).unwrap(), behind, "sent without catching up");
    let events = carol.receive().await.unwrap();
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::Undecryptable { .. })),
        "{events:?}"
    );
    assert!(messages(&events).is_empty());
    assert_eq!(
        messages(&alice.receive().await.unwrap()),
        vec![b"from the old epoch".to_vec()]
    );
}
