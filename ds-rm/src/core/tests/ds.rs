//! The delivery service: every group operation accepted, with its response and what it stored
//! (and fanned out into the members' queues). Refusals are in `ds_refusals`.

use super::mls::*;
use super::*;
use mimi_rm_protocol::ds::*;
use mimi_rm_protocol::queue::{QueueMessage, WelcomeBundle};
use openmls::prelude::{KeyPackage, KeyPackageBundle, tls_codec::Serialize as _};
use openmls_basic_credential::SignatureKeyPair;

/// A hub and a regular group of `N` joined devices: `d[0]` created it (its user, with auth key
/// `admin`, is the admin), every other device is a user of its own.
pub(super) struct Fixture<const N: usize> {
    pub(super) fx: DsHub,
    pub(super) g: Group,
    pub(super) admin: SignatureKeyPair,
    pub(super) d: [Device; N],
}

pub(super) fn fixture<const N: usize>() -> Fixture<N> {
    fixture_with(|_| {})
}

pub(super) fn fixture_with<const N: usize>(adjust: impl FnOnce(&mut HubConfig)) -> Fixture<N> {
    let fx = DsHub::with(adjust);
    let mut d: [Device; N] = std::array::from_fn(|_| fx.device());
    let admin = keypair();
    let mut members: Vec<&mut Device> = d.iter_mut().collect();
    let g = fx.group_of(&admin, &mut members);
    Fixture { fx, g, admin, d }
}

/// Whether `needle` occurs in `hay`.
pub(super) fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A new KeyPackage of `d`, as the bundle (with its private keys) and the public part.
pub(super) fn key_package(d: &Device) -> (KeyPackageBundle, KeyPackage) {
    let kpb = d.key_package();
    let kp = kpb.key_package().clone();
    (kpb, kp)
}

/// The authenticated data of an `add_clients` commit: every added client is the committer's own.
pub(super) fn own_clients_aad(kps: &[KeyPackage]) -> CommitAad {
    CommitAad {
        added: added(kps, &vec![OWN_CLIENT; kps.len()]),
        ..CommitAad::default()
    }
}

/// What an external joiner brings about itself.
pub(super) fn join_aad(joiner: &Device) -> CommitAad {
    CommitAad {
        joiner: Some(JoinData {
            credential: joiner.info.clone(),
            friendship: Vec::new().into(),
        }),
        ..CommitAad::default()
    }
}

/// The group's users as the hub serves them.
pub(super) fn users(fx: &DsHub, g: &Group) -> Vec<GroupUser> {
    fx.external_commit_info(g).users
}

fn user(leaves: Vec<u32>, role: Role) -> GroupUser {
    GroupUser { leaves, role }
}

/// The MLS messages in what a queue returned.
fn mls_messages(read: &[QueueMessage]) -> Vec<Vec<u8>> {
    read.iter()
        .filter_map(|m| match m {
            QueueMessage::Mls(b) => Some(b.as_slice().to_vec()),
            QueueMessage::Welcome(_) | QueueMessage::Stored(_) => None,
        })
        .collect()
}

/// `d` adds its user's new device `new` (an `add_clients` commit signed with the user's auth
/// key `user_key`), and `new` joins from its Welcome.
pub(super) fn add_own_device(
    fx: &DsHub,
    g: &Group,
    user_key: &SignatureKeyPair,
    d: &mut Device,
    new: &mut Device,
) -> WelcomeBundle {
    let (kpb, kp) = key_package(new);
    let bundle = d.commit(Change::Add(vec![kp.clone()]), &own_clients_aad(&[kp]));
    let rotates = bundle.rotation.is_some();
    let epoch = d.epoch() + 1;
    assert_eq!(
        fx.ok(&g.by_user(user_key, DsOperation::AddClients(bundle))),
        DsResponse::Accepted(epoch)
    );
    d.merge();
    // A commit that also removed someone (a pending leave) moved the group to a new key.
    let g = if rotates {
        g.rotated(d)
    } else {
        g.with_ear(g.ear)
    };
    fx.join(new, &g, &kpb).1
}

// ---- one success per operation ----

