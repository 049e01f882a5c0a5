//! Round trip, trailing-byte, truncation and limit tests for every wire type.

use crate::auth::*;
use crate::codec::{DecodeError, decode_exact, encode};
use crate::credentials::*;
use crate::ds::*;
use crate::envelope::*;
use crate::error::*;
use crate::qs::*;
use crate::queue::*;
use tls_codec::{Deserialize, Serialize};

const LIMIT: usize = 1 << 20;

/// Encodes, decodes back, and checks that every strict prefix and a trailing byte are rejected
/// without a panic.
fn check<T: Serialize + Deserialize + PartialEq + std::fmt::Debug>(value: T) {
    let bytes = encode(&value).expect("encode");
    let back: T = decode_exact(&bytes, LIMIT).expect("decode");
    assert_eq!(back, value);
    for cut in 0..bytes.len() {
        assert!(
            decode_exact::<T>(&bytes[..cut], LIMIT).is_err(),
            "prefix of {cut} bytes decoded"
        );
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(
        decode_exact::<T>(&longer, LIMIT),
        Err(DecodeError::Malformed(_))
    ));
    assert!(matches!(
        decode_exact::<T>(&bytes, bytes.len() - 1),
        Err(DecodeError::TooLarge { .. })
    ));
}

fn b(s: &[u8]) -> tls_codec::VLBytes {
    s.to_vec().into()
}

fn bundle() -> CommitBundle {
    CommitBundle {
        commit: b(b"commit"),
        group_info: b(b"gi"),
        welcome: Some(b(b"welcome")),
        rotation: Some(KeyRotation {
            new_ear_key: b(&[7; 32]),
            credentials: Vec::new(),
        }),
    }
}

#[test]
fn ds_types_round_trip() {
    check(QualifiedGroupId {
        uuid: [7; 16],
        domain: b(b"hub.example"),
    });
    let ops = vec![
        DsOperation::RequestGroupId,
        DsOperation::CreateGroup(CreateGroup {
            group_info: b(b"gi"),
            ratchet_tree: b(b"tree"),
            creator: info(),
            creator_user_auth_key: b(&[3; 32]),
            kind: GroupKind::Regular,
        }),
        DsOperation::SetRole(SetRole {
            leaf: 4,
            role: Role::Admin,
        }),
        DsOperation::JoinConnectionGroup(bundle()),
        DsOperation::AddMembers(bundle()),
        DsOperation::RemoveMembers(CommitBundle {
            welcome: None,
            ..bundle()
        }),
        DsOperation::Update(bundle()),
        DsOperation::SelfRemove(b(b"proposal")),
        DsOperation::SendMessage(b(b"app")),
        DsOperation::DeleteGroup(bundle()),
        DsOperation::WelcomeInfo(3),
        DsOperation::ExternalCommitInfo,
        DsOperation::ReportCommit(CommitRejected {
            epoch: 7,
            commit_ref: [9; 32],
            reason: RejectReason::UpdatePath,
        }),
        DsOperation::Resync(bundle()),
    ];
    for (i, operation) in ops.into_iter().enumerate() {
        let sender = match i % 3 {
            0 => DsSender::Anonymous,
            1 => DsSender::Member(i as u32),
            _ => DsSender::Joiner(b(b"sigkey")),
        };
        check(DsRequest {
            tbs: DsRequestTbs {
                group_id: b(b"gid"),
                ear_key: (i % 2 == 0).then(|| b(&[1; 32])),
                timestamp_ms: 1_700_000_000_000 + i as u64,
                nonce: [i as u8; 16],
                sender,
                operation,
            },
            signature: b(&[9; 64]),
        });
    }
    for r in [
        DsResponse::Accepted(5),
        DsResponse::GroupId(ReservedGroup {
            group_id: b(b"g"),
            external_sender_key: b(&[1; 32]),
        }),
        DsResponse::ProposalsPending(9),
        DsResponse::WelcomeInfo(WelcomeInfo {
            ratchet_tree: b(b"t"),
            credentials: vec![LeafCredentialEntry {
                leaf: 2,
                info: info(),
            }],
        }),
        DsResponse::ExternalCommitInfo(ExternalCommitInfo {
            group_info: b(b"gi"),
            ratchet_tree: b(b"t"),
            reports: vec![ReportTally {
                leaf: 3,
                reported_commits: 1,
                reports: 2,
            }],
            credentials: vec![],
            users: vec![GroupUser {
                leaves: vec![0, 2],
                role: Role::Admin,
            }],
            reinit: Some(b(b"next")),
        }),
        DsResponse::Deleted,
    ] {
        check(r);
    }
}

