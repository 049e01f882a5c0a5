//! The queueing service: pseudonymous records, AddPackages and forward-secret queues.

use super::*;
use crate::core::qs::{self as qs_core, Enqueued, MAX_ADD_PACKAGES};
use crate::core::qs::{ClientRecord, RatchetRecord};
use mimi_rm_protocol::qs::{CreateClient, PublishAddPackages, QsOperation as Op, RemoveUserClient};
use sha2::{Digest, Sha256};

/// A queued MLS message with recognisable content.
fn message(n: u8) -> QueueMessage {
    QueueMessage::Mls(vec![n; 40].into())
}

/// Enqueues `messages` for `client` as the DS fan-out does, in one committed batch.
fn enqueue(hub: &TestHub, client: &ClientId, messages: &[QueueMessage]) -> Vec<Enqueued> {
    let mut txn = hub.txn();
    let out = messages
        .iter()
        .map(|m| qs_core::enqueue(&mut txn, client, m, 10_000).unwrap())
        .collect();
    txn.commit().unwrap();
    out
}

fn publish_op(packages: &[&[u8]], last_resort: &[u8]) -> QsOperation {
    Op::PublishAddPackages(PublishAddPackages {
        packages: packages.iter().map(|p| p.to_vec().into()).collect(),
        last_resort: last_resort.to_vec().into(),
    })
}

fn fetch_op(token: &[u8]) -> QsOperation {
    Op::FetchAddPackages(token.to_vec().into())
}

fn create_client_op(client_key: &SigningKey, secret: &[u8]) -> QsOperation {
    Op::CreateClient(CreateClient {
        client_auth_key: client_key.verifying_key().as_bytes().to_vec().into(),
        initial_ratchet_secret: secret.to_vec().into(),
        device_tag: Vec::new().into(),
    })
}

/// Adds a client to `user`'s pseudonymous user; returns it as a reader.
fn add_client(hub: &TestHub, user: &QsClient) -> QsClient {
    let new = NewUser::new();
    let op = create_client_op(&new.client_key, &new.ratchet_secret);
    let QsResponse::ClientCreated(id) =
        hub.ok(&qs_signed(&user.user_key, QsSender::User(user.user_id), op))
    else {
        panic!("expected ClientCreated")
    };
    let mut added = QsClient::of(new, user.user_id, id);
    added.user_key = SigningKey::from_bytes(&user.user_key.to_bytes()).unwrap();
    added
}

/// `user`'s user key (the one it held) no longer authorises a `CreateClient`.
fn assert_user_key_retired(hub: &TestHub, user: &QsClient) {
    let again = NewUser::new();
    hub.assert_refused(
        &qs_signed(
            &user.user_key,
            QsSender::User(user.user_id),
            create_client_op(&again.client_key, &again.ratchet_secret),
        ),
        ErrorCode::InvalidSignature,
    );
}

fn client_rows(hub: &TestHub, cf: Cf, client: &ClientId) -> Vec<Vec<u8>> {
    hub.rows(cf)
        .into_iter()
        .filter(|(k, _)| k.starts_with(client))
        .map(|(_, v)| v)
        .collect()
}

// ---- successes ----

#[test]
fn encryption_key_is_the_stored_qs_key_and_reads_nothing_into_the_store() {
    let hub = TestHub::new();
    let before = hub.dump();
    let QsResponse::EncryptionKey(key) = hub.ok(&qs_anon(Op::EncryptionKey)) else {
        panic!("expected Op::EncryptionKey")
    };
    let stored = hub
        .rows(Cf::ServerKeys)
        .into_iter()
        .find(|(k, _)| k == b"qs_hpke_v1")
        .unwrap()
        .1;
    assert_eq!(key.as_slice(), &stored[32..], "the public half of the key");
    assert!(before == hub.dump(), "a key fetch writes nothing");
}

