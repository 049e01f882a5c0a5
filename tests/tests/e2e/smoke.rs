//! The README's first command and the operator's audit view, run as a newcomer and an operator
//! would: `make demo`'s binary, and `ds-rm audit` on the data directory of a hub that served
//! real clients.

use mimi_rm_tests::common::{self, hub};
use std::process::Command;

/// What `make demo` runs: it must finish, find no plaintext word in the hub's DS/QS records and
/// show both scenes (one hub, then two federated hubs that delivered to each other).
#[test]
fn the_demo_runs_to_the_end_and_finds_nothing_on_the_hub() {
    let out = Command::new(env!("CARGO_BIN_EXE_mimi-rm-demo"))
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("'carol': nothing found"), "{stdout}");
    assert!(stdout.contains("what the hub stored"), "{stdout}");
    assert!(stdout.contains("two federated providers"), "{stdout}");
    let delivered = stdout
        .lines()
        .find_map(|l| l.split("a.demo delivered ").nth(1))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .expect("the federation scene reports its deliveries");
    assert!(
        delivered > 0,
        "nothing crossed between the providers:\n{stdout}"
    );
}

/// `ds-rm audit` on a stopped hub's data directory lists every column family with its record
/// count; after a client registered, the AS and QS hold its records and the DS none, and the
/// handle appears in the AS only.
#[tokio::test(flavor = "multi_thread")]
async fn audit_shows_every_column_family_of_a_stopped_hub() {
    let dir = tempfile::tempdir().unwrap();
    let mut hub = hub(dir.path());
    let alice = common::client(&hub, dir.path(), "alice").await;
    drop(alice);
    hub.stop();
    let out = Command::new(common::hub_binary())
        .arg("audit")
        .arg(dir.path().join("hub-data"))
        .output()
        .expect("run ds-rm audit");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "audit failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let count = |cf: &str| -> usize {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("== {cf} (")))
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no section for {cf}:\n{text}"))
    };
    for cf in mimi_ds_rm::store::Cf::ALL {
        count(cf.name());
    }
    // Then every file; the clean stop's scrub left no old value in any of them.
    assert!(
        text.contains("erasable.slots") && text.contains(".sst"),
        "{text}"
    );
    assert!(
        text.contains("== old values in files: 0 in logs, 0 in tables, 0 unused tables"),
        "{text}"
    );
    assert_eq!(count("as_users"), 1, "{text}");
    assert!(count("qs_clients") >= 1, "{text}");
    assert!(count("qs_users") >= 1, "{text}");
    assert_eq!(count("ds_groups"), 0, "{text}");
    // The audit shows keys in hex: the AS keys its users by handle, nothing else does.
    let handle = hex::encode(b"alice");
    let as_users = text
        .split("\n== ")
        .find(|s| s.starts_with("as_users"))
        .unwrap();
    assert!(
        as_users.contains(&handle),
        "the AS record is keyed by the handle:\n{as_users}"
    );
    for section in text.split("\n== ").filter(|s| !s.starts_with("as_")) {
        assert!(
            !section.contains(&handle),
            "handle outside the AS:\n{section}"
        );
    }
}
