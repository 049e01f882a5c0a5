//! Registration is not free: with tokens on, `RegisterUser` costs a *registration* token — from
//! an issuer key of its own, so it never pays for a request nor a request token for a
//! registration — bought with an invitation code, a registered device's vouch (a small
//! allowance per key epoch), or, at an open provider, a few per client address and epoch.
//! Every refusal answers its code and leaves the store unchanged; the allowances bound how
//! many handles anyone can make, so token allowances cannot be multiplied by registering.

use mimi_client_rm::tokens::{RegistrationPayment, fetch_registration_token};
use mimi_client_rm::{Client, RegisterOptions};
use mimi_ds_rm::store::Cf;
use mimi_rm_crypto::sign::SigningKey;
use mimi_rm_protocol::auth::AsOperation;
use mimi_rm_protocol::credentials::{ClientCredentialCsr, ClientIdentity};
use mimi_rm_protocol::tokens::{
    PresentedToken, REGISTRATION_REQUEST_PATH, TOKEN_REQUEST_CONTENT_TYPE, decode_b64url,
};
use mimi_rm_protocol::{ErrorCode, paths};
use mimi_rm_tests::common::*;
use mimi_rm_tests::{HubProcess, error_of, http_client, post_paid, post_with_headers};
use std::path::Path;

/// An anonymous `RegisterUser` for `handle` with a fresh key.
fn register_body(handle: &str) -> Vec<u8> {
    let key = SigningKey::generate();
    let identity = ClientIdentity {
        handle: handle.as_bytes().to_vec().into(),
        device: rand::random(),
    };
    as_anonymous(AsOperation::RegisterUser(
        ClientCredentialCsr::new(&key, identity).unwrap(),
    ))
}

/// A registration token from `hub`, paid as `payment` says.
async fn registration_token(
    hub: &HubProcess,
    payment: RegistrationPayment<'_>,
) -> Result<PresentedToken, mimi_client_rm::ClientError> {
    fetch_registration_token(&http_client(None), &hub.url(), DOMAIN, payment).await
}

/// Registers `name` under `dir` with `options`.
async fn register(
    hub: &HubProcess,
    dir: &Path,
    name: &str,
    options: &RegisterOptions<'_>,
) -> Result<Client, mimi_client_rm::ClientError> {
    Client::register_with(&dir.join(name), &hub.url(), name, options).await
}

