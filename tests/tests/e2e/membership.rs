//! Every way in and out of a group, end to end against real hub processes: consent-based 1:1
//! connections, several devices per user, resync after lost state, removals the hub proposes
//! (inactivity, deleted queues), admin-only operations and re-initialisation.

use mimi_client_rm::{Client, ClientError, Event, MemberIdentity};
use mimi_ds_rm::store::Cf;
use mimi_rm_crypto::sign::SigningKey;
use mimi_rm_protocol::auth::*;
use mimi_rm_protocol::connection::*;
use mimi_rm_protocol::credentials::*;
use mimi_rm_protocol::ds::*;
use mimi_rm_protocol::qs::*;
use mimi_rm_protocol::{ErrorCode, TransactionType, decode_exact, paths};
use mimi_rm_tests::common::*;
use mimi_rm_tests::{HubProcess, error_of, post};
use std::path::Path;

fn rows(hub: &HubProcess, cf: Cf) -> Vec<(Vec<u8>, Vec<u8>)> {
    hub.dump()
        .into_iter()
        .filter(|(c, _, _)| *c == cf)
        .map(|(_, k, v)| (k, v))
        .collect()
}

fn code(r: Result<impl std::fmt::Debug, ClientError>) -> Option<ErrorCode> {
    match r {
        Err(e) => e.code(),
        Ok(v) => panic!("expected a refusal, got {v:?}"),
    }
}

/// An anonymous AS request paid with a token of `payer`, posted raw.
async fn as_paid(hub: &HubProcess, payer: &Client, op: AsOperation) -> (u16, Vec<u8>) {
    let token = payer.take_token().await.unwrap();
    mimi_rm_tests::post_paid(&hub.url(), paths::AS, as_anonymous(op), &token).await
}