#[test]
fn request_group_id_reserves_a_fresh_id_of_this_hub_for_an_hour() {
    let fx = DsHub::new();
    let (a, b) = (fx.reserve(), fx.reserve());
    assert_ne!(a.group_id, b.group_id);
    let q: QualifiedGroupId = decode_exact(a.group_id.as_slice(), 1024).unwrap();
    assert_eq!(q.domain.as_slice(), DOMAIN.as_bytes());
    assert_eq!(a.external_sender_key, b.external_sender_key);
    assert_eq!(a.external_sender_key.as_slice().len(), 32);
    let expiry = (NOW / 1000 + 3600).to_be_bytes().to_vec();
    let rows = fx.rows(Cf::DsReservations);
    assert_eq!(rows.len(), 2);
    assert!(rows.contains(&(a.group_id.as_slice().to_vec(), expiry)));
    assert!(fx.rows(Cf::DsGroups).is_empty());
}

#[test]
fn create_group_stores_sealed_state_and_consumes_the_reservation() {
    let fx = DsHub::new();
    let mut alice = fx.device();
    let key = keypair();
    let g = fx.create_group_of(&mut alice, &key, GroupKind::Regular);
    assert!(fx.rows(Cf::DsReservations).is_empty());
    let groups = fx.rows(Cf::DsGroups);
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].0, g.id);
    assert_eq!(fx.rows(Cf::DsRouting).len(), 1);
    // What identifies the member is inside the EAR ciphertext only.
    for (_, k, v) in fx.dump() {
        for secret in [
            alice.signer.public(),
            alice.info.encrypted_client_credential.as_slice(),
            key.public(),
        ] {
            assert!(!contains(&k, secret) && !contains(&v, secret));
        }
    }
    let info = fx.external_commit_info(&g);
    assert_eq!(info.users, vec![user(vec![0], Role::Admin)]);
    assert_eq!(
        info.credentials,
        vec![LeafCredentialEntry {
            leaf: 0,
            info: alice.info.clone()
        }]
    );
    assert_eq!(info.reinit, None);
    assert!(info.reports.is_empty());
}

#[test]
fn add_members_seats_each_joiner_as_a_user_and_delivers_its_own_welcome() {
    let fx = DsHub::new();
    let (mut alice, mut bob, mut carol) = (fx.device(), fx.device(), fx.device());
    let g = fx.create_group_of(&mut alice, &keypair(), GroupKind::Regular);
    let (bob_kp, carol_kp) = (key_package(&bob), key_package(&carol));
    let kps = vec![bob_kp.1.clone(), carol_kp.1.clone()];
    let aad = add_aad(&kps);
    let bundle = alice.commit(Change::Add(kps), &aad);
    let full_welcome = bundle.welcome.clone().unwrap();
    assert_eq!(
        fx.ok(&g.by(&alice, DsOperation::AddMembers(bundle))),
        DsResponse::Accepted(1)
    );
    alice.merge();
    for (i, (joiner, kp)) in [(&mut bob, &bob_kp.0), (&mut carol, &carol_kp.0)]
        .into_iter()
        .enumerate()
    {
        let (info, welcome) = fx.join(joiner, &g, kp);
        assert_eq!(info.epoch, 1);
        assert_eq!(info.hub_domain.as_slice(), DOMAIN.as_bytes());
        assert_eq!(welcome.attribution, aad.added[i].attribution);
        assert!(
            welcome.welcome.as_slice().len() < full_welcome.as_slice().len(),
            "each joiner gets only its own secrets"
        );
        assert_eq!(
            joiner.mls().epoch_authenticator().as_slice(),
            alice.mls().epoch_authenticator().as_slice()
        );
    }
    assert!(
        alice.queue.fetch(&fx).is_empty(),
        "nothing for the committer"
    );
    let info = fx.external_commit_info(&g);
    assert_eq!(
        info.users,
        vec![
            user(vec![0], Role::Admin),
            user(vec![bob.leaf()], Role::Member),
            user(vec![carol.leaf()], Role::Member),
        ]
    );
    let leaves: Vec<u32> = info.credentials.iter().map(|c| c.leaf).collect();
    assert_eq!(leaves, vec![0, bob.leaf(), carol.leaf()]);
    assert_eq!(info.credentials[1].info, aad.added[0].credential);
}

