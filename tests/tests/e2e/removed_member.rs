//! Removed means removed: a member removed from a group keeps every key it ever held for it —
//! a copy of its whole state directory taken just before the removal, so it still believes it
//! is a member — and tries everything. Removed three ways: by an admin, as a device its own
//! user removes, and by the hub's inactivity proposal that a member commits.
//!
//! With its old keys: external-commit and Welcome information are refused (`WrongEarKey`), its
//! sends, updates, key rotations and resyncs are refused and change no group record; the
//! credential material of two members added after its removal does not open with its old
//! credential keys; and no group record in a dump of the whole store opens with its old EAR key.
//! Positive controls: a current member's keys open all of those, and before the removal the
//! removed member's own keys did.

use mimi_client_rm::{Client, ClientError, Event, GroupHandle, MemberIdentity};
use mimi_ds_rm::core::ds::routing::{ROUTING_DOMAIN, RoutingRow};
use mimi_ds_rm::core::ds::state::{AtRest, DsGroupState, GroupRow};
use mimi_ds_rm::store::Cf;
use mimi_rm_crypto::ear::{self, EarKey};
use mimi_rm_protocol::auth::{AsOperation, AsResponse};
use mimi_rm_protocol::ds::{
    CommitBundle, CommitRejected, DsOperation, DsResponse, DsSender, KeyRotation, RejectReason,
};
use mimi_rm_protocol::{ErrorCode, decode_exact, paths};
use mimi_rm_tests::common::*;
use mimi_rm_tests::{HubProcess, post};
use std::path::Path;

/// What a member held for one group, kept after it is removed, and a client that still acts on
/// it.
struct Kept {
    ear: [u8; 32],
    credential_key: [u8; 32],
    wrapper_key: [u8; 32],
    ghost: Client,
}

/// Takes everything `c` (state under `state_dir`) holds for `g`, before it is removed.
fn keep(hub: &HubProcess, c: &Client, state_dir: &Path, copy: &Path, g: &GroupHandle) -> Kept {
    copy_dir(state_dir, copy);
    let (credential_key, wrapper_key) = c.group_credential_keys(g).unwrap();
    Kept {
        ear: c.group_ear_key(g).unwrap(),
        credential_key,
        wrapper_key,
        ghost: Client::load(copy, &hub.url()).unwrap(),
    }
}

/// The group's records (state and routing) in the store.
fn group_records(hub: &HubProcess, g: &GroupHandle) -> Vec<(Cf, Vec<u8>)> {
    hub.dump()
        .into_iter()
        .filter(|(cf, k, _)| matches!(cf, Cf::DsGroups | Cf::DsRouting) && *k == g.0)
        .map(|(cf, _, v)| (cf, v))
        .collect()
}

/// How many of the group's stored records `key` opens.
fn opens(hub: &HubProcess, g: &GroupHandle, key: &[u8; 32]) -> usize {
    let key = EarKey::from_bytes(key).unwrap();
    group_records(hub, g)
        .into_iter()
        .filter(|(cf, v)| match cf {
            Cf::DsGroups => {
                let row: GroupRow = decode_exact(v, 1 << 26).unwrap();
                DsGroupState::open(&row, &AtRest::Ear(key.clone()), &g.0).is_ok()
            }
            _ => {
                let row: RoutingRow = decode_exact(v, 1 << 26).unwrap();
                ear::open(&key, ROUTING_DOMAIN, &g.0, row.sealed.as_slice()).is_ok()
            }
        })
        .count()
}

/// An unsigned request for `g` under `ear` (only the EAR key authorises it).
fn anonymous(g: &GroupHandle, ear: &[u8; 32], op: DsOperation) -> Vec<u8> {
    let stranger = ed25519_dalek::SigningKey::from_bytes(&rand::random());
    ds_signed(
        g,
        ear,
        DsSender::Anonymous,
        op,
        &stranger,
        mimi_ds_rm::now_ms(),
    )
}

