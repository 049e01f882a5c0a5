//! Shared setup for the end-to-end tests.
#![allow(dead_code)]

use ed25519_dalek::{Signer as _, SigningKey};
use mimi_client_rm::{Client, Event, GroupHandle, envelope};
use mimi_rm_protocol::ds::*;
use mimi_rm_protocol::{ErrorCode, TransactionType, encode};
use mimi_rm_tests::{HubProcess, error_of, post};
use std::path::Path;

/// Default body limit of test hubs.
pub const MAX_BODY: usize = 256 * 1024;

/// Starts a real hub process in `dir`.
pub fn hub(dir: &Path) -> HubProcess {
    HubProcess::start(
        Path::new(env!("CARGO_BIN_EXE_hub-under-test")),
        dir,
        "hub.test",
        MAX_BODY,
    )
}

/// A hub that asks no Privacy Pass tokens, for the tests of request validation: they post
/// hand-built requests and check that each refusal leaves the database byte-identical, which a
/// token (spent even by a refused request) would change. Token enforcement itself is covered
/// by `privacy_pass.rs`, and every other test runs with the default (enforced) policy.
pub fn hub_without_tokens(dir: &Path) -> HubProcess {
    HubProcess::start_with_config(
        Path::new(env!("CARGO_BIN_EXE_hub-under-test")),
        dir,
        "hub.test",
        MAX_BODY,
        "[privacy_pass]\nrate_limited = []\n",
    )
}

/// Registers a client with its state under `dir/name`.
pub async fn client(hub: &HubProcess, dir: &Path, name: &str) -> Client {
    Client::register(&dir.join(name), &hub.url(), name)
        .await
        .expect("register")
}

/// Plaintexts of the application messages among `events`.
pub fn messages(events: &[Event]) -> Vec<Vec<u8>> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Message { plaintext, .. } => Some(plaintext.clone()),
            _ => None,
        })
        .collect()
}

/// Creates a group of `creator` and adds `others` one commit each; everyone processes.
pub async fn group_of(creator: &mut Client, others: &mut [&mut Client]) -> GroupHandle {
    let g = creator.create_group().await.expect("create group");
    let creator_card = creator.contact_card().expect("card");
    for i in 0..others.len() {
        // Contacts both ways: the invitee accepts invitations only from its contacts.
        others[i].add_contact(&creator_card).expect("add contact");
        let card = others[i].contact_card().expect("card");
        creator.invite(&g, &card).await.expect("invite");
        for (j, o) in others.iter_mut().enumerate() {
            if j <= i {
                let events = o.receive().await.expect("receive");
                if j == i {
                    assert!(
                        events.contains(&Event::Joined { group: g.clone() }),
                        "joiner {i} got {events:?}"
                    );
                }
            }
        }
    }
    g
}

/// A DS request signed with a raw Ed25519 key (the way MLS leaf keys sign).
pub fn ds_signed(
    group: &GroupHandle,
    ear: &[u8],
    sender: DsSender,
    operation: DsOperation,
    key: &SigningKey,
    timestamp_ms: u64,
) -> Vec<u8> {
    let tbs = DsRequestTbs {
        group_id: group.0.clone().into(),
        ear_key: Some(ear.to_vec().into()),
        timestamp_ms,
        nonce: rand::random(),
        sender,
        operation,
    };
    let tt = match tbs.operation {
        DsOperation::WelcomeInfo(_) => TransactionType::WelcomeInformation,
        _ => TransactionType::GroupOperation,
    };
    let mut signed = DS_REQUEST_SIGNATURE_LABEL.to_vec();
    signed.extend(encode(&tbs).unwrap());
    let req = DsRequest {
        tbs,
        signature: key.sign(&signed).to_bytes().to_vec().into(),
    };
    envelope(tt, &req).unwrap()
}

/// Posts `body`, checks status and code, and checks the whole database is byte-for-byte unchanged.
pub async fn rejected(hub: &HubProcess, path: &str, body: Vec<u8>, status: u16, code: ErrorCode) {
    let before = hub.dump();
    let (s, resp) = post(&hub.url(), path, body).await;
    assert_eq!(
        (s, error_of(&resp).code),
        (status, code),
        "{}",
        error_of(&resp)
    );
    assert!(
        before == hub.dump(),
        "stored data changed after a rejected request ({code:?})"
    );
}

/// Starts a real hub process in `dir` with extra TOML lines in its config file.
pub fn hub_with_config(dir: &Path, extra_config: &str) -> HubProcess {
    HubProcess::start_with_config(
        Path::new(env!("CARGO_BIN_EXE_hub-under-test")),
        dir,
        "hub.test",
        MAX_BODY,
        extra_config,
    )
}
