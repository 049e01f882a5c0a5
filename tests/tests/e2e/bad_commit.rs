//! A commit the hub cannot judge must never strand a group.
//!
//! A member sends a commit that passes every check the hub can make (signature, epoch, proposals,
//! tree, GroupInfo) but breaks something only epoch-secret holders can check. The hub accepts it;
//! every honest member fails to process it, reports it, and re-enters by external commit. The
//! group converges on one epoch, messages flow, and the offender can be removed.

use mimi_client_rm::{Client, Event, GroupHandle, Recorder, Tamper, envelope};
use mimi_rm_protocol::ds::*;
use mimi_rm_protocol::{ErrorCode, TransactionType, paths};
use mimi_rm_tests::common::*;
use mimi_rm_tests::{HubProcess, error_of, post};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Every honest member receives until all of them share one epoch; returns the rounds needed.
async fn converge(members: &mut [&mut Client], g: &GroupHandle) -> usize {
    for round in 1..=4 {
        for m in members.iter_mut() {
            m.receive().await.expect("receive");
        }
        let auth: Vec<Vec<u8>> = members
            .iter()
            .map(|m| m.epoch_authenticator(g).expect("authenticator"))
            .collect();
        if auth.windows(2).all(|w| w[0] == w[1]) {
            return round;
        }
    }
    panic!("members did not converge on one epoch");
}

/// The `Resynced` report among `events`, if any.
fn resynced(events: &[Event]) -> Option<Option<CommitRejected>> {
    events.iter().find_map(|e| match e {
        Event::Resynced { reported, .. } => Some(reported.clone()),
        _ => None,
    })
}

/// Honest members can talk again: every one of them reads every other's message.
async fn all_talk(members: &mut [&mut Client], g: &GroupHandle) {
    for i in 0..members.len() {
        let text = format!("after recovery from {i}");
        members[i].send(g, text.as_bytes()).await.expect("send");
        for (j, m) in members.iter_mut().enumerate() {
            if j != i {
                let got = messages(&m.receive().await.expect("receive"));
                assert_eq!(got, vec![text.as_bytes().to_vec()], "member {j} from {i}");
            }
        }
    }
}

