//! Fork freedom under concurrency: six clients in two overlapping groups issue random sends and
//! commits at once over HTTP. The hub must accept at most one commit per group epoch (no fork),
//! refuse the losers with `WrongEpoch` (or a validation code), lose no acknowledged message
//! (every member decrypts everything), and leave every member of a group on the same epoch
//! authenticator.
//!
//! `MIMI_CONCURRENCY_OPS` sets the number of sends + commits (default 2000).

use mimi_client_rm::{Client, Event, GroupHandle};
use mimi_rm_protocol::ErrorCode;
use mimi_rm_tests::HubProcess;
use mimi_rm_tests::common::*;
use std::collections::{BTreeMap, BTreeSet};

struct Log {
    client: Client,
    groups: Vec<GroupHandle>,
    acked: Vec<(GroupHandle, Vec<u8>)>,
    received: Vec<(GroupHandle, Vec<u8>)>,
    commits: Vec<(GroupHandle, u64)>,
    rejected: BTreeMap<String, usize>,
    problems: Vec<String>,
    ops: usize,
}

fn record(log: &mut Log, events: Vec<Event>) {
    for e in events {
        if let Event::Message {
            group, plaintext, ..
        } = e
        {
            log.received.push((group, plaintext));
        } else if let Event::Undecryptable { reason, .. } | Event::UnverifiedMember { reason, .. } =
            e
        {
            log.problems.push(reason);
        }
    }
}

/// How many sends and commits a race runs (`MIMI_CONCURRENCY_OPS`, default 2000).
fn race_ops() -> usize {
    std::env::var("MIMI_CONCURRENCY_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_never_fork_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path());
    race(&[&hub], dir.path(), race_ops()).await;
}

/// Three hub processes on one PostgreSQL database, each client on one of them at random: the
/// database's row locks must serialise each group across processes as the in-memory stripes
/// do within one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_on_one_database_never_fork_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let database = mimi_rm_tests::postgres::fresh_database();
    let hubs: Vec<HubProcess> = (0..3)
        .map(|i| {
            let d = dir.path().join(format!("hub{i}"));
            std::fs::create_dir_all(&d).unwrap();
            HubProcess::start_shared(&hub_binary(), &d, "example.org", &database, "")
        })
        .collect();
    race(&hubs.iter().collect::<Vec<_>>(), dir.path(), race_ops()).await;
    // Positive control of the spread: every process served requests.
    for h in &hubs {
        assert!(
            metric(h, "mimi_requests_ok").await > 0,
            "{} served nothing",
            h.url()
        );
    }
}

