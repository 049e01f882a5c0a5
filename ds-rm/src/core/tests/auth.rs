//! The authentication service: handles, client credentials, connection packages and the
//! connection-request inbox.

use super::*;
use crate::core::auth::AsUserRecord;
use crate::core::connections::{
    MAX_PACKAGE_LIFETIME_SECS, MAX_PACKAGES_PER_CLIENT, MAX_PENDING_REQUESTS,
};
use crate::core::limits::MAX_CLIENTS_PER_USER;
use mimi_rm_crypto::hpke_seal::HpkeKeyPair;
use mimi_rm_protocol::auth::{AsOperation as Op, SendConnectionRequest};
use mimi_rm_protocol::connection::{ConnectionPackage, ConnectionPackageTbs, ConnectionRequest};
use mimi_rm_protocol::credentials::{
    AsCredentials, ClientCredential, ClientCredentialCsr, ExpirationData,
};
use mimi_rm_protocol::queue::HpkeCiphertextWire;

const NOW_S: u64 = NOW / 1000;

/// A registered client at the AS: its key, identity and issued credential.
struct AsClient {
    key: SigningKey,
    identity: ClientIdentity,
    credential: ClientCredential,
}

impl AsClient {
    /// A request signed by this client.
    fn request(&self, op: AsOperation) -> AsRequest {
        as_signed(&self.key, self.identity.clone(), op)
    }

    /// A request signed by this client at time `ts`.
    fn request_at(&self, op: AsOperation, ts: u64) -> AsRequest {
        as_signed_at(&self.key, self.identity.clone(), op, ts)
    }
}

fn identity(handle: &str, device: u8) -> ClientIdentity {
    ClientIdentity {
        handle: handle.as_bytes().to_vec().into(),
        device: [device; 16],
    }
}

fn csr(key: &SigningKey, handle: &str, device: u8) -> ClientCredentialCsr {
    ClientCredentialCsr::new(key, identity(handle, device)).unwrap()
}

/// The issued credential in an AS answer.
fn issued(resp: AsResponse) -> ClientCredential {
    let AsResponse::ClientCredential(c) = resp else {
        panic!("expected ClientCredential, got {resp:?}")
    };
    c
}

/// Registers `handle` with its first device (device id 1).
fn register(hub: &TestHub, handle: &str) -> AsClient {
    let key = SigningKey::generate();
    let credential = issued(hub.ok(&as_anon(Op::RegisterUser(csr(&key, handle, 1)))));
    AsClient {
        key,
        identity: identity(handle, 1),
        credential,
    }
}

/// Issues a credential for `device` of `by`'s user.
fn add_device(hub: &TestHub, by: &AsClient, device: u8) -> AsClient {
    let key = SigningKey::generate();
    let handle = by.identity.handle_str();
    let credential = issued(hub.ok(&by.request(Op::AddClient(csr(&key, &handle, device)))));
    AsClient {
        key,
        identity: identity(&handle, device),
        credential,
    }
}

fn anchors(hub: &TestHub) -> AsCredentials {
    let AsResponse::AsCredentials(a) = hub.ok(&as_anon(Op::AsCredentials)) else {
        panic!("expected AsCredentials")
    };
    a
}

fn user_clients(hub: &TestHub, handle: &str, now: u64) -> Vec<ClientCredential> {
    let req = as_anon_at(Op::UserClients(handle.as_bytes().to_vec().into()), now);
    let AsResponse::UserClients(c) = hub.ok_at(&req, now) else {
        panic!("expected UserClients")
    };
    c
}

/// A connection package of `owner`, valid for `lifetime` seconds from [`NOW_S`].
fn package(owner: &AsClient, lifetime: u64) -> ConnectionPackage {
    package_with(owner, |t| {
        t.expiration = ExpirationData::starting(NOW_S, lifetime)
    })
}

/// A package whose signed part `edit` changed before signing.
fn package_with(
    owner: &AsClient,
    edit: impl FnOnce(&mut ConnectionPackageTbs),
) -> ConnectionPackage {
    let mut tbs = ConnectionPackageTbs {
        encryption_key: HpkeKeyPair::generate().public.as_bytes().to_vec().into(),
        expiration: ExpirationData::starting(NOW_S, 3600),
        client_credential: owner.credential.clone(),
    };
    edit(&mut tbs);
    ConnectionPackage::sign(&owner.key, tbs).unwrap()
}

