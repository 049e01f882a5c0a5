//! Every kind of bad request gets its specific error code and leaves the database unchanged.

mod common;

use common::*;
use ed25519_dalek::SigningKey;
use mimi_client_rm::{GroupHandle, envelope};
use mimi_rm_protocol::ds::*;
use mimi_rm_protocol::qs::*;
use mimi_rm_protocol::{
    Envelope, ErrorCode, PROTOCOL_VERSION, TransactionType, decode_exact, encode, paths,
};
use std::sync::{Arc, Mutex};

fn now() -> u64 {
    mimi_ds_rm::now_ms()
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
    let stranger = SigningKey::from_bytes(&rand::random());
    let junk = DsOperation::SendMessage(vec![0u8; 8].into());

    // Replay of a request that was accepted.
    rejected(
        &hub,
        paths::GROUP_OPERATION,
        send_body.clone(),
        403,
        ErrorCode::Replayed,
    )
    .await;
    // Wrong EAR key: the state does not open, whatever the signature.
    let wrong_ear: [u8; 32] = rand::random();
    let body = ds_signed(
        &g,
        &wrong_ear,
        DsSender::Member(0),
        junk.clone(),
        &stranger,
        now(),
    );
    rejected(
        &hub,
        paths::GROUP_OPERATION,
        body,
        403,
        ErrorCode::WrongEarKey,
    )
    .await;
    // Right key, but signed by someone who is not the member at leaf 0.
    let body = ds_signed(
        &g,
        &ear,
        DsSender::Member(0),
        junk.clone(),
        &stranger,
        now(),
    );
    rejected(
        &hub,
        paths::GROUP_OPERATION,
        body,
        403,
        ErrorCode::InvalidSignature,
    )
    .await;
    // A leaf index nobody occupies.
    let body = ds_signed(
        &g,
        &ear,
        DsSender::Member(42),
        junk.clone(),
        &stranger,
        now(),
    );
    rejected(
        &hub,
        paths::GROUP_OPERATION,
        body,
        403,
        ErrorCode::NotAuthorized,
    )
    .await;
    // Stale and future timestamps.
    let body = ds_signed(
        &g,
        &ear,
        DsSender::Member(0),
        junk.clone(),
        &stranger,
        now() - 600_000,
    );
    rejected(
        &hub,
        paths::GROUP_OPERATION,
        body,
        403,
        ErrorCode::StaleRequest,
    )
    .await;
    let body = ds_signed(
        &g,
        &ear,
        DsSender::Member(0),
        junk.clone(),
        &stranger,
        now() + 600_000,
    );
    rejected(
        &hub,
        paths::GROUP_OPERATION,
        body,
        403,
        ErrorCode::StaleRequest,
    )
    .await;
    // Unknown group.
    let other = GroupHandle(vec![9; 20]);
    let body = ds_signed(
        &other,
        &ear,
        DsSender::Member(0),
        junk.clone(),
        &stranger,
        now(),
    );
    rejected(
        &hub,
        paths::GROUP_OPERATION,
        body,
        404,
        ErrorCode::UnknownGroup,
    )
    .await;
    // A valid body on the wrong endpoint.
    rejected(
        &hub,
        paths::WELCOME_INFORMATION,
        send_body.clone(),
        400,
        ErrorCode::WrongEndpoint,
    )
    .await;
    // Unsupported version.
    let mut env: Envelope = decode_exact(&send_body, 1 << 20).unwrap();
    env.version = PROTOCOL_VERSION + 1;
    rejected(
        &hub,
        paths::GROUP_OPERATION,
        encode(&env).unwrap(),
        400,
        ErrorCode::UnsupportedVersion,
    )
    .await;
    // Malformed, truncated and trailing bytes, on every endpoint.
    for p in [
        paths::GROUP_OPERATION,
        paths::WELCOME_INFORMATION,
        paths::EXTERNAL_COMMIT_INFORMATION,
        paths::QS,
    ] {
        rejected(
            &hub,
            p,
            b"definitely not TLS".to_vec(),
            400,
            ErrorCode::Malformed,
        )
        .await;
        rejected(&hub, p, Vec::new(), 400, ErrorCode::Malformed).await;
    }
    for cut in [1, 5, send_body.len() / 2, send_body.len() - 1] {
        rejected(
            &hub,
            paths::GROUP_OPERATION,
            send_body[..cut].to_vec(),
            400,
            ErrorCode::Malformed,
        )
        .await;
    }
    let mut trailing = send_body.clone();
    trailing.push(0);
    rejected(
        &hub,
        paths::GROUP_OPERATION,
        trailing,
        400,
        ErrorCode::Malformed,
    )
    .await;
    // Oversized bodies get 413 before decoding.
    for p in [paths::GROUP_OPERATION, paths::QS] {
        rejected(&hub, p, vec![0u8; MAX_BODY + 1], 413, ErrorCode::TooLarge).await;
    }
    // Welcome info for an epoch nobody joined, signed by a key that is no joiner.
    let joiner = DsSender::Joiner(stranger.verifying_key().to_bytes().to_vec().into());
    let body = ds_signed(
        &g,
        &ear,
        joiner,
        DsOperation::WelcomeInfo(77),
        &stranger,
        now(),
    );
    rejected(
        &hub,
        paths::WELCOME_INFORMATION,
        body,
        404,
        ErrorCode::UnknownEpoch,
    )
    .await;

    // QS: a dequeue signed by the wrong key, for an unknown client, and a replayed dequeue.
    let bob_id = bob.client_id_bytes().unwrap();
    let tbs = QsRequestTbs {
        timestamp_ms: now(),
        nonce: rand::random(),
        sender: QsSender::Client(bob_id),
        operation: QsOperation::Dequeue(Dequeue {
            ack_below: 100,
            max: 10,
        }),
    };
    let qs_key = mimi_rm_crypto::sign::SigningKey::generate();
    let sig = qs_key.sign(QS_REQUEST_SIGNATURE_LABEL, &encode(&tbs).unwrap());
    let body = envelope(
        TransactionType::QueueService,
        &QsRequest {
            tbs: tbs.clone(),
            signature: sig.clone().into(),
        },
    )
    .unwrap();
    rejected(&hub, paths::QS, body, 403, ErrorCode::InvalidSignature).await;
    let mut unknown = tbs.clone();
    unknown.sender = QsSender::Client([0xee; 16]);
    let body = envelope(
        TransactionType::QueueService,
        &QsRequest {
            tbs: unknown,
            signature: sig.into(),
        },
    )
    .unwrap();
    rejected(&hub, paths::QS, body, 404, ErrorCode::UnknownClient).await;
    let events = bob.receive().await.unwrap();
    assert_eq!(messages(&events), vec![b"queued for bob".to_vec()]);
    let dequeue = recorder
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|(p, _)| p == paths::QS)
        .cloned()
        .unwrap()
        .1;
    rejected(&hub, paths::QS, dequeue, 403, ErrorCode::Replayed).await;
    // Unknown friendship token.
    let body = envelope(
        TransactionType::QueueService,
        &QsRequest {
            tbs: QsRequestTbs {
                timestamp_ms: now(),
                nonce: rand::random(),
                sender: QsSender::Anonymous,
                operation: QsOperation::FetchAddPackages(vec![5u8; 32].into()),
            },
            signature: Vec::new().into(),
        },
    )
    .unwrap();
    rejected(&hub, paths::QS, body, 404, ErrorCode::UnknownToken).await;

    // A stale-epoch commit: alice commits, then bob commits on the epoch he still sees.
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