#[test]
fn welcome_info_serves_the_tree_to_a_joiner_until_it_is_seen_as_a_member() {
    let Fixture {
        fx,
        g,
        d: [_alice, mut bob],
        ..
    } = fixture::<2>();
    let as_joiner = |bob: &Device| {
        g.request(
            DsSender::Joiner(bob.signer.to_public_vec().into()),
            DsOperation::WelcomeInfo(1),
            Some(&bob.signer),
        )
    };
    // Joined already (in `fixture`), but not yet seen: the tree is still there.
    let DsResponse::WelcomeInfo(info) = fx.ok(&as_joiner(&bob)) else {
        panic!("expected WelcomeInfo")
    };
    assert_eq!(
        info.credentials.iter().map(|c| c.leaf).collect::<Vec<_>>(),
        vec![0, 1]
    );
    // Its first member request drops it.
    let message = bob.message(b"hello");
    fx.ok(&g.by(&bob, DsOperation::SendMessage(message)));
    fx.assert_refused(&as_joiner(&bob), ErrorCode::UnknownEpoch);
}

#[test]
fn external_commit_info_serves_the_current_public_state_and_writes_nothing() {
    let Fixture {
        fx,
        g,
        d: [mut alice, _bob],
        ..
    } = fixture::<2>();
    let bundle = alice.commit(Change::Update, &CommitAad::default());
    fx.ok(&g.by(&alice, DsOperation::Update(bundle.clone())));
    alice.merge();
    let before = fx.dump();
    let info = fx.external_commit_info(&g);
    assert!(before == fx.dump());
    assert_eq!(info.group_info, bundle.group_info);
    assert_eq!(
        info.ratchet_tree.as_slice(),
        alice
            .mls()
            .export_ratchet_tree()
            .tls_serialize_detached()
            .unwrap()
    );
}

#[test]
fn send_message_fans_out_to_every_other_member_only() {
    let Fixture {
        fx,
        g,
        d: [mut alice, mut bob, mut carol],
        ..
    } = fixture::<3>();
    for q in [&mut alice, &mut bob, &mut carol] {
        q.queue.fetch(&fx);
    }
    let m1 = alice.message(b"one");
    assert_eq!(
        fx.ok(&g.by(&alice, DsOperation::SendMessage(m1.clone()))),
        DsResponse::Accepted(1)
    );
    // Bob's first message takes the full path (he is a new joiner), his second the fast path.
    let m2 = bob.message(b"two");
    fx.ok(&g.by(&bob, DsOperation::SendMessage(m2.clone())));
    let groups = fx.rows(Cf::DsGroups);
    let m3 = bob.message(b"three");
    fx.ok(&g.by(&bob, DsOperation::SendMessage(m3.clone())));
    assert!(
        groups == fx.rows(Cf::DsGroups),
        "a message leaves the state alone"
    );
    let sent = |m: &[&tls_codec::VLBytes]| -> Vec<QueueMessage> {
        m.iter().map(|b| QueueMessage::Mls((*b).clone())).collect()
    };
    assert_eq!(alice.queue.fetch(&fx), sent(&[&m2, &m3]));
    assert_eq!(bob.queue.fetch(&fx), sent(&[&m1]));
    assert_eq!(carol.queue.fetch(&fx), sent(&[&m1, &m2, &m3]));
}

#[test]
fn update_advances_the_epoch_and_members_follow_the_fanned_out_commit() {
    let Fixture {
        fx,
        g,
        d: [mut alice, mut bob],
        ..
    } = fixture::<2>();
    let bundle = alice.commit(Change::Update, &CommitAad::default());
    assert_eq!(
        fx.ok(&g.by(&alice, DsOperation::Update(bundle.clone()))),
        DsResponse::Accepted(2)
    );
    alice.merge();
    let read = bob.catch_up(&fx);
    assert_eq!(mls_messages(&read), vec![bundle.commit.as_slice().to_vec()]);
    assert_eq!(bob.epoch(), 2);
    assert_eq!(
        bob.mls().epoch_authenticator().as_slice(),
        alice.mls().epoch_authenticator().as_slice()
    );
    assert_eq!(fx.external_commit_info(&g).group_info, bundle.group_info);
}