/// The credential entries the hub serves for `g` to a holder of `ear`.
async fn credentials(
    hub: &HubProcess,
    g: &GroupHandle,
    ear: &[u8; 32],
) -> Vec<mimi_rm_protocol::ds::LeafCredentialEntry> {
    let body = anonymous(g, ear, DsOperation::ExternalCommitInfo);
    let (status, resp) = post(&hub.url(), paths::EXTERNAL_COMMIT_INFORMATION, body).await;
    assert_eq!(status, 200);
    match decode_exact::<DsResponse>(&resp, 1 << 26).unwrap() {
        DsResponse::ExternalCommitInfo(info) => info.credentials,
        other => panic!("unexpected {other:?}"),
    }
}

/// The removed member's attempts, each refused; `member` is a current member whose keys are
/// the positive control, `joined_after` the handles of members added after the removal.
async fn attack(
    hub: &HubProcess,
    g: &GroupHandle,
    kept: &mut Kept,
    member: &Client,
    joined_after: &[&str],
    how: &str,
) {
    let current = member.group_ear_key(g).unwrap();
    assert_ne!(current, kept.ear, "{how}: the removal rotated the EAR key");
    assert!(
        opens(hub, g, &current) >= 1,
        "{how}: control: a member's key opens the group"
    );
    assert_eq!(
        opens(hub, g, &kept.ear),
        0,
        "{how}: the old key opens a stored record"
    );

    for (what, path, op) in [
        (
            "external commit info",
            paths::EXTERNAL_COMMIT_INFORMATION,
            DsOperation::ExternalCommitInfo,
        ),
        (
            "welcome info",
            paths::WELCOME_INFORMATION,
            DsOperation::WelcomeInfo(1),
        ),
    ] {
        rejected_case(
            hub,
            &format!("{how}: {what}"),
            path,
            anonymous(g, &kept.ear, op),
            403,
            ErrorCode::WrongEarKey,
        )
        .await;
    }

    // Its own client, still believing it is a member, signs every group operation with its
    // leaf key and old EAR key (without first reading its queue, as an honest client would).
    let garbage = || CommitBundle {
        commit: vec![1; 64].into(),
        group_info: vec![2; 64].into(),
        welcome: None,
        rotation: None,
    };
    let ops = [
        ("send", DsOperation::SendMessage(vec![3; 64].into())),
        ("commit", DsOperation::Update(garbage())),
        ("remove", DsOperation::RemoveMembers(garbage())),
        (
            "report",
            DsOperation::ReportCommit(CommitRejected {
                epoch: 1,
                commit_ref: [4; 32],
                reason: RejectReason::MembershipTag,
            }),
        ),
        ("resync", DsOperation::Resync(garbage())),
        (
            "rotation",
            DsOperation::RotateEarKey(KeyRotation {
                new_ear_key: vec![5; 32].into(),
                credentials: Vec::new(),
            }),
        ),
        ("leave", DsOperation::SelfRemove(vec![6; 64].into())),
    ];
    for (what, op) in ops {
        let req = kept.ghost.signed_member_request(g, op).unwrap();
        let tt = ds_transaction_type(&req.tbs.operation);
        rejected_case(
            hub,
            &format!("{how}: {what}"),
            paths::GROUP_OPERATION,
            mimi_client_rm::envelope(tt, &req).unwrap(),
            403,
            ErrorCode::WrongEarKey,
        )
        .await;
    }
    // Its honest resync asks for the group first, with the old key.
    let err = kept.ghost.prepared_resync(g).await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(ErrorCode::WrongEarKey),
        "{how}: resync: {err}"
    );

    // Members added after the removal: their credential material opens with a member's keys
    // (and names them), never with the removed member's.
    let (ck, wk) = member.group_credential_keys(g).unwrap();
    let entries = credentials(hub, g, &current).await;
    let mut added_seen = 0;
    for entry in &entries {
        let now = Client::open_credential_material(&entry.info, &ck, &wk)
            .expect("control: a member's keys open every leaf's material");
        let handle = String::from_utf8_lossy(now.tbs.identity.handle.as_slice()).into_owned();
        if joined_after.contains(&handle.as_str()) {
            added_seen += 1;
        }
        assert!(
            Client::open_credential_material(&entry.info, &kept.credential_key, &kept.wrapper_key)
                .is_err(),
            "{how}: the old credential keys open {handle}'s material"
        );
    }
    assert_eq!(
        added_seen,
        joined_after.len(),
        "{how}: the joiners are listed"
    );
}