fn publish(packages: Vec<ConnectionPackage>) -> AsOperation {
    Op::PublishConnectionPackages(packages)
}

fn fetch_package(handle: &str) -> AsRequest {
    as_anon(Op::FetchConnectionPackage(
        handle.as_bytes().to_vec().into(),
    ))
}

fn fetched(hub: &TestHub, handle: &str) -> ConnectionPackage {
    let AsResponse::ConnectionPackage(p) = hub.ok(&fetch_package(handle)) else {
        panic!("expected ConnectionPackage")
    };
    p
}

/// A sealed connection request (opaque to the AS).
fn sealed_request(tag: u8) -> ConnectionRequest {
    ConnectionRequest {
        package_hash: [tag; 32],
        sealed_offer: HpkeCiphertextWire {
            kem_output: vec![tag; 32].into(),
            ciphertext: vec![tag; 64].into(),
        },
    }
}

fn send_request(handle: &str, device: u8, tag: u8) -> AsRequest {
    as_anon(Op::SendConnectionRequest(SendConnectionRequest {
        handle: handle.as_bytes().to_vec().into(),
        device: [device; 16],
        request: sealed_request(tag),
    }))
}

fn inbox(hub: &TestHub, client: &AsClient) -> Vec<ConnectionRequest> {
    let AsResponse::ConnectionRequests(r) = hub.ok(&client.request(Op::FetchConnectionRequests))
    else {
        panic!("expected ConnectionRequests")
    };
    r
}

// ---- successes ----

#[test]
fn register_user_issues_a_credential_that_chains_to_the_published_anchors() {
    let hub = TestHub::new();
    let alice = register(&hub, "alice");
    alice
        .credential
        .verify_chain(&anchors(&hub), NOW_S)
        .unwrap();
    assert_eq!(alice.credential.tbs.identity, identity("alice", 1));
    assert_eq!(
        alice.credential.tbs.public_key.as_slice(),
        alice.key.verifying_key().as_bytes()
    );
    assert_eq!(
        alice.credential.tbs.expiration,
        ExpirationData::starting(NOW_S, test_config().client_credential_lifetime_secs)
    );
    let record = hub.record::<AsUserRecord>(b"alice".as_slice()).unwrap();
    assert_eq!(record.clients, vec![alice.credential.clone()]);
}

#[test]
fn add_client_certifies_another_device_and_recertifying_replaces_it() {
    let hub = TestHub::new();
    let alice = register(&hub, "alice");
    let second = add_device(&hub, &alice, 2);
    second
        .credential
        .verify_chain(&anchors(&hub), NOW_S)
        .unwrap();
    assert_eq!(
        user_clients(&hub, "alice", NOW),
        vec![alice.credential.clone(), second.credential.clone()]
    );
    // The second device signs for a new key of itself: still two devices.
    let renewed = add_device(&hub, &second, 2);
    assert_eq!(
        user_clients(&hub, "alice", NOW),
        vec![alice.credential.clone(), renewed.credential]
    );
}

/// A revoked device leaves its user's list, signs nothing at the AS any more, and loses its
/// connection packages and waiting requests; a retry answers Ok; the last device stays.
#[test]
fn revoking_a_device_removes_it_everywhere_at_the_as() {
    let hub = TestHub::new();
    let alice = register(&hub, "alice");
    let second = add_device(&hub, &alice, 2);
    hub.ok(&second.request(publish(vec![package(&second, 3600)])));
    hub.ok(&send_request("alice", 2, 7));
    assert_eq!(hub.rows(Cf::AsConnectionRequests).len(), 1);
    let revoke = alice.request(Op::RevokeClient([2; 16]));
    assert_eq!(hub.ok(&revoke), AsResponse::Ok);
    hub.assert_refused(&revoke, ErrorCode::Replayed);
    assert_eq!(
        user_clients(&hub, "alice", NOW),
        vec![alice.credential.clone()]
    );
    assert!(hub.rows(Cf::AsConnectionPackages).is_empty());
    assert!(hub.rows(Cf::AsConnectionRequests).is_empty());
    // The revoked device can no longer sign anything, not even a revocation of its remover.
    hub.assert_refused(
        &second.request(Op::RevokeClient([1; 16])),
        ErrorCode::UnknownUser,
    );
    hub.assert_refused(
        &second.request(publish(vec![package(&second, 3600)])),
        ErrorCode::UnknownUser,
    );
    // A retry, and an unknown device, change nothing and answer Ok.
    let before = hub.dump();
    assert_eq!(
        hub.ok(&alice.request(Op::RevokeClient([2; 16]))),
        AsResponse::Ok
    );
    assert!(before == hub.dump());
    // A user keeps at least one device.
    hub.assert_refused(
        &alice.request(Op::RevokeClient(alice.identity.device)),
        ErrorCode::InvalidRequest,
    );
    assert_eq!(user_clients(&hub, "alice", NOW).len(), 1);
}