#[test]
fn remove_members_removes_a_user_who_still_learns_of_it() {
    let Fixture {
        fx,
        g,
        d: [mut alice, mut bob, mut carol],
        ..
    } = fixture::<3>();
    let bundle = alice.commit(Change::Remove(vec![bob.leaf()]), &CommitAad::default());
    assert_eq!(
        fx.ok(&g.by(&alice, DsOperation::RemoveMembers(bundle.clone()))),
        DsResponse::Accepted(2)
    );
    alice.merge();
    assert_eq!(
        mls_messages(&bob.catch_up(&fx)),
        vec![bundle.commit.as_slice().to_vec()]
    );
    carol.catch_up(&fx);
    // The removal rotated the group key: the key bob holds opens nothing any more.
    fx.assert_refused(
        &g.anon(DsOperation::ExternalCommitInfo),
        ErrorCode::WrongEarKey,
    );
    assert_eq!(carol.rotated_ear(), alice.rotated_ear());
    let g = g.rotated(&alice);
    let info = fx.external_commit_info(&g);
    assert_eq!(
        info.users,
        vec![
            user(vec![0], Role::Admin),
            user(vec![carol.leaf()], Role::Member)
        ]
    );
    assert!(info.credentials.iter().all(|c| c.leaf != 1));
}

#[test]
fn self_remove_is_kept_until_the_next_commit_includes_it() {
    let Fixture {
        fx,
        g,
        d: [mut alice, mut bob, mut carol],
        ..
    } = fixture::<3>();
    let proposal = bob.leave();
    assert_eq!(
        fx.ok(&g.by(&bob, DsOperation::SelfRemove(proposal.clone()))),
        DsResponse::Accepted(1)
    );
    // A commit that ignores the stored proposal is refused.
    let ignoring = alice.commit(Change::Update, &CommitAad::default());
    fx.assert_refused(
        &g.by(&alice, DsOperation::Update(ignoring)),
        ErrorCode::WrongOperation,
    );
    alice.discard();
    let read = alice.catch_up(&fx);
    assert_eq!(mls_messages(&read), vec![proposal.as_slice().to_vec()]);
    let bundle = alice.commit(Change::Update, &CommitAad::default());
    assert_eq!(
        fx.ok(&g.by(&alice, DsOperation::Update(bundle))),
        DsResponse::Accepted(2)
    );
    alice.merge();
    carol.catch_up(&fx);
    let g = g.rotated(&alice);
    assert_eq!(carol.mls().members().count(), 2);
    assert_eq!(
        users(&fx, &g),
        vec![
            user(vec![0], Role::Admin),
            user(vec![carol.leaf()], Role::Member)
        ]
    );
}

#[test]
fn delete_group_removes_every_record_of_the_group() {
    let Fixture {
        fx,
        g,
        d: [mut alice, mut bob, carol],
        ..
    } = fixture::<3>();
    let bundle = alice.commit(
        Change::Remove(vec![bob.leaf(), carol.leaf()]),
        &CommitAad::default(),
    );
    assert_eq!(
        fx.ok(&g.by(&alice, DsOperation::DeleteGroup(bundle.clone()))),
        DsResponse::Deleted
    );
    for cf in [Cf::DsGroups, Cf::DsRouting, Cf::DsTombstones] {
        assert!(fx.rows(cf).is_empty(), "{} not empty", cf.name());
    }
    assert_eq!(
        mls_messages(&bob.queue.fetch(&fx)),
        vec![bundle.commit.as_slice().to_vec()]
    );
    fx.assert_refused(
        &g.anon(DsOperation::ExternalCommitInfo),
        ErrorCode::UnknownGroup,
    );
}

