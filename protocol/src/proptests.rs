//! Property tests over every network-facing decoder.
//!
//! `roundtrip_tests` checks one hand-written value per type; here the same ideas (round trip,
//! every strict prefix rejected, trailing bytes rejected) run over generated values, and every
//! decoder is additionally fed arbitrary and mutated bytes. Each decoder must then either refuse
//! the input or accept exactly the canonical encoding of what it decoded: two byte strings must
//! never decode to the same value, or signatures over re-encoded values and replay caches keyed
//! by request bytes could disagree.

use crate::auth::*;
use crate::codec::{DecodeError, decode_exact, encode};
use crate::credentials::*;
use crate::ds::*;
use crate::envelope::*;
use crate::error::*;
use crate::federation::*;
use crate::qs::*;
use crate::queue::*;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use tls_codec::{Deserialize, Serialize, VLBytes};

/// Decode limit for all properties: far above any generated input, so only framing decides.
const LIMIT: usize = 1 << 20;
/// Cases per property; keeps the whole file to a few seconds in a debug build.
const CASES: u32 = 256;
/// Upper bound on arbitrary inputs.
const MAX_INPUT: usize = 4096;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        ..ProptestConfig::default()
    }
}

/// Decodes `bytes` as `T`; on success the value must re-encode to exactly `bytes`.
///
/// Returns whether the input was accepted, so callers can see that a property exercised the
/// success path at all.
fn canonical_or_rejected<T: Serialize + Deserialize>(bytes: &[u8]) -> Result<bool, String> {
    match decode_exact::<T>(bytes, LIMIT) {
        Err(DecodeError::Malformed(_)) => Ok(false),
        Err(e) => Err(format!("unexpected error {e:?}")),
        Ok(value) => {
            let again = encode(&value).map_err(|e| format!("re-encode failed: {e:?}"))?;
            if again == bytes {
                Ok(true)
            } else {
                Err(format!(
                    "non-canonical: {} input bytes re-encode to {} different bytes",
                    bytes.len(),
                    again.len()
                ))
            }
        }
    }
}

/// A decoder under test, type-erased so one table lists every network-facing type.
type Check = fn(&[u8]) -> Result<bool, String>;

/// Every network-facing decoder: request bodies, responses, and what clients decode from
/// ciphertexts or from other providers.
const DECODERS: &[(&str, Check)] = &[
    ("Envelope", canonical_or_rejected::<Envelope>),
    ("DsRequest", canonical_or_rejected::<DsRequest>),
    ("DsResponse", canonical_or_rejected::<DsResponse>),
    ("CommitAad", canonical_or_rejected::<CommitAad>),
    ("QsRequest", canonical_or_rejected::<QsRequest>),
    ("QsResponse", canonical_or_rejected::<QsResponse>),
    ("AddPackage", canonical_or_rejected::<AddPackage>),
    ("QueueMessage", canonical_or_rejected::<QueueMessage>),
    ("QueueRef", canonical_or_rejected::<QueueRef>),
    ("AsRequest", canonical_or_rejected::<AsRequest>),
    ("AsResponse", canonical_or_rejected::<AsResponse>),
    (
        "ClientCredential",
        canonical_or_rejected::<ClientCredential>,
    ),
    (
        "PseudonymousCredential",
        canonical_or_rejected::<PseudonymousCredential>,
    ),
    ("AsCredentials", canonical_or_rejected::<AsCredentials>),
    (
        "WelcomeAttributionInfo",
        canonical_or_rejected::<WelcomeAttributionInfo>,
    ),
    ("S2sEnvelope", canonical_or_rejected::<S2sEnvelope>),
    ("ProxyRequest", canonical_or_rejected::<ProxyRequest>),
    ("VerificationKey", canonical_or_rejected::<VerificationKey>),
    ("ErrorResponse", canonical_or_rejected::<ErrorResponse>),
];