/// An anonymous AS request, posted raw.
async fn post_as_anonymous(hub: &HubProcess, op: AsOperation) -> (u16, Vec<u8>) {
    post(&hub.url(), paths::AS, as_anonymous(op)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_request_accept_then_messages_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path());
    let mut alice = client(&hub, dir.path(), "alice").await;
    let mut bob = client(&hub, dir.path(), "bob").await;

    let g = alice.connect("bob", DOMAIN).await.unwrap();
    // Until bob accepts, nothing alice sends reaches him: he is not in the group.
    alice.send(&g, b"let me in").await.unwrap();
    assert!(bob.receive().await.unwrap().is_empty());

    let requests = bob.fetch_connection_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        (requests[0].handle.as_str(), requests[0].rejected.as_deref()),
        ("alice", None)
    );
    assert!(
        rows(&hub, Cf::AsConnectionRequests).is_empty(),
        "the inbox is emptied on fetch"
    );
    let joined = bob.accept_connection(&requests[0].id).await.unwrap();
    assert_eq!(joined, g);

    let events = alice.receive().await.unwrap();
    assert!(
        events.contains(&Event::ConnectionAccepted {
            group: g.clone(),
            handle: "bob".into()
        }),
        "{events:?}"
    );
    assert!(alice.contacts().contains(&"bob".to_string()));
    assert!(bob.contacts().contains(&"alice".to_string()));

    alice.send(&g, b"hi bob").await.unwrap();
    bob.send(&g, b"hi alice").await.unwrap();
    assert_eq!(
        messages(&bob.receive().await.unwrap()),
        vec![b"hi bob".to_vec()]
    );
    assert_eq!(
        messages(&alice.receive().await.unwrap()),
        vec![b"hi alice".to_vec()]
    );
    // Both see each other verified.
    for (who, peer) in [(&alice, "bob"), (&bob, "alice")] {
        let ids = who.member_identities(&g).unwrap();
        assert!(
            ids.values()
                .any(|m| matches!(m, MemberIdentity::Verified { handle, .. } if handle == peer)),
            "{ids:?}"
        );
    }
    // Both ends are admins of a 1:1 connection.
    let roles = alice.roles(&g).await.unwrap();
    assert_eq!(roles.len(), 2);
    assert!(roles.iter().all(|u| u.role == Role::Admin));
    // The connection is usable as contacts: bob can now invite alice to a group.
    let g2 = bob.create_group().await.unwrap();
    let card = alice.contact_card().unwrap();
    bob.invite(&g2, &card).await.unwrap();
    assert!(
        alice
            .receive()
            .await
            .unwrap()
            .contains(&Event::Joined { group: g2 })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declined_request_leaves_nothing_and_a_group_cannot_be_joined_twice() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path());
    let mut alice = client(&hub, dir.path(), "alice").await;
    let mut bob = client(&hub, dir.path(), "bob").await;
    let mut carol = client(&hub, dir.path(), "carol").await;

    let g = alice.connect("bob", DOMAIN).await.unwrap();
    let requests = bob.fetch_connection_requests().await.unwrap();
    bob.decline_connection(&requests[0].id).unwrap();
    assert!(bob.pending_connection_requests().unwrap().is_empty());
    assert_eq!(
        code(bob.accept_connection(&requests[0].id).await),
        None,
        "forgotten"
    );

    alice.send(&g, b"are you there").await.unwrap();
    assert!(
        bob.receive().await.unwrap().is_empty(),
        "nothing reaches bob"
    );
    assert!(bob.groups().is_empty());
    assert_eq!(alice.members(&g).unwrap().len(), 1);
    assert!(rows(&hub, Cf::AsConnectionRequests).is_empty());
    assert!(!alice.contacts().contains(&"bob".to_string()));

    // A connection group takes exactly one responder: once carol joined, a second join fails.
    let g2 = alice.connect("carol", DOMAIN).await.unwrap();
    let ids: Vec<_> = carol.fetch_connection_requests().await.unwrap();
    carol.accept_connection(&ids[0].id).await.unwrap();
    alice.receive().await.unwrap();
    assert_eq!(alice.members(&g2).unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_connection_request_is_rejected_by_the_responder() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path());
    let mut bob = client(&hub, dir.path(), "bob").await;
    let mallory = client(&hub, dir.path(), "mallory").await;

    // Asking strangers costs tokens: without one, nothing.
    let (status, body) = post_as_anonymous(
        &hub,
        AsOperation::FetchConnectionPackage(b"bob".to_vec().into()),
    )
    .await;
    assert_eq!(
        (status, error_of(&body).code),
        (401, ErrorCode::TokenRequired)
    );
    let (status, body) = as_paid(
        &hub,
        &mallory,
        AsOperation::FetchConnectionPackage(b"bob".to_vec().into()),
    )
    .await;
    assert_eq!(status, 200);
    let AsResponse::ConnectionPackage(package) = decode_exact(&body, 1 << 20).unwrap() else {
        panic!("expected a package")
    };
    // An AS of our own making, claiming the hub's domain, certifies "alice".
    let exp = ExpirationData::starting(now_s() - 10, 3600);
    let root_key = SigningKey::generate();
    let root = AsCredential::issue(&root_key, DOMAIN, exp).unwrap();
    let int_key = SigningKey::generate();
    let intermediate =
        AsIntermediateCredential::issue(&root_key, &root, &int_key.verifying_key(), exp).unwrap();
    let fake_key = SigningKey::generate();
    let identity = ClientIdentity {
        handle: b"alice".to_vec().into(),
        device: [1; 16],
    };
    let csr = ClientCredentialCsr::new(&fake_key, identity).unwrap();
    let fake = ClientCredential::issue(&int_key, &intermediate, &csr, exp).unwrap();
    let mut card = mallory.contact_card().unwrap();
    card.handle = b"alice".to_vec().into();
    let offer = |sender: ClientCredential, key: &SigningKey| {
        ConnectionOffer::sign(
            key,
            ConnectionOfferTbs {
                sender,
                recipient_handle: b"bob".to_vec().into(),
                package_hash: package.hash().unwrap(),
                group_id: b"nowhere".to_vec().into(),
                ear_key: [1; 32],
                credential_key: [2; 32],
                wrapper_key: [3; 32],
                friendship_key: [4; 32],
                sender_card: card.to_text().unwrap().into_bytes().into(),
            },
        )
        .unwrap()
    };
    // Forged chain; and mallory's real credential with a signature by another key.
    let forged = offer(fake, &fake_key);
    let mut wrong_sig = offer(mallory.client_credential().unwrap(), &fake_key);
    wrong_sig.tbs.sender_card = mallory
        .contact_card()
        .unwrap()
        .to_text()
        .unwrap()
        .into_bytes()
        .into();
    for o in [&forged, &wrong_sig] {
        let request = mimi_client_rm::seal_offer(&package, o).unwrap();
        let handle = b"bob".to_vec().into();
        let (status, _) = as_paid(
            &hub,
            &mallory,
            AsOperation::SendConnectionRequest(SendConnectionRequest {
                handle,
                device: package.tbs.client_credential.tbs.identity.device,
                request,
            }),
        )
        .await;
        assert_eq!(status, 200);
    }
    let seen = bob.fetch_connection_requests().await.unwrap();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|r| r.rejected.is_some()), "{seen:?}");
    assert!(bob.pending_connection_requests().unwrap().is_empty());
    assert!(bob.groups().is_empty());

    // Bad input at the AS: unknown handles, unsigned publication.
    let (status, body) = as_paid(
        &hub,
        &mallory,
        AsOperation::FetchConnectionPackage(b"nobody".to_vec().into()),
    )
    .await;
    assert_eq!(
        (status, error_of(&body).code),
        (404, ErrorCode::UnknownUser)
    );
    let request = mimi_client_rm::seal_offer(&package, &forged).unwrap();
    let (status, body) = as_paid(
        &hub,
        &mallory,
        AsOperation::SendConnectionRequest(SendConnectionRequest {
            handle: b"nobody".to_vec().into(),
            device: [0; 16],
            request,
        }),
    )
    .await;
    assert_eq!(
        (status, error_of(&body).code),
        (404, ErrorCode::UnknownUser)
    );
    let (status, body) = post_as_anonymous(
        &hub,
        AsOperation::PublishConnectionPackages(vec![package.clone()]),
    )
    .await;
    assert_eq!(
        (status, error_of(&body).code),
        (403, ErrorCode::NotAuthorized)
    );
    assert!(rows(&hub, Cf::AsConnectionRequests).is_empty());
}