#[test]
fn report_commit_counts_each_reporter_once_against_the_committer() {
    let Fixture {
        fx,
        g,
        d: [mut alice, mut bob, mut carol],
        ..
    } = fixture::<3>();
    let bundle = alice.commit(Change::Update, &CommitAad::default());
    fx.ok(&g.by(&alice, DsOperation::Update(bundle.clone())));
    alice.merge();
    bob.catch_up(&fx);
    carol.catch_up(&fx);
    let report = DsOperation::ReportCommit(CommitRejected {
        epoch: 1,
        commit_ref: commit_ref(bundle.commit.as_slice()),
        reason: RejectReason::ConfirmationTag,
    });
    assert_eq!(fx.ok(&g.by(&bob, report.clone())), DsResponse::Accepted(2));
    let tally = |reports| ReportTally {
        leaf: 0,
        reported_commits: 1,
        reports,
    };
    assert_eq!(fx.external_commit_info(&g).reports, vec![tally(1)]);
    // The same reporter again changes nothing.
    let before = fx.dump();
    assert_eq!(fx.ok(&g.by(&bob, report.clone())), DsResponse::Accepted(2));
    assert!(before == fx.dump());
    fx.ok(&g.by(&carol, report));
    assert_eq!(fx.external_commit_info(&g).reports, vec![tally(2)]);
}

#[test]
fn resync_reenters_a_member_with_its_key_credential_and_user() {
    let Fixture {
        fx,
        g,
        d: [mut alice, mut bob, mut carol],
        ..
    } = fixture::<3>();
    let old = bob.leaf();
    let before = fx.external_commit_info(&g);
    let credential = &before
        .credentials
        .iter()
        .find(|c| c.leaf == old)
        .unwrap()
        .info;
    let (mls, bundle) = fx.external_commit(&mut bob, &g, &CommitAad::default());
    let req = g.request(
        DsSender::Member(old),
        DsOperation::Resync(bundle.clone()),
        Some(&bob.signer),
    );
    assert_eq!(fx.ok(&req), DsResponse::Accepted(2));
    bob.group = Some(mls);
    for m in [&mut alice, &mut carol] {
        assert_eq!(
            mls_messages(&m.catch_up(&fx)),
            vec![bundle.commit.as_slice().to_vec()]
        );
        assert_eq!(
            m.mls().epoch_authenticator().as_slice(),
            bob.mls().epoch_authenticator().as_slice()
        );
    }
    let info = fx.external_commit_info(&g);
    assert_eq!(info.users.len(), 3);
    assert!(info.users.contains(&user(vec![bob.leaf()], Role::Member)));
    let entry = info
        .credentials
        .iter()
        .find(|c| c.leaf == bob.leaf())
        .unwrap();
    assert_eq!(
        &entry.info, credential,
        "the credential moved with the member"
    );
}

#[test]
fn rotate_ear_key_reseals_state_and_routing_under_the_new_key() {
    let Fixture {
        fx,
        g,
        d: [mut alice, bob],
        ..
    } = fixture::<2>();
    let new = random32();
    let rotate = DsOperation::RotateEarKey(KeyRotation {
        new_ear_key: new.to_vec().into(),
        credentials: Vec::new(),
    });
    assert_eq!(fx.ok(&g.by(&alice, rotate)), DsResponse::Accepted(1));
    let rotated = g.with_ear(new);
    fx.assert_refused(
        &g.anon(DsOperation::ExternalCommitInfo),
        ErrorCode::WrongEarKey,
    );
    let m = alice.message(b"after the rotation");
    fx.assert_refused(
        &g.by(&alice, DsOperation::SendMessage(m.clone())),
        ErrorCode::WrongEarKey,
    );
    fx.ok(&rotated.by(&alice, DsOperation::SendMessage(m)));
    // With re-wrapped credentials for every leaf.
    let entries: Vec<LeafCredentialEntry> = [0, bob.leaf()]
        .into_iter()
        .map(|leaf| LeafCredentialEntry {
            leaf,
            info: fx.device().info,
        })
        .collect();
    let newer = random32();
    let rotate = DsOperation::RotateEarKey(KeyRotation {
        new_ear_key: newer.to_vec().into(),
        credentials: entries.clone(),
    });
    fx.ok(&rotated.by(&bob, rotate));
    assert_eq!(
        fx.external_commit_info(&g.with_ear(newer)).credentials,
        entries
    );
}

