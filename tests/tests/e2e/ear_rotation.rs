//! EAR key rotation: a member rotates the group's `GroupStateEarKey`; the hub re-encrypts; the
//! other members get the new key end to end and carry on; the old key opens nothing written
//! afterwards, not even from a snapshot taken before.

use ed25519_dalek::SigningKey;
use mimi_client_rm::Event;
use mimi_ds_rm::core::ds::state::{AtRest, DsGroupState, GroupRow};
use mimi_rm_crypto::ear::EarKey;
use mimi_rm_protocol::ds::*;
use mimi_rm_protocol::{ErrorCode, decode_exact, paths};
use mimi_rm_tests::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_replaces_the_old_one_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_without_tokens(dir.path());
    let mut alice = client(&hub, dir.path(), "alice").await;
    let mut bob = client(&hub, dir.path(), "bob").await;
    let mut carol = client(&hub, dir.path(), "carol").await;
    let g = group_of(&mut alice, &mut [&mut bob, &mut carol]).await;
    let old = alice.group_ear_key(&g).unwrap();
    let row_of = |hub: &mimi_rm_tests::HubProcess| -> GroupRow {
        decode_exact(&group_row(&hub.dump(), &g).unwrap(), 1 << 24).unwrap()
    };
    let snapshot_before = row_of(&hub);

    alice.rotate_ear_key(&g).await.unwrap();
    let new = alice.group_ear_key(&g).unwrap();
    assert_ne!(new, old);

    // The old key no longer opens the group on the hub; nothing changes.
    let stranger = SigningKey::from_bytes(&rand::random());
    let body = ds_signed(
        &g,
        &old,
        DsSender::Member(0),
        DsOperation::SendMessage(vec![0u8; 8].into()),
        &stranger,
        mimi_ds_rm::now_ms(),
    );
    rejected(
        &hub,
        paths::GROUP_OPERATION,
        body,
        403,
        ErrorCode::WrongEarKey,
    )
    .await;

    // Bob sends before reading his queue: his request with the old key is refused, he catches
    // up (the new key arrives in the group) and re-sends.
    bob.send(&g, b"sent with the new key").await.unwrap();
    assert_eq!(bob.group_ear_key(&g).unwrap(), new);
    let events = carol.receive().await.unwrap();
    assert!(events.contains(&Event::EarKeyRotated { group: g.clone() }));
    assert_eq!(messages(&events), vec![b"sent with the new key".to_vec()]);
    assert_eq!(carol.group_ear_key(&g).unwrap(), new);
    // Commits work under the new key too.
    let e = carol.update(&g).await.unwrap();
    for c in [&mut alice, &mut bob] {
        c.receive().await.unwrap();
        assert_eq!(c.epoch(&g).unwrap(), e);
    }

    // The credential keys rotated too: a member added now, and the members already there,
    // all verify each other from material wrapped under the new keys.
    let mut dave = client(&hub, dir.path(), "dave").await;
    dave.add_contact(&alice.contact_card().unwrap()).unwrap();
    let e = alice
        .invite(&g, &dave.contact_card().unwrap())
        .await
        .unwrap();
    assert!(
        dave.receive()
            .await
            .unwrap()
            .contains(&Event::Joined { group: g.clone() })
    );
    for c in [&mut bob, &mut carol] {
        c.receive().await.unwrap();
        assert_eq!(c.epoch(&g).unwrap(), e);
    }
    for c in [&alice, &bob, &carol, &dave] {
        let ids = c.member_identities(&g).unwrap();
        assert_eq!(ids.len(), 4);
        assert!(
            ids.values()
                .all(|i| matches!(i, mimi_client_rm::MemberIdentity::Verified { .. })),
            "{}: {ids:?}",
            c.name()
        );
    }

    // A snapshot from before the rotation opens with the old key only; state written after
    // opens with the new key only.
    let gid = g.0.as_slice();
    let old_key = AtRest::Ear(EarKey::from_bytes(&old).unwrap());
    let new_key = AtRest::Ear(EarKey::from_bytes(&new).unwrap());
    assert!(DsGroupState::open(&snapshot_before, &old_key, gid).is_ok());
    let after = row_of(&hub);
    // Judged by the stable wire code, not by the hub's error enum (whose layout may change).
    assert!(matches!(
        DsGroupState::open(&after, &old_key, gid),
        Err(e) if e.code() == ErrorCode::WrongEarKey
    ));
    assert!(DsGroupState::open(&after, &new_key, gid).is_ok());
    assert!(DsGroupState::open(&snapshot_before, &new_key, gid).is_err());
}