/// How many handles the AS holds.
fn users(hub: &HubProcess) -> usize {
    hub.dump()
        .iter()
        .filter(|(cf, _, _)| *cf == Cf::AsUsers)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_registration_costs_a_registration_token_of_a_small_allowance() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_with_config(
        dir.path(),
        "[privacy_pass]\nregistrations_per_address_per_epoch = 2\nregistration_allowance_per_epoch = 1\n",
    );
    // Unpaid: 401 with the code, nothing stored.
    rejected(
        &hub,
        paths::AS,
        register_body("mallory"),
        401,
        ErrorCode::TokenRequired,
    )
    .await;

    // The client pays transparently: two registrations from this address...
    let plain = RegisterOptions::default();
    let alice = register(&hub, dir.path(), "alice", &plain).await.unwrap();
    let bob = register(&hub, dir.path(), "bob", &plain).await.unwrap();
    assert_eq!(metric(&hub, "mimi_registration_tokens_issued").await, 2);
    // ... and no third: the address's allowance is used up (429), no handle is made.
    let err = register(&hub, dir.path(), "carol", &plain)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::AllowanceExhausted), "{err}");
    assert_eq!(users(&hub), 2);

    // A registered device vouches for carol (once per epoch).
    let vouch = alice.vouch().await.unwrap();
    let again = alice.vouch().await.unwrap_err();
    assert_eq!(again.code(), Some(ErrorCode::AllowanceExhausted), "{again}");
    let vouched = RegisterOptions {
        registration_token: Some(&vouch),
        ..Default::default()
    };
    let carol = register(&hub, dir.path(), "carol", &vouched).await.unwrap();
    assert_eq!(users(&hub), 3);
    // The same token again (another handle): spent.
    let token = PresentedToken::decode(&decode_b64url(&vouch).unwrap()).unwrap();
    let before = hub.dump();
    let (status, body) = post_paid(&hub.url(), paths::AS, register_body("dave"), &token).await;
    assert_eq!((status, error_of(&body).code), (401, ErrorCode::TokenSpent));
    assert!(
        before == hub.dump(),
        "a refused registration changed the store"
    );

    // A request token does not pay for a registration, nor a registration token for a request.
    let request_token = alice.take_token().await.unwrap();
    let before = hub.dump();
    let (status, body) =
        post_paid(&hub.url(), paths::AS, register_body("dave"), &request_token).await;
    assert_eq!(
        (status, error_of(&body).code),
        (401, ErrorCode::TokenInvalid)
    );
    assert!(before == hub.dump());
    let fresh = carol.vouch().await.unwrap();
    let fresh = PresentedToken::decode(&decode_b64url(&fresh).unwrap()).unwrap();
    let fetch = add_package_fetch(&bob.contact_card().unwrap().friendship_token);
    let before = hub.dump();
    let (status, body) = post_paid(&hub.url(), paths::QS, fetch, &fresh).await;
    assert_eq!(
        (status, error_of(&body).code),
        (401, ErrorCode::TokenInvalid)
    );
    assert!(before == hub.dump());
    // Positive control: that registration token registers.
    let (status, _) = post_paid(&hub.url(), paths::AS, register_body("dave"), &fresh).await;
    assert_eq!(status, 200);
    assert_eq!(users(&hub), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_token_requests_are_checked_like_any_issuance() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_with_config(dir.path(), "registration = \"invite\"\n");
    let url = hub.url();
    let post = |body: Vec<u8>, headers: Vec<(&'static str, String)>| {
        let url = url.clone();
        async move {
            let (status, body, _) =
                post_with_headers(&url, REGISTRATION_REQUEST_PATH, body, &headers).await;
            (status, error_of(&body).code)
        }
    };
    let ct = || ("content-type", TOKEN_REQUEST_CONTENT_TYPE.to_owned());
    let before = hub.dump();
    // A type 2 request is 259 bytes: type, key id, blinded message.
    let mut good = vec![0x00, 0x02, 0x00];
    good.extend([7u8; 256]);
    for (case, body, headers, expected) in [
        (
            "truncated",
            vec![0x00],
            vec![ct()],
            (422, ErrorCode::Malformed),
        ),
        (
            "type 5",
            vec![0x00, 0x05, 1, 2],
            vec![ct()],
            (422, ErrorCode::TokenWrongType),
        ),
        (
            "wrong length",
            good[..100].to_vec(),
            vec![ct()],
            (422, ErrorCode::Malformed),
        ),
        (
            "wrong content type",
            good.clone(),
            vec![],
            (422, ErrorCode::InvalidRequest),
        ),
    ] {
        assert_eq!(post(body, headers).await, expected, "{case}");
    }
    // Unpaid at an invitation-only provider, or paid with an unknown code.
    let err = registration_token(&hub, RegistrationPayment::Open)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotAuthorized), "{err}");
    let err = registration_token(&hub, RegistrationPayment::Invite("nope"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotAuthorized), "{err}");
    assert!(before == hub.dump(), "a refused issuance changed the store");
}

/// One invitation code buys one registration token, even when four clients present it at
/// once; the token then registers one handle, and a registration with the code itself
/// (`RegisterInvited`) finds it used. Vouching is off at an invitation-only provider by
/// default, so registered users cannot multiply beyond the codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_invitation_code_buys_one_registration_token_even_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut hub = hub_with_config(dir.path(), "registration = \"invite\"\n");
    hub.stop();
    let out = std::process::Command::new(hub_binary())
        .args(["invite", "--count", "1"])
        .args(hub.store_args())
        .output()
        .unwrap();
    assert!(out.status.success());
    let code = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    hub.restart();

    let attempts = (0..4).map(|_| registration_token(&hub, RegistrationPayment::Invite(&code)));
    let results = futures_util::future::join_all(attempts).await;
    let bought: Vec<PresentedToken> = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .cloned()
        .collect();
    assert_eq!(bought.len(), 1, "{results:?}");
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(r.code(), Some(ErrorCode::NotAuthorized), "{r}");
    }
    assert!(hub.dump().iter().all(|(cf, _, _)| *cf != Cf::AsInvites));
    let token = mimi_rm_protocol::tokens::encode_b64url(&bought[0].encode());
    let options = RegisterOptions {
        registration_token: Some(&token),
        ..Default::default()
    };
    let alice = register(&hub, dir.path(), "alice", &options).await.unwrap();
    let err = Client::register_invited(&dir.path().join("bob"), &hub.url(), "bob", None, &code)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotAuthorized), "{err}");
    assert_eq!(users(&hub), 1);
    let err = alice.vouch().await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::AllowanceExhausted), "{err}");
}