#[test]
fn add_clients_gives_the_signing_user_a_new_device() {
    let Fixture {
        fx,
        g,
        admin,
        d: [mut alice, mut bob],
    } = fixture::<2>();
    let mut alice2 = fx.device();
    let welcome = add_own_device(&fx, &g, &admin, &mut alice, &mut alice2);
    assert!(!welcome.attribution.as_slice().is_empty());
    bob.catch_up(&fx);
    assert_eq!(bob.epoch(), 2);
    assert_eq!(
        users(&fx, &g),
        vec![
            user(vec![0, alice2.leaf()], Role::Admin),
            user(vec![bob.leaf()], Role::Member)
        ]
    );
    // The new device is an admin's client like the first one.
    let set = DsOperation::SetRole(SetRole {
        leaf: bob.leaf(),
        role: Role::Admin,
    });
    fx.ok(&g.by(&alice2, set));
}

#[test]
fn remove_clients_drops_an_own_device_and_rotates_the_user_key() {
    let Fixture {
        fx,
        g,
        admin,
        d: [mut alice, _bob],
    } = fixture::<2>();
    let mut alice2 = fx.device();
    add_own_device(&fx, &g, &admin, &mut alice, &mut alice2);
    let rotated = keypair();
    let aad = CommitAad {
        user_auth_key: Some(rotated.to_public_vec().into()),
        ..CommitAad::default()
    };
    let bundle = alice.commit(Change::Remove(vec![alice2.leaf()]), &aad);
    assert_eq!(
        fx.ok(&g.by_user(&admin, DsOperation::RemoveClients(bundle))),
        DsResponse::Accepted(3)
    );
    alice.merge();
    let g = g.rotated(&alice);
    assert_eq!(users(&fx, &g)[0], user(vec![0], Role::Admin));
    // The old key no longer names the user; the new one does.
    let probe = |key: &SignatureKeyPair| {
        g.by_user(
            key,
            DsOperation::AddClients(CommitBundle {
                commit: vec![1].into(),
                group_info: vec![1].into(),
                welcome: None,
                rotation: None,
            }),
        )
    };
    fx.assert_refused(&probe(&admin), ErrorCode::NotAuthorized);
    fx.assert_refused(&probe(&rotated), ErrorCode::Malformed);
}

#[test]
fn external_join_brings_in_a_new_device_of_an_existing_user() {
    let Fixture {
        fx,
        g,
        admin,
        d: [mut alice, mut bob],
    } = fixture::<2>();
    let mut alice2 = fx.device();
    let aad = join_aad(&alice2);
    let (mls, bundle) = fx.external_commit(&mut alice2, &g, &aad);
    assert_eq!(
        fx.ok(&g.by_user(&admin, DsOperation::ExternalJoin(bundle))),
        DsResponse::Accepted(2)
    );
    alice2.group = Some(mls);
    for m in [&mut alice, &mut bob] {
        m.catch_up(&fx);
        assert_eq!(
            m.mls().epoch_authenticator().as_slice(),
            alice2.mls().epoch_authenticator().as_slice()
        );
    }
    let info = fx.external_commit_info(&g);
    assert_eq!(info.users[0], user(vec![0, alice2.leaf()], Role::Admin));
    let entry = info
        .credentials
        .iter()
        .find(|c| c.leaf == alice2.leaf())
        .unwrap();
    assert_eq!(entry.info, alice2.info);
}

/// An admin whose only device lost its state and re-enters by external join.
fn admin_reenters() -> (DsHub, Group, Device, Device) {
    let Fixture {
        fx,
        g,
        admin,
        d: [mut alice, mut bob],
    } = fixture::<2>();
    let aad = join_aad(&alice);
    let (mls, bundle) = fx.external_commit(&mut alice, &g, &aad);
    assert_eq!(
        fx.ok(&g.by_user(&admin, DsOperation::ExternalJoin(bundle))),
        DsResponse::Accepted(2)
    );
    alice.group = Some(mls);
    bob.catch_up(&fx);
    (fx, g, alice, bob)
}

#[test]
fn external_join_lets_a_device_that_lost_its_state_replace_its_old_leaf() {
    let (fx, g, alice, bob) = admin_reenters();
    assert_eq!(bob.mls().members().count(), 2);
    assert_eq!(
        bob.mls().epoch_authenticator().as_slice(),
        alice.mls().epoch_authenticator().as_slice()
    );
    let info = fx.external_commit_info(&g);
    assert_eq!(info.users.len(), 2);
    assert!(
        info.users.contains(&user(vec![alice.leaf()], Role::Admin)),
        "still the admin user: {:?}",
        info.users
    );
}

