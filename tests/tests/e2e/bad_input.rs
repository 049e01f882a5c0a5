//! Every kind of bad request gets its specific error code and leaves the database unchanged.

use ed25519_dalek::SigningKey;
use mimi_client_rm::{GroupHandle, envelope};
use mimi_rm_protocol::ds::*;
use mimi_rm_protocol::qs::*;
use mimi_rm_protocol::{
    Envelope, ErrorCode, PROTOCOL_VERSION, TransactionType, decode_exact, encode, paths,
};
use mimi_rm_tests::common::*;
use std::sync::{Arc, Mutex};

fn now() -> u64 {
    mimi_ds_rm::now_ms()
}

/// One bad request and the refusal it must get.
struct Case {
    /// What is wrong with it (failure messages name it).
    name: String,
    /// The endpoint it is posted to.
    path: &'static str,
    /// The request body.
    body: Vec<u8>,
    /// The expected HTTP status.
    status: u16,
    /// The expected error code.
    code: ErrorCode,
}

fn case(
    name: impl Into<String>,
    path: &'static str,
    body: Vec<u8>,
    status: u16,
    code: ErrorCode,
) -> Case {
    Case {
        name: name.into(),
        path,
        body,
        status,
        code,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_their_code_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_without_tokens(dir.path());
    let mut alice = client(&hub, dir.path(), "alice").await;
    let mut bob = client(&hub, dir.path(), "bob").await;
    let g = group_of(&mut alice, &mut [&mut bob]).await;
    let ear = alice.group_ear_key(&g).unwrap();
    let recorder = Arc::new(Mutex::new(Vec::new()));
    alice.set_recorder(recorder.clone());
    bob.set_recorder(recorder.clone());
    // Positive control: the read-only dump does see fresh writes.
    let fresh = hub.dump();
    alice.send(&g, b"queued for bob").await.unwrap();
    assert!(fresh != hub.dump(), "dump must reflect an accepted request");
    let (path, send_body) = recorder.lock().unwrap().last().cloned().unwrap();
    assert_eq!(path, paths::GROUP_OPERATION);
    // Bob reads his queue, so there is an accepted dequeue to replay.
    let events = bob.receive().await.unwrap();
    assert_eq!(messages(&events), vec![b"queued for bob".to_vec()]);
    let dequeue = last_recorded(&recorder, paths::QS);

    // Building blocks of the table.
    let stranger = SigningKey::from_bytes(&rand::random());
    let junk = DsOperation::SendMessage(vec![0u8; 8].into());
    // A request signed by the stranger for group `g`, EAR key `ear`, sender and time as given.
    let signed = |g: &GroupHandle, ear: &[u8], sender: DsSender, op: DsOperation, ts: u64| {
        ds_signed(g, ear, sender, op, &stranger, ts)
    };
    let wrong_ear: [u8; 32] = rand::random();
    let other_group = GroupHandle(vec![9; 20]);
    let mut next_version: Envelope = decode_exact(&send_body, 1 << 20).unwrap();
    next_version.version = PROTOCOL_VERSION + 1;
    let mut trailing = send_body.clone();
    trailing.push(0);
    let joiner = DsSender::Joiner(stranger.verifying_key().to_bytes().to_vec().into());
    // QS: a dequeue for bob signed by a key that is not his; the same signature for a client
    // that does not exist.
    let bob_id = bob.client_id_bytes().unwrap();
    let tbs = QsRequestTbs {
        timestamp_ms: now(),
        nonce: rand::random(),
        sender: QsSender::Client(bob_id),
        operation: QsOperation::Dequeue(Dequeue {
            ack_below: 100,
            max: 10,
            release: Vec::new(),
        }),
    };
    let qs_key = mimi_rm_crypto::sign::SigningKey::generate();
    let sig = qs_key.sign(QS_REQUEST_SIGNATURE_LABEL, &encode(&tbs).unwrap());
    let qs = |tbs: QsRequestTbs, signature: Vec<u8>| {
        envelope(
            TransactionType::QueueService,
            &QsRequest {
                tbs,
                signature: signature.into(),
            },
        )
        .unwrap()
    };
    let unknown_client = QsRequestTbs {
        sender: QsSender::Client([0xee; 16]),
        ..tbs.clone()
    };
    let unknown_friend = QsRequestTbs {
        timestamp_ms: now(),
        nonce: rand::random(),
        sender: QsSender::Anonymous,
        operation: QsOperation::FetchAddPackages(vec![5u8; 32].into()),
    };

    use ErrorCode::*;
    use paths::{EXTERNAL_COMMIT_INFORMATION, GROUP_OPERATION, QS, WELCOME_INFORMATION};
    let member0 = || DsSender::Member(0);
    let mut cases = vec![
        case(
            "replay of an accepted request",
            GROUP_OPERATION,
            send_body.clone(),
            403,
            Replayed,
        ),
        // The state does not open, whatever the signature.
        case(
            "wrong EAR key",
            GROUP_OPERATION,
            signed(&g, &wrong_ear, member0(), junk.clone(), now()),
            403,
            WrongEarKey,
        ),
        case(
            "right key, signed by someone who is not the member at leaf 0",
            GROUP_OPERATION,
            signed(&g, &ear, member0(), junk.clone(), now()),
            403,
            InvalidSignature,
        ),
        case(
            "a leaf index nobody occupies",
            GROUP_OPERATION,
            signed(&g, &ear, DsSender::Member(42), junk.clone(), now()),
            403,
            NotAuthorized,
        ),
        case(
            "stale timestamp",
            GROUP_OPERATION,
            signed(&g, &ear, member0(), junk.clone(), now() - 600_000),
            403,
            StaleRequest,
        ),
        case(
            "future timestamp",
            GROUP_OPERATION,
            signed(&g, &ear, member0(), junk.clone(), now() + 600_000),
            403,
            StaleRequest,
        ),
        case(
            "unknown group",
            GROUP_OPERATION,
            signed(&other_group, &ear, member0(), junk.clone(), now()),
            404,
            UnknownGroup,
        ),
        case(
            "a valid body on the wrong endpoint",
            WELCOME_INFORMATION,
            send_body.clone(),
            400,
            WrongEndpoint,
        ),
        case(
            "unsupported version",
            GROUP_OPERATION,
            encode(&next_version).unwrap(),
            400,
            UnsupportedVersion,
        ),
    ];
    // Malformed, truncated and trailing bytes, on every endpoint.
    for p in [
        GROUP_OPERATION,
        WELCOME_INFORMATION,
        EXTERNAL_COMMIT_INFORMATION,
        QS,
    ] {
        cases.push(case(
            format!("not TLS at {p}"),
            p,
            b"definitely not TLS".to_vec(),
            400,
            Malformed,
        ));
        cases.push(case(format!("empty at {p}"), p, Vec::new(), 400, Malformed));
    }
    for cut in [1, 5, send_body.len() / 2, send_body.len() - 1] {
        cases.push(case(
            format!("truncated to {cut} bytes"),
            GROUP_OPERATION,
            send_body[..cut].to_vec(),
            400,
            Malformed,
        ));
    }
    cases.push(case(
        "a trailing byte",
        GROUP_OPERATION,
        trailing,
        400,
        Malformed,
    ));
    // Oversized bodies get 413 before decoding.
    for p in [GROUP_OPERATION, QS] {
        cases.push(case(
            format!("oversized at {p}"),
            p,
            vec![0u8; MAX_BODY + 1],
            413,
            TooLarge,
        ));
    }
    cases.extend([
        case(
            "welcome info for an epoch nobody joined, signed by a key that is no joiner",
            WELCOME_INFORMATION,
            signed(&g, &ear, joiner, DsOperation::WelcomeInfo(77), now()),
            404,
            UnknownEpoch,
        ),
        case(
            "dequeue signed by the wrong key",
            QS,
            qs(tbs.clone(), sig.clone()),
            403,
            InvalidSignature,
        ),
        case(
            "dequeue for an unknown client",
            QS,
            qs(unknown_client, sig),
            404,
            UnknownClient,
        ),
        case("replayed dequeue", QS, dequeue, 403, Replayed),
        case(
            "unknown friendship token",
            QS,
            qs(unknown_friend, Vec::new()),
            404,
            UnknownToken,
        ),
    ]);

    for c in cases {
        rejected_case(&hub, &c.name, c.path, c.body, c.status, c.code).await;
    }

    // A stale-epoch commit, sent by the client library (not a hand-built body): alice commits,
    // then bob commits on the epoch he still sees.
    alice.update(&g).await.unwrap();
    let before = hub.dump();
    let err = bob.update(&g).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::WrongEpoch));
    match &err {
        mimi_client_rm::ClientError::Hub { status, response } => {
            assert_eq!(*status, 409);
            assert_eq!(response.current_epoch, Some(alice.epoch(&g).unwrap()));
        }
        other => panic!("unexpected {other}"),
    }
    assert!(
        before == hub.dump(),
        "a rejected commit changed stored data"
    );
    // Bob's rejected commit was discarded locally; after catching up he commits fine.
    bob.receive().await.unwrap();
    assert_eq!(bob.update(&g).await.unwrap(), alice.epoch(&g).unwrap() + 1);
}
