//! Every stored record format decodes arbitrary and mutated bytes without panicking, and what
//! decodes re-encodes to exactly the same bytes (a corrupt disk is refused, never misread).
//! Deterministic seeds, bounded case counts.

use crate::core::ds::accountability::CommitRecord;
use crate::core::ds::public_store::PublicStoreBlob;
use crate::core::ds::state::{DsGroupState, GroupRow, PastTree};
use crate::core::qs::{ClientRecord, UserRecord};
use mimi_rm_protocol::{decode_exact, encode};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Feeds `T` random bytes and single-byte mutations of `valid`; checks canonical round trips.
fn hammer<T>(seed: u64, valid: &T)
where
    T: tls_codec::Serialize
        + tls_codec::Deserialize
        + tls_codec::Size
        + PartialEq
        + std::fmt::Debug,
{
    let mut rng = StdRng::seed_from_u64(seed);
    let good = encode(valid).unwrap();
    assert_eq!(&decode_exact::<T>(&good, 1 << 20).unwrap(), valid);
    for case in 0..2000 {
        let bytes: Vec<u8> = if case % 2 == 0 {
            (0..rng.gen_range(0..256))
                .map(|_| rng.r#gen::<u8>())
                .collect()
        } else {
            let mut b = good.clone();
            let i = rng.gen_range(0..b.len());
            b[i] = rng.r#gen();
            if rng.gen_bool(0.3) {
                b.truncate(rng.gen_range(0..b.len()));
            }
            b
        };
        if let Ok(v) = decode_exact::<T>(&bytes, 1 << 20) {
            assert_eq!(encode(&v).unwrap(), bytes, "non-canonical decoding");
        }
    }
}

#[test]
fn stored_records_survive_corruption() {
    hammer(
        1,
        &GroupRow {
            format: crate::core::ds::state::GROUP_ROW_FORMAT,
            activity_month: 683,
            tombstone_key: vec![4; 32].into(),
            ciphertext: vec![9; 40].into(),
        },
    );
    hammer(
        2,
        &ClientRecord {
            user_id: [1; 16],
            auth_key: vec![2; 32].into(),
            activity_month: 683,
            acked_below: 5,
            device_tag: vec![8; 32].into(),
        },
    );
    hammer(
        4,
        &crate::core::qs::RatchetRecord {
            ratchet: [3; 40],
            last_rekey: Some(crate::core::qs::LastRekey {
                fresh_hash: [4; 32],
                seq: 7,
            }),
        },
    );
    hammer(
        3,
        &UserRecord {
            user_auth_key: vec![5; 32].into(),
            friendship_hash: [6; 32],
            clients: vec![[7; 16]],
        },
    );
    hammer(
        4,
        &DsGroupState {
            public_group: PublicStoreBlob::default(),
            group_info: vec![8; 20].into(),
            past_trees: vec![PastTree {
                epoch: 3,
                expires_ms: 1_800_000_000_000,
                ratchet_tree: vec![9; 10].into(),
                joiners: vec![vec![1; 32].into()],
                credentials: Vec::new(),
            }],
            recent_commits: vec![CommitRecord {
                epoch: 2,
                commit_ref: [3; 32],
                committer: Some(1),
                reporters: vec![0],
            }],
            tallies: Vec::new(),
            credentials: Vec::new(),
            users: vec![crate::core::ds::users::UserEntry {
                auth_key: Some(vec![2; 32].into()),
                leaves: vec![0, 3],
                role: mimi_rm_protocol::ds::Role::Admin,
            }],
            kind: mimi_rm_protocol::ds::GroupKind::Regular,
            activity: vec![crate::core::ds::removals::LeafActivity { leaf: 0, period: 9 }],
            tombstone_secret: vec![5; 32].into(),
            doomed: vec![vec![6; 32].into()],
            reinit: None,
        },
    );
}