/// An admin's only device re-entering by external commit stays the admin, and nobody else is
/// promoted (the roster once dropped the user for a moment, found no admin and promoted bob).
#[test]
fn external_join_of_an_admins_only_device_does_not_promote_another_user() {
    let (fx, g, _alice, bob) = admin_reenters();
    let users = users(&fx, &g);
    assert!(
        users.contains(&user(vec![bob.leaf()], Role::Member)),
        "another user's role must not change when a device re-enters: {users:?}"
    );
}

#[test]
fn join_connection_group_seats_the_responder_as_a_second_admin_once() {
    let fx = DsHub::new();
    let (mut alice, mut bob, mut carol) = (fx.device(), fx.device(), fx.device());
    let g = fx.create_group_of(&mut alice, &keypair(), GroupKind::Connection);
    let bob_key = keypair();
    let responder = |d: &Device, key: &SignatureKeyPair| CommitAad {
        user_auth_key: Some(key.to_public_vec().into()),
        joiner: Some(JoinData {
            credential: d.info.clone(),
            friendship: vec![7; 40].into(),
        }),
        ..CommitAad::default()
    };
    let aad = responder(&bob, &bob_key);
    let (mls, bundle) = fx.external_commit(&mut bob, &g, &aad);
    assert_eq!(
        fx.ok(&g.anon(DsOperation::JoinConnectionGroup(bundle))),
        DsResponse::Accepted(1)
    );
    bob.group = Some(mls);
    alice.catch_up(&fx);
    assert_eq!(alice.epoch(), 1);
    assert_eq!(
        users(&fx, &g),
        vec![
            user(vec![0], Role::Admin),
            user(vec![bob.leaf()], Role::Admin)
        ]
    );
    // The responder's user key authenticates it from now on (the garbage commit is only
    // looked at once the signer is known), a stranger's does not.
    let probe = |key: &SignatureKeyPair| {
        g.by_user(
            key,
            DsOperation::AddClients(CommitBundle {
                commit: vec![1].into(),
                group_info: vec![1].into(),
                welcome: None,
                rotation: None,
            }),
        )
    };
    fx.assert_refused(&probe(&bob_key), ErrorCode::Malformed);
    fx.assert_refused(&probe(&keypair()), ErrorCode::NotAuthorized);
    // A second responder is refused: the group is a regular group now.
    let aad = responder(&carol, &keypair());
    let (_, bundle) = fx.external_commit(&mut carol, &g, &aad);
    fx.assert_refused(
        &g.anon(DsOperation::JoinConnectionGroup(bundle)),
        ErrorCode::WrongOperation,
    );
}

#[test]
fn set_role_changes_the_role_of_a_whole_user() {
    let Fixture {
        fx,
        g,
        d: [alice, bob, carol],
        ..
    } = fixture::<3>();
    let set = |leaf, role| DsOperation::SetRole(SetRole { leaf, role });
    assert_eq!(
        fx.ok(&g.by(&alice, set(bob.leaf(), Role::Admin))),
        DsResponse::Accepted(1)
    );
    assert_eq!(users(&fx, &g)[1], user(vec![bob.leaf()], Role::Admin));
    // Now an admin, bob may change roles too; alice may step down.
    fx.ok(&g.by(&bob, set(carol.leaf(), Role::Admin)));
    fx.ok(&g.by(&alice, set(0, Role::Member)));
    assert_eq!(
        users(&fx, &g),
        vec![
            user(vec![0], Role::Member),
            user(vec![bob.leaf()], Role::Admin),
            user(vec![carol.leaf()], Role::Admin)
        ]
    );
}