/// Runs `bytes` through every decoder; the first violation is the failure message.
fn all_decoders(bytes: &[u8]) -> Result<(), TestCaseError> {
    for (name, check) in DECODERS {
        check(bytes).map_err(|e| TestCaseError::fail(format!("{name}: {e}")))?;
    }
    Ok(())
}

/// Encodes, decodes back, and requires every strict prefix and every one-byte extension to fail.
fn strict_round_trip<T>(value: &T) -> Result<Vec<u8>, TestCaseError>
where
    T: Serialize + Deserialize + PartialEq + std::fmt::Debug,
{
    let bytes = encode(value).map_err(|e| TestCaseError::fail(format!("encode: {e:?}")))?;
    let back: T = decode_exact(&bytes, LIMIT)
        .map_err(|e| TestCaseError::fail(format!("decode of own encoding: {e:?}")))?;
    prop_assert_eq!(&back, value);
    for cut in 0..bytes.len() {
        prop_assert!(
            decode_exact::<T>(&bytes[..cut], LIMIT).is_err(),
            "prefix of {} of {} bytes decoded",
            cut,
            bytes.len()
        );
    }
    let mut longer = bytes.clone();
    longer.push(0);
    for extra in 0..=u8::MAX {
        if let Some(last) = longer.last_mut() {
            *last = extra;
        }
        prop_assert!(
            decode_exact::<T>(&longer, LIMIT).is_err(),
            "trailing byte {:#04x} accepted",
            extra
        );
    }
    Ok(bytes)
}

/// Replaces one byte of a valid encoding; every decoder must stay panic-free and canonical.
fn mutated(mut bytes: Vec<u8>, at: Index, to: u8) -> Result<(), TestCaseError> {
    if !bytes.is_empty() {
        let i = at.index(bytes.len());
        bytes[i] = to;
    }
    all_decoders(&bytes)
}

// ---- Arbitrary inputs ---------------------------------------------------------------------

/// Uniform bytes up to [`MAX_INPUT`], plus short strings of tiny byte values: those hit valid
/// discriminants, `Option` tags and short lengths far more often, so some inputs decode.
fn arbitrary_input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..=MAX_INPUT),
        vec(0u8..4, 0..64),
        vec(
            prop_oneof![0u8..4, Just(0x40), Just(0x80), Just(0xc0)],
            0..128
        ),
    ]
}

// ---- Strategies for valid values ----------------------------------------------------------

/// Byte strings from empty to just over 63 bytes, where the QUIC length prefix grows to two
/// bytes.
fn bytes() -> impl Strategy<Value = VLBytes> {
    vec(any::<u8>(), 0..72).prop_map(VLBytes::from)
}

fn transaction_type() -> impl Strategy<Value = TransactionType> {
    prop_oneof![
        Just(TransactionType::GroupOperation),
        Just(TransactionType::WelcomeInformation),
        Just(TransactionType::ExternalCommitInformation),
        Just(TransactionType::QueueService),
        Just(TransactionType::AuthService),
        Just(TransactionType::Federation),
        Just(TransactionType::Proxy),
    ]
}

fn envelope() -> impl Strategy<Value = Envelope> {
    (any::<u16>(), transaction_type(), bytes()).prop_map(|(version, transaction_type, payload)| {
        Envelope {
            version,
            transaction_type,
            payload,
        }
    })
}

fn leaf_info() -> impl Strategy<Value = LeafCredentialInfo> {
    (bytes(), bytes()).prop_map(|(c, s)| LeafCredentialInfo {
        encrypted_client_credential: c,
        encrypted_signature_ear_key: s,
    })
}

fn commit_bundle() -> impl Strategy<Value = CommitBundle> {
    let rotation = (
        bytes(),
        proptest::collection::vec((any::<u32>(), leaf_info()), 0..3),
    )
        .prop_map(|(new_ear_key, entries)| KeyRotation {
            new_ear_key,
            credentials: entries
                .into_iter()
                .map(|(leaf, info)| LeafCredentialEntry { leaf, info })
                .collect(),
        });
    (
        bytes(),
        bytes(),
        proptest::option::of(bytes()),
        proptest::option::of(rotation),
    )
        .prop_map(|(commit, group_info, welcome, rotation)| CommitBundle {
            commit,
            group_info,
            welcome,
            rotation,
        })
}

