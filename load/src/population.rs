//! Setup: register clients and build the groups the run drives.

use crate::LoadError;
use indicatif::{ProgressBar, ProgressStyle};
use mimi_client_rm::{Client, GroupHandle};
use mimi_rm_protocol::DsMode;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::Mutex;

/// One group and its members' clients (index 0 created it).
pub struct LoadGroup {
    /// The group on the hub.
    pub handle: GroupHandle,
    /// Its members, each usable by one operation at a time.
    pub members: Vec<Arc<Mutex<Client>>>,
}

fn setup(e: impl std::fmt::Display) -> LoadError {
    LoadError::Setup(e.to_string())
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_owned());
    pb
}

/// Registers `count` ephemeral clients (in parallel, a few at a time).
pub async fn register(
    url: &str,
    dir: &Path,
    mode: DsMode,
    count: usize,
    prefix: &str,
) -> Result<Vec<Client>, LoadError> {
    let pb = bar(count as u64, "register");
    let mut out = Vec::with_capacity(count);
    let mut pending = tokio::task::JoinSet::new();
    let mut next = 0usize;
    while out.len() < count {
        while next < count && pending.len() < 8 {
            // Several URLs (hub processes on one database): clients in turn on each.
            let urls: Vec<&str> = url.split(',').collect();
            let (url, dir) = (urls[next % urls.len()].to_owned(), dir.to_owned());
            let name = format!("{prefix}{next}-{}", hex::encode(rand::random::<[u8; 3]>()));
            pending.spawn(async move {
                // The generator measures the hub: one pool per client, as before connection
                // scopes (scoped, 200 clients would hold ~3 connections each).
                let options = mimi_client_rm::RegisterOptions {
                    mode,
                    connections: mimi_client_rm::ConnectionOptions {
                        policy: mimi_client_rm::ConnectionPolicy::Shared,
                        ..Default::default()
                    },
                    ..Default::default()
                };
                let mut c = Client::register_with(&dir.join(&name), &url, &name, &options)
                    .await
                    .map_err(setup)?;
                c.set_ephemeral();
                Ok::<Client, LoadError>(c)
            });
            next += 1;
        }
        match pending.join_next().await {
            Some(done) => {
                out.push(done.map_err(setup)??);
                pb.inc(1);
            }
            None => break,
        }
    }
    pb.finish();
    Ok(out)
}

/// Forms `clients.len() / size` groups of `size` members: member 0 creates each group and
/// invites the others, who then join from their Welcomes.
pub async fn build_groups(clients: Vec<Client>, size: usize) -> Result<Vec<LoadGroup>, LoadError> {
    let groups = clients.len() / size.max(1);
    let pb = bar(groups as u64, "groups");
    let mut rest = clients.into_iter();
    let mut out = Vec::with_capacity(groups);
    for _ in 0..groups {
        let mut members: Vec<Client> = rest.by_ref().take(size).collect();
        let cards = members
            .iter()
            .map(|c| c.contact_card())
            .collect::<Result<Vec<_>, _>>()
            .map_err(setup)?;
        for (i, c) in members.iter_mut().enumerate() {
            for (j, card) in cards.iter().enumerate() {
                if i != j {
                    c.add_contact(card).map_err(setup)?;
                }
            }
        }
        let handle = members[0].create_group().await.map_err(setup)?;
        let (creator, others) = members.split_at_mut(1);
        for card in &cards[1..] {
            creator[0].invite(&handle, card).await.map_err(setup)?;
        }
        for c in others.iter_mut() {
            c.receive().await.map_err(setup)?;
        }
        out.push(LoadGroup {
            handle,
            members: members
                .into_iter()
                .map(|c| Arc::new(Mutex::new(c)))
                .collect(),
        });
        pb.inc(1);
    }
    pb.finish();
    Ok(out)
}

/// Fills every member's token wallet with about `per_client` tokens, so the measured phase
/// pays from the wallet instead of waiting on issuance (issuance cost is in BENCHMARKS.md).
pub async fn prefill(groups: &[LoadGroup], per_client: usize) -> Result<(), LoadError> {
    let all: Vec<_> = groups
        .iter()
        .flat_map(|g| g.members.iter().cloned())
        .collect();
    let pb = bar(all.len() as u64, "tokens");
    for c in all {
        c.lock()
            .await
            .prefill_tokens(per_client)
            .await
            .map_err(setup)?;
        pb.inc(1);
    }
    pb.finish();
    Ok(())
}

/// Two freshly registered clients (`<prefix>-a-…`, `<prefix>-b-…`) in one group: alice created
/// it and invited bob, who has joined. For the measurements that need one sender and one
/// recipient.
pub async fn pair_in_group(
    dir: &Path,
    url: &str,
    prefix: &str,
) -> Result<(Client, Client, GroupHandle), LoadError> {
    let setup = |e: mimi_client_rm::ClientError| LoadError::Setup(e.to_string());
    let tag: u32 = rand::random();
    let mut alice = Client::register(&dir.join("a"), url, &format!("{prefix}-a-{tag:08x}"))
        .await
        .map_err(setup)?;
    let mut bob = Client::register(&dir.join("b"), url, &format!("{prefix}-b-{tag:08x}"))
        .await
        .map_err(setup)?;
    bob.add_contact(&alice.contact_card().map_err(setup)?)
        .map_err(setup)?;
    let group = alice.create_group().await.map_err(setup)?;
    alice
        .invite(&group, &bob.contact_card().map_err(setup)?)
        .await
        .map_err(setup)?;
    bob.receive().await.map_err(setup)?;
    Ok((alice, bob, group))
}