#[test]
fn queue_types_round_trip() {
    let ct = HpkeCiphertextWire {
        kem_output: b(&[1; 32]),
        ciphertext: b(&[2; 40]),
    };
    check(QueueRef {
        domain: b(b"hub.example"),
        address: QueueAddress::Sealed(ct.clone()),
    });
    check(QueueRef {
        domain: b(b"hub.example"),
        address: QueueAddress::Plain(QueueRefPlain { client_id: [5; 16] }),
    });
    check(QueueRefPlain { client_id: [3; 16] });
    check(SealedQueueRef {
        client_id: [3; 16],
        push_key: b(&[6; 32]),
    });
    check(crate::push::PushSubscription {
        endpoint: b(b"https://push.example/sub/1"),
        p256dh: b(&[4; 65]),
        auth: b(&[5; 16]),
    });
    check(JoinerInfo {
        group_id: b(b"gid"),
        ear_key: b(&[4; 32]),
        epoch: 2,
        hub_domain: b(b"hub.example"),
    });
    check(QueueMessage::Mls(b(b"mls")));
    check(QueueMessage::Stored(StoredRef {
        id: [1; 16],
        key: [2; 32],
        ticket: [3; 16],
    }));
    check(QueueMessage::Welcome(WelcomeBundle {
        welcome: b(b"w"),
        joiner_info: ct,
        attribution: b(b"wai"),
    }));
    check(CommitAad {
        added: vec![AddedMember {
            key_package_ref: b(b"kpref"),
            credential: info(),
            attribution: b(b"wai"),
            user: 1,
        }],
        user_auth_key: None,
        joiner: Some(JoinData {
            credential: info(),
            friendship: b(b"card"),
        }),
        reinit: None,
    });
    check(AddPackage {
        key_package: b(b"kp"),
        encrypted_client_credential: b(b"cc"),
        encrypted_signature_ear_key: b(b"sek"),
    });
}

fn info() -> crate::credentials::LeafCredentialInfo {
    crate::credentials::LeafCredentialInfo {
        encrypted_client_credential: b(b"cc"),
        encrypted_signature_ear_key: b(b"sek"),
    }
}

#[test]
fn qs_types_round_trip() {
    let ops = vec![
        QsOperation::EncryptionKey,
        QsOperation::CreateUser(CreateUser {
            user_auth_key: b(&[1; 32]),
            client_auth_key: b(&[2; 32]),
            friendship_token: b(&[3; 32]),
            initial_ratchet_secret: b(&[4; 32]),
            device_tag: b(&[5; 32]),
        }),
        QsOperation::RemoveUserClient(RemoveUserClient {
            device_tag: [6; 32],
            new_user_auth_key: b(&[7; 32]),
        }),
        QsOperation::PublishAddPackages(PublishAddPackages {
            packages: vec![b(b"a"), b(b"bb")],
            last_resort: b(b"lr"),
        }),
        QsOperation::FetchAddPackages(b(&[3; 32])),
        QsOperation::Dequeue(Dequeue {
            ack_below: 4,
            max: 10,
            release: vec![StoredTicket {
                id: [5; 16],
                ticket: [6; 16],
            }],
        }),
        QsOperation::FetchStored(vec![[7; 16], [8; 16]]),
    ];
    for (i, operation) in ops.into_iter().enumerate() {
        check(QsRequest {
            tbs: QsRequestTbs {
                timestamp_ms: 5,
                nonce: [i as u8; 16],
                sender: match i % 3 {
                    0 => QsSender::Anonymous,
                    1 => QsSender::NewClient,
                    _ => QsSender::Client([5; 16]),
                },
                operation,
            },
            signature: b(&[6; 64]),
        });
    }
    for r in [
        QsResponse::Ok,
        QsResponse::EncryptionKey(b(&[1; 32])),
        QsResponse::UserCreated(UserCreated {
            user_id: [1; 16],
            client_id: [2; 16],
        }),
        QsResponse::AddPackages(vec![b(b"x")]),
        QsResponse::Messages(Messages {
            messages: vec![QueuedCiphertext {
                seq: 1,
                ciphertext: b(b"c"),
            }],
            remaining: 0,
        }),
        QsResponse::Stored(vec![StoredMessage {
            id: [9; 16],
            ciphertext: b(b"sealed"),
        }]),
    ] {
        check(r);
    }
}