async fn heals_after(how: Tamper, expected: RejectReason) {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path());
    let mut mallory = client(&hub, dir.path(), "mallory").await;
    let mut bob = client(&hub, dir.path(), "bob").await;
    let mut carol = client(&hub, dir.path(), "carol").await;
    let mut dave = client(&hub, dir.path(), "dave").await;
    let g = group_of(&mut mallory, &mut [&mut bob, &mut carol, &mut dave]).await;
    let offender_leaf = mallory.own_leaf(&g).unwrap();
    // Removing a user is for admins: the group has a second one, who will remove mallory.
    let bob_leaf = bob.own_leaf(&g).unwrap();
    mallory
        .set_role(&g, bob_leaf, mimi_rm_protocol::ds::Role::Admin)
        .await
        .unwrap();
    let bad_epoch = mallory.epoch(&g).unwrap();

    // The hub cannot see the damage and accepts the commit.
    mallory
        .update_tampered(&g, how)
        .await
        .expect("the hub accepts a commit it cannot fully check");

    // Every honest member rejects it, reports it and re-enters.
    for m in [&mut bob, &mut carol, &mut dave] {
        let events = m.receive().await.unwrap();
        let report = resynced(&events)
            .unwrap_or_else(|| panic!("{how:?}: expected a resync, got {events:?}"))
            .expect("the failed commit is reported");
        assert_eq!(report.epoch, bad_epoch);
        assert_eq!(report.reason, expected, "{how:?}");
    }
    let mut honest = [&mut bob, &mut carol, &mut dave];
    converge(&mut honest, &g).await;
    let reports = honest[0].commit_reports(&g).await.unwrap();
    assert_eq!(
        reports,
        vec![ReportTally {
            leaf: offender_leaf,
            reported_commits: 1,
            reports: 3
        }],
        "{how:?}"
    );
    all_talk(&mut honest, &g).await;

    // The evidence lets a member remove the offender; the others follow.
    honest[0].remove(&g, &[offender_leaf]).await.unwrap();
    converge(&mut honest, &g).await;
    for m in honest.iter() {
        assert!(!m.members(&g).unwrap().contains(&offender_leaf));
        assert_eq!(m.members(&g).unwrap().len(), 3);
    }
    assert!(
        honest[0].commit_reports(&g).await.unwrap().is_empty(),
        "a removed leaf's tally is dropped"
    );
    all_talk(&mut honest, &g).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_confirmation_tag_heals() {
    // The membership tag covers the confirmation tag, so members see a membership-tag failure.
    heals_after(Tamper::ConfirmationTag, RejectReason::MembershipTag).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_membership_tag_heals() {
    heals_after(Tamper::MembershipTag, RejectReason::MembershipTag).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_path_secrets_heal() {
    heals_after(Tamper::PathSecrets, RejectReason::UpdatePath).await;
}

/// A group of ten where nine members recover at the same time: the hub orders their resync
/// commits, losers retry on the new epoch, and everyone converges. Prints the recovery time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_of_ten_recovers_concurrently() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path());
    let mut mallory = client(&hub, dir.path(), "mallory").await;
    let mut others = Vec::new();
    for i in 0..9 {
        others.push(client(&hub, dir.path(), &format!("member{i}")).await);
    }
    let g = {
        let mut refs: Vec<&mut Client> = others.iter_mut().collect();
        group_of(&mut mallory, &mut refs).await
    };
    let offender_leaf = mallory.own_leaf(&g).unwrap();
    mallory
        .update_tampered(&g, Tamper::ConfirmationTag)
        .await
        .unwrap();

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for mut m in others {
        tasks.spawn(async move {
            let events = m.receive().await.expect("receive");
            (m, events)
        });
    }
    let mut others = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (m, events) = done.unwrap();
        assert!(
            matches!(resynced(&events), Some(Some(_))),
            "every member reports and resyncs: {events:?}"
        );
        others.push(m);
    }
    let first_round = started.elapsed();
    let mut refs: Vec<&mut Client> = others.iter_mut().collect();
    let rounds = 1 + converge(&mut refs, &g).await;
    eprintln!(
        "recovery of a 10-member group: {rounds} receive rounds, {} ms concurrent report+resync, {} ms until all agree",
        first_round.as_millis(),
        started.elapsed().as_millis()
    );
    let reports = refs[0].commit_reports(&g).await.unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].leaf, offender_leaf);
    assert_eq!(reports[0].reports, 9);
    assert_eq!(refs[0].members(&g).unwrap().len(), 10);
    refs[0].send(&g, b"we are back").await.unwrap();
    for m in refs.iter_mut().skip(1) {
        assert_eq!(
            messages(&m.receive().await.unwrap()),
            vec![b"we are back".to_vec()]
        );
    }
}