fn reject_reason() -> impl Strategy<Value = RejectReason> {
    prop_oneof![
        Just(RejectReason::MembershipTag),
        Just(RejectReason::ConfirmationTag),
        Just(RejectReason::UpdatePath),
        Just(RejectReason::Other),
    ]
}

fn ds_operation() -> impl Strategy<Value = DsOperation> {
    prop_oneof![
        Just(DsOperation::RequestGroupId),
        (bytes(), bytes(), leaf_info()).prop_map(|(group_info, ratchet_tree, creator)| {
            DsOperation::CreateGroup(CreateGroup {
                group_info,
                ratchet_tree,
                creator,
                creator_user_auth_key: vec![7; 32].into(),
                kind: GroupKind::Connection,
            })
        }),
        commit_bundle().prop_map(DsOperation::AddMembers),
        commit_bundle().prop_map(DsOperation::RemoveMembers),
        commit_bundle().prop_map(DsOperation::Update),
        commit_bundle().prop_map(DsOperation::AddClients),
        commit_bundle().prop_map(DsOperation::RemoveClients),
        commit_bundle().prop_map(DsOperation::ExternalJoin),
        commit_bundle().prop_map(DsOperation::JoinConnectionGroup),
        commit_bundle().prop_map(DsOperation::ReInit),
        (any::<u32>(), any::<bool>()).prop_map(|(leaf, admin)| DsOperation::SetRole(SetRole {
            leaf,
            role: if admin { Role::Admin } else { Role::Member },
        })),
        bytes().prop_map(DsOperation::SelfRemove),
        bytes().prop_map(DsOperation::SendMessage),
        commit_bundle().prop_map(DsOperation::DeleteGroup),
        any::<u64>().prop_map(DsOperation::WelcomeInfo),
        Just(DsOperation::ExternalCommitInfo),
        (any::<u64>(), any::<[u8; 32]>(), reject_reason()).prop_map(
            |(epoch, commit_ref, reason)| DsOperation::ReportCommit(CommitRejected {
                epoch,
                commit_ref,
                reason,
            })
        ),
        commit_bundle().prop_map(DsOperation::Resync),
    ]
}

fn ds_sender() -> impl Strategy<Value = DsSender> {
    prop_oneof![
        Just(DsSender::Anonymous),
        any::<u32>().prop_map(DsSender::Member),
        bytes().prop_map(DsSender::Joiner),
    ]
}

fn ds_request() -> impl Strategy<Value = DsRequest> {
    (
        bytes(),
        proptest::option::of(bytes()),
        any::<u64>(),
        any::<[u8; 16]>(),
        ds_sender(),
        ds_operation(),
        bytes(),
    )
        .prop_map(
            |(group_id, ear_key, timestamp_ms, nonce, sender, operation, signature)| DsRequest {
                tbs: DsRequestTbs {
                    group_id,
                    ear_key,
                    timestamp_ms,
                    nonce,
                    sender,
                    operation,
                },
                signature,
            },
        )
}

fn commit_aad() -> impl Strategy<Value = CommitAad> {
    vec(
        (bytes(), leaf_info(), bytes(), any::<u32>()).prop_map(
            |(key_package_ref, credential, attribution, user)| AddedMember {
                key_package_ref,
                credential,
                attribution,
                user,
            },
        ),
        0..4,
    )
    .prop_map(|added| CommitAad {
        added,
        user_auth_key: Some(vec![1; 32].into()),
        joiner: None,
        reinit: Some(vec![2; 20].into()),
    })
}