/// The AS's signed revocation list at `now` (ms), verified against its anchors.
fn revocation_list(hub: &TestHub, now: u64) -> mimi_rm_protocol::revocation::RevocationList {
    let AsResponse::RevocationList(list) = hub.ok_at(&as_anon_at(Op::RevocationList, now), now)
    else {
        panic!("expected a revocation list")
    };
    list.verify(&anchors(hub), DOMAIN, now / 1000).unwrap();
    list
}

/// A revocation puts the device on the signed list (and only it, by handle and device), where
/// it stays while its credential could verify; offline expiry then drops the entry. The list
/// names no handle: its entries are digests.
#[test]
fn a_revoked_device_is_on_the_signed_list_until_its_credential_expires() {
    let hub = TestHub::with(|c| c.client_credential_lifetime_secs = 100);
    let alice = register(&hub, "alice");
    let second = add_device(&hub, &alice, 2);
    let before = revocation_list(&hub, NOW);
    assert!(before.tbs.revoked.is_empty(), "control");
    // Read again within seconds: the same signed answer (cached), until a revocation.
    assert_eq!(revocation_list(&hub, NOW + 5_000), before);
    hub.ok(&alice.request(Op::RevokeClient([2; 16])));
    let list = revocation_list(&hub, NOW);
    assert_eq!(list.tbs.revoked.len(), 1);
    assert!(list.lists(&second.identity));
    assert!(!list.lists(&alice.identity));
    assert!(!list.lists(&identity("bob", 2)));
    let rows = hub.rows(Cf::AsRevoked);
    assert_eq!(rows.len(), 1);
    assert!(
        !rows
            .iter()
            .any(|(k, v)| contains(k, b"alice") || contains(v, b"alice"))
    );
    // Listed through the credential's last second; offline expiry keeps it until then.
    assert!(revocation_list(&hub, NOW + 100_000).lists(&second.identity));
    let done = crate::expire::expire(hub.store.as_ref(), 1, NOW + 50_000).unwrap();
    assert_eq!((done.revocations, hub.rows(Cf::AsRevoked).len()), (0, 1));
    let done = crate::expire::expire(hub.store.as_ref(), 1, NOW + 101_000).unwrap();
    assert_eq!((done.revocations, hub.rows(Cf::AsRevoked).len()), (1, 0));
    // A read after the expiry drops the entry too.
    let third = add_device(&hub, &alice, 3);
    hub.ok(&alice.request(Op::RevokeClient([3; 16])));
    assert!(revocation_list(&hub, NOW).lists(&third.identity));
    assert_eq!(hub.rows(Cf::AsRevoked).len(), 1);
    assert!(revocation_list(&hub, NOW + 101_000).tbs.revoked.is_empty());
    assert!(hub.rows(Cf::AsRevoked).is_empty());
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The operations added for revocation and invitations refuse broken framing and forged
/// signatures with their codes and change nothing (each framing check ends by accepting the
/// untouched request: the positive control).
#[test]
fn revocation_and_invited_registration_refuse_bad_input() {
    use mimi_rm_protocol::auth::InvitedRegistration;
    let hub = TestHub::new();
    let alice = register(&hub, "alice");
    add_device(&hub, &alice, 2);
    let forged = as_signed(
        &SigningKey::generate(),
        alice.identity.clone(),
        Op::RevokeClient([2; 16]),
    );
    hub.assert_refused(&forged, ErrorCode::InvalidSignature);
    assert_framing_refusals(&hub, &alice.request(Op::RevokeClient([2; 16])));
    assert_eq!(user_clients(&hub, "alice", NOW).len(), 1);

    let invite_hub = TestHub::with(|c| c.invite_only = true);
    let codes = crate::core::auth::make_invites(invite_hub.store.as_ref(), 1).unwrap();
    let signed_register = as_signed(
        &SigningKey::generate(),
        identity("bob", 1),
        Op::RegisterInvited(InvitedRegistration {
            csr: csr(&SigningKey::generate(), "bob", 1),
            invite: codes[0].as_bytes().to_vec().into(),
        }),
    );
    invite_hub.assert_refused(&signed_register, ErrorCode::UnknownUser);
    assert_framing_refusals(
        &invite_hub,
        &as_anon(Op::RegisterInvited(InvitedRegistration {
            csr: csr(&SigningKey::generate(), "bob", 1),
            invite: codes[0].as_bytes().to_vec().into(),
        })),
    );
    assert!(invite_hub.rows(Cf::AsInvites).is_empty());
}

/// Invitation-only registration: no code, an unknown code and a used code are refused and
/// change nothing; each code registers exactly one user. An open provider takes real codes
/// only.
#[test]
fn invite_only_registration_takes_each_code_once() {
    use mimi_rm_protocol::auth::InvitedRegistration;
    let invited = |key: &SigningKey, handle: &str, code: &str| {
        as_anon(Op::RegisterInvited(InvitedRegistration {
            csr: csr(key, handle, 1),
            invite: code.as_bytes().to_vec().into(),
        }))
    };
    let hub = TestHub::with(|c| c.invite_only = true);
    let codes = crate::core::auth::make_invites(hub.store.as_ref(), 2).unwrap();
    assert_eq!(hub.rows(Cf::AsInvites).len(), 2);
    let key = SigningKey::generate();
    hub.assert_refused(
        &as_anon(Op::RegisterUser(csr(&key, "alice", 1))),
        ErrorCode::NotAuthorized,
    );
    hub.assert_refused(
        &invited(&key, "alice", "not-a-code"),
        ErrorCode::NotAuthorized,
    );
    issued(hub.ok(&invited(&key, "alice", &codes[0])));
    assert_eq!(hub.rows(Cf::AsInvites).len(), 1, "the code is used up");
    hub.assert_refused(
        &invited(&SigningKey::generate(), "bob", &codes[0]),
        ErrorCode::NotAuthorized,
    );
    issued(hub.ok(&invited(&SigningKey::generate(), "bob", &codes[1])));
    assert!(hub.rows(Cf::AsInvites).is_empty());
    assert_eq!(user_clients(&hub, "bob", NOW).len(), 1);

    // An open provider takes a code as payment too, but only a real one: an unknown code
    // registers nobody (it would bypass the registration-token gate), a real one registers.
    let open = TestHub::new();
    let before = open.dump();
    open.assert_refused(
        &invited(&key, "carol", "anything"),
        ErrorCode::NotAuthorized,
    );
    assert!(before == open.dump());
    let code = crate::core::auth::make_invites(open.store.as_ref(), 1).unwrap();
    issued(open.ok(&invited(&key, "carol", &code[0])));
}

#[test]
fn as_credentials_are_the_stored_keys_and_reading_them_writes_nothing() {
    let hub = TestHub::new();
    let before = hub.dump();
    let a = anchors(&hub);
    assert_eq!((a.roots.len(), a.intermediates.len()), (1, 1));
    a.intermediates[0].verify(&a.roots[0], NOW_S).unwrap();
    assert!(before == hub.dump());
    // The same after a restart over the same store.
    assert_eq!(anchors(&hub.reopen()), a);
}

#[test]
fn user_clients_lists_only_credentials_still_valid() {
    let hub = TestHub::with(|c| c.client_credential_lifetime_secs = 100);
    let alice = register(&hub, "alice");
    assert_eq!(user_clients(&hub, "alice", NOW), vec![alice.credential]);
    // Valid through its last second, gone after it.
    assert_eq!(user_clients(&hub, "alice", NOW + 100_000).len(), 1);
    assert_eq!(user_clients(&hub, "alice", NOW + 101_000), Vec::new());
}

#[test]
fn published_packages_replace_the_devices_previous_ones() {
    let hub = TestHub::new();
    let alice = register(&hub, "alice");
    let old = package(&alice, 3600);
    assert_eq!(hub.ok(&alice.request(publish(vec![old]))), AsResponse::Ok);
    assert_eq!(hub.rows(Cf::AsConnectionPackages).len(), 1);
    let new = package(&alice, 3600);
    hub.ok(&alice.request(publish(vec![new.clone()])));
    assert_eq!(fetched(&hub, "alice"), new);
    assert_eq!(
        fetched(&hub, "alice"),
        new,
        "a device's last package is not consumed"
    );
}

#[test]
fn fetching_a_package_consumes_it_unless_it_is_the_devices_last() {
    let hub = TestHub::new();
    let alice = register(&hub, "alice");
    let second = add_device(&hub, &alice, 2);
    let (p1, p2) = (package(&alice, 3600), package(&alice, 3600));
    let q = package(&second, 3600);
    hub.ok(&alice.request(publish(vec![p1.clone(), p2.clone()])));
    hub.ok(&second.request(publish(vec![q.clone()])));
    // The device with the most packages left serves first, and its package is consumed.
    assert_eq!(fetched(&hub, "alice"), p1);
    // Now each device holds its last package: handed out, never consumed.
    let before = hub.dump();
    for _ in 0..3 {
        let p = fetched(&hub, "alice");
        assert!(p == p2 || p == q, "a package of this user");
    }
    assert!(
        before == hub.dump(),
        "handing out a last package changes nothing"
    );
}

#[test]
fn connection_requests_wait_in_the_devices_inbox_until_it_fetches_them() {
    let hub = TestHub::new();
    let alice = register(&hub, "alice");
    let second = add_device(&hub, &alice, 2);
    for (device, tag) in [(1, 1), (1, 2), (2, 3)] {
        assert_eq!(hub.ok(&send_request("alice", device, tag)), AsResponse::Ok);
    }
    assert_eq!(hub.rows(Cf::AsConnectionRequests).len(), 3);
    let mut mine = inbox(&hub, &alice);
    mine.sort_by_key(|r| r.package_hash);
    assert_eq!(mine, vec![sealed_request(1), sealed_request(2)]);
    assert_eq!(
        hub.rows(Cf::AsConnectionRequests).len(),
        1,
        "fetching deletes them"
    );
    assert_eq!(inbox(&hub, &alice), Vec::new());
    assert_eq!(inbox(&hub, &second), vec![sealed_request(3)]);
    assert!(hub.rows(Cf::AsConnectionRequests).is_empty());
}

// ---- refusals ----

#[test]
fn framing_refusals() {
    let hub = TestHub::new();
    assert_framing_refusals(&hub, &as_anon(Op::AsCredentials));
}

#[test]
fn requests_outside_the_freshness_window_are_stale() {
    let hub = TestHub::new();
    let alice = register(&hub, "alice");
    for ts in [NOW - WINDOW_MS - 1, NOW + WINDOW_MS + 1] {
        hub.assert_refused(&as_anon_at(Op::AsCredentials, ts), ErrorCode::StaleRequest);
        hub.assert_refused(
            &alice.request_at(Op::FetchConnectionRequests, ts),
            ErrorCode::StaleRequest,
        );
    }
}

#[test]
fn signed_requests_are_refused_as_replays() {
    let hub = TestHub::new();
    let alice = register(&hub, "alice");
    let requests = [
        alice.request(Op::AddClient(csr(&SigningKey::generate(), "alice", 2))),
        alice.request(publish(vec![package(&alice, 3600)])),
        alice.request(Op::FetchConnectionRequests),
    ];
    for req in &requests {
        hub.ok(req);
        hub.assert_refused(req, ErrorCode::Replayed);
    }
}

/// Every refusal of every AS operation against one prepared AS; each case changes nothing.
#[test]
fn each_operation_refuses_bad_requests_with_its_code() {
    let hub = TestHub::new();
    let alice = register(&hub, "alice");
    let bob = register(&hub, "bob");
    hub.ok(&alice.request(publish(vec![package(&alice, 3600)])));
    let stranger = SigningKey::generate();
    let mut bad_csr = csr(&stranger, "carol", 1);
    bad_csr.tbs.identity.handle = b"carl".to_vec().into();
    let mut not_a_key = csr(&stranger, "carol", 1);
    not_a_key.tbs.public_key = vec![1; 31].into();
    let with_signature = |op: AsOperation| {
        let mut req = as_anon(op);
        req.signature = vec![1; 64].into();
        req
    };
    let register_as = |handle: &str| as_anon(Op::RegisterUser(csr(&stranger, handle, 1)));
    let new_device = || Op::AddClient(csr(&SigningKey::generate(), "alice", 9));
    let as_ghost = |op| as_signed(&alice.key, identity("ghost", 1), op);
    let as_other_device = |op| as_signed(&alice.key, identity("alice", 8), op);
    let handle = |h: &str| -> tls_codec::VLBytes { h.as_bytes().to_vec().into() };
    let long = "x".repeat(65);
    let cases: Vec<(&str, AsRequest, ErrorCode)> = vec![
        // register_user
        (
            "register with a forged CSR",
            as_anon(Op::RegisterUser(bad_csr.clone())),
            ErrorCode::InvalidSignature,
        ),
        (
            "register with a CSR key that is no key",
            as_anon(Op::RegisterUser(not_a_key.clone())),
            ErrorCode::InvalidRequest,
        ),
        (
            "register an upper-case handle",
            register_as("Alice"),
            ErrorCode::InvalidHandle,
        ),
        (
            "register an empty handle",
            register_as(""),
            ErrorCode::InvalidHandle,
        ),
        (
            "register a 65-byte handle",
            register_as(&long),
            ErrorCode::InvalidHandle,
        ),
        (
            "register a handle with a space",
            register_as("al ice"),
            ErrorCode::InvalidHandle,
        ),
        (
            "register a non-ASCII handle",
            register_as("ali\u{e7}e"),
            ErrorCode::InvalidHandle,
        ),
        (
            "register a taken handle",
            register_as("alice"),
            ErrorCode::HandleTaken,
        ),
        (
            "register with a signature",
            with_signature(Op::RegisterUser(csr(&stranger, "carol", 1))),
            ErrorCode::InvalidRequest,
        ),
        (
            "register signed by a client",
            alice.request(Op::RegisterUser(csr(&stranger, "carol", 1))),
            ErrorCode::NotAuthorized,
        ),
        // add_client
        (
            "add_client, anonymous",
            as_anon(new_device()),
            ErrorCode::NotAuthorized,
        ),
        (
            "add_client by an unknown handle",
            as_ghost(new_device()),
            ErrorCode::UnknownUser,
        ),
        (
            "add_client by an unknown device",
            as_other_device(new_device()),
            ErrorCode::UnknownUser,
        ),
        (
            "add_client signed by another key",
            as_signed(&stranger, alice.identity.clone(), new_device()),
            ErrorCode::InvalidSignature,
        ),
        (
            "add_client for another user",
            alice.request(Op::AddClient(csr(&stranger, "bob", 5))),
            ErrorCode::NotAuthorized,
        ),
        (
            "add_client with a forged CSR",
            alice.request(Op::AddClient({
                let mut c = csr(&stranger, "alice", 5);
                c.tbs.identity.device = [6; 16];
                c
            })),
            ErrorCode::InvalidSignature,
        ),
        (
            "add_client with a CSR key that is no key",
            alice.request(Op::AddClient({
                let mut c = csr(&stranger, "alice", 5);
                c.tbs.public_key = vec![1; 31].into();
                c
            })),
            ErrorCode::InvalidRequest,
        ),
        // as_credentials
        (
            "as_credentials signed by a client",
            alice.request(Op::AsCredentials),
            ErrorCode::NotAuthorized,
        ),
        (
            "as_credentials with a signature",
            with_signature(Op::AsCredentials),
            ErrorCode::InvalidRequest,
        ),
        // user_clients
        (
            "user_clients of an invalid handle",
            as_anon(Op::UserClients(handle("Alice"))),
            ErrorCode::InvalidHandle,
        ),
        (
            "user_clients of an unknown handle",
            as_anon(Op::UserClients(handle("nobody"))),
            ErrorCode::UnknownUser,
        ),
        (
            "user_clients signed by a client",
            alice.request(Op::UserClients(handle("bob"))),
            ErrorCode::NotAuthorized,
        ),
        // publish_connection_packages
        (
            "publish, anonymous",
            as_anon(publish(vec![package(&alice, 3600)])),
            ErrorCode::NotAuthorized,
        ),
        (
            "publish nothing",
            alice.request(publish(Vec::new())),
            ErrorCode::InvalidRequest,
        ),
        (
            "publish too many",
            alice.request(publish(vec![
                package(&alice, 3600);
                MAX_PACKAGES_PER_CLIENT + 1
            ])),
            ErrorCode::InvalidRequest,
        ),
        (
            "publish a package with a bad signature",
            alice.request(publish(vec![{
                let mut p = package(&alice, 3600);
                p.signature = vec![0; 64].into();
                p
            }])),
            ErrorCode::InvalidRequest,
        ),
        (
            "publish a package living too long",
            alice.request(publish(vec![package(
                &alice,
                MAX_PACKAGE_LIFETIME_SECS + 1,
            )])),
            ErrorCode::InvalidRequest,
        ),
        (
            "publish a package not yet valid",
            alice.request(publish(vec![package_with(&alice, |t| {
                t.expiration = ExpirationData::starting(NOW_S + 10, 3600);
            })])),
            ErrorCode::InvalidRequest,
        ),
        (
            "publish an expired package",
            alice.request(publish(vec![package_with(&alice, |t| {
                t.expiration = ExpirationData::starting(NOW_S - 100, 10);
            })])),
            ErrorCode::InvalidRequest,
        ),
        (
            "publish a package with a key that is not X25519",
            alice.request(publish(vec![package_with(&alice, |t| {
                t.encryption_key = vec![1; 5].into();
            })])),
            ErrorCode::InvalidRequest,
        ),
        (
            "publish a package of another client",
            alice.request(publish(vec![package(&bob, 3600)])),
            ErrorCode::NotAuthorized,
        ),
        (
            "publish by an unknown handle",
            as_ghost(publish(vec![package(&alice, 3600)])),
            ErrorCode::UnknownUser,
        ),
        (
            "publish signed by another key",
            as_signed(
                &stranger,
                alice.identity.clone(),
                publish(vec![package(&alice, 3600)]),
            ),
            ErrorCode::InvalidSignature,
        ),
        // fetch_connection_package
        (
            "fetch a package of an invalid handle",
            fetch_package("Alice"),
            ErrorCode::InvalidHandle,
        ),
        (
            "fetch a package of an unknown handle",
            fetch_package("nobody"),
            ErrorCode::UnknownUser,
        ),
        (
            "fetch a package of a user without packages",
            fetch_package("bob"),
            ErrorCode::UnknownUser,
        ),
        (
            "fetch a package, signed by a client",
            alice.request(Op::FetchConnectionPackage(handle("alice"))),
            ErrorCode::NotAuthorized,
        ),
        // send_connection_request
        (
            "send a request to an invalid handle",
            send_request("Alice", 1, 1),
            ErrorCode::InvalidHandle,
        ),
        (
            "send a request to an unknown handle",
            send_request("nobody", 1, 1),
            ErrorCode::UnknownUser,
        ),
        (
            "send a request, signed by a client",
            alice.request(send_request("bob", 1, 1).tbs.operation),
            ErrorCode::NotAuthorized,
        ),
        // fetch_connection_requests
        (
            "fetch requests, anonymous",
            as_anon(Op::FetchConnectionRequests),
            ErrorCode::NotAuthorized,
        ),
        (
            "fetch requests of an unknown handle",
            as_ghost(Op::FetchConnectionRequests),
            ErrorCode::UnknownUser,
        ),
        (
            "fetch requests signed by another key",
            as_signed(
                &stranger,
                alice.identity.clone(),
                Op::FetchConnectionRequests,
            ),
            ErrorCode::InvalidSignature,
        ),
    ];
    assert_cases(&hub, cases);
    // Positive control: the prepared users are still served.
    assert_eq!(user_clients(&hub, "bob", NOW), vec![bob.credential.clone()]);
    hub.ok(&alice.request(Op::FetchConnectionRequests));
}

#[test]
fn an_expired_client_credential_no_longer_signs() {
    let hub = TestHub::with(|c| c.client_credential_lifetime_secs = 100);
    let alice = register(&hub, "alice");
    hub.ok(&alice.request(publish(vec![package(&alice, 50)])));
    let later = NOW + 101_000;
    for op in [
        Op::AddClient(csr(&SigningKey::generate(), "alice", 2)),
        publish(vec![package(&alice, 50)]),
        Op::FetchConnectionRequests,
    ] {
        hub.assert_refused_at(
            &alice.request_at(op, later),
            later,
            ErrorCode::ExpiredCredential,
        );
    }
}

#[test]
fn once_the_intermediate_expired_no_credential_is_issued_and_nothing_changes() {
    let hub = TestHub::new();
    let alice = register(&hub, "alice");
    let later = NOW + (crate::core::auth::INTERMEDIATE_LIFETIME_SECS + 1) * 1000;
    let register_bob = as_anon_at(
        Op::RegisterUser(csr(&SigningKey::generate(), "bob", 1)),
        later,
    );
    hub.assert_refused_at(&register_bob, later, ErrorCode::Internal);
    // Alice's own credential has long expired by then too.
    let add = alice.request_at(
        Op::AddClient(csr(&SigningKey::generate(), "alice", 2)),
        later,
    );
    hub.assert_refused_at(&add, later, ErrorCode::ExpiredCredential);
}

#[test]
fn a_user_has_at_most_64_client_credentials() {
    let hub = TestHub::new();
    let alice = register(&hub, "alice");
    for device in 2..=MAX_CLIENTS_PER_USER as u8 {
        add_device(&hub, &alice, device);
    }
    assert_eq!(user_clients(&hub, "alice", NOW).len(), MAX_CLIENTS_PER_USER);
    let req = alice.request(Op::AddClient(csr(&SigningKey::generate(), "alice", 200)));
    hub.assert_refused(&req, ErrorCode::LimitExceeded);
}

#[test]
fn an_inbox_holds_at_most_1000_requests() {
    let hub = TestHub::new();
    let alice = register(&hub, "alice");
    for i in 0..MAX_PENDING_REQUESTS {
        hub.ok(&send_request("alice", 1 + (i % 2) as u8, i as u8));
    }
    hub.assert_refused(&send_request("alice", 1, 0), ErrorCode::LimitExceeded);
    // Reading the inbox makes room again.
    assert_eq!(inbox(&hub, &alice).len(), MAX_PENDING_REQUESTS / 2);
    hub.ok(&send_request("alice", 1, 0));
}

#[test]
fn a_handle_whose_packages_all_expired_has_none_to_give_and_nothing_changes() {
    let hub = TestHub::new();
    let alice = register(&hub, "alice");
    hub.ok(&alice.request(publish(vec![package(&alice, 10), package(&alice, 10)])));
    let later = NOW + 20_000;
    let req = as_anon_at(Op::FetchConnectionPackage(b"alice".to_vec().into()), later);
    hub.assert_refused_at(&req, later, ErrorCode::UnknownUser);
    assert_eq!(hub.rows(Cf::AsConnectionPackages).len(), 1);
}

#[test]
fn with_the_token_gate_on_connection_requests_need_tokens_but_lookups_do_not() {
    let gated = TestHub::with(|c| c.tokens = tokens::TokenPolicy::default());
    gated.assert_refused(&fetch_package("alice"), ErrorCode::TokenRequired);
    gated.assert_refused(&send_request("alice", 1, 1), ErrorCode::TokenRequired);
    // Registering costs a (registration) token as well; `registration.rs` pays for one.
    let key = SigningKey::generate();
    gated.assert_refused(
        &as_anon(Op::RegisterUser(csr(&key, "alice", 1))),
        ErrorCode::TokenRequired,
    );
    // Lookups reach the AS without one.
    gated.ok(&as_anon(Op::AsCredentials));
    gated.assert_refused(
        &as_anon(Op::UserClients(b"alice".to_vec().into())),
        ErrorCode::UnknownUser,
    );
    let AsResponse::RevocationList(_) = gated.ok(&as_anon(Op::RevocationList)) else {
        panic!("expected a revocation list")
    };
}