#[test]
fn create_user_stores_the_user_its_client_and_only_the_token_hash() {
    let hub = TestHub::new();
    let new = NewUser::new();
    let token = new.friendship_token;
    let QsResponse::UserCreated(ids) = hub.ok(&new.request()) else {
        panic!("expected UserCreated")
    };
    assert_ne!(ids.user_id, ids.client_id);
    let user = hub.record::<UserRecord>(&ids.user_id).unwrap();
    assert_eq!(user.clients, vec![ids.client_id]);
    assert_eq!(
        user.user_auth_key.as_slice(),
        new.user_key.verifying_key().as_bytes()
    );
    let hash: [u8; 32] = Sha256::digest(token).into();
    assert_eq!(user.friendship_hash, hash);
    assert_eq!(
        hub.rows(Cf::QsFriendship),
        vec![(hash.to_vec(), ids.user_id.to_vec())]
    );
    let client = hub.record::<ClientRecord>(&ids.client_id).unwrap();
    assert_eq!(client.user_id, ids.user_id);
    assert_eq!(
        client.auth_key.as_slice(),
        new.client_key.verifying_key().as_bytes()
    );
    assert_eq!(client.acked_below, 0);
    // The token itself is never stored.
    assert!(
        !hub.dump()
            .iter()
            .any(|(_, k, v)| k.windows(32).any(|w| w == token)
                || v.windows(32).any(|w| w == token))
    );
}

#[test]
fn fetched_add_packages_are_consumed_except_the_last_resort() {
    let hub = TestHub::new();
    let alice = QsClient::register(&hub);
    let second = add_client(&hub, &alice);
    assert_eq!(
        hub.ok(&alice.request(publish_op(&[b"one", b"two"], b"last"))),
        QsResponse::Ok
    );
    assert_eq!(
        hub.ok(&second.request(publish_op(&[], b"2nd"))),
        QsResponse::Ok
    );
    assert_eq!(
        client_rows(&hub, Cf::QsAddPackages, &alice.client_id).len(),
        3
    );
    let token = alice.friendship_token;
    let fetch = |expected: [&[u8]; 2]| {
        let QsResponse::AddPackages(p) = hub.ok(&qs_anon(fetch_op(&token))) else {
            panic!("expected AddPackages")
        };
        let got: Vec<&[u8]> = p.iter().map(|p| p.as_slice()).collect();
        assert_eq!(got, expected.to_vec(), "one package per client of the user");
    };
    fetch([b"one", b"2nd"]);
    fetch([b"two", b"2nd"]);
    fetch([b"last", b"2nd"]);
    fetch([b"last", b"2nd"]);
    assert_eq!(
        client_rows(&hub, Cf::QsAddPackages, &alice.client_id),
        vec![b"last".to_vec()]
    );
    // Publishing again replaces every package of that client.
    hub.ok(&alice.request(publish_op(&[b"new"], b"last2")));
    assert_eq!(
        client_rows(&hub, Cf::QsAddPackages, &alice.client_id),
        vec![b"new".to_vec(), b"last2".to_vec()]
    );
}

#[test]
fn dequeue_returns_queued_messages_in_order_and_acks_delete_them() {
    let hub = TestHub::new();
    let mut alice = QsClient::register(&hub);
    let sent = [message(1), message(2), message(3)];
    assert_eq!(
        enqueue(&hub, &alice.client_id, &sent),
        vec![Enqueued::Delivered; 3]
    );
    assert_eq!(client_rows(&hub, Cf::QsQueues, &alice.client_id).len(), 3);
    // A partial read says how many are left and deletes nothing.
    let QsResponse::Messages(first) = hub.ok(&alice.dequeue(2)) else {
        panic!("expected Messages")
    };
    assert_eq!(
        first.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [0, 1]
    );
    assert_eq!(first.remaining, 1);
    assert_eq!(client_rows(&hub, Cf::QsQueues, &alice.client_id).len(), 3);
    // The reader decrypts all three with its own copy of the ratchet.
    assert_eq!(alice.fetch(&hub), sent.to_vec());
    // Acknowledging them deletes them.
    assert_eq!(alice.fetch(&hub), Vec::new());
    assert!(client_rows(&hub, Cf::QsQueues, &alice.client_id).is_empty());
    assert_eq!(alice.record(&hub).unwrap().acked_below, 3);
}