fn qs_operation() -> impl Strategy<Value = QsOperation> {
    prop_oneof![
        Just(QsOperation::EncryptionKey),
        (bytes(), bytes(), bytes(), bytes(), bytes()).prop_map(|(u, c, f, r, t)| {
            QsOperation::CreateUser(CreateUser {
                user_auth_key: u,
                client_auth_key: c,
                friendship_token: f,
                initial_ratchet_secret: r,
                device_tag: t,
            })
        }),
        (any::<[u8; 32]>(), bytes()).prop_map(|(device_tag, new_user_auth_key)| {
            QsOperation::RemoveUserClient(RemoveUserClient {
                device_tag,
                new_user_auth_key,
            })
        }),
        (vec(bytes(), 0..4), bytes()).prop_map(|(packages, last_resort)| {
            QsOperation::PublishAddPackages(PublishAddPackages {
                packages,
                last_resort,
            })
        }),
        bytes().prop_map(QsOperation::FetchAddPackages),
        (
            any::<u64>(),
            any::<u32>(),
            vec(any::<([u8; 16], [u8; 16])>(), 0..3)
        )
            .prop_map(|(ack_below, max, r)| QsOperation::Dequeue(Dequeue {
                ack_below,
                max,
                release: r
                    .into_iter()
                    .map(|(id, ticket)| StoredTicket { id, ticket })
                    .collect(),
            })),
        vec(any::<[u8; 16]>(), 0..3).prop_map(QsOperation::FetchStored),
    ]
}

fn qs_sender() -> impl Strategy<Value = QsSender> {
    prop_oneof![
        Just(QsSender::Anonymous),
        any::<[u8; 16]>().prop_map(QsSender::Client),
        Just(QsSender::NewClient),
    ]
}

fn qs_request() -> impl Strategy<Value = QsRequest> {
    (
        any::<u64>(),
        any::<[u8; 16]>(),
        qs_sender(),
        qs_operation(),
        bytes(),
    )
        .prop_map(
            |(timestamp_ms, nonce, sender, operation, signature)| QsRequest {
                tbs: QsRequestTbs {
                    timestamp_ms,
                    nonce,
                    sender,
                    operation,
                },
                signature,
            },
        )
}

fn hpke_ciphertext() -> impl Strategy<Value = HpkeCiphertextWire> {
    (bytes(), bytes()).prop_map(|(kem_output, ciphertext)| HpkeCiphertextWire {
        kem_output,
        ciphertext,
    })
}

fn queue_ref() -> impl Strategy<Value = QueueRef> {
    let address = prop_oneof![
        hpke_ciphertext().prop_map(QueueAddress::Sealed),
        any::<[u8; 16]>().prop_map(|client_id| QueueAddress::Plain(QueueRefPlain { client_id })),
    ];
    (bytes(), address).prop_map(|(domain, address)| QueueRef { domain, address })
}

fn queue_message() -> impl Strategy<Value = QueueMessage> {
    prop_oneof![
        bytes().prop_map(QueueMessage::Mls),
        (bytes(), hpke_ciphertext(), bytes()).prop_map(|(welcome, joiner_info, attribution)| {
            QueueMessage::Welcome(WelcomeBundle {
                welcome,
                joiner_info,
                attribution,
            })
        }),
        any::<([u8; 16], [u8; 32], [u8; 16])>()
            .prop_map(|(id, key, ticket)| QueueMessage::Stored(StoredRef { id, key, ticket })),
    ]
}

fn forwarded_request() -> impl Strategy<Value = ForwardedRequest> {
    (transaction_type(), bytes()).prop_map(|(transaction_type, envelope)| ForwardedRequest {
        transaction_type,
        envelope,
    })
}

