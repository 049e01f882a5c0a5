//! Privacy Pass end to end, against real hub processes: challenges, transparent payment by the
//! client, double spending (sequential, concurrent, across a restart), every kind of bad token,
//! authenticated and limited issuance, and key rotation with expiry.

use mimi_client_rm::Client;
use mimi_ds_rm::store::Cf;
use mimi_rm_protocol::qs::{QsOperation, QsRequest, QsRequestTbs, QsSender};
use mimi_rm_protocol::tokens::{
    ISSUANCE_AUTH_HEADER, ISSUER_REQUEST_PATH, IssuerDirectory, PresentedToken, RateClass,
    TOKEN_REQUEST_CONTENT_TYPE, TYPE_AMORTIZED, TYPE_PUBLIC, challenge, decode_b64url,
    parse_www_authenticate,
};
use mimi_rm_protocol::{ErrorCode, TransactionType, paths};
use mimi_rm_tests::common::{DOMAIN, add_package_fetch, client, group_of, hub_with_config, metric};
use mimi_rm_tests::{HubProcess, error_of, post_paid, post_with_headers};
use std::path::Path;
use std::time::Duration;

/// An anonymous AddPackage fetch for `friendship_token`: rate-limited, with a visible effect
/// (one AddPackage handed out), so "accepted once" is observable.
fn fetch_body(friendship_token: &[u8]) -> Vec<u8> {
    add_package_fetch(friendship_token)
}

fn user_rows(hub: &HubProcess) -> Vec<(Cf, Vec<u8>, Vec<u8>)> {
    hub.dump()
        .into_iter()
        .filter(|(cf, _, _)| *cf != Cf::PpKeys)
        .collect()
}

fn spent_count(hub: &HubProcess) -> usize {
    hub.dump()
        .iter()
        .filter(|(cf, _, _)| *cf == Cf::PpSpent)
        .count()
}

async fn directory(url: &str) -> IssuerDirectory {
    let body = reqwest::get(format!(
        "{url}{}",
        mimi_rm_protocol::tokens::ISSUER_DIRECTORY_PATH
    ))
    .await
    .unwrap()
    .bytes()
    .await
    .unwrap();
    serde_json::from_slice(&body).unwrap()
}

async fn wallet_token(c: &Client) -> PresentedToken {
    c.take_token().await.expect("token from the wallet")
}