/// The commit bundle of the last recorded update (or, with `resync`, resync) request.
fn recorded_bundle(recorder: &Recorder, resync: bool) -> CommitBundle {
    recorded_ds_requests(&recorder.lock().unwrap())
        .into_iter()
        .rev()
        .find_map(|req| match (req.tbs.operation, resync) {
            (DsOperation::Update(b), false) | (DsOperation::Resync(b), true) => Some(b),
            _ => None,
        })
        .expect("recorded commit")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_reports_and_resyncs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_without_tokens(dir.path());
    let mut alice = client(&hub, dir.path(), "alice").await;
    let mut bob = client(&hub, dir.path(), "bob").await;
    let mut carol = client(&hub, dir.path(), "carol").await;
    let g = group_of(&mut alice, &mut [&mut bob, &mut carol]).await;
    let recorder = Arc::new(Mutex::new(Vec::new()));
    alice.set_recorder(recorder.clone());
    bob.set_recorder(recorder.clone());
    let epoch = alice.epoch(&g).unwrap();
    alice.update(&g).await.unwrap();
    bob.receive().await.unwrap();
    carol.receive().await.unwrap();
    let commit = recorded_bundle(&recorder, false).commit;
    let real = CommitRejected {
        epoch,
        commit_ref: commit_ref(commit.as_slice()),
        reason: RejectReason::MembershipTag,
    };
    let ear = bob.group_ear_key(&g).unwrap();
    let bob_leaf = bob.own_leaf(&g).unwrap();
    let stranger = ed25519_dalek::SigningKey::from_bytes(&rand::random());
    let op = |r: &CommitRejected| DsOperation::ReportCommit(r.clone());

    // Wrong signature: bob's leaf index, someone else's key.
    let body = ds_signed(
        &g,
        &ear,
        DsSender::Member(bob_leaf),
        op(&real),
        &stranger,
        mimi_ds_rm::now_ms(),
    );
    rejected(
        &hub,
        paths::GROUP_OPERATION,
        body,
        403,
        ErrorCode::InvalidSignature,
    )
    .await;
    // Not a member.
    let body = ds_signed(
        &g,
        &ear,
        DsSender::Member(57),
        op(&real),
        &stranger,
        mimi_ds_rm::now_ms(),
    );
    rejected(
        &hub,
        paths::GROUP_OPERATION,
        body,
        403,
        ErrorCode::NotAuthorized,
    )
    .await;
    // A real member naming the wrong epoch, an unknown commit, or its own commit.
    let signed = |c: &Client, r: CommitRejected| {
        envelope(
            TransactionType::GroupOperation,
            &c.signed_member_request(&g, DsOperation::ReportCommit(r))
                .unwrap(),
        )
        .unwrap()
    };
    let wrong_epoch = CommitRejected {
        epoch: epoch + 5,
        ..real.clone()
    };
    let body = signed(&bob, wrong_epoch);
    rejected(
        &hub,
        paths::GROUP_OPERATION,
        body,
        404,
        ErrorCode::UnknownEpoch,
    )
    .await;
    let unknown = CommitRejected {
        commit_ref: rand::random(),
        ..real.clone()
    };
    let body = signed(&bob, unknown);
    rejected(
        &hub,
        paths::GROUP_OPERATION,
        body,
        404,
        ErrorCode::UnknownCommit,
    )
    .await;
    let body = signed(&alice, real.clone());
    rejected(
        &hub,
        paths::GROUP_OPERATION,
        body,
        403,
        ErrorCode::NotAuthorized,
    )
    .await;
    assert!(bob.commit_reports(&g).await.unwrap().is_empty());

    // Positive control: the genuine report is counted, once, and its replay is refused.
    let body = signed(&bob, real.clone());
    let (status, _) = post(&hub.url(), paths::GROUP_OPERATION, body.clone()).await;
    assert_eq!(status, 200);
    rejected(&hub, paths::GROUP_OPERATION, body, 403, ErrorCode::Replayed).await;
    bob.report_commit(&g, real.clone()).await.unwrap();
    assert_eq!(
        bob.commit_reports(&g).await.unwrap(),
        vec![ReportTally {
            leaf: alice.own_leaf(&g).unwrap(),
            reported_commits: 1,
            reports: 1
        }]
    );

    // Resync: bob's genuine external commit, sent under carol's name, is refused (it does not
    // remove carol's leaf) and changes nothing.
    let bobs = bob.prepared_resync(&g).await.unwrap();
    let as_carol = |bundle: CommitBundle| {
        envelope(
            TransactionType::GroupOperation,
            &carol
                .signed_member_request(&g, DsOperation::Resync(bundle))
                .unwrap(),
        )
        .unwrap()
    };
    rejected(
        &hub,
        paths::GROUP_OPERATION,
        as_carol(bobs.clone()),
        400,
        ErrorCode::WrongOperation,
    )
    .await;
    // A stale ordinary commit sent as a resync fails the epoch check.
    let body = as_carol(recorded_bundle(&recorder, false));
    rejected(
        &hub,
        paths::GROUP_OPERATION,
        body,
        409,
        ErrorCode::WrongEpoch,
    )
    .await;
    // Positive control: bob's own resync is accepted; replayed, it is refused.
    let before = bob.epoch(&g).unwrap();
    bob.resync(&g).await.unwrap();
    assert_eq!(bob.epoch(&g).unwrap(), before + 1);
    let (_, resync_body) = recorder.lock().unwrap().last().cloned().unwrap();
    rejected(
        &hub,
        paths::GROUP_OPERATION,
        resync_body,
        403,
        ErrorCode::Replayed,
    )
    .await;
    // And the same commit under carol's name is now stale.
    let accepted = recorded_bundle(&recorder, true);
    rejected(
        &hub,
        paths::GROUP_OPERATION,
        as_carol(accepted),
        409,
        ErrorCode::WrongEpoch,
    )
    .await;
    // Everyone still agrees and can talk.
    let mut all = [&mut alice, &mut bob, &mut carol];
    converge(&mut all, &g).await;
    all_talk(&mut all, &g).await;
}