fn s2s_envelope() -> impl Strategy<Value = S2sEnvelope> {
    let item = (
        any::<[u8; 16]>(),
        any::<u64>(),
        queue_ref(),
        queue_message(),
    )
        .prop_map(|(id, created_ms, queue_ref, message)| DeliveryItem {
            id,
            created_ms,
            queue_ref,
            message,
        });
    let payload = prop_oneof![
        forwarded_request().prop_map(S2sPayload::Forward),
        vec(item, 0..3).prop_map(S2sPayload::Deliver),
        vec(hpke_ciphertext(), 0..3).prop_map(S2sPayload::DeliverSealed),
    ];
    (
        bytes(),
        bytes(),
        any::<[u8; 16]>(),
        any::<u64>(),
        payload,
        bytes(),
    )
        .prop_map(
            |(sender_domain, recipient_domain, id, timestamp_ms, payload, signature)| S2sEnvelope {
                tbs: S2sEnvelopeTbs {
                    sender_domain,
                    recipient_domain,
                    id,
                    timestamp_ms,
                    payload,
                },
                signature,
            },
        )
}

fn identity() -> impl Strategy<Value = ClientIdentity> {
    (bytes(), any::<[u8; 16]>()).prop_map(|(handle, device)| ClientIdentity { handle, device })
}

fn csr() -> impl Strategy<Value = ClientCredentialCsr> {
    (identity(), bytes(), bytes()).prop_map(|(identity, public_key, signature)| {
        ClientCredentialCsr {
            tbs: ClientCredentialCsrTbs {
                identity,
                public_key,
            },
            signature,
        }
    })
}

fn as_request() -> impl Strategy<Value = AsRequest> {
    let operation = prop_oneof![
        csr().prop_map(AsOperation::RegisterUser),
        csr().prop_map(AsOperation::AddClient),
        Just(AsOperation::AsCredentials),
        bytes().prop_map(AsOperation::UserClients),
    ];
    let sender = prop_oneof![
        Just(AsSender::Anonymous),
        identity().prop_map(AsSender::Client),
    ];
    (any::<u64>(), any::<[u8; 16]>(), sender, operation, bytes()).prop_map(
        |(timestamp_ms, nonce, sender, operation, signature)| AsRequest {
            tbs: AsRequestTbs {
                timestamp_ms,
                nonce,
                sender,
                operation,
            },
            signature,
        },
    )
}

fn error_response() -> impl Strategy<Value = ErrorResponse> {
    let code = prop_oneof![
        Just(ErrorCode::Malformed),
        Just(ErrorCode::WrongEpoch),
        Just(ErrorCode::NotAPeer),
        Just(ErrorCode::Internal),
    ];
    (code, bytes(), proptest::option::of(any::<u64>())).prop_map(|(code, detail, current_epoch)| {
        ErrorResponse {
            code,
            detail,
            current_epoch,
        }
    })
}

