//! Shared setup for the end-to-end tests.
#![allow(dead_code)]

use mimi_client_rm::{Client, Event, GroupHandle};
use mimi_rm_tests::HubProcess;
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
    for i in 0..others.len() {
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
