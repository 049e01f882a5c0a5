//! The authentication service against a real hub process: registration, adding devices,
//! publishing the AS chain, listing a user's clients, and every rejection leaving the store
//! byte-for-byte unchanged.

use mimi_client_rm::envelope;
use mimi_ds_rm::store::Cf;
use mimi_rm_crypto::sign::SigningKey;
use mimi_rm_protocol::auth::*;
use mimi_rm_protocol::credentials::*;
use mimi_rm_protocol::{ErrorCode, TransactionType, VLBytes, decode_exact, encode, paths};
use mimi_rm_tests::common::*;
use mimi_rm_tests::{HubProcess, contains, error_of, http_client, post, post_paid};

/// One device of a user: its long-term key and identity.
struct Device {
    key: SigningKey,
    identity: ClientIdentity,
}

fn device(handle: &str) -> Device {
    Device {
        key: SigningKey::generate(),
        identity: ClientIdentity {
            handle: handle.as_bytes().to_vec().into(),
            device: rand::random(),
        },
    }
}

fn csr(d: &Device) -> ClientCredentialCsr {
    ClientCredentialCsr::new(&d.key, d.identity.clone()).unwrap()
}

/// An AddClient for `new`, sent by `by` and signed with `signer`.
fn add_client(by: &Device, new: &Device, signer: &SigningKey) -> Vec<u8> {
    as_request(
        AsSender::Client(by.identity.clone()),
        AsOperation::AddClient(csr(new)),
        Some(signer),
    )
}

async fn ok(hub: &HubProcess, body: Vec<u8>) -> AsResponse {
    let (status, resp) = post(&hub.url(), paths::AS, body).await;
    assert_eq!(status, 200, "{}", error_of(&resp));
    decode_exact(&resp, 1 << 20).unwrap()
}

async fn issued(hub: &HubProcess, body: Vec<u8>) -> ClientCredential {
    match ok(hub, body).await {
        AsResponse::ClientCredential(c) => c,
        other => panic!("expected a credential, got {other:?}"),
    }
}

/// Registers `d`, paying with a registration token of the open allowance when the hub asks
/// for one (as the client does).
async fn register(hub: &HubProcess, d: &Device) -> ClientCredential {
    let body = as_anonymous(AsOperation::RegisterUser(csr(d)));
    let (status, resp) = post(&hub.url(), paths::AS, body.clone()).await;
    let resp = if status == 401 {
        assert_eq!(error_of(&resp).code, ErrorCode::TokenRequired);
        let token = mimi_client_rm::tokens::fetch_registration_token(
            &http_client(None),
            &hub.url(),
            DOMAIN,
            mimi_client_rm::tokens::RegistrationPayment::Open,
        )
        .await
        .unwrap();
        let (status, resp) = post_paid(&hub.url(), paths::AS, body, &token).await;
        assert_eq!(status, 200, "{}", error_of(&resp));
        resp
    } else {
        assert_eq!(status, 200, "{}", error_of(&resp));
        resp
    };
    match decode_exact(&resp, 1 << 20).unwrap() {
        AsResponse::ClientCredential(c) => c,
        other => panic!("expected a credential, got {other:?}"),
    }
}

async fn anchors(hub: &HubProcess) -> AsCredentials {
    match ok(hub, as_anonymous(AsOperation::AsCredentials)).await {
        AsResponse::AsCredentials(a) => a,
        other => panic!("expected AS credentials, got {other:?}"),
    }
}

