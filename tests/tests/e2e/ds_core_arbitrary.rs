//! The DS core fed with decoded-but-arbitrary requests: correctly framed, correctly signed by a
//! real member, for a real group with the right EAR key — but with random or mutated content in
//! every operation. The hub must answer each with a 4xx (a panic would surface as a 5xx or a
//! dead process), store nothing, and stay healthy. Deterministic seed; `MIMI_DS_CASES` for more.
//!
//! The hub asks no Privacy Pass tokens, so every request reaches the DS core (with tokens, all
//! of them stopped at the 401 gate). Every request decodes by construction; the core then either
//! fails to decode an operation's MLS payload (`Malformed`) or refuses it by validation
//! (epoch, MLS checks, operation rules, unknown epoch or commit, membership...).

use mimi_client_rm::Recorder;
use mimi_client_rm::envelope;
use mimi_ds_rm::store::Cf;
use mimi_rm_protocol::ds::*;
use mimi_rm_protocol::paths;
use mimi_rm_tests::common::*;
use mimi_rm_tests::{error_of, post};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;

/// How [`mutate`] changed its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Mutation {
    /// One bit flipped: the structure (lengths, tags) most likely still decodes.
    BitFlip,
    /// Cut short.
    Truncated,
    /// Random bytes appended.
    Extended,
    /// Replaced by random bytes.
    Random,
}

