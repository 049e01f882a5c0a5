//! Removed means removed, for contacts: a contact removed by a user keeps the card it was
//! given — friendship token, AddPackage key, credential keys — and tries it. It fetches none of
//! the user's AddPackages (`UnknownToken`, nothing stored changes), cannot invite the user,
//! and the AddPackages the user publishes afterwards do not open under its old key. The user's
//! remaining contact receives the new card and invites both of the user's devices with it (the
//! sibling device learned the new keys from the rotated user secret alone). Positive controls:
//! before the removal the same card invited the user; the new key opens the new packages.

use mimi_client_rm::{ADD_PACKAGE_DOMAIN, Client, Event, GroupHandle};
use mimi_rm_crypto::ear::{self, EarKey};
use mimi_rm_protocol::qs::QsResponse;
use mimi_rm_protocol::{ErrorCode, decode_exact, paths};
use mimi_rm_tests::common::*;
use mimi_rm_tests::post;

/// `initiator` connects to `responder`, which accepts: each is the other's contact, in a
/// connection group of the two.
async fn connect(initiator: &mut Client, responder: &mut Client) -> GroupHandle {
    let card = responder.contact_card().unwrap();
    let g = initiator
        .connect(&card.handle_str(), &card.domain_str())
        .await
        .unwrap();
    let requests = responder.fetch_connection_requests().await.unwrap();
    responder.accept_connection(&requests[0].id).await.unwrap();
    initiator.receive().await.unwrap();
    g
}

/// Whether `events` tell that we joined `g`.
fn joined(events: &[Event], g: &GroupHandle) -> bool {
    events
        .iter()
        .any(|e| matches!(e, Event::Joined { group } if group == g))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_contact_fetches_and_reads_none_of_our_add_packages() {
    let dir = tempfile::tempdir().unwrap();
    // The raw fetches below must reach the friendship-token check, not the token gate.
    let hub = hub_without_tokens(dir.path());
    let mut alice = client(&hub, dir.path(), "alice").await;
    let mut bob = client(&hub, dir.path(), "bob").await;
    let mut carol = client(&hub, dir.path(), "carol").await;
    connect(&mut bob, &mut alice).await;
    connect(&mut carol, &mut alice).await;
    let mut alice2 = link_device(&hub, dir.path(), &mut alice, "alice2").await;
    bob.receive().await.unwrap();
    carol.receive().await.unwrap();
    // Everything bob's card of alice holds.
    let old = alice.contact_card().unwrap();

    // Control: with that card bob invites alice (both devices).
    let before = bob.create_group().await.unwrap();
    bob.invite(&before, &old).await.unwrap();
    assert!(joined(&alice.receive().await.unwrap(), &before));
    assert_eq!(bob.members(&before).unwrap().len(), 3, "bob, alice, alice2");

    alice.remove_contact("bob").await.unwrap();
    assert!(!alice.contacts().contains(&"bob".to_owned()));
    let new = alice.contact_card().unwrap();
    for (what, o, n) in [
        ("token", old.friendship_token, new.friendship_token),
        ("AddPackage key", old.add_package_key, new.add_package_key),
        ("credential key", old.credential_key, new.credential_key),
        ("wrapper key", old.wrapper_key, new.wrapper_key),
        ("attribution key", old.wai_key, new.wai_key),
    ] {
        assert_ne!(o, n, "the {what} rotated");
    }

    // Bob, with the old card: the QS knows no such token (and stores nothing new), and his
    // invitation fails the same way.
    rejected(
        &hub,
        paths::QS,
        add_package_fetch(&old.friendship_token),
        404,
        ErrorCode::UnknownToken,
    )
    .await;
    let after = bob.create_group().await.unwrap();
    let err = bob.invite(&after, &old).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownToken), "{err}");

    // Alice's sibling applies the rotated secret and republishes; carol receives the new card.
    alice2.receive().await.unwrap();
    let events = carol.receive().await.unwrap();
    assert!(
        events.contains(&Event::ContactUpdated {
            handle: "alice".into()
        }),
        "{events:?}"
    );
    // With it carol invites both of alice's devices.
    let g = carol.create_group().await.unwrap();
    carol.invite(&g, &new).await.unwrap();
    assert!(joined(&alice.receive().await.unwrap(), &g));
    assert!(joined(&alice2.receive().await.unwrap(), &g));
    assert_eq!(carol.members(&g).unwrap().len(), 3, "carol, alice, alice2");

    // What alice's devices published after the removal does not open under bob's old key;
    // the new key opens every package (control).
    let (status, body) = post(
        &hub.url(),
        paths::QS,
        add_package_fetch(&new.friendship_token),
    )
    .await;
    assert_eq!(status, 200);
    let QsResponse::AddPackages(packages) = decode_exact::<QsResponse>(&body, 1 << 20).unwrap()
    else {
        panic!("expected AddPackages")
    };
    assert_eq!(packages.len(), 2, "one per device of alice");
    let (old_key, new_key) = (
        EarKey::from_bytes(&old.add_package_key).unwrap(),
        EarKey::from_bytes(&new.add_package_key).unwrap(),
    );
    for p in &packages {
        assert!(ear::open(&old_key, ADD_PACKAGE_DOMAIN, b"", p.as_slice()).is_err());
        assert!(ear::open(&new_key, ADD_PACKAGE_DOMAIN, b"", p.as_slice()).is_ok());
    }
}