fn device_hex(c: &Client) -> String {
    hex::encode(c.identity().unwrap().device)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_devices_in_two_groups_then_one_removed_and_a_fourth_linked() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path());
    let mut a1 = client(&hub, dir.path(), "alice").await;
    let mut bob = client(&hub, dir.path(), "bob").await;
    a1.add_contact(&bob.contact_card().unwrap()).unwrap();
    bob.add_contact(&a1.contact_card().unwrap()).unwrap();
    let mut a2 = link_device(&hub, dir.path(), &mut a1, "alice2").await;
    let mut a3 = link_device(&hub, dir.path(), &mut a1, "alice3").await;
    assert_eq!(a1.own_devices().len(), 3);

    // G1: alice's; her other devices are added as her own clients, then bob is invited.
    let g1 = a1.create_group().await.unwrap();
    for d in [&mut a2, &mut a3] {
        assert!(
            d.receive()
                .await
                .unwrap()
                .contains(&Event::Joined { group: g1.clone() })
        );
    }
    a1.invite(&g1, &bob.contact_card().unwrap()).await.unwrap();
    assert!(
        bob.receive()
            .await
            .unwrap()
            .contains(&Event::Joined { group: g1.clone() })
    );
    // G2: bob's; inviting alice adds all three of her devices as one user.
    let g2 = bob.create_group().await.unwrap();
    bob.invite(&g2, &a1.contact_card().unwrap()).await.unwrap();
    for d in [&mut a1, &mut a2, &mut a3] {
        assert!(
            d.receive()
                .await
                .unwrap()
                .contains(&Event::Joined { group: g2.clone() })
        );
    }
    let users = bob.user_devices(&g2).unwrap();
    let mut alice_devices = vec![device_hex(&a1), device_hex(&a2), device_hex(&a3)];
    alice_devices.sort();
    assert_eq!(
        users["alice"], alice_devices,
        "bob sees alice with devices 1..3"
    );
    let roster = bob.roles(&g2).await.unwrap();
    assert_eq!(roster.len(), 2);
    assert!(
        roster
            .iter()
            .any(|u| u.leaves.len() == 3 && u.role == Role::Member)
    );

    // Every device receives everything.
    bob.send(&g1, b"g1 from bob").await.unwrap();
    bob.send(&g2, b"g2 from bob").await.unwrap();
    a2.receive().await.unwrap();
    a2.send(&g2, b"g2 from a2").await.unwrap();
    for d in [&mut a1, &mut a3] {
        let got = messages(&d.receive().await.unwrap());
        for m in [&b"g1 from bob"[..], b"g2 from bob", b"g2 from a2"] {
            assert!(got.contains(&m.to_vec()), "{got:?}");
        }
    }
    assert!(messages(&bob.receive().await.unwrap()).contains(&b"g2 from a2".to_vec()));

    // A role belongs to the user: making one of alice's leaves admin promotes all three.
    let leaf = bob
        .roles(&g2)
        .await
        .unwrap()
        .into_iter()
        .find(|u| u.leaves.len() == 3)
        .unwrap()
        .leaves[0];
    bob.set_role(&g2, leaf, Role::Admin).await.unwrap();
    assert!(
        bob.roles(&g2)
            .await
            .unwrap()
            .iter()
            .all(|u| u.role == Role::Admin)
    );

    // Removing a3 stops its delivery in both groups and rotates alice's user keys.
    a1.receive().await.unwrap();
    a1.remove_device(&device_hex(&a3)).await.unwrap();
    // Its queue is deleted with it: it reads nothing any more, not even its removal.
    let gone = a3.receive().await.unwrap_err();
    assert_eq!(gone.code(), Some(ErrorCode::UnknownClient), "{gone}");
    bob.receive().await.unwrap();
    a2.receive().await.unwrap();
    bob.send(&g1, b"after removal").await.unwrap();
    bob.send(&g2, b"after removal 2").await.unwrap();
    assert!(a3.receive().await.is_err());
    assert_eq!(messages(&a2.receive().await.unwrap()).len(), 2);
    assert_eq!(messages(&a1.receive().await.unwrap()).len(), 2);

    // a2 learnt the rotated user secret: the device it links joins both groups by external
    // commit, authenticated with the new user key (the old one no longer works).
    let mut a4 = link_device(&hub, dir.path(), &mut a2, "alice4").await;
    assert_eq!(a4.groups().len(), 2);
    for d in [&mut a1, &mut a2, &mut bob] {
        d.receive().await.unwrap();
    }
    bob.send(&g1, b"hello a4").await.unwrap();
    bob.send(&g2, b"hello a4 again").await.unwrap();
    assert_eq!(
        messages(&a4.receive().await.unwrap()),
        vec![b"hello a4".to_vec(), b"hello a4 again".to_vec()]
    );
    let mut expected = vec![device_hex(&a1), device_hex(&a2), device_hex(&a4)];
    expected.sort();
    assert_eq!(bob.user_devices(&g1).unwrap()["alice"], expected);
    assert_eq!(bob.user_devices(&g2).unwrap()["alice"], expected);
    a4.send(&g1, b"a4 speaks").await.unwrap();
    assert_eq!(
        messages(&bob.receive().await.unwrap()),
        vec![b"a4 speaks".to_vec()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_after_losing_local_state_keeps_the_member() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path());
    let mut alice = client(&hub, dir.path(), "alice").await;
    let mut bob = client(&hub, dir.path(), "bob").await;
    let mut carol = client(&hub, dir.path(), "carol").await;
    let g = group_of(&mut alice, &mut [&mut bob, &mut carol]).await;
    let before = alice.member_identities(&g).unwrap();
    let carol_id = carol.identity().unwrap();
    drop(carol);

    // Carol's OpenMLS state is gone; her keys (credentials, group keys) survive.
    let db = rusqlite::Connection::open(dir.path().join("carol").join("client.db")).unwrap();
    let gone = db
        .execute(
            "DELETE FROM rows WHERE substr(id, 1, 2) = CAST('m:' AS BLOB)",
            [],
        )
        .unwrap();
    assert!(
        gone > 10,
        "the OpenMLS entries were rows of the store ({gone})"
    );
    drop(db);
    let mut carol = Client::load(&dir.path().join("carol"), &hub.url()).unwrap();
    assert!(carol.epoch(&g).is_err(), "the group state is really gone");
    assert_eq!(carol.recover_lost_groups().await.unwrap(), vec![g.clone()]);

    alice.receive().await.unwrap();
    bob.receive().await.unwrap();
    alice.send(&g, b"welcome back").await.unwrap();
    assert_eq!(
        messages(&carol.receive().await.unwrap()),
        vec![b"welcome back".to_vec()]
    );
    carol.send(&g, b"thanks").await.unwrap();
    assert_eq!(
        messages(&bob.receive().await.unwrap()),
        vec![b"welcome back".to_vec(), b"thanks".to_vec()]
    );
    // Same three users, carol with the same device: members see the same user.
    let after = alice.member_identities(&g).unwrap();
    assert_eq!(after.len(), 3);
    let carols: Vec<_> = after
        .values()
        .filter(|m| matches!(m, MemberIdentity::Verified { handle, .. } if handle == "carol"))
        .collect();
    assert_eq!(
        carols,
        vec![&MemberIdentity::Verified {
            handle: "carol".into(),
            device: carol_id.device
        }]
    );
    assert_eq!(before.len(), after.len());
}