/// Makes `joiner` and `inviter` contacts and invites `joiner` into `g`.
async fn invite_new(inviter: &mut Client, joiner: &mut Client, g: &GroupHandle) {
    inviter
        .add_contact(&joiner.contact_card().unwrap())
        .unwrap();
    joiner
        .add_contact(&inviter.contact_card().unwrap())
        .unwrap();
    inviter
        .invite(g, &joiner.contact_card().unwrap())
        .await
        .unwrap();
    joiner.receive().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_or_device_keeps_its_keys_and_reads_nothing_new() {
    let dir = tempfile::tempdir().unwrap();
    // Tokens are not the subject here (`privacy_pass` covers them): the raw requests below
    // must reach the EAR check.
    let hub = hub_without_tokens(dir.path());
    let mut alice = client(&hub, dir.path(), "alice").await;
    let mut bob = client(&hub, dir.path(), "bob").await;
    let mut carol = client(&hub, dir.path(), "carol").await;
    let mut eve = client(&hub, dir.path(), "eve").await;
    let mut dave = client(&hub, dir.path(), "dave").await;
    let mut dave2 = link_device(&hub, dir.path(), &mut dave, "dave2").await;
    // Each device accepts invitations only from its own contacts.
    dave2.add_contact(&alice.contact_card().unwrap()).unwrap();
    let g = group_of(&mut alice, &mut [&mut bob, &mut carol, &mut dave, &mut eve]).await;
    dave2.receive().await.unwrap();
    assert_eq!(
        alice.members(&g).unwrap().len(),
        6,
        "dave's two devices joined"
    );
    // Control: before the removal, eve's key opens the group and fetches its credentials.
    let eve_key = eve.group_ear_key(&g).unwrap();
    assert!(opens(&hub, &g, &eve_key) >= 1);
    assert_eq!(credentials(&hub, &g, &eve_key).await.len(), 6);

    // 1. An admin removes eve.
    let mut kept_eve = keep(
        &hub,
        &eve,
        &dir.path().join("eve"),
        &dir.path().join("eve-kept"),
        &g,
    );
    let eve_leaf = eve.own_leaf(&g).unwrap();
    alice.remove(&g, &[eve_leaf]).await.unwrap();
    assert!(
        eve.receive()
            .await
            .unwrap()
            .contains(&Event::Removed { group: g.clone() })
    );

    // 2. Dave removes his second device.
    let mut kept_dave2 = keep(
        &hub,
        &dave2,
        &dir.path().join("dave2"),
        &dir.path().join("dave2-kept"),
        &g,
    );
    dave.receive().await.unwrap();
    let dave2_id = hex::encode(dave2.identity().unwrap().device);
    dave.remove_device(&dave2_id).await.unwrap();
    // Its queue went with it: it reads nothing any more.
    let gone = dave2.receive().await.unwrap_err();
    assert_eq!(gone.code(), Some(ErrorCode::UnknownClient), "{gone}");

    // Two members join afterwards; everyone left follows.
    let mut frank = client(&hub, dir.path(), "frank").await;
    let mut grace = client(&hub, dir.path(), "grace").await;
    for c in [&mut bob, &mut carol, &mut dave] {
        c.receive().await.unwrap();
    }
    alice.receive().await.unwrap();
    for joiner in [&mut frank, &mut grace] {
        invite_new(&mut alice, joiner, &g).await;
    }
    for c in [&mut bob, &mut carol, &mut dave] {
        c.receive().await.unwrap();
    }
    // Every remaining member holds the same (rotated) key, and the group still works.
    for c in [&bob, &carol, &dave, &frank, &grace] {
        assert_eq!(
            c.group_ear_key(&g).unwrap(),
            alice.group_ear_key(&g).unwrap()
        );
    }
    alice.send(&g, b"after both removals").await.unwrap();
    assert!(messages(&grace.receive().await.unwrap()).contains(&b"after both removals".to_vec()));

    attack(
        &hub,
        &g,
        &mut kept_eve,
        &bob,
        &["frank", "grace"],
        "removed by an admin",
    )
    .await;
    attack(
        &hub,
        &g,
        &mut kept_dave2,
        &bob,
        &["frank", "grace"],
        "a removed device",
    )
    .await;

    // The removed device's queue is gone from the QS (record, ratchet, queue, AddPackages):
    // it reads nothing more, and the QS user key it holds was replaced.
    let dave2_queue = kept_dave2.ghost.client_id_bytes().unwrap();
    assert!(
        !hub.dump().iter().any(|(cf, k, _)| {
            matches!(
                cf,
                Cf::QsClients | Cf::QsRatchets | Cf::QsQueues | Cf::QsAddPackages
            ) && k.starts_with(&dave2_queue)
        }),
        "the removed device's QS records are gone"
    );
    // Its first receive may hand out what it learned before the queue read failed — only that
    // the revocation list now names its own leaf; the queue read itself fails.
    if let Ok(events) = kept_dave2.ghost.receive().await {
        assert!(
            events.iter().all(|e| matches!(e,
                Event::UnverifiedMember { reason, .. } if reason.starts_with("revoked"))),
            "the removed device read something: {events:?}"
        );
    }
    let err = kept_dave2.ghost.receive().await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownClient), "{err}");

    // The removed device is revoked at the AS: no longer among dave's devices, and a contact's
    // later invitation adds dave's current device only.
    let body = as_anonymous(AsOperation::UserClients(b"dave".to_vec().into()));
    let (status, resp) = post(&hub.url(), paths::AS, body).await;
    assert_eq!(status, 200);
    let AsResponse::UserClients(listed) = decode_exact::<AsResponse>(&resp, 1 << 20).unwrap()
    else {
        panic!("expected UserClients")
    };
    let listed: Vec<[u8; 16]> = listed.iter().map(|c| c.tbs.identity.device).collect();
    assert_eq!(
        listed,
        vec![dave.identity().unwrap().device],
        "dave2 is revoked"
    );
    // ... and on the AS's signed revocation list, which every verifier checks.
    let (status, resp) = post(
        &hub.url(),
        paths::AS,
        as_anonymous(AsOperation::RevocationList),
    )
    .await;
    assert_eq!(status, 200);
    let AsResponse::RevocationList(list) = decode_exact::<AsResponse>(&resp, 1 << 20).unwrap()
    else {
        panic!("expected a revocation list")
    };
    let AsResponse::AsCredentials(anchors) = decode_exact::<AsResponse>(
        &post(
            &hub.url(),
            paths::AS,
            as_anonymous(AsOperation::AsCredentials),
        )
        .await
        .1,
        1 << 20,
    )
    .unwrap() else {
        panic!("expected AS credentials")
    };
    list.verify(
        &anchors,
        &dave.contact_card().unwrap().domain_str(),
        now_s(),
    )
    .unwrap();
    assert!(list.lists(&kept_dave2.ghost.identity().unwrap()));
    assert!(!list.lists(&dave.identity().unwrap()), "control");
    // Dave's friendship token rotated with the removal: the one the removed device holds
    // fetches none of dave's AddPackages and changes nothing.
    let held = kept_dave2.ghost.contact_card().unwrap().friendship_token;
    assert_ne!(held, dave.contact_card().unwrap().friendship_token);
    rejected(
        &hub,
        paths::QS,
        add_package_fetch(&held),
        404,
        ErrorCode::UnknownToken,
    )
    .await;
    let g2 = alice.create_group().await.unwrap();
    alice
        .invite(&g2, &dave.contact_card().unwrap())
        .await
        .unwrap();
    assert_eq!(alice.members(&g2).unwrap().len(), 2, "alice and dave only");
    assert!(
        dave.receive()
            .await
            .unwrap()
            .contains(&Event::Joined { group: g2.clone() })
    );
    let late = kept_dave2.ghost.receive().await.unwrap_or_default();
    assert!(
        !late.contains(&Event::Joined { group: g2.clone() }),
        "the revoked device was invited again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_removed_for_inactivity_keeps_its_keys_and_reads_nothing_new() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_with_config(
        dir.path(),
        &format!("inactive_client_limit_secs = 2\nactivity_period_secs = 1\n{NO_TOKENS}"),
    );
    let mut alice = client(&hub, dir.path(), "alice").await;
    let mut bob = client(&hub, dir.path(), "bob").await;
    let mut carol = client(&hub, dir.path(), "carol").await;
    let g = group_of(&mut alice, &mut [&mut bob, &mut carol]).await;
    bob.receive().await.unwrap();
    carol.receive().await.unwrap();
    let mut kept = keep(
        &hub,
        &carol,
        &dir.path().join("carol"),
        &dir.path().join("carol-kept"),
        &g,
    );

    // Carol goes silent; the hub proposes her removal and alice commits it.
    assert!(
        talk_until_the_hub_proposes(&mut alice, &mut bob, &g).await,
        "the hub proposed the removal"
    );
    alice.update(&g).await.unwrap();
    assert_eq!(alice.members(&g).unwrap().len(), 2);
    bob.receive().await.unwrap();

    let mut dave = client(&hub, dir.path(), "dave").await;
    let mut erin = client(&hub, dir.path(), "erin").await;
    for joiner in [&mut dave, &mut erin] {
        invite_new(&mut alice, joiner, &g).await;
        bob.receive().await.unwrap();
    }
    attack(
        &hub,
        &g,
        &mut kept,
        &bob,
        &["dave", "erin"],
        "removed for inactivity",
    )
    .await;
}