#[test]
fn an_ack_beyond_the_queue_does_not_swallow_later_messages() {
    let hub = TestHub::new();
    let alice = QsClient::register(&hub);
    enqueue(&hub, &alice.client_id, &[message(1)]);
    let ack = |ack_below| {
        alice.request(Op::Dequeue(Dequeue {
            ack_below,
            max: 10,
            release: Vec::new(),
        }))
    };
    let QsResponse::Messages(m) = hub.ok(&ack(1_000)) else {
        panic!("expected Messages")
    };
    assert!(m.messages.is_empty());
    assert_eq!(
        alice.record(&hub).unwrap().acked_below,
        1,
        "clamped to the queue's end"
    );
    enqueue(&hub, &alice.client_id, &[message(2)]);
    let QsResponse::Messages(m) = hub.ok(&ack(1)) else {
        panic!("expected Messages")
    };
    assert_eq!(m.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), [1]);
}

/// A client restored from an older state acknowledges less than it already did: the entries
/// it acknowledged before are gone, and `remaining` counts only what is still queued after the
/// batch it gets.
#[test]
fn a_stale_ack_gets_an_exact_remaining_count() {
    let hub = TestHub::new();
    let alice = QsClient::register(&hub);
    let sent: Vec<QueueMessage> = (0..10).map(message).collect();
    enqueue(&hub, &alice.client_id, &sent);
    let dequeue = |ack_below, max| {
        let QsResponse::Messages(m) = hub.ok(&alice.request(Op::Dequeue(Dequeue {
            ack_below,
            max,
            release: Vec::new(),
        }))) else {
            panic!("expected Messages")
        };
        m
    };
    let m = dequeue(5, 0);
    assert_eq!(m.remaining, 5, "entries 5..10 are left");
    let m = dequeue(0, 2);
    assert_eq!(m.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), [5, 6]);
    assert_eq!(m.remaining, 3, "entries 7, 8 and 9 are left");
    let m = dequeue(0, 10);
    assert_eq!(m.messages.len(), 5);
    assert_eq!(m.remaining, 0);
}

#[test]
fn dequeue_is_capped_by_the_configured_fetch_limit_and_queues_by_their_length() {
    let hub = TestHub::with(|c| c.max_messages_per_fetch = 2);
    let alice = QsClient::register(&hub);
    let sent: Vec<QueueMessage> = (0..4).map(message).collect();
    enqueue(&hub, &alice.client_id, &sent);
    let QsResponse::Messages(m) = hub.ok(&alice.dequeue(100)) else {
        panic!("expected Messages")
    };
    assert_eq!(m.messages.len(), 2);
    assert_eq!(m.remaining, 2);
    // A queue that is full drops further messages instead of growing.
    let mut txn = hub.txn();
    assert_eq!(
        qs_core::enqueue(&mut txn, &alice.client_id, &message(9), 4).unwrap(),
        Enqueued::QueueFull
    );
    assert_eq!(
        qs_core::enqueue(&mut txn, &[0; 16], &message(9), 4).unwrap(),
        Enqueued::NoQueue
    );
}

#[test]
fn rekey_mixes_the_ratchet_once_and_a_retry_answers_the_same() {
    let hub = TestHub::new();
    let mut alice = QsClient::register(&hub);
    enqueue(&hub, &alice.client_id, &[message(1)]);
    let fresh = random32();
    let before = alice.ratchet_record(&hub).unwrap();
    assert_eq!(
        hub.ok(&alice.request(Op::RekeyQueue(fresh.to_vec().into()))),
        QsResponse::Rekeyed(1)
    );
    let after = alice.ratchet_record(&hub).unwrap();
    assert_ne!(before.ratchet, after.ratchet);
    assert_eq!(after.last_rekey.as_ref().unwrap().seq, 1);
    // The same randomness again: the same answer, and no second mix.
    let snapshot = hub.dump();
    assert_eq!(
        hub.ok(&alice.request(Op::RekeyQueue(fresh.to_vec().into()))),
        QsResponse::Rekeyed(1)
    );
    assert!(snapshot == hub.dump());
    // Message 0 was sealed before the mix, message 1 after it.
    enqueue(&hub, &alice.client_id, &[message(2)]);
    assert_eq!(alice.fetch_upto(&hub, 1), vec![message(1)]);
    let QsResponse::Messages(m) = hub.ok(&alice.dequeue(10)) else {
        panic!("expected Messages")
    };
    assert_eq!(m.messages[0].seq, 1);
    let mut unmixed = alice.ratchet.clone();
    assert!(
        unmixed
            .decrypt_next(1, m.messages[0].ciphertext.as_slice())
            .is_err(),
        "the chain from before the rekey cannot read what came after it"
    );
    alice.mix(&fresh);
    assert_eq!(alice.fetch(&hub), vec![message(2)]);
}