/// A member that keeps sending bad commits: the tally grows with each, report spam does not
/// grow the state, and recovery converges every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_bad_commits_stay_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path());
    let mut mallory = client(&hub, dir.path(), "mallory").await;
    let mut bob = client(&hub, dir.path(), "bob").await;
    let mut carol = client(&hub, dir.path(), "carol").await;
    let g = group_of(&mut mallory, &mut [&mut bob, &mut carol]).await;
    let recorder = Arc::new(Mutex::new(Vec::new()));
    mallory.set_recorder(recorder.clone());
    let offender_leaf = mallory.own_leaf(&g).unwrap();
    let mut last = None;
    for round in 1..=3u32 {
        // The offender first catches up with the resyncs it can process (or resyncs itself).
        mallory.receive().await.unwrap();
        let epoch = mallory.epoch(&g).unwrap();
        mallory
            .update_tampered(&g, Tamper::MembershipTag)
            .await
            .unwrap();
        let mut honest = [&mut bob, &mut carol];
        converge(&mut honest, &g).await;
        let tally = honest[0].commit_reports(&g).await.unwrap();
        let mine = tally
            .iter()
            .find(|t| t.leaf == offender_leaf)
            .expect("tally");
        assert_eq!((mine.reported_commits, mine.reports), (round, 2 * round));
        last = Some(CommitRejected {
            epoch,
            commit_ref: commit_ref(recorded_bundle(&recorder, false).commit.as_slice()),
            reason: RejectReason::MembershipTag,
        });
        all_talk(&mut honest, &g).await;
    }
    // Spam: the same report again and again changes neither the tally nor the stored row.
    let report = last.unwrap();
    let stored_row = |hub: &HubProcess| group_row(&hub.dump(), &g).expect("group row");
    let row_before = stored_row(&hub);
    let tally_before = bob.commit_reports(&g).await.unwrap();
    for _ in 0..20 {
        bob.report_commit(&g, report.clone()).await.unwrap();
    }
    assert_eq!(bob.commit_reports(&g).await.unwrap(), tally_before);
    assert_eq!(
        stored_row(&hub),
        row_before,
        "a repeated report stores nothing"
    );
    let token = bob.take_token().await.unwrap();
    let (status, body) = mimi_rm_tests::post_paid(
        &hub.url(),
        paths::GROUP_OPERATION,
        envelope(
            TransactionType::GroupOperation,
            &bob.signed_member_request(&g, DsOperation::ReportCommit(report))
                .unwrap(),
        )
        .unwrap(),
        &token,
    )
    .await;
    assert_eq!(status, 200, "{}", error_of(&body));
}