/// A removed device lingers where its remover is not a member — a connection group it made
/// on its own. There, a member's next receive refreshes the AS's signed revocation list and
/// marks it unverified ("revoked"), while the other members stay verified. The removed device
/// then tries to come back as a stolen device would: it publishes AddPackages under its revoked
/// credential for a fresh pseudonymous QS user of its own and hands out a card for them. A
/// contact's invitation refuses it (`Revoked`); the unchecked invitation of a colluding member
/// shows the packages were there to add (the positive control).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_device_shows_unverified_where_it_lingers_and_cannot_be_added_again() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path());
    let mut dave = client(&hub, dir.path(), "dave").await;
    let mut bob = client(&hub, dir.path(), "bob").await;
    let mut dave2 = link_device(&hub, dir.path(), &mut dave, "dave2").await;
    // dave2 alone connects to bob: a group dave is not in.
    let domain = bob.contact_card().unwrap().domain_str();
    let conn = dave2.connect("bob", &domain).await.unwrap();
    let requests = bob.fetch_connection_requests().await.unwrap();
    bob.accept_connection(&requests[0].id).await.unwrap();
    dave2.receive().await.unwrap();
    bob.receive().await.unwrap();
    let verified = |bob: &Client| {
        bob.member_identities(&conn)
            .unwrap()
            .into_values()
            .filter(|m| matches!(m, MemberIdentity::Verified { .. }))
            .count()
    };
    assert_eq!(verified(&bob), 2, "bob and dave2 verify");
    assert_eq!(bob.check_revocations(&conn).await.unwrap(), 0, "control");

    dave.receive().await.unwrap();
    let dave2_id = hex::encode(dave2.identity().unwrap().device);
    dave.remove_device(&dave2_id).await.unwrap();
    // Bob does not ask: his next receive refreshes the lists (every time, here) and marks it.
    bob.set_revocation_refresh(std::time::Duration::ZERO);
    let events = bob.receive().await.unwrap();
    assert!(
        events.iter().any(|e| matches!(e,
            Event::UnverifiedMember { group, reason, .. }
                if *group == conn && reason.starts_with("revoked"))),
        "{events:?}"
    );
    let ids = bob.member_identities(&conn).unwrap();
    let revoked: Vec<&MemberIdentity> = ids
        .values()
        .filter(
            |m| matches!(m, MemberIdentity::Unverified { reason } if reason.starts_with("revoked")),
        )
        .collect();
    assert_eq!(revoked.len(), 1, "{ids:?}");
    assert_eq!(verified(&bob), 1, "bob himself stays verified");
    assert_eq!(
        bob.check_revocations(&conn).await.unwrap(),
        0,
        "marked once"
    );

    // The stolen device comes back under a pseudonymous user of its own.
    let card = dave2.republish_under_new_qs_user().await.unwrap();
    bob.add_contact(&card).unwrap();
    let g = bob.create_group().await.unwrap();
    let before = hub.dump();
    let err = bob.invite(&g, &card).await.unwrap_err();
    assert!(matches!(err, ClientError::Revoked), "{err}");
    assert_eq!(bob.members(&g).unwrap().len(), 1, "nobody was added");
    // Only the fetch consumed a one-time AddPackage; no group record changed.
    let groups = |d: &[(Cf, Vec<u8>, Vec<u8>)]| {
        d.iter()
            .filter(|(cf, _, _)| matches!(cf, Cf::DsGroups | Cf::DsRouting))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert!(groups(&before) == groups(&hub.dump()));
    // Positive control: without the revocation check the same card adds it.
    bob.invite_unchecked(&g, &card).await.unwrap();
    assert_eq!(bob.members(&g).unwrap().len(), 2);
}