#[test]
fn create_client_adds_a_queue_to_the_user() {
    let hub = TestHub::new();
    let alice = QsClient::register(&hub);
    let mut second = add_client(&hub, &alice);
    assert_eq!(
        alice.user(&hub).unwrap().clients,
        vec![alice.client_id, second.client_id]
    );
    let record = second.record(&hub).unwrap();
    assert_eq!(record.user_id, alice.user_id);
    enqueue(&hub, &second.client_id, &[message(5)]);
    assert_eq!(second.fetch(&hub), vec![message(5)]);
}

#[test]
fn delete_client_removes_its_queue_packages_and_records() {
    let hub = TestHub::new();
    let alice = QsClient::register(&hub);
    let second = add_client(&hub, &alice);
    for c in [&alice, &second] {
        hub.ok(&c.request(publish_op(&[b"p"], b"last")));
        enqueue(&hub, &c.client_id, &[message(1)]);
    }
    assert_eq!(hub.ok(&second.request(Op::DeleteClient)), QsResponse::Ok);
    assert!(second.record(&hub).is_none());
    assert!(client_rows(&hub, Cf::QsQueues, &second.client_id).is_empty());
    assert!(client_rows(&hub, Cf::QsAddPackages, &second.client_id).is_empty());
    assert_eq!(alice.user(&hub).unwrap().clients, vec![alice.client_id]);
    assert_eq!(client_rows(&hub, Cf::QsQueues, &alice.client_id).len(), 1);
    // The last client takes its user and the friendship token with it.
    assert_eq!(hub.ok(&alice.request(Op::DeleteClient)), QsResponse::Ok);
    assert!(alice.user(&hub).is_none());
    for cf in [
        Cf::QsUsers,
        Cf::QsClients,
        Cf::QsFriendship,
        Cf::QsQueues,
        Cf::QsAddPackages,
    ] {
        assert!(hub.rows(cf).is_empty(), "{} not empty", cf.name());
    }
    hub.assert_refused(
        &qs_anon(fetch_op(&alice.friendship_token)),
        ErrorCode::UnknownToken,
    );
}

// ---- refusals ----

#[test]
fn framing_refusals() {
    let hub = TestHub::new();
    assert_framing_refusals(&hub, &qs_anon(Op::EncryptionKey));
    assert_framing_refusals(&hub, &NewUser::new().request());
}

#[test]
fn requests_outside_the_freshness_window_are_stale() {
    let hub = TestHub::new();
    let alice = QsClient::register(&hub);
    for ts in [NOW - WINDOW_MS - 1, NOW + WINDOW_MS + 1, 0] {
        let mut anon = qs_anon(Op::EncryptionKey);
        anon.tbs.timestamp_ms = ts;
        hub.assert_refused(&anon, ErrorCode::StaleRequest);
        let signed = qs_signed_at(
            &alice.client_key,
            QsSender::Client(alice.client_id),
            Op::RekeyQueue(random32().to_vec().into()),
            ts,
        );
        hub.assert_refused(&signed, ErrorCode::StaleRequest);
    }
    // The edges of the window are still fresh.
    let mut anon = qs_anon(Op::EncryptionKey);
    anon.tbs.timestamp_ms = NOW + WINDOW_MS;
    hub.ok(&anon);
}

#[test]
fn signed_requests_are_refused_as_replays() {
    let hub = TestHub::new();
    let alice = QsClient::register(&hub);
    let new = NewUser::new();
    let requests = [
        new.request(),
        alice.request(publish_op(&[b"p"], b"last")),
        alice.dequeue(10),
        alice.request(Op::RekeyQueue(random32().to_vec().into())),
        qs_signed(
            &alice.user_key,
            QsSender::User(alice.user_id),
            create_client_op(&SigningKey::generate(), &random32()),
        ),
    ];
    for req in &requests {
        hub.ok(req);
        hub.assert_refused(req, ErrorCode::Replayed);
    }
    // A replayed delete no longer finds its client.
    let delete = alice.request(Op::DeleteClient);
    hub.ok(&delete);
    hub.assert_refused(&delete, ErrorCode::UnknownClient);
}