fn identity(device: u8) -> ClientIdentity {
    ClientIdentity {
        handle: b(b"alice"),
        device: [device; 16],
    }
}

fn csr() -> ClientCredentialCsr {
    ClientCredentialCsr {
        tbs: ClientCredentialCsrTbs {
            identity: identity(1),
            public_key: b(&[2; 32]),
        },
        signature: b(&[3; 64]),
    }
}

fn as_credentials() -> AsCredentials {
    AsCredentials {
        roots: vec![AsCredential {
            tbs: AsCredentialTbs {
                as_domain: b(b"hub.example"),
                expiration: ExpirationData::starting(10, 20),
                public_key: b(&[4; 32]),
            },
            signature: b(&[5; 64]),
        }],
        intermediates: vec![AsIntermediateCredential {
            tbs: AsIntermediateCredentialTbs {
                expiration: ExpirationData::starting(11, 5),
                public_key: b(&[6; 32]),
                signer_fingerprint: [7; 32],
            },
            signature: b(&[8; 64]),
        }],
    }
}

fn client_credential(device: u8) -> ClientCredential {
    ClientCredential {
        tbs: ClientCredentialTbs {
            identity: identity(device),
            expiration: ExpirationData::starting(12, 3),
            public_key: b(&[9; 32]),
            signer_fingerprint: [10; 32],
        },
        signature: b(&[11; 64]),
    }
}

#[test]
fn credential_types_round_trip() {
    check(ExpirationData::starting(1, 2));
    check(identity(1));
    check(csr());
    check(as_credentials());
    check(AsCredentials {
        roots: vec![],
        intermediates: vec![],
    });
    check(client_credential(1));
}

#[test]
fn as_types_round_trip() {
    let ops = vec![
        AsOperation::RegisterUser(csr()),
        AsOperation::AddClient(csr()),
        AsOperation::AsCredentials,
        AsOperation::UserClients(b(b"alice")),
    ];
    for (i, operation) in ops.into_iter().enumerate() {
        check(AsRequest {
            tbs: AsRequestTbs {
                timestamp_ms: 1_700_000_000_000 + i as u64,
                nonce: [i as u8; 16],
                sender: if i % 2 == 0 {
                    AsSender::Anonymous
                } else {
                    AsSender::Client(identity(i as u8))
                },
                operation,
            },
            signature: if i % 2 == 0 { b(b"") } else { b(&[12; 64]) },
        });
    }
    for r in [
        AsResponse::ClientCredential(client_credential(1)),
        AsResponse::AsCredentials(as_credentials()),
        AsResponse::UserClients(vec![client_credential(1), client_credential(2)]),
        AsResponse::UserClients(vec![]),
    ] {
        check(r);
    }
    check(Envelope::new(TransactionType::AuthService, vec![4, 5]));
    // Unknown AsOperation and AsSender discriminants are rejected.
    assert!(decode_exact::<AsOperation>(&[0xee], LIMIT).is_err());
    assert!(decode_exact::<AsSender>(&[2], LIMIT).is_err());
}

#[test]
fn envelope_and_error_round_trip() {
    check(Envelope::new(
        TransactionType::GroupOperation,
        vec![1, 2, 3],
    ));
    check(Envelope::new(TransactionType::QueueService, vec![]));
    let mut e = ErrorResponse::new(ErrorCode::WrongEpoch, "current epoch 4");
    e.current_epoch = Some(4);
    check(e);
    check(ErrorResponse::new(ErrorCode::Internal, ""));
    for code in [
        ErrorCode::HandleTaken,
        ErrorCode::InvalidHandle,
        ErrorCode::ExpiredCredential,
        ErrorCode::UnknownUser,
    ] {
        check(ErrorResponse::new(code, "as"));
    }
}

#[test]
fn unknown_discriminants_are_rejected() {
    // TransactionType 0x0063 does not exist.
    let bytes = [0, 1, 0, 0x63, 0];
    assert!(decode_exact::<Envelope>(&bytes, LIMIT).is_err());
    // DsOperation discriminant 0xee does not exist.
    assert!(decode_exact::<DsOperation>(&[0xee], LIMIT).is_err());
}

#[test]
fn forged_length_prefix_does_not_allocate_or_panic() {
    // A VLBytes claiming ~1 GiB followed by 3 bytes.
    let bytes = [0xbf, 0xff, 0xff, 0xff, 1, 2, 3];
    assert!(decode_exact::<tls_codec::VLBytes>(&bytes, LIMIT).is_err());
}