/// An invitation while a removal is pending (bob left; alice has not committed it): alice's
/// client first commits the removal on its own — rotating the keys — then the add, with the
/// joiner's material re-wrapped under the new keys, so every member verifies the joiner and
/// bob, who left, cannot read the group's new keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invitation_during_a_pending_leave_rotates_first_and_the_joiner_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path());
    let mut alice = client(&hub, dir.path(), "alice").await;
    let mut bob = client(&hub, dir.path(), "bob").await;
    let mut dave = client(&hub, dir.path(), "dave").await;
    let g = group_of(&mut alice, &mut [&mut bob, &mut dave]).await;
    dave.receive().await.unwrap();
    let bob_key = bob.group_ear_key(&g).unwrap();
    bob.leave(&g).await.unwrap();
    let mut carol = client(&hub, dir.path(), "carol").await;
    invite_new(&mut alice, &mut carol, &g).await;
    assert_eq!(alice.members(&g).unwrap().len(), 3, "alice, dave, carol");
    dave.receive().await.unwrap();
    let ear = alice.group_ear_key(&g).unwrap();
    assert_ne!(ear, bob_key, "the leave rotated the key");
    for c in [&dave, &carol] {
        assert_eq!(c.group_ear_key(&g).unwrap(), ear);
    }
    let carol_leaf = carol.own_leaf(&g).unwrap();
    for c in [&alice, &dave] {
        assert!(
            matches!(
                c.member_identities(&g).unwrap().get(&carol_leaf),
                Some(MemberIdentity::Verified { handle, .. }) if handle == "carol"
            ),
            "carol verifies"
        );
    }
    assert_eq!(opens(&hub, &g, &bob_key), 0);
}