// ---- Properties ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    /// (a) Arbitrary bytes: no decoder panics, and whatever decodes is canonical.
    #[test]
    fn arbitrary_bytes_are_rejected_or_canonical(input in arbitrary_input()) {
        all_decoders(&input)?;
    }

    /// (b) Generated envelopes round-trip and are exactly framed.
    #[test]
    fn envelope_round_trips(value in envelope()) {
        strict_round_trip(&value)?;
    }

    /// (b) Generated DS requests, over every operation and sender, round-trip and are framed.
    #[test]
    fn ds_request_round_trips(value in ds_request()) {
        strict_round_trip(&value)?;
    }

    /// (b) Commit authenticated data round-trips and is framed.
    #[test]
    fn commit_aad_round_trips(value in commit_aad()) {
        strict_round_trip(&value)?;
    }

    /// (b) QS requests round-trip and are framed.
    #[test]
    fn qs_request_round_trips(value in qs_request()) {
        strict_round_trip(&value)?;
    }

    /// (b) Server-to-server envelopes (forward and delivery) round-trip and are framed.
    #[test]
    fn s2s_envelope_round_trips(value in s2s_envelope()) {
        strict_round_trip(&value)?;
    }

    /// (b) AS requests round-trip and are framed.
    #[test]
    fn as_request_round_trips(value in as_request()) {
        strict_round_trip(&value)?;
    }

    /// (b) Queue messages and error bodies round-trip and are framed.
    #[test]
    fn queue_message_and_error_round_trip(m in queue_message(), e in error_response()) {
        strict_round_trip(&m)?;
        strict_round_trip(&e)?;
    }

    /// (c) One changed byte in a valid DS request or envelope: every decoder stays canonical.
    #[test]
    fn mutated_ds_request_or_envelope(
        r in ds_request(),
        e in envelope(),
        at in any::<Index>(),
        to in any::<u8>(),
    ) {
        mutated(strict_round_trip(&r)?, at, to)?;
        mutated(strict_round_trip(&e)?, at, to)?;
    }

    /// (c) One changed byte in a valid QS request, AS request or commit AAD.
    #[test]
    fn mutated_qs_as_or_aad(
        q in qs_request(),
        a in as_request(),
        c in commit_aad(),
        at in any::<Index>(),
        to in any::<u8>(),
    ) {
        mutated(strict_round_trip(&q)?, at, to)?;
        mutated(strict_round_trip(&a)?, at, to)?;
        mutated(strict_round_trip(&c)?, at, to)?;
    }

    /// (c) One changed byte in a valid server-to-server envelope.
    #[test]
    fn mutated_s2s_envelope(value in s2s_envelope(), at in any::<Index>(), to in any::<u8>()) {
        mutated(strict_round_trip(&value)?, at, to)?;
    }

    /// (f) Privacy Pass: any bytes as a token or header text never panic; a token that decodes
    /// is canonical and survives the `Authorization` header; generated tokens of both types
    /// round-trip and every other length is refused.
    #[test]
    fn privacy_pass_tokens_and_headers(
        input in arbitrary_input(),
        amortized in any::<bool>(),
        fill in any::<[u8; 32]>(),
        cut in 0usize..400,
    ) {
        use crate::tokens::*;
        if let Ok(t) = PresentedToken::decode(&input) {
            prop_assert_eq!(t.encode(), input.clone());
        }
        let text = String::from_utf8_lossy(&input);
        let _ = PresentedToken::from_authorization(&text);
        let _ = parse_www_authenticate(&text);
        let (token_type, len) = if amortized { (TYPE_AMORTIZED, 64) } else { (TYPE_PUBLIC, 256) };
        let token = PresentedToken {
            token_type,
            nonce: fill,
            challenge_digest: fill,
            token_key_id: fill,
            authenticator: vec![fill[0]; len],
        };
        let bytes = token.encode();
        prop_assert_eq!(&PresentedToken::decode(&bytes).unwrap(), &token);
        prop_assert_eq!(&PresentedToken::from_authorization(&token.to_authorization()).unwrap(), &token);
        if cut < bytes.len() {
            prop_assert!(PresentedToken::decode(&bytes[..cut]).is_err());
        }
    }
}

/// The table covers each listed type once, so adding a decoder means adding it here.
#[test]
fn decoder_table_is_complete() {
    assert_eq!(DECODERS.len(), 19);
    let mut names: Vec<_> = DECODERS.iter().map(|(n, _)| *n).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), DECODERS.len());
}

/// Small hand-picked inputs that decode: the arbitrary-bytes property accepts them, so it is
/// not vacuous.
#[test]
fn short_valid_inputs_are_accepted() {
    // version 1, GroupOperation, empty payload.
    assert_eq!(
        canonical_or_rejected::<Envelope>(&[0, 1, 0, 1, 0]),
        Ok(true)
    );
    // DsResponse::Deleted.
    assert_eq!(canonical_or_rejected::<DsResponse>(&[4]), Ok(true));
    // Empty CommitAad.
    assert_eq!(canonical_or_rejected::<CommitAad>(&[0, 0, 0, 0]), Ok(true));
    // A two-byte length prefix for a 5-byte string is not minimal, so it is refused.
    assert_eq!(
        canonical_or_rejected::<VerificationKey>(&[0x40, 5, 1, 2, 3, 4, 5, 0]),
        Ok(false)
    );
}