async fn user_clients(hub: &HubProcess, handle: &str) -> Vec<ClientCredential> {
    let handle: VLBytes = handle.as_bytes().to_vec().into();
    match ok(hub, as_anonymous(AsOperation::UserClients(handle))).await {
        AsResponse::UserClients(c) => c,
        other => panic!("expected client credentials, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_add_a_device_and_list_clients() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path());
    let chain = anchors(&hub).await;
    assert_eq!((chain.roots.len(), chain.intermediates.len()), (1, 1));
    assert_eq!(chain.roots[0].tbs.as_domain.as_slice(), b"hub.test");

    let phone = device("alice");
    let cred = register(&hub, &phone).await;
    cred.verify_chain(&chain, now_s()).unwrap();
    assert_eq!(cred.tbs.identity, phone.identity);
    assert_eq!(
        cred.tbs.public_key.as_slice(),
        phone.key.verifying_key().as_bytes()
    );
    assert_eq!(user_clients(&hub, "alice").await, vec![cred.clone()]);

    let laptop = device("alice");
    let second = issued(&hub, add_client(&phone, &laptop, &phone.key)).await;
    second.verify_chain(&chain, now_s()).unwrap();
    assert_eq!(second.tbs.identity, laptop.identity);
    assert_eq!(user_clients(&hub, "alice").await, vec![cred, second]);

    // The new device can add a third one itself.
    let tablet = device("alice");
    issued(&hub, add_client(&laptop, &tablet, &laptop.key)).await;
    assert_eq!(user_clients(&hub, "alice").await.len(), 3);

    // The AS keys survive a restart: earlier credentials still verify against the new answer.
    let mut hub = hub;
    hub.restart();
    assert_eq!(anchors(&hub).await, chain);

    // The identity lives in the AS families only.
    for (cf, k, v) in hub.dump() {
        if !matches!(cf, Cf::AsUsers | Cf::AsKeys) {
            assert!(!contains(&k, b"alice") && !contains(&v, b"alice"), "{cf:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejection_leaves_the_store_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    // A refused registration would still spend its token (`registration.rs` shows that): the
    // requests here must reach the AS's own checks.
    let hub = hub_without_tokens(dir.path());
    let alice = device("alice");
    register(&hub, &alice).await;
    let bob = device("bob");
    register(&hub, &bob).await;

    // Duplicate handle, from another key and device.
    let body = as_anonymous(AsOperation::RegisterUser(csr(&device("alice"))));
    rejected(&hub, paths::AS, body, 409, ErrorCode::HandleTaken).await;

    // Invalid handles.
    let long = "x".repeat(65);
    for bad in ["", "Alice", "al ice", "al/ice", "\u{e0}lice", long.as_str()] {
        let body = as_anonymous(AsOperation::RegisterUser(csr(&device(bad))));
        rejected(&hub, paths::AS, body, 400, ErrorCode::InvalidHandle).await;
    }
    let body = as_anonymous(AsOperation::UserClients(b"Bad Handle".to_vec().into()));
    rejected(&hub, paths::AS, body, 400, ErrorCode::InvalidHandle).await;

    // A CSR whose signature is not by its key.
    let carol = device("carol");
    let mut forged = csr(&carol);
    forged.signature = SigningKey::generate()
        .sign(CSR_LABEL, &encode(&forged.tbs).unwrap())
        .into();
    let body = as_anonymous(AsOperation::RegisterUser(forged.clone()));
    rejected(&hub, paths::AS, body, 403, ErrorCode::InvalidSignature).await;

    // A CSR with a good request signature but a forged proof of possession.
    let body = as_request(
        AsSender::Client(alice.identity.clone()),
        AsOperation::AddClient(ClientCredentialCsr {
            tbs: ClientCredentialCsrTbs {
                identity: ClientIdentity {
                    handle: b"alice".to_vec().into(),
                    device: [9; 16],
                },
                ..forged.tbs.clone()
            },
            signature: forged.signature.clone(),
        }),
        Some(&alice.key),
    );
    rejected(&hub, paths::AS, body, 403, ErrorCode::InvalidSignature).await;

    // AddClient signed by a key that is not the sender's credential key.
    let body = add_client(&alice, &device("alice"), &bob.key);
    rejected(&hub, paths::AS, body, 403, ErrorCode::InvalidSignature).await;

    // AddClient for another user's handle.
    let body = add_client(&alice, &device("bob"), &alice.key);
    rejected(&hub, paths::AS, body, 403, ErrorCode::NotAuthorized).await;

    // AddClient without a signed sender.
    let body = as_anonymous(AsOperation::AddClient(csr(&device("alice"))));
    rejected(&hub, paths::AS, body, 403, ErrorCode::NotAuthorized).await;

    // An anonymous request that carries a signature anyway.
    let tbs = AsRequestTbs {
        timestamp_ms: mimi_ds_rm::now_ms(),
        nonce: rand::random(),
        sender: AsSender::Anonymous,
        operation: AsOperation::RegisterUser(csr(&device("erin"))),
    };
    let body = envelope(
        TransactionType::AuthService,
        &AsRequest {
            tbs,
            signature: vec![1; 64].into(),
        },
    )
    .unwrap();
    rejected(&hub, paths::AS, body, 400, ErrorCode::InvalidRequest).await;

    // A client signing an anonymous operation.
    let body = as_request(
        AsSender::Client(alice.identity.clone()),
        AsOperation::AsCredentials,
        Some(&alice.key),
    );
    rejected(&hub, paths::AS, body, 403, ErrorCode::NotAuthorized).await;

    // Unknown senders: unknown handle, and unknown device of a known handle.
    let body = add_client(&carol, &device("carol"), &carol.key);
    rejected(&hub, paths::AS, body, 404, ErrorCode::UnknownUser).await;
    let stranger = Device {
        key: SigningKey::generate(),
        identity: ClientIdentity {
            handle: b"alice".to_vec().into(),
            device: [0xaa; 16],
        },
    };
    let body = add_client(&stranger, &device("alice"), &stranger.key);
    rejected(&hub, paths::AS, body, 404, ErrorCode::UnknownUser).await;
    let body = as_anonymous(AsOperation::UserClients(b"carol".to_vec().into()));
    rejected(&hub, paths::AS, body, 404, ErrorCode::UnknownUser).await;

    // A replayed signed request.
    let body = add_client(&alice, &device("alice"), &alice.key);
    let (status, resp) = post(&hub.url(), paths::AS, body.clone()).await;
    assert_eq!(status, 200, "{}", error_of(&resp));
    rejected(&hub, paths::AS, body, 403, ErrorCode::Replayed).await;

    // A stale request.
    let tbs = AsRequestTbs {
        timestamp_ms: mimi_ds_rm::now_ms() - 10 * 60 * 1000,
        nonce: rand::random(),
        sender: AsSender::Client(alice.identity.clone()),
        operation: AsOperation::AddClient(csr(&device("alice"))),
    };
    let signature = alice
        .key
        .sign(AS_REQUEST_SIGNATURE_LABEL, &encode(&tbs).unwrap());
    let body = envelope(
        TransactionType::AuthService,
        &AsRequest {
            tbs,
            signature: signature.into(),
        },
    )
    .unwrap();
    rejected(&hub, paths::AS, body, 403, ErrorCode::StaleRequest).await;

    // Malformed and truncated bodies, in the envelope and in the AS request inside it.
    rejected(&hub, paths::AS, vec![0xff; 7], 400, ErrorCode::Malformed).await;
    rejected(&hub, paths::AS, Vec::new(), 400, ErrorCode::Malformed).await;
    let good = add_client(&alice, &device("alice"), &alice.key);
    for cut in [1, 5, good.len() / 2, good.len() - 1] {
        let body = good[..cut].to_vec();
        rejected(&hub, paths::AS, body, 400, ErrorCode::Malformed).await;
    }
    let mut trailing = good.clone();
    trailing.push(0);
    rejected(&hub, paths::AS, trailing, 400, ErrorCode::Malformed).await;
    let payload = encode(&AsRequest {
        tbs: AsRequestTbs {
            timestamp_ms: mimi_ds_rm::now_ms(),
            nonce: [0; 16],
            sender: AsSender::Anonymous,
            operation: AsOperation::RegisterUser(csr(&device("dave"))),
        },
        signature: Vec::new().into(),
    })
    .unwrap();
    // A well-formed envelope around a truncated AS request.
    let body = encode(&mimi_rm_protocol::Envelope::new(
        TransactionType::AuthService,
        payload[..payload.len() - 3].to_vec(),
    ))
    .unwrap();
    rejected(&hub, paths::AS, body, 400, ErrorCode::Malformed).await;

    // An AS request at another endpoint, and a DS envelope at the AS endpoint.
    let body = as_anonymous(AsOperation::AsCredentials);
    rejected(&hub, paths::QS, body, 400, ErrorCode::WrongEndpoint).await;
    let body = encode(&mimi_rm_protocol::Envelope::new(
        TransactionType::QueueService,
        Vec::new(),
    ))
    .unwrap();
    rejected(&hub, paths::AS, body, 400, ErrorCode::WrongEndpoint).await;

    // After all that, alice has her two credentials and bob his one.
    assert_eq!(user_clients(&hub, "alice").await.len(), 2);
    assert_eq!(user_clients(&hub, "bob").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_credential_cannot_add_clients() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_with_config(dir.path(), "client_credential_lifetime_secs = 1");
    let alice = device("alice");
    let cred = register(&hub, &alice).await;
    assert_eq!(
        cred.tbs.expiration.not_after - cred.tbs.expiration.not_before,
        1
    );
    // Expiry is checked in whole seconds: after 2.5 s the credential is past `not_after`.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let body = add_client(&alice, &device("alice"), &alice.key);
    rejected(&hub, paths::AS, body, 403, ErrorCode::ExpiredCredential).await;
    // Listing shows only current credentials.
    assert!(user_clients(&hub, "alice").await.is_empty());
}

/// A connection package of `d` (credential `cred`), valid for `lifetime` seconds.
fn package(
    d: &Device,
    cred: &ClientCredential,
    lifetime: u64,
) -> mimi_rm_protocol::connection::ConnectionPackage {
    use mimi_rm_protocol::connection::*;
    let kp = mimi_rm_crypto::hpke_seal::HpkeKeyPair::generate();
    ConnectionPackage::sign(
        &d.key,
        ConnectionPackageTbs {
            encryption_key: kp.public.as_bytes().to_vec().into(),
            expiration: ExpirationData::starting(now_s(), lifetime),
            client_credential: cred.clone(),
        },
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_operations_refuse_bad_input_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path());
    let alice = device("alice");
    let alice_cred = register(&hub, &alice).await;
    let bob = device("bob");
    let bob_cred = register(&hub, &bob).await;
    let publish = |pkgs| AsOperation::PublishConnectionPackages(pkgs);
    let as_alice =
        |op, key: &SigningKey| as_request(AsSender::Client(alice.identity.clone()), op, Some(key));
    let good = as_alice(
        publish(vec![package(&alice, &alice_cred, 3600)]),
        &alice.key,
    );
    let (status, resp) = post(&hub.url(), paths::AS, good.clone()).await;
    assert_eq!(status, 200, "{}", error_of(&resp));

    // Replayed, wrongly signed, truncated, oversized.
    rejected(&hub, paths::AS, good.clone(), 403, ErrorCode::Replayed).await;
    let body = as_alice(publish(vec![package(&alice, &alice_cred, 3600)]), &bob.key);
    rejected(&hub, paths::AS, body, 403, ErrorCode::InvalidSignature).await;
    rejected(
        &hub,
        paths::AS,
        good[..good.len() - 3].to_vec(),
        400,
        ErrorCode::Malformed,
    )
    .await;
    rejected(
        &hub,
        paths::AS,
        vec![0; MAX_BODY + 1],
        413,
        ErrorCode::TooLarge,
    )
    .await;
    // Packages that are not the sender's, do not verify, live too long, or none at all.
    let body = as_alice(publish(vec![package(&bob, &bob_cred, 3600)]), &alice.key);
    rejected(&hub, paths::AS, body, 403, ErrorCode::NotAuthorized).await;
    let mut forged = package(&alice, &alice_cred, 3600);
    forged.signature = vec![7; 64].into();
    let body = as_alice(publish(vec![forged]), &alice.key);
    rejected(&hub, paths::AS, body, 400, ErrorCode::InvalidRequest).await;
    let body = as_alice(
        publish(vec![package(&alice, &alice_cred, 400 * 86_400)]),
        &alice.key,
    );
    rejected(&hub, paths::AS, body, 400, ErrorCode::InvalidRequest).await;
    let body = as_alice(publish(Vec::new()), &alice.key);
    rejected(&hub, paths::AS, body, 400, ErrorCode::InvalidRequest).await;
    // Reading an inbox is signed; unsigned it is refused, and a read is served once.
    let body = as_anonymous(AsOperation::FetchConnectionRequests);
    rejected(&hub, paths::AS, body, 403, ErrorCode::NotAuthorized).await;
    let read = as_alice(AsOperation::FetchConnectionRequests, &alice.key);
    let (status, _) = post(&hub.url(), paths::AS, read.clone()).await;
    assert_eq!(status, 200);
    rejected(&hub, paths::AS, read, 403, ErrorCode::Replayed).await;
    // Asking a stranger costs a token.
    let body = as_anonymous(AsOperation::FetchConnectionPackage(
        b"alice".to_vec().into(),
    ));
    rejected(&hub, paths::AS, body, 401, ErrorCode::TokenRequired).await;
}

/// A provider that registers by invitation only: the operator makes codes with `ds-rm invite`
/// on the stopped hub; a registration without a code, with an unknown one or with a used one
/// is refused; each code registers one user, who then works as any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invitation_only_registration_takes_each_code_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut hub = hub_with_config(dir.path(), "registration = \"invite\"\n");
    hub.stop();
    let out = std::process::Command::new(hub_binary())
        .args(["invite", "--count", "2"])
        .args(hub.store_args())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let codes: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(codes.len(), 2);
    assert!(
        !hub.dump()
            .iter()
            .any(|(_, k, v)| contains(k, codes[0].as_bytes()) || contains(v, codes[0].as_bytes())),
        "only hashes of the codes are stored"
    );
    hub.restart();

    let refused = |r: Result<mimi_client_rm::Client, mimi_client_rm::ClientError>| {
        r.err().and_then(|e| e.code())
    };
    let url = hub.url();
    assert_eq!(
        refused(mimi_client_rm::Client::register(&dir.path().join("a0"), &url, "alice").await),
        Some(ErrorCode::NotAuthorized)
    );
    assert_eq!(
        refused(
            mimi_client_rm::Client::register_invited(
                &dir.path().join("a1"),
                &url,
                "alice",
                None,
                "nope"
            )
            .await
        ),
        Some(ErrorCode::NotAuthorized)
    );
    let mut alice = mimi_client_rm::Client::register_invited(
        &dir.path().join("a2"),
        &url,
        "alice",
        None,
        &codes[0],
    )
    .await
    .unwrap();
    assert_eq!(
        refused(
            mimi_client_rm::Client::register_invited(
                &dir.path().join("b1"),
                &url,
                "bob",
                None,
                &codes[0]
            )
            .await
        ),
        Some(ErrorCode::NotAuthorized)
    );
    let mut bob = mimi_client_rm::Client::register_invited(
        &dir.path().join("b2"),
        &url,
        "bob",
        None,
        &codes[1],
    )
    .await
    .unwrap();
    let g = group_of(&mut alice, &mut [&mut bob]).await;
    alice.send(&g, b"invited").await.unwrap();
    assert_eq!(
        messages(&bob.receive().await.unwrap()),
        vec![b"invited".to_vec()]
    );
    assert!(hub.dump().iter().all(|(cf, _, _)| *cf != Cf::AsInvites));
}