fn mutate(rng: &mut StdRng, bytes: &[u8]) -> (Vec<u8>, Mutation) {
    let mut b = bytes.to_vec();
    let how = match rng.gen_range(0..4) {
        0 if !b.is_empty() => {
            let i = rng.gen_range(0..b.len());
            b[i] ^= 1 << rng.gen_range(0..8);
            Mutation::BitFlip
        }
        1 => {
            b.truncate(rng.gen_range(0..=b.len()));
            Mutation::Truncated
        }
        2 => {
            b.extend((0..rng.gen_range(1..16)).map(|_| rng.r#gen::<u8>()));
            Mutation::Extended
        }
        _ => {
            b = (0..rng.gen_range(0..300))
                .map(|_| rng.r#gen::<u8>())
                .collect();
            Mutation::Random
        }
    };
    (b, how)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arbitrary_member_requests_never_crash_the_ds_core() {
    let cases: usize = std::env::var("MIMI_DS_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_without_tokens(dir.path());
    let mut alice = client(&hub, dir.path(), "alice").await;
    let mut bob = client(&hub, dir.path(), "bob").await;
    let recorder: Recorder = Default::default();
    alice.set_recorder(recorder.clone());
    let g = group_of(&mut alice, &mut [&mut bob]).await;
    alice.update(&g).await.unwrap();
    bob.receive().await.unwrap();
    // Real material to mutate: the recorded add (commit, GroupInfo, Welcome) and update.
    let mut bundles: Vec<CommitBundle> = recorded_ds_requests(&recorder.lock().unwrap())
        .into_iter()
        .filter_map(|req| match req.tbs.operation {
            DsOperation::AddMembers(b) | DsOperation::Update(b) => Some(b),
            _ => None,
        })
        .collect();
    assert!(bundles.len() >= 2);
    // And material at the current epoch, which gets past the epoch check into OpenMLS.
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
    let mut refusals = Refusals::default();
    // Per operation and mutation of its MLS payload: the codes the core answered.
    let mut breakdown: BTreeMap<(&str, Option<Mutation>, String), usize> = BTreeMap::new();
    // Requests with no MLS payload for the core to decode: each must reach validation.
    let mut nothing_to_decode = 0usize;
    // Requests whose MLS payload is a real message with one bit flipped, and how many of them
    // got past the core's decoding of it.
    let mut flipped_payload = 0usize;
    let mut flipped_validated = 0usize;
    let mut sent = 0usize;
    for _ in 0..cases {
        let base = &bundles[rng.gen_range(0..bundles.len())];
        let (commit, commit_mutation) = mutate(&mut rng, base.commit.as_slice());
        let bundle = CommitBundle {
            commit: commit.into(),
            group_info: if rng.gen_bool(0.5) {
                base.group_info.clone()
            } else {
                mutate(&mut rng, base.group_info.as_slice()).0.into()
            },
            welcome: base
                .welcome
                .as_ref()
                .map(|w| mutate(&mut rng, w.as_slice()).0.into()),
            rotation: base.rotation.clone(),
        };
        let bytes = || -> tls_codec::VLBytes {
            (0..64)
                .map(|_| rand::random::<u8>())
                .collect::<Vec<_>>()
                .into()
        };
        // The mutation of the op's MLS payload, for ops that carry one.
        let mut payload_mutation = Some(commit_mutation);
        let op = match rng.gen_range(0..17) {
            0 => DsOperation::AddMembers(bundle),
            1 => DsOperation::RemoveMembers(bundle),
            2 => DsOperation::Update(bundle),
            3 => DsOperation::DeleteGroup(bundle),
            4 => DsOperation::Resync(bundle),
            5 => {
                let (message, how) = mutate(&mut rng, base.commit.as_slice());
                payload_mutation = Some(how);
                DsOperation::SelfRemove(message.into())
            }
            6 => {
                let (message, how) = mutate(&mut rng, base.commit.as_slice());
                payload_mutation = Some(how);
                DsOperation::SendMessage(message.into())
            }
            7 => {
                payload_mutation = None;
                DsOperation::ReportCommit(CommitRejected {
                    epoch: rng.r#gen(),
                    commit_ref: rng.r#gen(),
                    reason: RejectReason::Other,
                })
            }
            8 => {
                payload_mutation = None;
                DsOperation::RotateEarKey(KeyRotation {
                    new_ear_key: mutate(&mut rng, &[7; 32]).0.into(),
                    credentials: vec![LeafCredentialEntry {
                        leaf: rng.gen_range(0..4),
                        info: mimi_rm_protocol::credentials::LeafCredentialInfo {
                            encrypted_client_credential: bytes(),
                            encrypted_signature_ear_key: bytes(),
                        },
                    }],
                })
            }
            9 => {
                // Random bytes where the GroupInfo and tree go: decoded by the core.
                payload_mutation = Some(Mutation::Random);
                DsOperation::CreateGroup(CreateGroup {
                    group_info: bytes(),
                    ratchet_tree: bytes(),
                    creator: mimi_rm_protocol::credentials::LeafCredentialInfo {
                        encrypted_client_credential: bytes(),
                        encrypted_signature_ear_key: bytes(),
                    },
                    creator_user_auth_key: bytes(),
                    kind: GroupKind::Regular,
                })
            }
            10 => DsOperation::AddClients(bundle),
            11 => DsOperation::RemoveClients(bundle),
            12 => DsOperation::ExternalJoin(bundle),
            13 => DsOperation::JoinConnectionGroup(bundle),
            14 => DsOperation::ReInit(bundle),
            // No such leaf: an admin's role change for nobody.
            15 => {
                payload_mutation = None;
                DsOperation::SetRole(SetRole {
                    leaf: rng.gen_range(100..u32::MAX),
                    role: Role::Admin,
                })
            }
            _ => {
                payload_mutation = None;
                DsOperation::WelcomeInfo(rng.r#gen())
            }
        };
        let rotate_ok = matches!(&op, DsOperation::RotateEarKey(r)
            if r.new_ear_key.as_slice().len() == 32 && r.credentials.len() == 2);
        if rotate_ok {
            // A well-formed rotation is a legitimate request, not a bad one. Today's generator
            // builds one credential entry, so this never fires; it keeps a richer generator
            // from counting valid rotations as bad requests.
            continue;
        }
        let name = op.name();
        let tt = ds_transaction_type(&op);
        let path = match tt {
            mimi_rm_protocol::TransactionType::WelcomeInformation => paths::WELCOME_INFORMATION,
            _ => paths::GROUP_OPERATION,
        };
        let req = alice.signed_member_request(&g, op).unwrap();
        let body = envelope(tt, &req).unwrap();
        assert!(
            decoded_ds_request(tt, &body).is_some(),
            "{name}: the request itself decodes"
        );
        let (status, resp) = post(&hub.url(), path, body).await;
        let (reached, code) = refusals.record(name, status, &resp);
        *breakdown
            .entry((name, payload_mutation, format!("{code:?}")))
            .or_default() += 1;
        sent += 1;
        match payload_mutation {
            None => {
                nothing_to_decode += 1;
                assert_eq!(reached, Reached::Validation, "{name}: {}", error_of(&resp));
            }
            Some(Mutation::BitFlip) => {
                flipped_payload += 1;
                flipped_validated += usize::from(reached == Reached::Validation);
            }
            Some(_) => {}
        }
    }
    println!("arbitrary DS requests: {cases} cases, {sent} sent; {refusals}");
    println!(
        "arbitrary DS requests: {nothing_to_decode} without an MLS payload (all reached \
         validation), {flipped_validated} of {flipped_payload} with a bit-flipped one reached \
         validation"
    );
    let mut per_op: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for ((op, mutation, code), n) in &breakdown {
        let payload = mutation.map_or("-".to_owned(), |m| format!("{m:?}"));
        per_op
            .entry(op)
            .or_default()
            .push(format!("{payload} {n} x {code}"));
    }
    for (op, codes) in &per_op {
        println!("  {op}: {}", codes.join(", "));
    }
    assert!(
        before == group_row(&hub),
        "a refused request changed the group or a queue"
    );
    // The token gate is open: every request (each decodes, checked above) got into the DS core.
    assert_eq!(refusals.count(Reached::TokenGate), 0, "{refusals}");
    // How many got past decoding into validation. Requests without an MLS payload have nothing
    // for the core to decode and all reached it (checked one by one). A single flipped bit
    // leaves an MLS message decodable unless it hits a length or a tag, a small part of a
    // commit, so most of those must reach validation too (in practice nearly all do).
    assert!(
        flipped_validated * 4 >= flipped_payload * 3,
        "only {flipped_validated} of {flipped_payload} bit-flipped payloads got past decoding: \
         {refusals}"
    );
    assert!(
        nothing_to_decode + flipped_payload >= sent / 5,
        "the generator makes enough requests that can reach validation"
    );
    // Still healthy, and the group still works.
    alice.send(&g, b"still fine").await.unwrap();
    assert_eq!(
        messages(&bob.receive().await.unwrap()),
        vec![b"still fine".to_vec()]
    );
}