/// Every refusal of every QS operation, against one prepared QS: each case changes nothing.
#[test]
fn each_operation_refuses_bad_requests_with_its_code() {
    let hub = TestHub::new();
    let alice = QsClient::register(&hub);
    hub.ok(&alice.request(publish_op(&[b"p"], b"last")));
    let stranger = SigningKey::generate();
    let unknown_client = QsSender::Client([7; 16]);
    let me = QsSender::Client(alice.client_id);
    let as_user = QsSender::User(alice.user_id);
    let create_user = |f: &dyn Fn(&mut CreateUser)| {
        let new = NewUser::new();
        let QsOperation::CreateUser(mut p) = new.op.clone() else {
            unreachable!()
        };
        f(&mut p);
        qs_signed(
            &new.client_key,
            QsSender::NewClient,
            QsOperation::CreateUser(p),
        )
    };
    let rekey = || Op::RekeyQueue(random32().to_vec().into());
    let new_client = || create_client_op(&SigningKey::generate(), &random32());
    let cases: Vec<(&str, QsRequest, ErrorCode)> = vec![
        // encryption_key
        (
            "encryption_key from a new client",
            qs_signed(&stranger, QsSender::NewClient, Op::EncryptionKey),
            ErrorCode::NotAuthorized,
        ),
        (
            "encryption_key signed by a client",
            alice.request(Op::EncryptionKey),
            ErrorCode::NotAuthorized,
        ),
        // create_user
        (
            "create_user signed by another key",
            qs_signed(&stranger, QsSender::NewClient, NewUser::new().op),
            ErrorCode::InvalidSignature,
        ),
        (
            "create_user, anonymous",
            qs_anon(NewUser::new().op),
            ErrorCode::NotAuthorized,
        ),
        (
            "create_user by an existing client",
            alice.request(NewUser::new().op),
            ErrorCode::NotAuthorized,
        ),
        (
            "create_user with a 31-byte client auth key",
            create_user(&|p| p.client_auth_key = vec![1; 31].into()),
            ErrorCode::InvalidRequest,
        ),
        (
            "create_user with a 31-byte friendship token",
            create_user(&|p| p.friendship_token = vec![1; 31].into()),
            ErrorCode::InvalidRequest,
        ),
        (
            "create_user with a user auth key that is no key",
            create_user(&|p| p.user_auth_key = vec![1; 3].into()),
            ErrorCode::InvalidRequest,
        ),
        (
            "create_user with a 31-byte ratchet secret",
            create_user(&|p| p.initial_ratchet_secret = vec![1; 31].into()),
            ErrorCode::InvalidRequest,
        ),
        (
            "create_user with a friendship token in use",
            create_user(&|p| p.friendship_token = alice.friendship_token.to_vec().into()),
            ErrorCode::InvalidRequest,
        ),
        // publish_add_packages
        (
            "publish for an unknown client",
            qs_signed(
                &alice.client_key,
                unknown_client.clone(),
                publish_op(&[], b"l"),
            ),
            ErrorCode::UnknownClient,
        ),
        (
            "publish signed by another key",
            qs_signed(&stranger, me.clone(), publish_op(&[], b"l")),
            ErrorCode::InvalidSignature,
        ),
        (
            "publish, anonymous",
            qs_anon(publish_op(&[], b"l")),
            ErrorCode::NotAuthorized,
        ),
        (
            "publish by the user key",
            qs_signed(&alice.user_key, as_user.clone(), publish_op(&[], b"l")),
            ErrorCode::NotAuthorized,
        ),
        (
            "publish too many packages",
            alice.request(publish_op(&vec![&b"p"[..]; MAX_ADD_PACKAGES + 1], b"l")),
            ErrorCode::InvalidRequest,
        ),
        (
            "publish without a last-resort package",
            alice.request(publish_op(&[b"p"], b"")),
            ErrorCode::InvalidRequest,
        ),
        // fetch_add_packages
        (
            "fetch by an unknown token",
            qs_anon(fetch_op(&random32())),
            ErrorCode::UnknownToken,
        ),
        (
            "fetch signed by a client",
            alice.request(fetch_op(&alice.friendship_token)),
            ErrorCode::NotAuthorized,
        ),
        (
            "fetch from a new client",
            qs_signed(
                &stranger,
                QsSender::NewClient,
                fetch_op(&alice.friendship_token),
            ),
            ErrorCode::NotAuthorized,
        ),
        // dequeue
        (
            "dequeue of an unknown client",
            qs_signed(
                &alice.client_key,
                unknown_client.clone(),
                alice.dequeue(1).tbs.operation,
            ),
            ErrorCode::UnknownClient,
        ),
        (
            "dequeue signed by another key",
            qs_signed(&stranger, me.clone(), alice.dequeue(1).tbs.operation),
            ErrorCode::InvalidSignature,
        ),
        (
            "dequeue, anonymous",
            qs_anon(alice.dequeue(1).tbs.operation),
            ErrorCode::NotAuthorized,
        ),
        (
            "dequeue by the user key",
            qs_signed(
                &alice.user_key,
                as_user.clone(),
                alice.dequeue(1).tbs.operation,
            ),
            ErrorCode::NotAuthorized,
        ),
        // rekey_queue
        (
            "rekey with 31 bytes",
            alice.request(Op::RekeyQueue(vec![1; 31].into())),
            ErrorCode::InvalidRequest,
        ),
        (
            "rekey of an unknown client",
            qs_signed(&alice.client_key, unknown_client.clone(), rekey()),
            ErrorCode::UnknownClient,
        ),
        (
            "rekey signed by another key",
            qs_signed(&stranger, me.clone(), rekey()),
            ErrorCode::InvalidSignature,
        ),
        (
            "rekey, anonymous",
            qs_anon(rekey()),
            ErrorCode::NotAuthorized,
        ),
        // create_client
        (
            "create_client for an unknown user",
            qs_signed(&alice.user_key, QsSender::User([9; 16]), new_client()),
            ErrorCode::UnknownUser,
        ),
        (
            "create_client signed by the client key",
            qs_signed(&alice.client_key, as_user.clone(), new_client()),
            ErrorCode::InvalidSignature,
        ),
        (
            "create_client signed as a client",
            alice.request(new_client()),
            ErrorCode::NotAuthorized,
        ),
        (
            "create_client, anonymous",
            qs_anon(new_client()),
            ErrorCode::NotAuthorized,
        ),
        (
            "create_client with a bad client auth key",
            qs_signed(
                &alice.user_key,
                as_user.clone(),
                Op::CreateClient(CreateClient {
                    client_auth_key: vec![1; 5].into(),
                    initial_ratchet_secret: random32().to_vec().into(),
                    device_tag: Vec::new().into(),
                }),
            ),
            ErrorCode::InvalidRequest,
        ),
        (
            "create_client with a 31-byte ratchet secret",
            qs_signed(
                &alice.user_key,
                as_user.clone(),
                create_client_op(&SigningKey::generate(), &[1; 31]),
            ),
            ErrorCode::InvalidRequest,
        ),
        // delete_client
        (
            "delete of an unknown client",
            qs_signed(&alice.client_key, unknown_client, Op::DeleteClient),
            ErrorCode::UnknownClient,
        ),
        (
            "delete signed by another key",
            qs_signed(&stranger, me, Op::DeleteClient),
            ErrorCode::InvalidSignature,
        ),
        (
            "delete by the user key",
            qs_signed(&alice.user_key, as_user, Op::DeleteClient),
            ErrorCode::NotAuthorized,
        ),
        (
            "delete, anonymous",
            qs_anon(Op::DeleteClient),
            ErrorCode::NotAuthorized,
        ),
    ];
    assert_cases(&hub, cases);
    // Positive control: the prepared client is still served.
    hub.ok(&alice.dequeue(10));
}

