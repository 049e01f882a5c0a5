//! The delivery service's refusals: each code every operation can answer with, each refused
//! request leaving the store byte-for-byte unchanged.

use super::ds::*;
use super::mls::*;
use super::*;
use crate::core::GroupError;
use mimi_rm_protocol::DsMode;
use mimi_rm_protocol::ds::*;
use mimi_rm_protocol::queue::{QueueAddress, QueueRef, QueueRefPlain, leaf_capabilities};
use openmls::prelude::{
    Ciphersuite, Extensions, LeafNodeParameters, MlsMessageOut, SignatureScheme,
    tls_codec::Serialize as _,
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_traits::OpenMlsProvider as _;

/// A commit bundle whose commit is not an MLS message.
fn garbage_bundle() -> CommitBundle {
    CommitBundle {
        commit: vec![1, 2, 3].into(),
        group_info: vec![4].into(),
        welcome: None,
        rotation: None,
    }
}

/// A well-formed group id of this hub that names no group.
fn unknown_group(ear: [u8; 32]) -> Group {
    let id = QualifiedGroupId {
        uuid: rand::random(),
        domain: DOMAIN.as_bytes().to_vec().into(),
    };
    Group {
        id: encode(&id).unwrap(),
        ear,
    }
}

/// `d`'s queue address in the clear, as only a baseline hub takes it.
fn plain_queue_ref(d: &Device) -> QueueRef {
    QueueRef {
        domain: DOMAIN.as_bytes().to_vec().into(),
        address: QueueAddress::Plain(QueueRefPlain {
            client_id: d.queue.client_id,
        }),
    }
}

/// Leaf parameters for an update path whose leaf carries `extensions`.
fn leaf_with(extensions: Extensions<openmls::prelude::LeafNode>) -> LeafNodeParameters {
    LeafNodeParameters::builder()
        .with_capabilities(leaf_capabilities())
        .with_extensions(extensions)
        .build()
}

/// A commit adding one new KeyPackage of `joiner`, with the usual authenticated data.
fn add_commit(committer: &mut Device, joiner: &Device) -> CommitBundle {
    let (_, kp) = key_package(joiner);
    committer.commit(Change::Add(vec![kp.clone()]), &add_aad(&[kp]))
}

/// An update commit whose authenticated data is `aad`.
fn update_commit(committer: &mut Device, aad: &CommitAad) -> CommitBundle {
    committer.commit(Change::Update, aad)
}

/// A commit of another group on the same hub.
fn foreign_commit(fx: &DsHub) -> CommitBundle {
    let mut dave = fx.device();
    fx.create_group_of(&mut dave, &keypair(), GroupKind::Regular);
    let b = dave.commit(Change::Update, &CommitAad::default());
    dave.discard();
    b
}

/// What each group operation is normally signed by.
#[derive(Clone, Copy)]
enum Who {
    Member,
    User,
    Joiner,
    Anyone,
}

/// Every DS operation on an existing group, with a payload that is never looked at here.
fn group_operations() -> Vec<(DsOperation, Who)> {
    use DsOperation as Op;
    let b = garbage_bundle();
    vec![
        (Op::AddMembers(b.clone()), Who::Member),
        (Op::RemoveMembers(b.clone()), Who::Member),
        (Op::Update(b.clone()), Who::Member),
        (Op::SelfRemove(vec![1].into()), Who::Member),
        (Op::SendMessage(vec![1].into()), Who::Member),
        (Op::DeleteGroup(b.clone()), Who::Member),
        (Op::WelcomeInfo(1), Who::Joiner),
        (Op::ExternalCommitInfo, Who::Anyone),
        (
            Op::ReportCommit(CommitRejected {
                epoch: 0,
                commit_ref: [0; 32],
                reason: RejectReason::Other,
            }),
            Who::Member,
        ),
        (Op::Resync(b.clone()), Who::Member),
        (
            Op::RotateEarKey(KeyRotation {
                new_ear_key: vec![0; 32].into(),
                credentials: Vec::new(),
            }),
            Who::Member,
        ),
        (Op::AddClients(b.clone()), Who::User),
        (Op::RemoveClients(b.clone()), Who::User),
        (Op::ExternalJoin(b.clone()), Who::User),
        (Op::JoinConnectionGroup(b.clone()), Who::Anyone),
        (
            Op::SetRole(SetRole {
                leaf: 1,
                role: Role::Admin,
            }),
            Who::Member,
        ),
        (Op::ReInit(b), Who::Member),
    ]
}

// ---- what every request meets first ----

#[test]
fn framing_refusals() {
    let fx = DsHub::new();
    let reserve = ds_request(
        &[],
        None,
        NOW,
        DsSender::Anonymous,
        DsOperation::RequestGroupId,
        None,
    );
    assert_framing_refusals(&fx, &reserve);
}

#[test]
fn each_ds_operation_must_arrive_at_its_own_endpoint() {
    let Fixture {
        fx,
        g,
        d: [mut alice, bob],
        ..
    } = fixture::<2>();
    let welcome = g.request(
        DsSender::Joiner(bob.signer.to_public_vec().into()),
        DsOperation::WelcomeInfo(1),
        Some(&bob.signer),
    );
    let info = g.anon(DsOperation::ExternalCommitInfo);
    let m = alice.message(b"m");
    let message = g.by(&alice, DsOperation::SendMessage(m));
    let at = |req: &DsRequest, tt| (tt, envelope(tt, encode(req).unwrap()));
    use TransactionType as T;
    for (endpoint, body) in [
        at(&welcome, T::GroupOperation),
        at(&welcome, T::ExternalCommitInformation),
        at(&info, T::GroupOperation),
        at(&info, T::WelcomeInformation),
        at(&message, T::WelcomeInformation),
        at(&message, T::ExternalCommitInformation),
    ] {
        fx.assert_body_refused(endpoint, &body, ErrorCode::WrongEndpoint);
    }
    for req in [&welcome, &info, &message] {
        fx.ok(req);
    }
}

#[test]
fn requests_outside_the_freshness_window_are_stale() {
    let Fixture {
        fx,
        g,
        d: [mut alice, _bob],
        ..
    } = fixture::<2>();
    for ts in [NOW - WINDOW_MS - 1, NOW + WINDOW_MS + 1] {
        let reserve = ds_request(
            &[],
            None,
            ts,
            DsSender::Anonymous,
            DsOperation::RequestGroupId,
            None,
        );
        fx.assert_refused(&reserve, ErrorCode::StaleRequest);
        let m = alice.message(b"late");
        let req = ds_request(
            &g.id,
            Some(&g.ear),
            ts,
            DsSender::Member(0),
            DsOperation::SendMessage(m),
            Some(&alice.signer),
        );
        fx.assert_refused(&req, ErrorCode::StaleRequest);
    }
}

#[test]
fn signed_requests_are_refused_as_replays() {
    let Fixture {
        fx,
        g,
        d: [mut alice, bob],
        ..
    } = fixture::<2>();
    let m = alice.message(b"once");
    let message = g.by(&alice, DsOperation::SendMessage(m));
    fx.ok(&message);
    fx.assert_refused(&message, ErrorCode::Replayed);
    let b = update_commit(&mut alice, &CommitAad::default());
    let commit = g.by(&alice, DsOperation::Update(b));
    fx.ok(&commit);
    alice.merge();
    fx.assert_refused(&commit, ErrorCode::Replayed);
    let welcome = g.request(
        DsSender::Joiner(bob.signer.to_public_vec().into()),
        DsOperation::WelcomeInfo(1),
        Some(&bob.signer),
    );
    fx.ok(&welcome);
    fx.assert_refused(&welcome, ErrorCode::Replayed);
}

/// For every operation on a group: unknown group, wrong or missing EAR key, a signature by
/// someone else, a signer the group does not know, and a sender type the operation does not
/// take — all before the operation's payload is looked at.
#[test]
fn every_group_operation_checks_the_group_key_and_the_signer_first() {
    let Fixture {
        fx,
        g,
        admin,
        d: [mut alice, bob],
    } = fixture::<2>();
    let stranger = keypair();
    let other = keypair();
    let missing = unknown_group(g.ear);
    use ErrorCode as E;
    for (op, who) in group_operations() {
        let natural = |group: &Group| match who {
            Who::Member => group.by(&alice, op.clone()),
            Who::User => group.by_user(&admin, op.clone()),
            Who::Joiner => group.request(
                DsSender::Joiner(bob.signer.to_public_vec().into()),
                op.clone(),
                Some(&bob.signer),
            ),
            Who::Anyone => group.anon(op.clone()),
        };
        let mut without_key = natural(&g);
        without_key.tbs.ear_key = None;
        let mut short_key = natural(&g);
        short_key.tbs.ear_key = Some(vec![1; 31].into());
        let as_joiner = g.request(
            DsSender::Joiner(stranger.to_public_vec().into()),
            op.clone(),
            Some(&stranger),
        );
        let mut cases = vec![
            ("unknown group", natural(&missing), E::UnknownGroup),
            (
                "wrong EAR key",
                natural(&g.with_ear(random32())),
                E::WrongEarKey,
            ),
            ("no EAR key", without_key, E::InvalidRequest),
            ("31-byte EAR key", short_key, E::InvalidRequest),
        ];
        match who {
            Who::Member => cases.extend([
                (
                    "member signature by someone else",
                    g.request(DsSender::Member(alice.leaf()), op.clone(), Some(&stranger)),
                    E::InvalidSignature,
                ),
                (
                    "no member at that leaf",
                    g.request(DsSender::Member(42), op.clone(), Some(&stranger)),
                    E::NotAuthorized,
                ),
                ("anonymous", g.anon(op.clone()), E::NotAuthorized),
                ("signed as a joiner", as_joiner, E::NotAuthorized),
                (
                    "signed as a user",
                    g.by_user(&admin, op.clone()),
                    E::NotAuthorized,
                ),
            ]),
            Who::User => cases.extend([
                (
                    "user signature by someone else",
                    g.request(
                        DsSender::User(admin.to_public_vec().into()),
                        op.clone(),
                        Some(&stranger),
                    ),
                    E::InvalidSignature,
                ),
                (
                    "unknown user key",
                    g.by_user(&stranger, op.clone()),
                    E::NotAuthorized,
                ),
                (
                    "signed as a member",
                    g.by(&alice, op.clone()),
                    E::NotAuthorized,
                ),
                ("anonymous", g.anon(op.clone()), E::NotAuthorized),
            ]),
            Who::Joiner => cases.extend([
                (
                    "joiner signature by someone else",
                    g.request(
                        DsSender::Joiner(stranger.to_public_vec().into()),
                        op.clone(),
                        Some(&other),
                    ),
                    E::InvalidSignature,
                ),
                (
                    "signed as a member",
                    g.by(&alice, op.clone()),
                    E::NotAuthorized,
                ),
                ("anonymous", g.anon(op.clone()), E::NotAuthorized),
                (
                    "signed as a user",
                    g.by_user(&admin, op.clone()),
                    E::NotAuthorized,
                ),
            ]),
            Who::Anyone => {
                cases.push(("signed as a joiner", as_joiner, E::NotAuthorized));
                if matches!(op, DsOperation::JoinConnectionGroup(_)) {
                    cases.extend([
                        (
                            "signed as a member",
                            g.by(&alice, op.clone()),
                            E::NotAuthorized,
                        ),
                        (
                            "signed as a user",
                            g.by_user(&admin, op.clone()),
                            E::NotAuthorized,
                        ),
                    ]);
                }
            }
        }
        assert_cases(
            &fx,
            cases
                .into_iter()
                .map(|(case, req, code)| (format!("{}: {case}", op.name()), req, code)),
        );
    }
    // Positive control: the group still serves its members.
    let m = alice.message(b"still here");
    fx.ok(&g.by(&alice, DsOperation::SendMessage(m)));
}

// ---- per operation ----

#[test]
fn create_group_refusals() {
    let fx = DsHub::new();
    let hub_key = fx.reserve().external_sender_key.as_slice().to_vec();
    // A creator's epoch-0 group under `id` (reserved or not) built from `cfg`.
    let prepare = |id: Vec<u8>, cfg: &dyn Fn(&Device) -> openmls::prelude::MlsGroupCreateConfig| {
        let mut d = fx.device();
        let reserved = ReservedGroup {
            group_id: id.clone().into(),
            external_sender_key: hub_key.clone().into(),
        };
        let cfg = cfg(&d);
        let create = DsHub::new_group(&mut d, &reserved, &cfg, &keypair(), GroupKind::Regular);
        let g = Group {
            id,
            ear: random32(),
        };
        (d, g, create)
    };
    let standard = |d: &Device| DsHub::create_config(d, &hub_key, CS);
    let reserved = || fx.reserve().group_id.as_slice().to_vec();
    let send = |g: &Group, d: &Device, create: CreateGroup| {
        g.request(
            DsSender::Member(0),
            DsOperation::CreateGroup(create),
            Some(&d.signer),
        )
    };
    use ErrorCode as E;

    let (d, g, c) = prepare(unknown_group([0; 32]).id, &standard);
    fx.assert_refused(&send(&g, &d, c), E::InvalidGroupId);
    let foreign = encode(&QualifiedGroupId {
        uuid: rand::random(),
        domain: b"other.test".to_vec().into(),
    })
    .unwrap();
    let (d, g, c) = prepare(foreign, &standard);
    fx.assert_refused(&send(&g, &d, c), E::InvalidGroupId);
    let (d, g, c) = prepare(vec![1, 2, 3], &standard);
    fx.assert_refused(&send(&g, &d, c), E::InvalidGroupId);
    // A reservation lasts an hour.
    let (d, g, c) = prepare(reserved(), &standard);
    let later = NOW + 3_601_000;
    let req = ds_request(
        &g.id,
        Some(&g.ear),
        later,
        DsSender::Member(0),
        DsOperation::CreateGroup(c),
        Some(&d.signer),
    );
    fx.assert_refused_at(&req, later, E::InvalidGroupId);
    // The same id twice, and the same request again.
    let (d, g, c) = prepare(reserved(), &standard);
    let first = send(&g, &d, c);
    fx.ok(&first);
    fx.assert_refused(&first, E::GroupExists);
    let (d, _, c) = prepare(g.id.clone(), &standard);
    fx.assert_refused(&send(&g, &d, c), E::GroupExists);
    // The creator signs as leaf 0, with its leaf key.
    let (d, g, c) = prepare(reserved(), &standard);
    let req = g.request(
        DsSender::Member(1),
        DsOperation::CreateGroup(c.clone()),
        Some(&d.signer),
    );
    fx.assert_refused(&req, E::NotAuthorized);
    let req = g.request(
        DsSender::Member(0),
        DsOperation::CreateGroup(c.clone()),
        Some(&keypair()),
    );
    fx.assert_refused(&req, E::InvalidSignature);
    let mut no_key = send(&g, &d, c.clone());
    no_key.tbs.ear_key = None;
    fx.assert_refused(&no_key, E::InvalidRequest);
    // GroupInfo and tree must be this group's.
    let (_, _, other) = prepare(reserved(), &standard);
    let mut mixed = c.clone();
    mixed.group_info = other.group_info.clone();
    fx.assert_refused(&send(&g, &d, mixed), E::InvalidGroupInfo);
    let (_, _, same_id) = prepare(g.id.clone(), &standard);
    let mut mixed = c.clone();
    mixed.ratchet_tree = same_id.ratchet_tree.clone();
    fx.assert_refused(&send(&g, &d, mixed), E::InvalidGroupInfo);
    let mut broken = c.clone();
    broken.ratchet_tree = vec![1, 2, 3].into();
    fx.assert_refused(&send(&g, &d, broken), E::Malformed);
    let mut broken = c.clone();
    broken.group_info = vec![1, 2, 3].into();
    fx.assert_refused(&send(&g, &d, broken), E::Malformed);
    let mut broken = c.clone();
    broken.group_info = bytes(&MlsMessageOut::from(d.key_package().key_package().clone()));
    fx.assert_refused(&send(&g, &d, broken), E::InvalidGroupInfo);
    let mut broken = c.clone();
    broken.creator_user_auth_key = vec![1; 31].into();
    fx.assert_refused(&send(&g, &d, broken), E::InvalidRequest);
    // The hub must be the group's external sender, with its own key.
    let (d, g, c) = prepare(reserved(), &|d: &Device| {
        group_config(Some(&d.queue_ref), Vec::new(), CS)
    });
    fx.assert_refused(&send(&g, &d, c), E::InvalidGroupInfo);
    let (d, g, c) = prepare(reserved(), &|d: &Device| {
        group_config(Some(&d.queue_ref), vec![hub_sender(&random32())], CS)
    });
    fx.assert_refused(&send(&g, &d, c), E::InvalidGroupInfo);
    // The creator's leaf needs a sealed queue address.
    let (d, g, c) = prepare(reserved(), &|d: &Device| {
        group_config(Some(&plain_queue_ref(d)), vec![hub_sender(&hub_key)], CS)
    });
    let plain = send(&g, &d, c);
    fx.assert_refused(&plain, E::InvalidRequest);
    // That refusal came after the signature check, which remembered the signature.
    fx.assert_refused(&plain, E::Replayed);
    let (d, g, c) = prepare(reserved(), &|_: &Device| {
        group_config(None, vec![hub_sender(&hub_key)], CS)
    });
    fx.assert_refused(&send(&g, &d, c), E::InvalidRequest);
    // A new group has one member at epoch 0.
    let (mut d, g, _) = prepare(reserved(), &standard);
    let joiner = fx.device();
    add_commit(&mut d, &joiner);
    d.merge();
    let grown = CreateGroup {
        group_info: bytes(
            &d.mls()
                .export_group_info(d.provider.crypto(), &d.signer, false)
                .unwrap(),
        ),
        ratchet_tree: d
            .mls()
            .export_ratchet_tree()
            .tls_serialize_detached()
            .unwrap()
            .into(),
        creator: d.info.clone(),
        creator_user_auth_key: keypair().to_public_vec().into(),
        kind: GroupKind::Regular,
    };
    fx.assert_refused(&send(&g, &d, grown), E::InvalidGroupInfo);
    // Only Ed25519 ciphersuites.
    let p256 = Ciphersuite::MLS_128_DHKEMP256_AES128GCM_SHA256_P256;
    let mut d = fx.device();
    d.signer = SignatureKeyPair::new(SignatureScheme::ECDSA_SECP256R1_SHA256).unwrap();
    let id = reserved();
    let reservation = ReservedGroup {
        group_id: id.clone().into(),
        external_sender_key: hub_key.clone().into(),
    };
    let cfg = DsHub::create_config(&d, &hub_key, p256);
    let c = DsHub::new_group(&mut d, &reservation, &cfg, &keypair(), GroupKind::Regular);
    let g = Group {
        id,
        ear: random32(),
    };
    fx.assert_refused(&send(&g, &d, c), E::InvalidRequest);
}

#[test]
fn add_members_refusals() {
    let Fixture {
        fx,
        g,
        d: [mut alice, mut bob],
        ..
    } = fixture::<2>();
    let carol = fx.device();
    use DsOperation::AddMembers as Add;
    use ErrorCode as E;
    // Only an admin adds users, and the commit must be the signer's.
    let b = add_commit(&mut bob, &carol);
    fx.assert_refused(&g.by(&bob, Add(b.clone())), E::NotAuthorized);
    fx.assert_refused(&g.by(&alice, Add(b)), E::NotAuthorized);
    bob.discard();
    // What is not a valid commit of this group at this epoch.
    fx.assert_refused(&g.by(&alice, Add(garbage_bundle())), E::Malformed);
    let as_commit = CommitBundle {
        commit: alice.message(b"not a commit"),
        ..garbage_bundle()
    };
    fx.assert_refused(&g.by(&alice, Add(as_commit)), E::InvalidMlsMessage);
    fx.assert_refused(
        &g.by(&alice, Add(foreign_commit(&fx))),
        E::InvalidMlsMessage,
    );
    let mut stranger = keypair();
    std::mem::swap(&mut alice.signer, &mut stranger);
    let forged = add_commit(&mut alice, &carol);
    std::mem::swap(&mut alice.signer, &mut stranger);
    alice.discard();
    fx.assert_refused(&g.by(&alice, Add(forged)), E::InvalidMlsMessage);
    // What does not fit an add.
    let b = update_commit(&mut alice, &CommitAad::default());
    alice.discard();
    fx.assert_refused(&g.by(&alice, Add(b)), E::WrongOperation);
    let (_, kp) = key_package(&carol);
    let (_, other_kp) = key_package(&carol);
    for aad in [
        CommitAad::default(),
        add_aad(std::slice::from_ref(&other_kp)),
        own_clients_aad(std::slice::from_ref(&kp)),
    ] {
        let b = alice.commit(Change::Add(vec![kp.clone()]), &aad);
        alice.discard();
        fx.assert_refused(&g.by(&alice, Add(b)), E::WrongOperation);
    }
    let mut b = add_commit(&mut alice, &carol);
    alice.discard();
    let welcome = b.welcome.take();
    fx.assert_refused(&g.by(&alice, Add(b.clone())), E::WrongOperation);
    b.welcome = Some(vec![1, 2, 3].into());
    fx.assert_refused(&g.by(&alice, Add(b.clone())), E::Malformed);
    let other = add_commit(&mut alice, &carol);
    alice.discard();
    b.welcome = other.welcome;
    fx.assert_refused(&g.by(&alice, Add(b.clone())), E::WrongOperation);
    b.welcome = welcome;
    b.group_info = fx.external_commit_info(&g).group_info;
    fx.assert_refused(&g.by(&alice, Add(b)), E::InvalidGroupInfo);
    // Joiners need a sealed queue address in their leaf.
    for ext in [
        Device::queue_extension(&plain_queue_ref(&carol)),
        Extensions::empty(),
    ] {
        let kp = carol.key_package_with(ext).key_package().clone();
        let b = alice.commit(Change::Add(vec![kp.clone()]), &add_aad(&[kp]));
        alice.discard();
        fx.assert_refused(&g.by(&alice, Add(b)), E::InvalidRequest);
    }
    // A commit for an epoch the group has left.
    let old = add_commit(&mut alice, &carol);
    alice.discard();
    let up = update_commit(&mut alice, &CommitAad::default());
    fx.ok(&g.by(&alice, DsOperation::Update(up)));
    alice.merge();
    let err = fx.assert_refused(&g.by(&alice, Add(old)), E::WrongEpoch);
    assert!(
        matches!(err, HubError::Group(GroupError::WrongEpoch { current: 2 })),
        "{err}"
    );
    assert_eq!(err.to_response().current_epoch, Some(2));
}

#[test]
fn add_members_beyond_the_group_size_limit_is_refused() {
    let Fixture {
        fx,
        g,
        d: [mut alice, _bob],
        ..
    } = fixture_with::<2>(|c| c.max_group_size = 2);
    let carol = fx.device();
    let b = add_commit(&mut alice, &carol);
    fx.assert_refused(
        &g.by(&alice, DsOperation::AddMembers(b)),
        ErrorCode::LimitExceeded,
    );
}

#[test]
fn remove_members_refusals() {
    let Fixture {
        fx,
        g,
        admin,
        d: [mut alice, mut bob, mut carol],
    } = fixture::<3>();
    let mut alice2 = fx.device();
    add_own_device(&fx, &g, &admin, &mut alice, &mut alice2);
    let set = DsOperation::SetRole(SetRole {
        leaf: bob.leaf(),
        role: Role::Admin,
    });
    fx.ok(&g.by(&alice, set));
    bob.catch_up(&fx);
    carol.catch_up(&fx);
    use DsOperation::RemoveMembers as Remove;
    use ErrorCode as E;
    let none = CommitAad::default();
    // A member may not remove users.
    let b = carol.commit(Change::Remove(vec![bob.leaf()]), &none);
    carol.discard();
    fx.assert_refused(&g.by(&carol, Remove(b)), E::NotAuthorized);
    // One device of a user is not the whole user; one's own devices go by remove_clients.
    let b = bob.commit(Change::Remove(vec![alice2.leaf()]), &none);
    bob.discard();
    fx.assert_refused(&g.by(&bob, Remove(b)), E::WrongOperation);
    let b = alice.commit(Change::Remove(vec![alice2.leaf()]), &none);
    alice.discard();
    fx.assert_refused(&g.by(&alice, Remove(b)), E::WrongOperation);
    // Commits that are not removals.
    let b = add_commit(&mut alice, &fx.device());
    alice.discard();
    fx.assert_refused(&g.by(&alice, Remove(b)), E::WrongOperation);
    let b = update_commit(&mut alice, &none);
    alice.discard();
    fx.assert_refused(&g.by(&alice, Remove(b)), E::WrongOperation);
    // Positive control: bob removes carol, a whole user.
    let b = bob.commit(Change::Remove(vec![carol.leaf()]), &none);
    fx.ok(&g.by(&bob, Remove(b)));
}

#[test]
fn update_refusals() {
    let Fixture {
        fx,
        g,
        d: [mut alice, bob],
        ..
    } = fixture::<2>();
    use DsOperation::Update;
    use ErrorCode as E;
    let b = add_commit(&mut alice, &fx.device());
    alice.discard();
    fx.assert_refused(&g.by(&alice, Update(b)), E::WrongOperation);
    let b = alice.commit(Change::Remove(vec![bob.leaf()]), &CommitAad::default());
    alice.discard();
    fx.assert_refused(&g.by(&alice, Update(b)), E::WrongOperation);
    // Only a reinit names a new group.
    let aad = CommitAad {
        reinit: Some(fx.reserve().group_id),
        ..CommitAad::default()
    };
    let b = update_commit(&mut alice, &aad);
    alice.discard();
    fx.assert_refused(&g.by(&alice, Update(b)), E::WrongOperation);
    // The committer's new leaf keeps a sealed queue address.
    for ext in [
        Device::queue_extension(&plain_queue_ref(&alice)),
        Extensions::empty(),
    ] {
        let b = alice.commit_with(Change::Update, &CommitAad::default(), Some(leaf_with(ext)));
        alice.discard();
        fx.assert_refused(&g.by(&alice, Update(b)), E::InvalidRequest);
    }
    // Someone else's commit (here an external one) under the member's signature.
    let mut newcomer = fx.device();
    let aad = join_aad(&newcomer);
    let (_, b) = fx.external_commit(&mut newcomer, &g, &aad);
    fx.assert_refused(&g.by(&alice, Update(b)), E::NotAuthorized);
    // The new epoch's GroupInfo must be signed by the committer, and really signed. It ends
    // with `signer (u32) ‖ signature<V>` (64 bytes behind a two-byte length).
    let b = update_commit(&mut alice, &CommitAad::default());
    alice.discard();
    let gi = b.group_info.as_slice().to_vec();
    let n = gi.len();
    assert_eq!(
        &gi[n - 70..n - 64],
        &[0, 0, 0, 0, 0x40, 0x40],
        "signer 0, then the signature"
    );
    let mut other_signer = gi.clone();
    other_signer[n - 67] = 1;
    let mut bad_signature = gi;
    bad_signature[n - 1] ^= 1;
    for tampered in [other_signer, bad_signature] {
        let req = g.by(
            &alice,
            Update(CommitBundle {
                group_info: tampered.into(),
                ..b.clone()
            }),
        );
        fx.assert_refused(&req, E::InvalidGroupInfo);
    }
    fx.ok(&g.by(&alice, Update(b)));
}

#[test]
fn request_group_id_refuses_a_malformed_ear_key() {
    let fx = DsHub::new();
    let reserve = ds_request(
        &[],
        Some(&[1; 31]),
        NOW,
        DsSender::Anonymous,
        DsOperation::RequestGroupId,
        None,
    );
    fx.assert_refused(&reserve, ErrorCode::InvalidRequest);
}

/// An external join is held to the group size limit like a member's add (see
/// `add_members_beyond_the_group_size_limit_is_refused`); it once was not.
#[test]
fn an_external_join_beyond_the_group_size_limit_is_refused() {
    let Fixture {
        fx,
        g,
        admin,
        d: [_alice, _bob],
    } = fixture_with::<2>(|c| c.max_group_size = 2);
    let mut alice2 = fx.device();
    let aad = join_aad(&alice2);
    let (_, b) = fx.external_commit(&mut alice2, &g, &aad);
    fx.assert_refused(
        &g.by_user(&admin, DsOperation::ExternalJoin(b)),
        ErrorCode::LimitExceeded,
    );
}

/// The size limit never blocks recovery: a resync replaces the member's own leaf, so it is
/// accepted in a group at the limit (a join that does not grow the group is never refused).
#[test]
fn a_resync_in_a_full_group_is_accepted() {
    let Fixture {
        fx,
        g,
        d: [_alice, mut bob],
        ..
    } = fixture_with::<2>(|c| c.max_group_size = 2);
    let old = bob.leaf();
    let (_, bundle) = fx.external_commit(&mut bob, &g, &CommitAad::default());
    let req = g.request(
        DsSender::Member(old),
        DsOperation::Resync(bundle),
        Some(&bob.signer),
    );
    assert!(matches!(fx.ok(&req), DsResponse::Accepted(_)));
}

#[test]
fn self_remove_refusals() {
    let Fixture {
        fx,
        g,
        d: [mut alice, mut bob, mut carol],
        ..
    } = fixture::<3>();
    use DsOperation::SelfRemove;
    use ErrorCode as E;
    let c = update_commit(&mut bob, &CommitAad::default());
    bob.discard();
    fx.assert_refused(&g.by(&bob, SelfRemove(c.commit)), E::WrongOperation);
    let p = bob.propose_remove(carol.leaf());
    fx.assert_refused(&g.by(&bob, SelfRemove(p)), E::WrongOperation);
    let p = carol.leave();
    fx.assert_refused(&g.by(&bob, SelfRemove(p)), E::WrongOperation);
    fx.assert_refused(&g.by(&bob, SelfRemove(vec![1, 2].into())), E::Malformed);
    // A proposal from an epoch the group has left.
    let stale = bob.leave();
    let up = update_commit(&mut alice, &CommitAad::default());
    fx.ok(&g.by(&alice, DsOperation::Update(up)));
    alice.merge();
    fx.assert_refused(&g.by(&bob, SelfRemove(stale)), E::WrongEpoch);
}

#[test]
fn send_message_refusals() {
    let Fixture {
        fx,
        g,
        d: [mut alice, mut bob],
        ..
    } = fixture::<2>();
    use DsOperation::SendMessage as Send;
    use ErrorCode as E;
    // Alice's requests take the fast path, bob's (a new joiner) the full one.
    let handshake = update_commit(&mut bob, &CommitAad::default()).commit;
    bob.discard();
    fx.assert_refused(&g.by(&alice, Send(handshake.clone())), E::InvalidMlsMessage);
    fx.assert_refused(&g.by(&bob, Send(handshake)), E::InvalidMlsMessage);
    let mut dave = fx.device();
    fx.create_group_of(&mut dave, &keypair(), GroupKind::Regular);
    let foreign = dave.message(b"elsewhere");
    fx.assert_refused(&g.by(&alice, Send(foreign.clone())), E::InvalidMlsMessage);
    fx.assert_refused(&g.by(&bob, Send(foreign)), E::InvalidMlsMessage);
    fx.assert_refused(&g.by(&alice, Send(vec![9; 9].into())), E::Malformed);
    // Messages may lag at most four epochs behind the group.
    let (a1, a2, b1) = (
        alice.message(b"a1"),
        alice.message(b"a2"),
        bob.message(b"b1"),
    );
    for _ in 0..4 {
        let up = update_commit(&mut alice, &CommitAad::default());
        fx.ok(&g.by(&alice, DsOperation::Update(up)));
        alice.merge();
    }
    assert_eq!(fx.ok(&g.by(&alice, Send(a1))), DsResponse::Accepted(5));
    let up = update_commit(&mut alice, &CommitAad::default());
    fx.ok(&g.by(&alice, DsOperation::Update(up)));
    alice.merge();
    let err = fx.assert_refused(&g.by(&alice, Send(a2)), E::WrongEpoch);
    assert!(
        matches!(err, HubError::Group(GroupError::WrongEpoch { current: 6 })),
        "{err}"
    );
    fx.assert_refused(&g.by(&bob, Send(b1)), E::WrongEpoch);
}

#[test]
fn delete_group_refusals() {
    let Fixture {
        fx,
        g,
        d: [mut alice, mut bob, carol],
        ..
    } = fixture::<3>();
    use DsOperation::DeleteGroup as Delete;
    use ErrorCode as E;
    let none = CommitAad::default();
    let b = bob.commit(Change::Remove(vec![0, carol.leaf()]), &none);
    bob.discard();
    fx.assert_refused(&g.by(&bob, Delete(b)), E::NotAuthorized);
    let b = alice.commit(Change::Remove(vec![bob.leaf()]), &none);
    alice.discard();
    fx.assert_refused(&g.by(&alice, Delete(b)), E::WrongOperation);
    let b = update_commit(&mut alice, &none);
    alice.discard();
    fx.assert_refused(&g.by(&alice, Delete(b)), E::WrongOperation);
    assert_eq!(fx.rows(Cf::DsGroups).len(), 1);
}

#[test]
fn welcome_info_refusals() {
    let Fixture {
        fx,
        g,
        d: [_alice, bob],
        ..
    } = fixture::<2>();
    let ask = |key: &SignatureKeyPair, epoch, ts| {
        ds_request(
            &g.id,
            Some(&g.ear),
            ts,
            DsSender::Joiner(key.to_public_vec().into()),
            DsOperation::WelcomeInfo(epoch),
            Some(key),
        )
    };
    for epoch in [0, 2] {
        fx.assert_refused(&ask(&bob.signer, epoch, NOW), ErrorCode::UnknownEpoch);
    }
    fx.assert_refused(&ask(&keypair(), 1, NOW), ErrorCode::UnknownEpoch);
    // Once the tree's time is up it is gone, though the refusal itself writes nothing.
    let later = NOW + test_config().welcome_tree_ttl_ms + 1;
    fx.assert_refused_at(&ask(&bob.signer, 1, later), later, ErrorCode::UnknownEpoch);
    fx.ok(&ask(&bob.signer, 1, NOW));
}

#[test]
fn report_commit_refusals() {
    let Fixture {
        fx,
        g,
        d: [mut alice, mut bob, _carol],
        ..
    } = fixture::<3>();
    let b = update_commit(&mut alice, &CommitAad::default());
    fx.ok(&g.by(&alice, DsOperation::Update(b.clone())));
    alice.merge();
    bob.catch_up(&fx);
    let report = |epoch, commit_ref| {
        DsOperation::ReportCommit(CommitRejected {
            epoch,
            commit_ref,
            reason: RejectReason::MembershipTag,
        })
    };
    let real = commit_ref(b.commit.as_slice());
    use ErrorCode as E;
    fx.assert_refused(&g.by(&bob, report(1, [7; 32])), E::UnknownCommit);
    fx.assert_refused(&g.by(&bob, report(2, real)), E::UnknownEpoch);
    fx.assert_refused(&g.by(&alice, report(1, real)), E::NotAuthorized);
    fx.ok(&g.by(&bob, report(1, real)));
}

#[test]
fn resync_refusals() {
    let Fixture {
        fx,
        g,
        d: [_alice, mut bob, carol],
        ..
    } = fixture::<3>();
    use DsOperation::Resync;
    use ErrorCode as E;
    let old = bob.leaf();
    let b = update_commit(&mut bob, &CommitAad::default());
    bob.discard();
    fx.assert_refused(&g.by(&bob, Resync(b)), E::WrongOperation);
    // A resync replaces exactly the signing member's old leaf.
    let mut newcomer = fx.device();
    let (_, b) = fx.external_commit(&mut newcomer, &g, &CommitAad::default());
    fx.assert_refused(&g.by(&bob, Resync(b)), E::WrongOperation);
    bob.lose_state();
    let (_, b) = fx.external_commit(&mut bob, &g, &CommitAad::default());
    fx.assert_refused(&g.by(&carol, Resync(b.clone())), E::WrongOperation);
    let req = g.request(DsSender::Member(old), Resync(b), Some(&bob.signer));
    fx.ok(&req);
}

#[test]
fn rotate_ear_key_refusals() {
    let Fixture {
        fx,
        g,
        d: [alice, bob],
        ..
    } = fixture::<2>();
    let rotate = |key: Vec<u8>, leaves: &[u32]| {
        DsOperation::RotateEarKey(KeyRotation {
            new_ear_key: key.into(),
            credentials: leaves
                .iter()
                .map(|&leaf| LeafCredentialEntry {
                    leaf,
                    info: alice.info.clone(),
                })
                .collect(),
        })
    };
    use ErrorCode as E;
    fx.assert_refused(&g.by(&alice, rotate(vec![1; 31], &[])), E::InvalidRequest);
    for leaves in [&[0][..], &[0, 5], &[bob.leaf(), 0]] {
        fx.assert_refused(
            &g.by(&alice, rotate(random32().to_vec(), leaves)),
            E::WrongOperation,
        );
    }
    fx.ok(&g.by(&bob, rotate(random32().to_vec(), &[0, bob.leaf()])));
}

#[test]
fn add_clients_refusals() {
    let Fixture {
        fx,
        g,
        admin,
        d: [mut alice, mut bob],
    } = fixture::<2>();
    let mut alice2 = fx.device();
    use DsOperation::AddClients;
    use ErrorCode as E;
    let (_, kp) = key_package(&alice2);
    let own = own_clients_aad(std::slice::from_ref(&kp));
    // Bob's commit under alice's user key.
    let b = bob.commit(Change::Add(vec![kp.clone()]), &own);
    bob.discard();
    fx.assert_refused(&g.by_user(&admin, AddClients(b)), E::NotAuthorized);
    // New users are not the signer's own clients.
    let b = alice.commit(
        Change::Add(vec![kp.clone()]),
        &add_aad(std::slice::from_ref(&kp)),
    );
    alice.discard();
    fx.assert_refused(&g.by_user(&admin, AddClients(b)), E::WrongOperation);
    let b = update_commit(&mut alice, &CommitAad::default());
    alice.discard();
    fx.assert_refused(&g.by_user(&admin, AddClients(b)), E::WrongOperation);
    let aad = join_aad(&alice2);
    let (_, b) = fx.external_commit(&mut alice2, &g, &aad);
    fx.assert_refused(&g.by_user(&admin, AddClients(b)), E::WrongOperation);
    fx.assert_refused(
        &g.by_user(&admin, AddClients(garbage_bundle())),
        E::Malformed,
    );
    let b = alice.commit(Change::Add(vec![kp]), &own);
    fx.ok(&g.by_user(&admin, AddClients(b)));
}

#[test]
fn remove_clients_refusals() {
    let Fixture {
        fx,
        g,
        admin,
        d: [mut alice, mut bob],
    } = fixture::<2>();
    let mut alice2 = fx.device();
    add_own_device(&fx, &g, &admin, &mut alice, &mut alice2);
    bob.catch_up(&fx);
    use DsOperation::RemoveClients;
    use ErrorCode as E;
    let rotated = |key: &SignatureKeyPair| CommitAad {
        user_auth_key: Some(key.to_public_vec().into()),
        ..CommitAad::default()
    };
    let new_key = keypair();
    for aad in [CommitAad::default(), rotated(&admin)] {
        let b = alice.commit(Change::Remove(vec![alice2.leaf()]), &aad);
        alice.discard();
        fx.assert_refused(&g.by_user(&admin, RemoveClients(b)), E::WrongOperation);
    }
    let b = alice.commit(Change::Remove(vec![bob.leaf()]), &rotated(&new_key));
    alice.discard();
    fx.assert_refused(&g.by_user(&admin, RemoveClients(b)), E::WrongOperation);
    let b = bob.commit(Change::Remove(vec![alice2.leaf()]), &rotated(&new_key));
    bob.discard();
    fx.assert_refused(&g.by_user(&admin, RemoveClients(b)), E::NotAuthorized);
    let b = alice.commit(Change::Remove(vec![alice2.leaf()]), &rotated(&new_key));
    fx.ok(&g.by_user(&admin, RemoveClients(b)));
}

#[test]
fn external_join_refusals() {
    let Fixture {
        fx,
        g,
        admin,
        d: [mut alice, mut bob],
    } = fixture::<2>();
    use DsOperation::ExternalJoin;
    use ErrorCode as E;
    let mut alice2 = fx.device();
    let (_, b) = fx.external_commit(&mut alice2, &g, &CommitAad::default());
    fx.assert_refused(&g.by_user(&admin, ExternalJoin(b)), E::WrongOperation);
    let (_, kp) = key_package(&fx.device());
    let mut aad = join_aad(&alice2);
    aad.added = add_aad(&[kp]).added;
    let (_, b) = fx.external_commit(&mut alice2, &g, &aad);
    fx.assert_refused(&g.by_user(&admin, ExternalJoin(b)), E::WrongOperation);
    let b = update_commit(&mut alice, &CommitAad::default());
    alice.discard();
    fx.assert_refused(&g.by_user(&admin, ExternalJoin(b)), E::WrongOperation);
    let sealed = alice2.queue_ref.clone();
    alice2.queue_ref = plain_queue_ref(&alice2);
    let aad = join_aad(&alice2);
    let (_, b) = fx.external_commit(&mut alice2, &g, &aad);
    fx.assert_refused(&g.by_user(&admin, ExternalJoin(b)), E::InvalidRequest);
    alice2.queue_ref = sealed;
    // Bob's leaf is not alice's user's to replace.
    bob.lose_state();
    let aad = join_aad(&bob);
    let (_, b) = fx.external_commit(&mut bob, &g, &aad);
    fx.assert_refused(&g.by_user(&admin, ExternalJoin(b)), E::WrongOperation);
    let aad = join_aad(&alice2);
    let (_, b) = fx.external_commit(&mut alice2, &g, &aad);
    fx.ok(&g.by_user(&admin, ExternalJoin(b)));
}

#[test]
fn join_connection_group_refusals() {
    let fx = DsHub::new();
    let (mut alice, mut bob) = (fx.device(), fx.device());
    let alice_key = keypair();
    let g = fx.create_group_of(&mut alice, &alice_key, GroupKind::Connection);
    use DsOperation::JoinConnectionGroup as Join;
    use ErrorCode as E;
    let bob_info = bob.info.clone();
    let responder = |user_key: Option<Vec<u8>>, joiner: bool| CommitAad {
        user_auth_key: user_key.map(Into::into),
        joiner: joiner.then(|| JoinData {
            credential: bob_info.clone(),
            friendship: vec![1; 16].into(),
        }),
        ..CommitAad::default()
    };
    let bob_key = keypair().to_public_vec();
    for (aad, code) in [
        (responder(None, true), E::WrongOperation),
        (responder(Some(bob_key.clone()), false), E::WrongOperation),
        (
            responder(Some(alice_key.to_public_vec()), true),
            E::InvalidRequest,
        ),
        (responder(Some(vec![1; 31]), true), E::InvalidRequest),
    ] {
        let (_, b) = fx.external_commit(&mut bob, &g, &aad);
        fx.assert_refused(&g.anon(Join(b)), code);
    }
    let b = update_commit(&mut alice, &CommitAad::default());
    alice.discard();
    fx.assert_refused(&g.anon(Join(b)), E::WrongOperation);
    // A regular group takes no responder.
    let Fixture {
        fx: fx2,
        g: regular,
        ..
    } = fixture::<1>();
    let mut outsider = fx2.device();
    let aad = CommitAad {
        user_auth_key: Some(bob_key.clone().into()),
        ..join_aad(&outsider)
    };
    let (_, b) = fx2.external_commit(&mut outsider, &regular, &aad);
    fx2.assert_refused(&regular.anon(Join(b)), E::WrongOperation);
    // The initiator cannot be replaced by its own responder commit.
    alice.lose_state();
    let (_, b) = fx.external_commit(&mut alice, &g, &responder(Some(bob_key.clone()), true));
    fx.assert_refused(&g.anon(Join(b)), E::WrongOperation);
    let (_, b) = fx.external_commit(&mut bob, &g, &responder(Some(bob_key), true));
    fx.ok(&g.anon(Join(b)));
}

#[test]
fn set_role_refusals() {
    let Fixture {
        fx,
        g,
        d: [alice, bob],
        ..
    } = fixture::<2>();
    let set = |leaf, role| DsOperation::SetRole(SetRole { leaf, role });
    use ErrorCode as E;
    fx.assert_refused(&g.by(&bob, set(bob.leaf(), Role::Admin)), E::NotAuthorized);
    fx.assert_refused(&g.by(&alice, set(0, Role::Member)), E::WrongOperation);
    fx.assert_refused(&g.by(&alice, set(9, Role::Admin)), E::InvalidRequest);
    fx.ok(&g.by(&alice, set(bob.leaf(), Role::Admin)));
}

#[test]
fn reinit_refusals() {
    let Fixture {
        fx,
        g,
        d: [mut alice, mut bob],
        ..
    } = fixture::<2>();
    use DsOperation::ReInit;
    use ErrorCode as E;
    let target = |id: Vec<u8>| CommitAad {
        reinit: Some(id.into()),
        ..CommitAad::default()
    };
    let elsewhere = encode(&QualifiedGroupId {
        uuid: rand::random(),
        domain: b"other.test".to_vec().into(),
    })
    .unwrap();
    for id in [elsewhere, g.id.clone(), vec![1, 2, 3]] {
        let b = update_commit(&mut alice, &target(id));
        alice.discard();
        fx.assert_refused(&g.by(&alice, ReInit(b)), E::InvalidGroupId);
    }
    let successor = fx.reserve().group_id.as_slice().to_vec();
    let b = update_commit(&mut alice, &CommitAad::default());
    alice.discard();
    fx.assert_refused(&g.by(&alice, ReInit(b)), E::WrongOperation);
    let (_, kp) = key_package(&fx.device());
    let mut aad = add_aad(std::slice::from_ref(&kp));
    aad.reinit = Some(successor.clone().into());
    let b = alice.commit(Change::Add(vec![kp]), &aad);
    alice.discard();
    fx.assert_refused(&g.by(&alice, ReInit(b)), E::WrongOperation);
    let b = update_commit(&mut bob, &target(successor.clone()));
    bob.discard();
    fx.assert_refused(&g.by(&bob, ReInit(b)), E::NotAuthorized);
    let b = update_commit(&mut alice, &target(successor));
    fx.ok(&g.by(&alice, ReInit(b)));
}

#[test]
fn a_baseline_hub_refuses_ear_keys_and_sealed_queue_addresses() {
    let fx = DsHub::with(|c| c.mode = DsMode::Baseline);
    let mut alice = fx.device();
    alice.queue_ref = plain_queue_ref(&alice);
    let reserved = fx.reserve();
    let cfg = DsHub::create_config(&alice, reserved.external_sender_key.as_slice(), CS);
    let create = DsHub::new_group(&mut alice, &reserved, &cfg, &keypair(), GroupKind::Regular);
    let gid = reserved.group_id.as_slice();
    let req = |ear: Option<&[u8]>, op: DsOperation, signer: &SignatureKeyPair| {
        ds_request(gid, ear, NOW, DsSender::Member(0), op, Some(signer))
    };
    let with_key = req(
        Some(&random32()),
        DsOperation::CreateGroup(create.clone()),
        &alice.signer,
    );
    fx.assert_refused(&with_key, ErrorCode::InvalidRequest);
    let create = req(None, DsOperation::CreateGroup(create), &alice.signer);
    assert_eq!(fx.ok(&create), DsResponse::Accepted(0));
    let bob = fx.device();
    let b = add_commit(&mut alice, &bob);
    alice.discard();
    let add = req(None, DsOperation::AddMembers(b), &alice.signer);
    fx.assert_refused(&add, ErrorCode::InvalidRequest);
    let m = alice.message(b"hi");
    fx.ok(&req(None, DsOperation::SendMessage(m), &alice.signer));
}

#[test]
fn a_baseline_hub_limits_requests_per_client_identity() {
    let fx = DsHub::with(|c| {
        c.mode = DsMode::Baseline;
        c.identity_requests_per_minute = 2;
    });
    let mut alice = fx.device();
    alice.queue_ref = plain_queue_ref(&alice);
    let reserved = fx.reserve();
    let cfg = DsHub::create_config(&alice, reserved.external_sender_key.as_slice(), CS);
    let create = DsHub::new_group(&mut alice, &reserved, &cfg, &keypair(), GroupKind::Regular);
    let gid = reserved.group_id.as_slice().to_vec();
    let req = |op: DsOperation, signer: &SignatureKeyPair| {
        ds_request(&gid, None, NOW, DsSender::Member(0), op, Some(signer))
    };
    fx.ok(&req(DsOperation::CreateGroup(create), &alice.signer));
    let m = alice.message(b"one");
    fx.ok(&req(DsOperation::SendMessage(m), &alice.signer));
    let m = alice.message(b"two");
    fx.assert_refused(
        &req(DsOperation::SendMessage(m), &alice.signer),
        ErrorCode::RateLimited,
    );
    // Another minute, another allowance.
    let m = alice.message(b"three");
    let next = NOW + 60_000;
    let later = ds_request(
        &gid,
        None,
        next,
        DsSender::Member(0),
        DsOperation::SendMessage(m),
        Some(&alice.signer),
    );
    fx.ok_at(&later, next);
}

#[test]
fn with_the_token_gate_on_group_requests_need_tokens() {
    let hub = TestHub::with(|c| c.tokens = tokens::TokenPolicy::default());
    let reserve = ds_request(
        &[],
        None,
        NOW,
        DsSender::Anonymous,
        DsOperation::RequestGroupId,
        None,
    );
    hub.assert_refused(&reserve, ErrorCode::TokenRequired);
}

/// Removed means removed: a commit that removes anyone must rotate the group's keys, with a
/// new key and material for exactly the remaining leaves; a commit that removes nobody may
/// not rotate. Each refusal changes nothing; the complete rotation is accepted, and from then
/// on only the new key opens the group.
#[test]
fn removing_commits_must_rotate_and_only_they_may() {
    use ErrorCode as E;
    let Fixture {
        fx,
        g,
        d: [mut alice, bob, carol],
        ..
    } = fixture::<3>();
    let none = CommitAad::default();
    let remove = |alice: &mut Device| {
        let b = alice.commit(Change::Remove(vec![bob.leaf()]), &none);
        alice.discard();
        b
    };
    let with = |b: &CommitBundle, rotation: Option<KeyRotation>| {
        DsOperation::RemoveMembers(CommitBundle {
            rotation,
            ..b.clone()
        })
    };
    let good = remove(&mut alice);
    let full = good.rotation.clone().expect("the helper rotates removals");
    let same_key = KeyRotation {
        new_ear_key: g.ear.to_vec().into(),
        ..full.clone()
    };
    let missing_leaf = KeyRotation {
        credentials: full.credentials[1..].to_vec(),
        ..full.clone()
    };
    let removed_leaf = KeyRotation {
        credentials: {
            let mut c = full.credentials.clone();
            c.push(LeafCredentialEntry {
                leaf: bob.leaf(),
                info: c[0].info.clone(),
            });
            c
        },
        ..full.clone()
    };
    let short_key = KeyRotation {
        new_ear_key: vec![1; 31].into(),
        ..full.clone()
    };
    let rotated_update = {
        let mut b = alice.commit(Change::Update, &none);
        alice.discard();
        b.rotation = Some(full.clone());
        DsOperation::Update(b)
    };
    for (what, op, code) in [
        ("no rotation", with(&good, None), E::KeyRotationRequired),
        (
            "the same key",
            with(&good, Some(same_key)),
            E::KeyRotationRequired,
        ),
        (
            "a leaf missing",
            with(&good, Some(missing_leaf)),
            E::KeyRotationRequired,
        ),
        (
            "the removed leaf kept",
            with(&good, Some(removed_leaf)),
            E::KeyRotationRequired,
        ),
        (
            "a 31-byte key",
            with(&good, Some(short_key)),
            E::InvalidRequest,
        ),
        (
            "an update that rotates",
            rotated_update,
            E::KeyRotationRequired,
        ),
    ] {
        let err = fx.assert_refused(&g.by(&alice, op), code);
        eprintln!("{what}: {err}");
    }
    // The complete rotation goes through.
    let b = alice.commit(Change::Remove(vec![bob.leaf()]), &none);
    fx.ok(&g.by(&alice, DsOperation::RemoveMembers(b)));
    alice.merge();
    let rotated = g.rotated(&alice);
    fx.assert_refused(&g.anon(DsOperation::ExternalCommitInfo), E::WrongEarKey);
    assert_eq!(fx.external_commit_info(&rotated).credentials.len(), 2);
    let _ = carol;
}
