//! What an operator's log links: after the realistic scenario on a hub logging at `info` (plus
//! a few refused requests), no line of its log names two of a handle, a pseudonym (leaf
//! pseudonym, leaf key or credential), a queue id, a group id and a client's address — in
//! any encoding the hub could have printed them (raw, hex, base64). `debug` may link (it is
//! documented so); `info` is what operators keep.

use base64::Engine as _;
use mimi_rm_tests::common::*;
use mimi_rm_tests::{HubProcess, post, scenario};
use std::collections::BTreeSet;

/// One kind of identifier and every printable form of each of its values.
struct Kind {
    name: &'static str,
    forms: Vec<String>,
}

fn forms(values: impl IntoIterator<Item = Vec<u8>>) -> Vec<String> {
    let mut out = Vec::new();
    for v in values {
        if v.len() < 4 {
            continue;
        }
        out.push(hex::encode(&v));
        out.push(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&v));
        out.push(base64::engine::general_purpose::STANDARD_NO_PAD.encode(&v));
        if let Ok(text) = String::from_utf8(v.clone())
            && text.len() >= 4
            && text.chars().all(|c| c.is_ascii_graphic())
        {
            out.push(text);
        }
    }
    out
}

/// The kinds of identifier `line` names.
fn kinds_in<'k>(line: &str, kinds: &'k [Kind]) -> BTreeSet<&'k str> {
    kinds
        .iter()
        .filter(|k| k.forms.iter().any(|f| line.contains(f.as_str())))
        .map(|k| k.name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_logs_name_at_most_one_identifier_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut hub = HubProcess::start_logging(&hub_binary(), dir.path(), DOMAIN, "", "info");
    let s = scenario::run(&hub.url(), dir.path(), 5).await.unwrap();
    // Refusals are logged at info: provoke a few (garbage, and a wrong EAR key for a group).
    for body in [vec![0u8; 3], vec![1u8; 64]] {
        post(&hub.url(), mimi_rm_protocol::paths::GROUP_OPERATION, body).await;
    }
    let stranger = ed25519_dalek::SigningKey::from_bytes(&rand::random());
    let wrong_key = ds_signed(
        &s.groups[0],
        &[7; 32],
        mimi_rm_protocol::ds::DsSender::Anonymous,
        mimi_rm_protocol::ds::DsOperation::ExternalCommitInfo,
        &stranger,
        mimi_ds_rm::now_ms(),
    );
    post(
        &hub.url(),
        mimi_rm_protocol::paths::EXTERNAL_COMMIT_INFORMATION,
        wrong_key,
    )
    .await;
    hub.stop();

    let handles: Vec<Vec<u8>> = s
        .identities()
        .unwrap()
        .into_iter()
        .filter(|(what, _)| what.starts_with("handle "))
        .map(|(_, v)| v)
        .collect();
    let own_port = format!("127.0.0.1:{}", hub.addr.port());
    let kinds = [
        Kind {
            name: "handle",
            forms: forms(handles),
        },
        Kind {
            name: "pseudonym",
            forms: forms(s.pseudonyms().unwrap().into_iter().map(|(_, v)| v)),
        },
        Kind {
            name: "queue id",
            forms: forms(s.queue_ids().unwrap().into_iter().map(|(_, v)| v)),
        },
        Kind {
            name: "group id",
            forms: forms(s.groups.iter().map(|g| g.0.clone())),
        },
    ];
    // Control: the detector finds each kind, and two on one line.
    let probe = format!("{} {}", kinds[2].forms[0], kinds[3].forms[0]);
    assert_eq!(kinds_in(&probe, &kinds).len(), 2);
    for k in &kinds {
        assert!(!k.forms.is_empty(), "no {} to look for", k.name);
    }

    let log = std::fs::read_to_string(hub.log_path().unwrap()).unwrap();
    assert!(log.contains("listening on"), "the log was written:\n{log}");
    let rejected = log
        .lines()
        .filter(|l| l.contains("request rejected"))
        .count();
    assert!(rejected >= 3, "refusals are logged at info ({rejected})");
    for line in log.lines() {
        let mut found = kinds_in(line, &kinds);
        // A client's address: loopback with a port other than the hub's own.
        let peer = line
            .match_indices("127.0.0.1")
            .any(|(i, _)| !line[i..].starts_with(&own_port));
        if peer {
            found.insert("client address");
        }
        assert!(found.len() <= 1, "an info line links {found:?}: {line}");
    }
    eprintln!(
        "hub log at info: {} lines, {rejected} refusals, none linking two identifiers",
        log.lines().count()
    );
}