#[test]
fn a_user_has_at_most_64_clients() {
    let hub = TestHub::new();
    let alice = QsClient::register(&hub);
    for _ in 1..crate::core::limits::MAX_CLIENTS_PER_USER {
        add_client(&hub, &alice);
    }
    assert_eq!(
        alice.user(&hub).unwrap().clients.len(),
        crate::core::limits::MAX_CLIENTS_PER_USER
    );
    let req = qs_signed(
        &alice.user_key,
        QsSender::User(alice.user_id),
        create_client_op(&SigningKey::generate(), &random32()),
    );
    hub.assert_refused(&req, ErrorCode::LimitExceeded);
}

#[test]
fn with_the_token_gate_on_record_creation_needs_a_token_but_reading_a_queue_does_not() {
    let open = TestHub::new();
    let alice = QsClient::register(&open);
    let gated = TestHub::with(|c| c.tokens = tokens::TokenPolicy::default());
    gated.assert_refused(&NewUser::new().request(), ErrorCode::TokenRequired);
    gated.assert_refused(&qs_anon(fetch_op(&random32())), ErrorCode::TokenRequired);
    // Not rate-limited: answered by the core (this client does not exist on the gated hub).
    gated.assert_refused(&alice.dequeue(1), ErrorCode::UnknownClient);
    gated.ok(&qs_anon(Op::EncryptionKey));
}