#[test]
fn reinit_names_the_successor_and_freezes_the_group() {
    let Fixture {
        fx,
        g,
        d: [mut alice, mut bob],
        ..
    } = fixture::<2>();
    let successor = fx.reserve();
    let aad = CommitAad {
        reinit: Some(successor.group_id.clone()),
        ..CommitAad::default()
    };
    let bundle = alice.commit(Change::Update, &aad);
    assert_eq!(
        fx.ok(&g.by(&alice, DsOperation::ReInit(bundle))),
        DsResponse::Accepted(2)
    );
    alice.merge();
    assert_eq!(
        fx.external_commit_info(&g).reinit,
        Some(successor.group_id.clone())
    );
    assert!(
        !fx.rows(Cf::DsRouting).iter().any(|(k, _)| *k == g.id),
        "no fast path for a re-initialised group"
    );
    // Afterwards the group takes no further operation.
    let m = bob.message(b"too late");
    fx.assert_refused(
        &g.by(&bob, DsOperation::SendMessage(m)),
        ErrorCode::WrongOperation,
    );
    bob.catch_up(&fx);
    let update = bob.commit(Change::Update, &CommitAad::default());
    fx.assert_refused(
        &g.by(&bob, DsOperation::Update(update)),
        ErrorCode::WrongOperation,
    );
}

/// QS and DS together: a member whose queue was deleted gets a tombstone at the next fan-out,
/// and the hub proposes its removal before it takes the next commit.
#[test]
fn a_deleted_queue_makes_the_hub_propose_the_members_removal() {
    let Fixture {
        fx,
        g,
        d: [mut alice, bob],
        ..
    } = fixture::<2>();
    fx.ok(&bob.queue.request(QsOperation::DeleteClient));
    let m = alice.message(b"into the void");
    fx.ok(&g.by(&alice, DsOperation::SendMessage(m)));
    assert_eq!(fx.rows(Cf::DsTombstones).len(), 1);
    assert!(
        fx.rows(Cf::DsRouting).is_empty(),
        "the next request takes the full path"
    );
    let bundle = alice.commit(Change::Update, &CommitAad::default());
    assert_eq!(
        fx.ok(&g.by(&alice, DsOperation::Update(bundle))),
        DsResponse::ProposalsPending(1)
    );
    alice.discard();
    assert!(fx.rows(Cf::DsTombstones).is_empty());
    let read = alice.catch_up(&fx);
    assert_eq!(mls_messages(&read).len(), 1, "the hub's removal proposal");
    let bundle = alice.commit(Change::Update, &CommitAad::default());
    assert_eq!(
        fx.ok(&g.by(&alice, DsOperation::Update(bundle))),
        DsResponse::Accepted(2)
    );
    alice.merge();
    let g = g.rotated(&alice);
    assert_eq!(users(&fx, &g), vec![user(vec![0], Role::Admin)]);
    assert_eq!(alice.mls().members().count(), 1);
}

/// Regression (issue 16): an `AddClients` commit that also commits an earlier user's pending
/// self-remove. The removed user leaves the roster before the new device is seated; with
/// positional user handles that shifted the committer onto the next user (carol's new device
/// went to dave).
#[test]
fn add_clients_committing_an_earlier_users_leave_seats_the_device_with_its_own_user() {
    let Fixture {
        fx,
        g,
        d: [mut alice, mut bob, mut carol, mut dave],
        ..
    } = fixture::<4>();
    let carol_key = keypair();
    let keyed = CommitAad {
        user_auth_key: Some(carol_key.to_public_vec().into()),
        ..CommitAad::default()
    };
    let up = carol.commit(Change::Update, &keyed);
    fx.ok(&g.by(&carol, DsOperation::Update(up)));
    carol.merge();
    for d in [&mut alice, &mut bob, &mut dave] {
        d.catch_up(&fx);
    }
    let leave = bob.leave();
    fx.ok(&g.by(&bob, DsOperation::SelfRemove(leave)));
    carol.catch_up(&fx);
    let mut carol2 = fx.device();
    add_own_device(&fx, &g, &carol_key, &mut carol, &mut carol2);
    let g = g.rotated(&carol);
    let mut carols = vec![carol.leaf(), carol2.leaf()];
    carols.sort_unstable();
    assert_eq!(
        users(&fx, &g),
        vec![
            user(vec![alice.leaf()], Role::Admin),
            user(carols, Role::Member),
            user(vec![dave.leaf()], Role::Member),
        ]
    );
}