/// A hub whose inactivity limit is two seconds, recorded in one-second periods.
fn impatient_hub(dir: &Path) -> HubProcess {
    hub_with_config(
        dir,
        "inactive_client_limit_secs = 2\nactivity_period_secs = 1\n",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inactive_client_is_removed_by_hub_proposal() {
    let dir = tempfile::tempdir().unwrap();
    let hub = impatient_hub(dir.path());
    let mut alice = client(&hub, dir.path(), "alice").await;
    let mut bob = client(&hub, dir.path(), "bob").await;
    let mut carol = client(&hub, dir.path(), "carol").await;
    let g = group_of(&mut alice, &mut [&mut bob, &mut carol]).await;
    bob.receive().await.unwrap();

    // Alice and bob keep talking; carol stays silent past the limit.
    assert!(
        talk_until_the_hub_proposes(&mut alice, &mut bob, &g).await,
        "the hub proposed a removal"
    );
    alice.update(&g).await.unwrap();
    assert_eq!(alice.members(&g).unwrap().len(), 2);
    let carol_events = carol.receive().await.unwrap();
    assert!(
        carol_events.contains(&Event::Removed { group: g.clone() }),
        "{carol_events:?}"
    );
    bob.receive().await.unwrap();
    assert_eq!(bob.members(&g).unwrap().len(), 2);
    alice.send(&g, b"still here").await.unwrap();
    assert!(messages(&bob.receive().await.unwrap()).contains(&b"still here".to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_only_reads_keeps_itself_active() {
    let dir = tempfile::tempdir().unwrap();
    let hub = impatient_hub(dir.path());
    let mut alice = client(&hub, dir.path(), "alice").await;
    let mut bob = client(&hub, dir.path(), "bob").await;
    let mut carol = client(&hub, dir.path(), "carol").await;
    let g = group_of(&mut alice, &mut [&mut bob, &mut carol]).await;
    // Carol never sends, but her client updates after a second of silence.
    carol.set_keepalive(std::time::Duration::from_millis(900));
    let mut carol_read = Vec::new();
    for i in 0..8 {
        tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        alice
            .send(&g, format!("tick {i}").as_bytes())
            .await
            .unwrap();
        bob.send(&g, format!("tock {i}").as_bytes()).await.unwrap();
        carol_read.extend(messages(&carol.receive().await.unwrap()));
        for c in [&mut alice, &mut bob] {
            let events = c.receive().await.unwrap();
            assert!(
                !events.contains(&Event::Proposal { group: g.clone() }),
                "{events:?}"
            );
        }
    }
    assert_eq!(alice.members(&g).unwrap().len(), 3);
    assert_eq!(carol_read.len(), 16, "carol read everything");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_queue_leads_to_removal_and_pending_removals_block_other_commits() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path());
    let mut alice = client(&hub, dir.path(), "alice").await;
    let mut bob = client(&hub, dir.path(), "bob").await;
    let mut carol = client(&hub, dir.path(), "carol").await;
    let mut dave = client(&hub, dir.path(), "dave").await;
    let g = group_of(&mut alice, &mut [&mut bob, &mut carol]).await;
    bob.receive().await.unwrap();

    carol.delete_queue().await.unwrap();
    alice.send(&g, b"one").await.unwrap();
    assert_eq!(
        rows(&hub, Cf::DsTombstones).len(),
        1,
        "fan-out left a tombstone"
    );
    // The next request opens it and proposes carol's removal; her tombstone is gone.
    alice.send(&g, b"two").await.unwrap();
    assert!(rows(&hub, Cf::DsTombstones).is_empty());
    let events = bob.receive().await.unwrap();
    assert!(
        events.contains(&Event::Proposal { group: g.clone() }),
        "{events:?}"
    );
    // An add while the removal is pending must include it: the client learns this from the
    // hub, fetches the proposal and commits both.
    dave.add_contact(&alice.contact_card().unwrap()).unwrap();
    alice
        .invite(&g, &dave.contact_card().unwrap())
        .await
        .unwrap();
    let members = alice.member_identities(&g).unwrap();
    let handles: Vec<_> = members
        .values()
        .filter_map(|m| match m {
            MemberIdentity::Verified { handle, .. } => Some(handle.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(members.len(), 3, "{members:?}");
    assert!(!handles.contains(&"carol") && handles.contains(&"dave"));
    bob.receive().await.unwrap();
    assert_eq!(bob.members(&g).unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_only_operations_are_refused_to_members_and_reinit_moves_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path());
    let mut alice = client(&hub, dir.path(), "alice").await;
    let mut bob = client(&hub, dir.path(), "bob").await;
    let mut carol = client(&hub, dir.path(), "carol").await;
    let dave = client(&hub, dir.path(), "dave").await;
    let g = group_of(&mut alice, &mut [&mut bob, &mut carol]).await;
    bob.receive().await.unwrap();
    let bob_leaf = bob.own_leaf(&g).unwrap();
    let carol_leaf = carol.own_leaf(&g).unwrap();

    let groups_before = rows(&hub, Cf::DsGroups);
    let epoch = bob.epoch(&g).unwrap();
    assert_eq!(
        code(bob.invite(&g, &dave.contact_card().unwrap()).await),
        Some(ErrorCode::NotAuthorized)
    );
    assert_eq!(
        code(bob.remove(&g, &[carol_leaf]).await),
        Some(ErrorCode::NotAuthorized)
    );
    assert_eq!(
        code(bob.delete_group(&g).await),
        Some(ErrorCode::NotAuthorized)
    );
    assert_eq!(
        code(bob.set_role(&g, bob_leaf, Role::Admin).await),
        Some(ErrorCode::NotAuthorized)
    );
    assert_eq!(code(bob.reinit(&g).await), Some(ErrorCode::NotAuthorized));
    assert_eq!(
        rows(&hub, Cf::DsGroups),
        groups_before,
        "no refused operation changed the group"
    );
    assert_eq!(bob.epoch(&g).unwrap(), epoch);
    // A member may still update itself and talk.
    bob.update(&g).await.unwrap();
    bob.send(&g, b"still a member").await.unwrap();
    assert!(messages(&alice.receive().await.unwrap()).contains(&b"still a member".to_vec()));
    carol.receive().await.unwrap();

    // The last admin cannot step down; once bob is an admin, he may remove carol.
    let alice_leaf = alice.own_leaf(&g).unwrap();
    assert_eq!(
        code(alice.set_role(&g, alice_leaf, Role::Member).await),
        Some(ErrorCode::WrongOperation)
    );
    alice.set_role(&g, bob_leaf, Role::Admin).await.unwrap();
    bob.remove(&g, &[carol_leaf]).await.unwrap();
    assert!(
        carol
            .receive()
            .await
            .unwrap()
            .contains(&Event::Removed { group: g.clone() })
    );

    // Re-initialisation: a fresh group with the same contacts; the old one takes nothing more.
    alice.receive().await.unwrap();
    let bob_card = bob.contact_card().unwrap();
    alice.add_contact(&bob_card).unwrap();
    let new = alice.reinit(&g).await.unwrap();
    assert_ne!(new, g);
    let events = bob.receive().await.unwrap();
    assert!(
        events.contains(&Event::Joined { group: new.clone() }),
        "{events:?}"
    );
    assert_eq!(
        code(bob.send(&g, b"old group").await),
        Some(ErrorCode::WrongOperation)
    );
    bob.send(&new, b"new group").await.unwrap();
    assert_eq!(
        messages(&alice.receive().await.unwrap()),
        vec![b"new group".to_vec()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_level_and_connection_requests_are_checked_and_change_nothing() {
    use mimi_client_rm::envelope;
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_without_tokens(dir.path());
    let mut alice = client(&hub, dir.path(), "alice").await;
    let mut bob = client(&hub, dir.path(), "bob").await;
    let g = group_of(&mut alice, &mut [&mut bob]).await;
    let ear = alice.group_ear_key(&g).unwrap();
    let op_body = |req: &DsRequest| envelope(TransactionType::GroupOperation, req).unwrap();
    let garbage = CommitBundle {
        commit: vec![1, 2, 3].into(),
        group_info: vec![4].into(),
        welcome: None,
        rotation: None,
    };

    // A user-level request signed by a key that belongs to no user of the group.
    let stranger = ed25519_dalek::SigningKey::from_bytes(&rand::random());
    let body = ds_signed(
        &g,
        &ear,
        DsSender::User(stranger.verifying_key().to_bytes().to_vec().into()),
        DsOperation::AddClients(garbage.clone()),
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

    // Alice's real user key: wrong signature, truncated, malformed bundle, member-only op.
    let mut req = alice
        .signed_user_request(&g, DsOperation::AddClients(garbage.clone()))
        .unwrap();
    let mut sig = req.signature.as_slice().to_vec();
    sig[0] ^= 1;
    req.signature = sig.into();
    rejected(
        &hub,
        paths::GROUP_OPERATION,
        op_body(&req),
        403,
        ErrorCode::InvalidSignature,
    )
    .await;
    let req = alice
        .signed_user_request(&g, DsOperation::RemoveClients(garbage.clone()))
        .unwrap();
    let mut cut = op_body(&req);
    cut.truncate(cut.len() - 10);
    rejected(&hub, paths::GROUP_OPERATION, cut, 400, ErrorCode::Malformed).await;
    rejected(
        &hub,
        paths::GROUP_OPERATION,
        op_body(&req),
        400,
        ErrorCode::Malformed,
    )
    .await;
    let set_role = DsOperation::SetRole(SetRole {
        leaf: 1,
        role: Role::Admin,
    });
    let req = alice.signed_user_request(&g, set_role).unwrap();
    rejected(
        &hub,
        paths::GROUP_OPERATION,
        op_body(&req),
        403,
        ErrorCode::NotAuthorized,
    )
    .await;

    // Replay: a valid user-signed read is served once.
    let req = alice
        .signed_user_request(&g, DsOperation::ExternalCommitInfo)
        .unwrap();
    let body = envelope(TransactionType::ExternalCommitInformation, &req).unwrap();
    let (status, _) = post(&hub.url(), paths::EXTERNAL_COMMIT_INFORMATION, body.clone()).await;
    assert_eq!(status, 200);
    rejected(
        &hub,
        paths::EXTERNAL_COMMIT_INFORMATION,
        body,
        403,
        ErrorCode::Replayed,
    )
    .await;

    // A connection join into a group that is not a waiting connection group, a wrong EAR
    // key, and a stale request.
    let anon = |ear: &[u8], op: DsOperation, ts: u64| {
        let req = DsRequest {
            tbs: DsRequestTbs {
                group_id: g.0.clone().into(),
                ear_key: Some(ear.to_vec().into()),
                timestamp_ms: ts,
                nonce: rand::random(),
                sender: DsSender::Anonymous,
                operation: op,
            },
            signature: Vec::new().into(),
        };
        envelope(TransactionType::GroupOperation, &req).unwrap()
    };
    let now = mimi_ds_rm::now_ms();
    let join = DsOperation::JoinConnectionGroup(garbage.clone());
    rejected(
        &hub,
        paths::GROUP_OPERATION,
        anon(&ear, join.clone(), now),
        400,
        ErrorCode::WrongOperation,
    )
    .await;
    rejected(
        &hub,
        paths::GROUP_OPERATION,
        anon(&[9; 32], join.clone(), now),
        403,
        ErrorCode::WrongEarKey,
    )
    .await;
    rejected(
        &hub,
        paths::GROUP_OPERATION,
        anon(&ear, join, now - 3_600_000),
        403,
        ErrorCode::StaleRequest,
    )
    .await;

    // Still a working group.
    alice.send(&g, b"unharmed").await.unwrap();
    assert_eq!(
        messages(&bob.receive().await.unwrap()),
        vec![b"unharmed".to_vec()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn someone_else_added_as_an_own_device_is_flagged_by_every_member() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path());
    let mut alice = client(&hub, dir.path(), "alice").await;
    let mut bob = client(&hub, dir.path(), "bob").await;
    let mut carol = client(&hub, dir.path(), "carol").await;
    let mut dave = client(&hub, dir.path(), "dave").await;
    let g = group_of(&mut alice, &mut [&mut bob, &mut carol]).await;
    bob.receive().await.unwrap();
    // Bob is no admin, so he may not add dave; he passes dave off as a device of his own. The
    // hub cannot tell (it sees pseudonyms only) and accepts the user-signed AddClients.
    dave.add_contact(&bob.contact_card().unwrap()).unwrap();
    bob.add_contact_as_own_devices(&g, &dave.contact_card().unwrap())
        .await
        .unwrap();
    // Every honest member sees that the new "device of bob" is dave, and flags it.
    for c in [&mut alice, &mut carol] {
        let events = c.receive().await.unwrap();
        let flagged = events.iter().any(|e| {
            matches!(e, Event::UnverifiedMember { reason, .. }
                if reason.contains("belongs to another user"))
        });
        assert!(flagged, "{} got {events:?}", c.name());
        assert!(!c.user_devices(&g).unwrap().contains_key("dave"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_queue_requests_are_checked_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_without_tokens(dir.path());
    // A pseudonymous user made by hand, so the test holds its user auth key.
    let (user_key, client_key) = (SigningKey::generate(), SigningKey::generate());
    let create = QsOperation::CreateUser(CreateUser {
        user_auth_key: user_key.verifying_key().as_bytes().to_vec().into(),
        client_auth_key: client_key.verifying_key().as_bytes().to_vec().into(),
        friendship_token: vec![5; 32].into(),
        initial_ratchet_secret: vec![6; 32].into(),
        device_tag: Vec::new().into(),
    });
    let (status, body) = post(
        &hub.url(),
        paths::QS,
        qs_signed(QsSender::NewClient, create, &client_key),
    )
    .await;
    assert_eq!(status, 200, "{}", error_of(&body));
    let QsResponse::UserCreated(ids) = decode_exact(&body, 1 << 16).unwrap() else {
        panic!("expected UserCreated")
    };
    let device = SigningKey::generate();
    let new_client = |secret: Vec<u8>| {
        QsOperation::CreateClient(CreateClient {
            client_auth_key: device.verifying_key().as_bytes().to_vec().into(),
            initial_ratchet_secret: secret.into(),
            device_tag: Vec::new().into(),
        })
    };
    let user = QsSender::User(ids.user_id);
    // Wrongly signed, unknown user, malformed secret, truncated.
    let body = qs_signed(user.clone(), new_client(vec![1; 32]), &client_key);
    rejected(&hub, paths::QS, body, 403, ErrorCode::InvalidSignature).await;
    let body = qs_signed(QsSender::User([9; 16]), new_client(vec![1; 32]), &user_key);
    rejected(&hub, paths::QS, body, 404, ErrorCode::UnknownUser).await;
    let body = qs_signed(user.clone(), new_client(vec![1; 5]), &user_key);
    rejected(&hub, paths::QS, body, 400, ErrorCode::InvalidRequest).await;
    let good = qs_signed(user.clone(), new_client(vec![1; 32]), &user_key);
    rejected(
        &hub,
        paths::QS,
        good[..good.len() - 4].to_vec(),
        400,
        ErrorCode::Malformed,
    )
    .await;
    // Served once, then a replay.
    let (status, _) = post(&hub.url(), paths::QS, good.clone()).await;
    assert_eq!(status, 200);
    rejected(&hub, paths::QS, good, 403, ErrorCode::Replayed).await;
    // Deleting a queue: only its own client may, once.
    let delete = |key: &SigningKey| {
        qs_signed(
            QsSender::Client(ids.client_id),
            QsOperation::DeleteClient,
            key,
        )
    };
    rejected(
        &hub,
        paths::QS,
        delete(&user_key),
        403,
        ErrorCode::InvalidSignature,
    )
    .await;
    let body = delete(&client_key);
    let (status, _) = post(&hub.url(), paths::QS, body.clone()).await;
    assert_eq!(status, 200);
    rejected(&hub, paths::QS, body, 404, ErrorCode::UnknownClient).await;
    assert!(
        rows(&hub, Cf::QsClients).len() == 1,
        "only the second device's queue is left"
    );
}