#[test]
fn the_ids_a_request_creates_come_from_the_hubs_id_source() {
    let hub = TestHub::counting_ids();
    let QsResponse::UserCreated(ids) = hub.ok(&NewUser::new().request()) else {
        panic!("expected UserCreated")
    };
    // Hub start-up takes no ids; the request takes the user's id, then its first client's.
    assert_eq!(ids.user_id, counted_id(1));
    assert_eq!(ids.client_id, counted_id(2));
    assert!(hub.record::<ClientRecord>(&counted_id(2)).is_some());
}

/// A sibling removes a device's client by its tag: record, ratchet, queue and AddPackages
/// go, the user key is replaced so the old one (which the removed device holds) authorises
/// nothing, and a retry signed with the new key changes nothing.
#[test]
fn remove_user_client_deletes_the_tagged_client_and_rotates_the_user_key() {
    let hub = TestHub::new();
    let alice = QsClient::register(&hub);
    // Alice's second device, created with a tag.
    let new = NewUser::new();
    let tag = [0x7a; 32];
    let op = Op::CreateClient(CreateClient {
        client_auth_key: new.client_key.verifying_key().as_bytes().to_vec().into(),
        initial_ratchet_secret: new.ratchet_secret.to_vec().into(),
        device_tag: tag.to_vec().into(),
    });
    let QsResponse::ClientCreated(second) = hub.ok(&qs_signed(
        &alice.user_key,
        QsSender::User(alice.user_id),
        op,
    )) else {
        panic!("expected ClientCreated")
    };
    let second = QsClient::of(new, alice.user_id, second);
    hub.ok(&second.request(publish_op(&[b"pkg"], b"last")));
    enqueue(&hub, &second.client_id, &[message(1)]);
    assert!(hub.record::<RatchetRecord>(&second.client_id).is_some());

    let next = SigningKey::generate();
    let remove = |signer: &SigningKey, tag: [u8; 32]| {
        qs_signed(
            signer,
            QsSender::User(alice.user_id),
            Op::RemoveUserClient(RemoveUserClient {
                device_tag: tag,
                new_user_auth_key: next.verifying_key().as_bytes().to_vec().into(),
            }),
        )
    };
    let first = remove(&alice.user_key, tag);
    assert_eq!(hub.ok(&first), QsResponse::Ok);
    // The same signed request again is a replay (and its old key no longer verifies anyway).
    hub.assert_refused(&first, ErrorCode::InvalidSignature);
    assert!(hub.record::<ClientRecord>(&second.client_id).is_none());
    assert!(hub.record::<RatchetRecord>(&second.client_id).is_none());
    for cf in [Cf::QsQueues, Cf::QsAddPackages] {
        assert!(
            client_rows(&hub, cf, &second.client_id).is_empty(),
            "{cf:?}"
        );
    }
    let user = alice.user(&hub).unwrap();
    assert_eq!(user.clients, vec![alice.client_id]);
    assert_eq!(
        user.user_auth_key.as_slice(),
        next.verifying_key().as_bytes()
    );
    // The old user key (the removed device has it) creates nothing any more.
    assert_user_key_retired(&hub, &alice);
    hub.assert_refused(&second.dequeue(10), ErrorCode::UnknownClient);
    // A retry under the new key finds nothing to delete and changes nothing; replaying that
    // retry is refused as a replay.
    let before = hub.dump();
    let retry = remove(&next, tag);
    assert_eq!(hub.ok(&retry), QsResponse::Ok);
    assert!(before == hub.dump());
    hub.assert_refused(&retry, ErrorCode::Replayed);
    // Refusals: a bad new key, a wrong signer.
    let bad_key = qs_signed(
        &next,
        QsSender::User(alice.user_id),
        Op::RemoveUserClient(RemoveUserClient {
            device_tag: tag,
            new_user_auth_key: vec![1; 5].into(),
        }),
    );
    hub.assert_refused(&bad_key, ErrorCode::InvalidRequest);
    hub.assert_refused(
        &remove(&SigningKey::generate(), tag),
        ErrorCode::InvalidSignature,
    );
}