/// A client whose AddPackage fetches the tests spend tokens on.
async fn target(hub: &HubProcess, dir: &Path) -> [u8; 32] {
    let bob = client(hub, dir, "bob").await;
    bob.contact_card().unwrap().friendship_token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn challenges_name_our_keys_and_clients_pay_transparently() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_with_config(dir.path(), "");
    // Registration creates QS records, a rate-limited class: the client paid without being asked.
    let alice = client(&hub, dir.path(), "alice").await;
    let bob_token = target(&hub, dir.path()).await;
    assert!(spent_count(&hub) >= 2, "both registrations spent a token");

    let (status, body, headers) =
        post_with_headers(&hub.url(), paths::QS, fetch_body(&bob_token), &[]).await;
    assert_eq!(status, 401);
    assert_eq!(error_of(&body).code, ErrorCode::TokenRequired);
    let challenges: Vec<&str> = headers
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(
        challenges.len(),
        3,
        "one challenge per token type, the standard type first, then one grease: {challenges:?}"
    );
    // RFC 9577: the last one greases a reserved type with random contents.
    let grease = parse_www_authenticate(challenges[2]).unwrap();
    let grease_type = u16::from_be_bytes([grease[0].challenge[0], grease[0].challenge[1]]);
    assert!(
        mimi_rm_protocol::tokens::GREASE_TYPES.contains(&grease_type),
        "{grease_type:#06x}"
    );
    let dir_keys = directory(&hub.url()).await;
    for (header, tt) in challenges.iter().zip([TYPE_PUBLIC, TYPE_AMORTIZED]) {
        let parsed = parse_www_authenticate(header).unwrap();
        assert_eq!(parsed.len(), 1);
        let expected = challenge(DOMAIN, tt).unwrap().serialize().unwrap();
        assert_eq!(parsed[0].challenge, expected);
        // RFC 9576 §6 key consistency: the challenge names the key the directory publishes.
        let listed = dir_keys
            .token_keys
            .iter()
            .find(|k| k.token_type == tt)
            .unwrap();
        assert_eq!(
            parsed[0].token_key,
            decode_b64url(&listed.token_key).unwrap()
        );
    }

    // Paying with an amortized token and with a blind-RSA token both work.
    let t5 = wallet_token(&alice).await;
    assert_eq!(t5.token_type, TYPE_AMORTIZED);
    let (status, _) = post_paid(&hub.url(), paths::QS, fetch_body(&bob_token), &t5).await;
    assert_eq!(status, 200);
    let wallet = alice.wallet().unwrap();
    let t2 = wallet
        .fetch_public(&alice.transport().http().unwrap(), &hub.url())
        .await
        .unwrap();
    assert_eq!(t2.token_type, TYPE_PUBLIC);
    let (status, _) = post_paid(&hub.url(), paths::QS, fetch_body(&bob_token), &t2).await;
    assert_eq!(status, 200);

    // Reading the queue never costs a token.
    let spent = spent_count(&hub);
    let mut alice = alice;
    alice.receive().await.unwrap();
    assert_eq!(spent_count(&hub), spent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_scenario_runs_with_tokens_enforced_on_every_class() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_with_config(dir.path(), "");
    let scenario = mimi_rm_tests::scenario::run(&hub.url(), dir.path(), 5)
        .await
        .expect("the scenario runs with tokens enforced");
    // Every rate-limited request the clients sent (retries after a challenge carry the same
    // body) spent exactly one token; the five registrations spent one each before recording.
    let wire = scenario.wire.lock().unwrap().clone();
    let mut limited = std::collections::BTreeSet::new();
    let mut classes = std::collections::BTreeSet::new();
    for (path, body) in &wire {
        let env: mimi_rm_protocol::Envelope =
            mimi_rm_protocol::decode_exact(body, 1 << 22).unwrap();
        let class = match path.as_str() {
            paths::QS => {
                let r: QsRequest =
                    mimi_rm_protocol::decode_exact(env.payload.as_slice(), 1 << 22).unwrap();
                RateClass::of_qs(&r.tbs.operation)
            }
            paths::AS => {
                let r: mimi_rm_protocol::auth::AsRequest =
                    mimi_rm_protocol::decode_exact(env.payload.as_slice(), 1 << 22).unwrap();
                RateClass::of_as(&r.tbs.operation)
            }
            _ => {
                let r: mimi_rm_protocol::ds::DsRequest =
                    mimi_rm_protocol::decode_exact(env.payload.as_slice(), 1 << 22).unwrap();
                RateClass::of_ds(&r.tbs.operation)
            }
        };
        if let Some(c) = class {
            classes.insert(c);
            limited.insert(body.clone());
        }
    }
    for c in [
        RateClass::GroupCreation,
        RateClass::GroupOperation,
        RateClass::ApplicationMessage,
        RateClass::AddPackageFetch,
    ] {
        assert!(classes.contains(&c), "the scenario exercised {c:?}");
    }
    // The linked second device spent tokens before its requests were recorded: its queue
    // (QS record creation), then external-commit info and the external join in each group.
    let linked = scenario.clients.last().unwrap();
    let unrecorded = 1 + 2 * linked.groups().len();
    assert!(classes.contains(&RateClass::ConnectionRequest));
    // Each registration also spent a registration token (the open allowance per address).
    let registrations = 5;
    assert_eq!(
        spent_count(&hub),
        limited.len() + 5 + registrations + unrecorded
    );
    // The counters agree with the store.
    let spent = spent_count(&hub) as u64;
    assert_eq!(metric(&hub, "mimi_tokens_spent").await, spent);
    assert_eq!(
        metric(&hub, "mimi_registration_tokens_issued").await,
        registrations as u64
    );
    assert!(metric(&hub, "mimi_tokens_issued").await + registrations as u64 >= spent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_accepted_once_sequentially_concurrently_and_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut hub = hub_with_config(dir.path(), "");
    let alice = client(&hub, dir.path(), "alice").await;
    let bob_token = target(&hub, dir.path()).await;

    // Sequential.
    let t = wallet_token(&alice).await;
    let (status, _) = post_paid(&hub.url(), paths::QS, fetch_body(&bob_token), &t).await;
    assert_eq!(status, 200);
    let before = user_rows(&hub);
    let (status, body) = post_paid(&hub.url(), paths::QS, fetch_body(&bob_token), &t).await;
    assert_eq!((status, error_of(&body).code), (401, ErrorCode::TokenSpent));
    assert_eq!(user_rows(&hub), before, "a double spend changes nothing");

    // Concurrent: eight requests with one token, exactly one wins.
    let t = wallet_token(&alice).await;
    let url = hub.url();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (url, t, body) = (url.clone(), t.clone(), fetch_body(&bob_token));
            tokio::spawn(async move { post_paid(&url, paths::QS, body, &t).await })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        let (status, body) = task.await.unwrap();
        if status == 200 {
            ok += 1;
        } else {
            assert_eq!((status, error_of(&body).code), (401, ErrorCode::TokenSpent));
        }
    }
    assert_eq!(ok, 1, "exactly one concurrent acceptance");

    // Across a restart (and a crash): the spent nonce is durable.
    let t = wallet_token(&alice).await;
    let (status, _) = post_paid(&hub.url(), paths::QS, fetch_body(&bob_token), &t).await;
    assert_eq!(status, 200);
    hub.restart();
    let (status, body) = post_paid(&hub.url(), paths::QS, fetch_body(&bob_token), &t).await;
    assert_eq!((status, error_of(&body).code), (401, ErrorCode::TokenSpent));
    hub.crash_and_restart();
    let (status, body) = post_paid(&hub.url(), paths::QS, fetch_body(&bob_token), &t).await;
    assert_eq!((status, error_of(&body).code), (401, ErrorCode::TokenSpent));

    // A stale request is refused after its token was admitted: the token is spent too.
    let t = wallet_token(&alice).await;
    let stale = {
        let req = QsRequest {
            tbs: QsRequestTbs {
                timestamp_ms: mimi_ds_rm::now_ms() - 3_600_000,
                nonce: rand::random(),
                sender: QsSender::Anonymous,
                operation: QsOperation::FetchAddPackages(bob_token.to_vec().into()),
            },
            signature: Vec::new().into(),
        };
        mimi_client_rm::envelope(TransactionType::QueueService, &req).unwrap()
    };
    let (status, body) = post_paid(&hub.url(), paths::QS, stale, &t).await;
    assert_eq!(
        (status, error_of(&body).code),
        (403, ErrorCode::StaleRequest)
    );
    let (status, body) = post_paid(&hub.url(), paths::QS, fetch_body(&bob_token), &t).await;
    assert_eq!((status, error_of(&body).code), (401, ErrorCode::TokenSpent));

    // A refused request still costs its token (else one token buys endless validation).
    let t = wallet_token(&alice).await;
    let (status, body) = post_paid(&hub.url(), paths::QS, fetch_body(&[9; 32]), &t).await;
    assert_eq!(
        (status, error_of(&body).code),
        (404, ErrorCode::UnknownToken)
    );
    let (status, body) = post_paid(&hub.url(), paths::QS, fetch_body(&bob_token), &t).await;
    assert_eq!((status, error_of(&body).code), (401, ErrorCode::TokenSpent));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_get_401_with_their_code_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_with_config(dir.path(), "");
    let other_dir = tempfile::tempdir().unwrap();
    let other = hub_with_config(other_dir.path(), "");
    let alice = client(&hub, dir.path(), "alice").await;
    let carol = client(&other, other_dir.path(), "carol").await;
    let bob_token = target(&hub, dir.path()).await;

    let good = wallet_token(&alice).await;
    let mut truncated = good.to_authorization();
    truncated.truncate(truncated.len() - 8);
    let mut wrong_type = good.encode();
    wrong_type[1] = 0x01;
    let mut flipped = good.clone();
    flipped.authenticator[0] ^= 1;
    let foreign = wallet_token(&carol).await;
    let mut other_challenge = good.clone();
    other_challenge.challenge_digest[0] ^= 1;
    let b64 = mimi_rm_protocol::tokens::encode_b64url;

    let cases: Vec<(&str, Option<String>, ErrorCode)> = vec![
        ("missing", None, ErrorCode::TokenRequired),
        (
            "not base64",
            Some("PrivateToken token=!!!".into()),
            ErrorCode::TokenMalformed,
        ),
        (
            "other scheme",
            Some(format!("Bearer {}", b64(&good.encode()))),
            ErrorCode::TokenMalformed,
        ),
        ("truncated", Some(truncated), ErrorCode::TokenMalformed),
        (
            "oversized",
            Some(format!("PrivateToken token={}", b64(&[0u8; 4096]))),
            ErrorCode::TokenMalformed,
        ),
        (
            "wrong type",
            Some(format!("PrivateToken token={}", b64(&wrong_type))),
            ErrorCode::TokenWrongType,
        ),
        (
            "another hub's key",
            Some(foreign.to_authorization()),
            ErrorCode::TokenUnknownKey,
        ),
        (
            "bad authenticator",
            Some(flipped.to_authorization()),
            ErrorCode::TokenInvalid,
        ),
        (
            "another challenge",
            Some(other_challenge.to_authorization()),
            ErrorCode::TokenInvalid,
        ),
    ];
    let before = user_rows(&hub);
    for (what, header, code) in cases {
        let headers: Vec<(&str, String)> =
            header.into_iter().map(|h| ("authorization", h)).collect();
        let (status, body, resp_headers) =
            post_with_headers(&hub.url(), paths::QS, fetch_body(&bob_token), &headers).await;
        assert_eq!((status, error_of(&body).code), (401, code), "{what}");
        assert!(
            resp_headers.get("www-authenticate").is_some(),
            "{what}: a 401 carries a challenge"
        );
        assert_eq!(user_rows(&hub), before, "{what}: nothing stored");
    }
    // The good token was not burnt by its mangled copies.
    let (status, _) = post_paid(&hub.url(), paths::QS, fetch_body(&bob_token), &good).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuance_is_authenticated_and_limited_per_epoch() {
    let dir = tempfile::tempdir().unwrap();
    // Registration pays nothing here, so the whole allowance is the test's.
    let hub = hub_with_config(
        dir.path(),
        "[privacy_pass]\nrate_limited = [\"application_message\"]\nallowance_per_epoch = 40\nkey_epoch_secs = 6\nkey_overlap_secs = 1\n",
    );
    let alice = client(&hub, dir.path(), "alice").await;
    let wallet = alice.wallet().unwrap();
    let http = &alice.transport().http().unwrap();
    // Start early in an epoch so the first batches land in the same one.
    wait_for_second(6, 0).await;
    assert_eq!(
        wallet.fetch_batch(http, &hub.url()).await.unwrap().len(),
        32
    );
    for _ in 0..8 {
        wallet.fetch_public(http, &hub.url()).await.unwrap();
    }
    match wallet.fetch_batch(http, &hub.url()).await {
        Err(mimi_client_rm::ClientError::Hub { status, response }) => {
            assert_eq!(
                (status, response.code),
                (429, ErrorCode::AllowanceExhausted)
            );
        }
        other => panic!("expected 429, got {:?}", other.map(|t| t.len())),
    }
    assert!(wallet.fetch_public(http, &hub.url()).await.is_err());
    // The next epoch brings a fresh allowance.
    wait_for_second(6, 0).await;
    assert_eq!(
        wallet.fetch_batch(http, &hub.url()).await.unwrap().len(),
        32
    );

    // Authentication: none, a forged signature, a replay, a foreign provider's device.
    let issue = |auth: Option<String>, body: Vec<u8>| {
        let url = hub.url();
        async move {
            let mut headers = vec![("content-type", TOKEN_REQUEST_CONTENT_TYPE.to_owned())];
            if let Some(a) = auth {
                headers.push((ISSUANCE_AUTH_HEADER, a));
            }
            let (status, body, _) =
                post_with_headers(&url, ISSUER_REQUEST_PATH, body, &headers).await;
            (status, error_of(&body).code)
        }
    };
    let body = vec![0, 2, 0, 1, 2, 3];
    assert_eq!(
        issue(None, body.clone()).await,
        (403, ErrorCode::NotAuthorized)
    );
    let auth = wallet.auth_header(&body).unwrap();
    assert_eq!(
        issue(Some(auth.clone()), b"another body".to_vec()).await,
        (403, ErrorCode::InvalidSignature)
    );
    // RFC 9578 §5.2, §6.2: a token request of the wrong length, an unknown type or another
    // key id is 422, and issuance answers carry no challenge.
    assert_eq!(
        issue(Some(auth.clone()), body.clone()).await,
        (422, ErrorCode::Malformed)
    );
    for (what, bad) in [
        ("unknown token type", vec![0, 9, 0, 1, 2, 3]),
        ("unknown key id", {
            let mut b = vec![0u8; 259];
            b[1] = 2;
            b[2] = 0xEE;
            b
        }),
    ] {
        let auth = wallet.auth_header(&bad).unwrap();
        let (status, resp, headers) = post_with_headers(
            &hub.url(),
            ISSUER_REQUEST_PATH,
            bad,
            &[
                ("content-type", TOKEN_REQUEST_CONTENT_TYPE.to_owned()),
                (ISSUANCE_AUTH_HEADER, auth),
            ],
        )
        .await;
        assert_eq!(status, 422, "{what}: {}", error_of(&resp));
        assert!(
            headers.get("www-authenticate").is_none(),
            "{what}: an issuance answer carries a challenge"
        );
    }
    assert_eq!(
        issue(Some(auth), body.clone()).await,
        (403, ErrorCode::Replayed)
    );
    assert_eq!(
        issue(Some("%%%".into()), body.clone()).await,
        (400, ErrorCode::Malformed)
    );

    let other_dir = tempfile::tempdir().unwrap();
    let other = hub_with_config(other_dir.path(), "");
    let carol = client(&other, other_dir.path(), "carol").await;
    match carol
        .wallet()
        .unwrap()
        .fetch_batch(&carol.transport().http().unwrap(), &hub.url())
        .await
    {
        Err(mimi_client_rm::ClientError::Hub { status, response }) => {
            assert_eq!((status, response.code), (403, ErrorCode::NotAuthorized));
        }
        other => panic!("a foreign device got tokens: {:?}", other.map(|t| t.len())),
    }
}

/// Sleeps until a second numbered `second` within an `epoch`-second key epoch begins.
async fn wait_for_second(epoch: u64, second: u64) {
    let phase = || (mimi_ds_rm::now_ms() / 1000) % epoch;
    while phase() == second {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    while phase() != second {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_with_an_overlap_and_expired_tokens_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_with_config(
        dir.path(),
        "[privacy_pass]\nkey_epoch_secs = 4\nkey_overlap_secs = 2\n",
    );
    let mut alice = client(&hub, dir.path(), "alice").await;
    let bob_token = target(&hub, dir.path()).await;

    // A token fetched late in epoch e still redeems early in e+1 (the overlap window), when the
    // directory lists both keys.
    wait_for_second(4, 3).await;
    let fresh = alice
        .wallet()
        .unwrap()
        .fetch_batch(&alice.transport().http().unwrap(), &hub.url())
        .await
        .unwrap();
    let (late, spare) = (fresh[0].clone(), fresh[1].clone());
    let epoch_of_late = mimi_ds_rm::now_ms() / 1000 / 4;
    while mimi_ds_rm::now_ms() / 1000 / 4 == epoch_of_late {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        directory(&hub.url()).await.token_keys.len() >= 4,
        "two epochs' keys listed"
    );
    let (status, _) = post_paid(&hub.url(), paths::QS, fetch_body(&bob_token), &late).await;
    assert_eq!(status, 200, "inside the overlap window");

    // After the overlap the key is expired; its spent nonces are pruned with it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let before = user_rows(&hub)
        .into_iter()
        .filter(|(cf, _, _)| *cf != Cf::PpSpent)
        .collect::<Vec<_>>();
    let (status, body) = post_paid(&hub.url(), paths::QS, fetch_body(&bob_token), &spare).await;
    assert_eq!(
        (status, error_of(&body).code),
        (401, ErrorCode::TokenExpiredKey)
    );
    let after = user_rows(&hub)
        .into_iter()
        .filter(|(cf, _, _)| *cf != Cf::PpSpent)
        .collect::<Vec<_>>();
    assert_eq!(after, before, "an expired token's request has no effect");
    let old_epoch = epoch_of_late.to_be_bytes();
    // The rotation task prunes within a period.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert!(
        !hub.dump()
            .iter()
            .any(|(cf, k, _)| *cf == Cf::PpSpent && k.starts_with(&old_epoch)),
        "spent nonces of the expired epoch are pruned"
    );
    // The client's wallet still holds tokens from registration, now expired: it drops them and
    // refills from the new key without being told.
    let g = alice
        .create_group()
        .await
        .expect("paid with fresh tokens after expiry");
    alice.send(&g, b"still paying").await.unwrap();
}

/// End-to-end cost of token enforcement as a client sees it: one client sending application
/// messages one after another to a group of three, with tokens enforced and with tokens off.
/// A measurement, not a check: run with
/// `cargo test -j2 --workspace --test e2e privacy_pass::measure -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; prints numbers for BENCHMARKS.md"]
async fn measure_send_rate_with_and_without_tokens() {
    const SENDS: usize = 300;
    for (label, config) in [
        ("tokens enforced", ""),
        ("tokens off", "[privacy_pass]\nrate_limited = []\n"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let hub = hub_with_config(dir.path(), config);
        let mut alice = client(&hub, dir.path(), "alice").await;
        let mut bob = client(&hub, dir.path(), "bob").await;
        let mut carol = client(&hub, dir.path(), "carol").await;
        let g = group_of(&mut alice, &mut [&mut bob, &mut carol]).await;
        for _ in 0..20 {
            alice.send(&g, b"warm-up").await.unwrap();
        }
        let start = std::time::Instant::now();
        for i in 0..SENDS {
            alice.send(&g, format!("m{i}").as_bytes()).await.unwrap();
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{label}: {SENDS} sends in {secs:.2} s = {:.0} sends/s ({:.2} ms each)",
            SENDS as f64 / secs,
            secs * 1000.0 / SENDS as f64
        );
    }
}
