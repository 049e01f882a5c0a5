//! The DS core fed with decoded-but-arbitrary requests: correctly framed, correctly signed by a
//! real member, for a real group with the right EAR key — but with random or mutated content in
//! every operation. The hub must answer each with a 4xx (a panic would surface as a 5xx or a
//! dead process), store nothing, and stay healthy. Deterministic seed; `MIMI_DS_CASES` for more.

mod common;

use common::*;
use mimi_client_rm::Recorder;
use mimi_client_rm::envelope;
use mimi_ds_rm::store::Cf;
use mimi_rm_protocol::ds::*;
use mimi_rm_protocol::{TransactionType, paths};
use mimi_rm_tests::post;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn mutate(rng: &mut StdRng, bytes: &[u8]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    match rng.gen_range(0..4) {
        0 if !b.is_empty() => {
            let i = rng.gen_range(0..b.len());
            b[i] ^= 1 << rng.gen_range(0..8);
        }
        1 => b.truncate(rng.gen_range(0..=b.len())),
        2 => b.extend((0..rng.gen_range(1..16)).map(|_| rng.r#gen::<u8>())),
        _ => {
            b = (0..rng.gen_range(0..300))
                .map(|_| rng.r#gen::<u8>())
                .collect()
        }
    }
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arbitrary_member_requests_never_crash_the_ds_core() {
    let cases: usize = std::env::var("MIMI_DS_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path());
    let mut alice = client(&hub, dir.path(), "alice").await;
    let mut bob = client(&hub, dir.path(), "bob").await;
    let recorder: Recorder = Default::default();
    alice.set_recorder(recorder.clone());
    let g = group_of(&mut alice, &mut [&mut bob]).await;
    alice.update(&g).await.unwrap();
    bob.receive().await.unwrap();
    // Real material to mutate: the recorded add (commit, GroupInfo, Welcome) and update.
    let bundles: Vec<CommitBundle> = recorder
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(_, body)| {
            let env: mimi_rm_protocol::Envelope =
                mimi_rm_protocol::decode_exact(body, 1 << 20).ok()?;
            let req: DsRequest =
                mimi_rm_protocol::decode_exact(env.payload.as_slice(), 1 << 20).ok()?;
            match req.tbs.operation {
                DsOperation::AddMembers(b) | DsOperation::Update(b) => Some(b),
                _ => None,
            }
        })
        .collect();
    assert!(bundles.len() >= 2);
    // And material at the current epoch, which gets past the epoch check into OpenMLS.
    let mut bundles = bundles;
    for _ in 0..2 {
        bundles.push(alice.prepared_resync(&g).await.unwrap());
        bundles.push(bob.prepared_resync(&g).await.unwrap());
    }
    let group_row = |hub: &mimi_rm_tests::HubProcess| {
        hub.dump()
            .into_iter()
            .filter(|(cf, _, _)| *cf == Cf::DsGroups || *cf == Cf::QsQueues)
            .collect::<Vec<_>>()
    };
    let before = group_row(&hub);
    let mut rng = StdRng::seed_from_u64(0x5eed_0fd5);
    let mut statuses = std::collections::BTreeMap::new();
    for _ in 0..cases {
        let base = &bundles[rng.gen_range(0..bundles.len())];
        let bundle = CommitBundle {
            commit: mutate(&mut rng, base.commit.as_slice()).into(),
            group_info: if rng.gen_bool(0.5) {
                base.group_info.clone()
            } else {
                mutate(&mut rng, base.group_info.as_slice()).into()
            },
            welcome: base
                .welcome
                .as_ref()
                .map(|w| mutate(&mut rng, w.as_slice()).into()),
        };
        let bytes = || -> tls_codec::VLBytes {
            (0..64)
                .map(|_| rand::random::<u8>())
                .collect::<Vec<_>>()
                .into()
        };
        let op = match rng.gen_range(0..17) {
            0 => DsOperation::AddMembers(bundle),
            1 => DsOperation::RemoveMembers(bundle),
            2 => DsOperation::Update(bundle),
            3 => DsOperation::DeleteGroup(bundle),
            4 => DsOperation::Resync(bundle),
            5 => DsOperation::SelfRemove(mutate(&mut rng, base.commit.as_slice()).into()),
            6 => DsOperation::SendMessage(mutate(&mut rng, base.commit.as_slice()).into()),
            7 => DsOperation::ReportCommit(CommitRejected {
                epoch: rng.r#gen(),
                commit_ref: rng.r#gen(),
                reason: RejectReason::Other,
            }),
            8 => DsOperation::RotateEarKey(KeyRotation {
                new_ear_key: mutate(&mut rng, &[7; 32]).into(),
                credentials: vec![LeafCredentialEntry {
                    leaf: rng.gen_range(0..4),
                    info: mimi_rm_protocol::credentials::LeafCredentialInfo {
                        encrypted_client_credential: bytes(),
                        encrypted_signature_ear_key: bytes(),
                    },
                }],
            }),
            9 => DsOperation::CreateGroup(CreateGroup {
                group_info: bytes(),
                ratchet_tree: bytes(),
                creator: mimi_rm_protocol::credentials::LeafCredentialInfo {
                    encrypted_client_credential: bytes(),
                    encrypted_signature_ear_key: bytes(),
                },
                creator_user_auth_key: bytes(),
                kind: GroupKind::Regular,
            }),
            10 => DsOperation::AddClients(bundle),
            11 => DsOperation::RemoveClients(bundle),
            12 => DsOperation::ExternalJoin(bundle),
            13 => DsOperation::JoinConnectionGroup(bundle),
            14 => DsOperation::ReInit(bundle),
            // No such leaf: an admin's role change for nobody.
            15 => DsOperation::SetRole(SetRole {
                leaf: rng.gen_range(100..u32::MAX),
                role: Role::Admin,
            }),
            _ => DsOperation::WelcomeInfo(rng.r#gen()),
        };
        let rotate_ok = matches!(&op, DsOperation::RotateEarKey(r)
            if r.new_ear_key.as_slice().len() == 32 && r.credentials.len() == 2);
        if rotate_ok {
            continue; // a well-formed rotation is a legitimate request, not a bad one
        }
        let tt = match op {
            DsOperation::WelcomeInfo(_) => TransactionType::WelcomeInformation,
            _ => TransactionType::GroupOperation,
        };
        let path = match tt {
            TransactionType::WelcomeInformation => paths::WELCOME_INFORMATION,
            _ => paths::GROUP_OPERATION,
        };
        let req = alice.signed_member_request(&g, op).unwrap();
        let (status, _) = post(&hub.url(), path, envelope(tt, &req).unwrap()).await;
        assert!((400..500).contains(&status), "status {status}");
        *statuses.entry(status).or_insert(0usize) += 1;
    }
    assert!(
        before == group_row(&hub),
        "a refused request changed the group or a queue"
    );
    eprintln!("arbitrary DS requests: {cases} cases, statuses {statuses:?}");
    // Still healthy, and the group still works.
    alice.send(&g, b"still fine").await.unwrap();
    assert_eq!(
        messages(&bob.receive().await.unwrap()),
        vec![b"still fine".to_vec()]
    );
}