/// Rotating the user moves its AddPackages to a new friendship token in one batch: the old
/// token (which a removed contact or device holds) finds nothing, the new one finds every
/// client's packages, the old user key authorises nothing, and a repeat signed with the new key
/// changes nothing. Bad tokens and keys are refused with their codes and change nothing.
#[test]
fn rotate_user_moves_the_friendship_token_and_the_user_key() {
    use mimi_rm_protocol::qs::RotateUser;
    let hub = TestHub::new();
    let alice = QsClient::register(&hub);
    hub.ok(&alice.request(publish_op(&[b"pkg"], b"last")));
    let bob = QsClient::register(&hub);
    let fetched = |token: &[u8]| match hub.ok(&qs_anon(fetch_op(token))) {
        QsResponse::AddPackages(p) => p.len(),
        other => panic!("expected AddPackages, got {other:?}"),
    };
    assert_eq!(fetched(&alice.friendship_token), 1, "control");

    let next = SigningKey::generate();
    let token = [0x5e; 32];
    let rotate = |signer: &SigningKey, token: &[u8], key: &[u8]| {
        qs_signed(
            signer,
            QsSender::User(alice.user_id),
            Op::RotateUser(RotateUser {
                new_user_auth_key: key.to_vec().into(),
                new_friendship_token: token.to_vec().into(),
            }),
        )
    };
    let next_pk = next.verifying_key().as_bytes().to_vec();
    // Refusals first: each changes nothing.
    let before = hub.dump();
    for (req, code) in [
        (
            rotate(&alice.user_key, &token[..31], &next_pk),
            ErrorCode::InvalidRequest,
        ),
        (
            rotate(&alice.user_key, &token, &[1; 5]),
            ErrorCode::InvalidRequest,
        ),
        // Another user's token cannot be taken over.
        (
            rotate(&alice.user_key, &bob.friendship_token, &next_pk),
            ErrorCode::InvalidRequest,
        ),
        (
            rotate(&SigningKey::generate(), &token, &next_pk),
            ErrorCode::InvalidSignature,
        ),
    ] {
        hub.assert_refused(&req, code);
    }
    assert!(before == hub.dump());
    // Broken framings are refused; the untouched request, accepted last, rotates.
    assert_framing_refusals(&hub, &rotate(&alice.user_key, &token, &next_pk));
    hub.assert_refused(
        &qs_anon(fetch_op(&alice.friendship_token)),
        ErrorCode::UnknownToken,
    );
    assert_eq!(fetched(&token), 1);
    let user = alice.user(&hub).unwrap();
    assert_eq!(user.user_auth_key.as_slice(), next_pk.as_slice());
    assert_eq!(
        hub.rows(Cf::QsFriendship).len(),
        2,
        "alice's new entry and bob's"
    );
    // The old key creates nothing any more; a repeat under the new key changes nothing.
    assert_user_key_retired(&hub, &alice);
    let before = hub.dump();
    let repeat = rotate(&next, &token, &next_pk);
    assert_eq!(hub.ok(&repeat), QsResponse::Ok);
    assert!(before == hub.dump());
    hub.assert_refused(&repeat, ErrorCode::Replayed);
}