/// Six clients, spread over `hubs` (at a random offset), in two overlapping groups, race
/// `total` sends and commits; then checks no fork and no loss.
async fn race(hubs: &[&HubProcess], dir: &std::path::Path, total: usize) {
    let mut c: Vec<Client> = Vec::new();
    // Every hub gets clients; which clients (and so which groups' members) is random.
    let offset = rand::random::<usize>();
    for i in 0..6 {
        let hub = hubs[(i + offset) % hubs.len()];
        c.push(client(hub, dir, &format!("c{i}")).await);
    }
    let (g1, g2) = {
        let (left, right) = c.split_at_mut(4);
        let (c0, rest) = left.split_first_mut().unwrap();
        let g1 = group_of(c0, &mut rest.iter_mut().collect::<Vec<_>>()).await;
        let (c4, c5) = right.split_first_mut().unwrap();
        let (_, c23) = rest.split_at_mut(1);
        let (c2, c3) = c23.split_at_mut(1);
        let g2 = group_of(c4, &mut [&mut c5[0], &mut c2[0], &mut c3[0]]).await;
        (g1, g2)
    };
    // Everyone catches up on the setup commits before the race starts.
    for x in c.iter_mut() {
        x.receive().await.unwrap();
    }
    let membership = |i: usize| -> Vec<GroupHandle> {
        match i {
            0 | 1 => vec![g1.clone()],
            2 | 3 => vec![g1.clone(), g2.clone()],
            _ => vec![g2.clone()],
        }
    };
    let per_client = total.div_ceil(6);
    let mut tasks = tokio::task::JoinSet::new();
    for (i, client) in c.into_iter().enumerate() {
        let groups = membership(i);
        tasks.spawn(async move {
            let mut log = Log {
                client,
                groups,
                acked: Vec::new(),
                received: Vec::new(),
                commits: Vec::new(),
                rejected: BTreeMap::new(),
                problems: Vec::new(),
                ops: 0,
            };
            let mut n = 0u64;
            while log.ops < per_client {
                n += 1;
                let g = log.groups[rand::random::<usize>() % log.groups.len()].clone();
                let roll = rand::random::<u32>() % 100;
                if roll < 70 {
                    let text = format!("{}-{n}", log.client.name()).into_bytes();
                    log.client.send(&g, &text).await.expect("send");
                    log.acked.push((g, text));
                    log.ops += 1;
                } else if roll < 85 {
                    match log.client.update(&g).await {
                        Ok(epoch) => log.commits.push((g, epoch)),
                        Err(e) => {
                            let code = e.code().expect("a commit is refused by the hub, not lost");
                            assert!(
                                matches!(
                                    code,
                                    ErrorCode::WrongEpoch
                                        | ErrorCode::InvalidMlsMessage
                                        | ErrorCode::WrongOperation
                                ),
                                "unexpected refusal {e}"
                            );
                            *log.rejected.entry(format!("{code:?}")).or_default() += 1;
                            // Catch up with the winner before trying again.
                            let events = log.client.receive().await.expect("receive");
                            record(&mut log, events);
                        }
                    }
                    log.ops += 1;
                } else {
                    let events = log.client.receive().await.expect("receive");
                    record(&mut log, events);
                }
            }
            log
        });
    }
    let mut logs = Vec::new();
    while let Some(done) = tasks.join_next().await {
        logs.push(done.unwrap());
    }
    for _ in 0..3 {
        for log in logs.iter_mut() {
            let events = log.client.receive().await.expect("final receive");
            record(log, events);
        }
    }

    // Zero forks: no two accepted commits produced the same epoch of a group.
    let mut seen = BTreeSet::new();
    for log in &logs {
        for c in &log.commits {
            assert!(seen.insert(c.clone()), "two commits accepted for {c:?}");
        }
    }
    // One epoch per group, agreed by every member.
    for g in [&g1, &g2] {
        let auths: BTreeSet<Vec<u8>> = logs
            .iter()
            .filter(|l| l.groups.contains(g))
            .map(|l| l.client.epoch_authenticator(g).unwrap())
            .collect();
        assert_eq!(auths.len(), 1, "members of {g} disagree");
    }
    // Lost updates: every acknowledged message reached every other member exactly once, and
    // nothing queued failed to decrypt. (A member committing many times in a row without
    // reading its queue used to lose older-epoch messages as "generation too old"; see
    // `lifecycle::consecutive_own_commits_keep_queued_messages_readable`.)
    let mut deliveries = 0usize;
    for receiver in &logs {
        let mut counts: BTreeMap<&(GroupHandle, Vec<u8>), usize> = BTreeMap::new();
        for m in &receiver.received {
            *counts.entry(m).or_default() += 1;
        }
        assert!(
            receiver.problems.is_empty(),
            "{}: {:?}",
            receiver.client.name(),
            receiver.problems
        );
        let mut missing = 0usize;
        for sender in &logs {
            if sender.client.name() == receiver.client.name() {
                continue;
            }
            for m in sender
                .acked
                .iter()
                .filter(|(g, _)| receiver.groups.contains(g))
            {
                deliveries += 1;
                let n = counts.get(m).copied().unwrap_or(0);
                assert!(n <= 1, "{} read {:?} twice", receiver.client.name(), m.1);
                missing += 1 - n;
            }
        }
        assert_eq!(
            missing,
            0,
            "{} lost {missing} messages",
            receiver.client.name()
        );
    }
    let ops: usize = logs.iter().map(|l| l.ops).sum();
    let commits: usize = logs.iter().map(|l| l.commits.len()).sum();
    let mut rejected: BTreeMap<String, usize> = BTreeMap::new();
    for l in &logs {
        for (k, v) in &l.rejected {
            *rejected.entry(k.clone()).or_default() += v;
        }
    }
    assert!(ops >= total, "{ops} operations");
    assert!(commits > 0, "some commits won");
    eprintln!(
        "concurrency: {ops} sends and commits, {commits} commits accepted, refused: {rejected:?}, \
         deliveries {deliveries}, none lost"
    );
}
