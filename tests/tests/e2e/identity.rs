//! Identities without exposure: members see each other's verified handles; the hub never
//! receives a handle or client credential outside the AS; forged members and invitations from
//! non-contacts are caught by the clients.

use mimi_client_rm::{Client, Event, MemberIdentity};
use mimi_rm_protocol::paths;
use mimi_rm_tests::common::*;
use mimi_rm_tests::{contains, scenario};

fn handles(c: &Client, g: &mimi_client_rm::GroupHandle) -> Vec<String> {
    let mut out: Vec<String> = c
        .member_identities(g)
        .unwrap()
        .into_values()
        .map(|id| match id {
            MemberIdentity::Verified { handle, .. } => handle,
            MemberIdentity::Unverified { reason } => format!("UNVERIFIED: {reason}"),
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_see_verified_handles_and_the_hub_sees_none() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path());
    let s = scenario::run(&hub.url(), dir.path(), 5).await.unwrap();
    // Every member of every group sees every other member's verified handle.
    for g in &s.groups {
        let members: Vec<&Client> = s
            .clients
            .iter()
            .filter(|c| c.groups().contains(g))
            .collect();
        assert!(members.len() >= 2);
        let mut expected: Vec<String> = members.iter().map(|c| c.name().to_owned()).collect();
        expected.sort();
        for c in &members {
            assert_eq!(handles(c, g), expected, "{} in {g}", c.name());
        }
    }
    // What the hub decoded: every DS and QS request body after registration. The AS requests
    // of the connection and device-linking steps name handles by design (the AS is where
    // identities live); no DS or QS request may carry one.
    let identities = s.identities().unwrap();
    let wire = s.wire.lock().unwrap();
    assert!(wire.len() > 50, "the scenario talked to the hub");
    let as_requests = wire.iter().filter(|(p, _)| p == paths::AS).count();
    assert!(
        as_requests > 0,
        "the connection and the device link went to the AS"
    );
    for (path, body) in wire.iter().filter(|(p, _)| p != paths::AS) {
        for (what, needle) in &identities {
            assert!(!contains(body, needle), "{what} sent to {path}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invitations_only_from_contacts() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path());
    let mut alice = client(&hub, dir.path(), "alice").await;
    let mut carol = client(&hub, dir.path(), "carol").await;
    // Carol gave alice her card, but never accepted alice's.
    let g = alice.create_group().await.unwrap();
    alice
        .invite(&g, &carol.contact_card().unwrap())
        .await
        .unwrap();
    let events = carol.receive().await.unwrap();
    assert_eq!(
        events,
        vec![Event::InviteRejected {
            inviter: Some("alice".into()),
            reason: "not a contact".into()
        }]
    );
    assert!(carol.groups().is_empty());
    // Once alice is a contact, the next invitation is accepted.
    carol.add_contact(&alice.contact_card().unwrap()).unwrap();
    let g2 = alice.create_group().await.unwrap();
    alice
        .invite(&g2, &carol.contact_card().unwrap())
        .await
        .unwrap();
    let events = carol.receive().await.unwrap();
    assert!(
        events.contains(&Event::Joined { group: g2.clone() }),
        "{events:?}"
    );
    assert_eq!(handles(&carol, &g2), vec!["alice", "carol"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_member_is_reported_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path());
    let mut alice = client(&hub, dir.path(), "alice").await;
    let mut bob = client(&hub, dir.path(), "bob").await;
    let mut mallory = client(&hub, dir.path(), "mallory").await;
    let mut eve = client(&hub, dir.path(), "eve").await;
    let g = group_of(&mut alice, &mut [&mut bob, &mut mallory]).await;
    // Mallory is a (colluding) admin, so the hub lets her add users.
    let mallory_leaf = mallory.own_leaf(&g).unwrap();
    alice
        .set_role(&g, mallory_leaf, mimi_rm_protocol::ds::Role::Admin)
        .await
        .unwrap();
    // Eve replaces her credential with one claiming to be "carol", issued by a key the AS
    // never certified, and republishes her AddPackages.
    eve.forge_client_credential("carol").await.unwrap();
    eve.add_contact(&mallory.contact_card().unwrap()).unwrap();
    // An honest adder checks before adding and refuses.
    let refused = alice.invite(&g, &eve.contact_card().unwrap()).await;
    assert!(refused.is_err(), "alice must not add a forged credential");
    // Mallory colludes and adds eve without checking.
    mallory
        .invite_unchecked(&g, &eve.contact_card().unwrap())
        .await
        .unwrap();
    let eve_leaf = *mallory.members(&g).unwrap().iter().max().unwrap();
    for c in [&mut alice, &mut bob] {
        let events = c.receive().await.unwrap();
        assert!(
            events.iter().any(|e| matches!(
                e,
                Event::UnverifiedMember { leaf, .. } if *leaf == eve_leaf
            )),
            "{} must report the forged member: {events:?}",
            c.name()
        );
        match &c.member_identities(&g).unwrap()[&eve_leaf] {
            MemberIdentity::Unverified { reason } => assert!(reason.contains("chain"), "{reason}"),
            other => panic!("forged member trusted: {other:?}"),
        }
    }
    // Everyone else is still verified.
    assert_eq!(
        handles(&alice, &g)
            .into_iter()
            .filter(|h| !h.starts_with("UNVERIFIED"))
            .collect::<Vec<_>>(),
        vec!["alice", "bob", "mallory"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_add_without_credential_material_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path());
    let mut alice = client(&hub, dir.path(), "alice").await;
    let mut bob = client(&hub, dir.path(), "bob").await;
    let g = group_of(&mut alice, &mut [&mut bob]).await;
    let mut carol = client(&hub, dir.path(), "carol").await;
    carol.add_contact(&alice.contact_card().unwrap()).unwrap();
    let before = hub.dump();
    let epoch = alice.epoch(&g).unwrap();
    let err = alice
        .invite_without_material(&g, &carol.contact_card().unwrap())
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(mimi_rm_protocol::ErrorCode::WrongOperation),
        "{err}"
    );
    // Nothing changed on the hub except the consumed AddPackage at the QS (that fetch is a
    // separate, successful request); the group row is untouched and alice stays at her epoch.
    assert_eq!(group_row(&before, &g), group_row(&hub.dump(), &g));
    assert_eq!(alice.epoch(&g).unwrap(), epoch);
    assert!(carol.receive().await.unwrap().is_empty());
    // The honest path still works afterwards.
    alice
        .invite(&g, &carol.contact_card().unwrap())
        .await
        .unwrap();
    assert!(
        carol
            .receive()
            .await
            .unwrap()
            .contains(&Event::Joined { group: g.clone() })
    );
}
