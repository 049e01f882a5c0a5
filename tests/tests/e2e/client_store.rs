//! The client store against real hub and `mimi-rm` processes: what a command reads on the way is
//! shown by the next `receive` (issue "nothing a user was sent is lost"), a client killed at
//! random points loses and repeats nothing, an old `client.json` directory carries on after
//! migration, and a passphrase store opens only with its passphrase and shows a thief nothing.

use mimi_client_rm::{Client, GroupHandle, RegisterOptions, StoreOptions};
use mimi_rm_tests::HubProcess;
use mimi_rm_tests::common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// Runs `mimi-rm --dir <dir> --hub <url> <args…>` to completion.
fn run(hub_url: &str, dir: &Path, args: &[&str]) -> Output {
    cli_output(hub_url, dir, args)
}

/// [`run`], failing on a non-zero exit; returns (stdout, stderr).
fn cli(hub_url: &str, dir: &Path, args: &[&str]) -> (String, String) {
    let out = run(hub_url, dir, args);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "mimi-rm {args:?} failed: {stdout}{stderr}"
    );
    (stdout, stderr)
}

/// How often `text` appears as a message line (`… leaf N: text`) in `out`.
fn shown(out: &str, text: &str) -> usize {
    out.lines()
        .filter(|l| l.ends_with(&format!(": {text}")))
        .count()
}

/// Three members of one group, set up through the library; the clients are closed so that
/// command-line processes can open their stores.
async fn three_members(hub: &HubProcess, dir: &Path) -> (String, [PathBuf; 3]) {
    let mut alice = client(hub, dir, "alice").await;
    let mut bob = client(hub, dir, "bob").await;
    let mut carol = client(hub, dir, "carol").await;
    let g = group_of(&mut alice, &mut [&mut bob, &mut carol]).await;
    alice.receive().await.unwrap();
    (
        g.to_string(),
        ["alice", "bob", "carol"].map(|n| dir.join(n)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_command_reads_on_the_way_is_shown_by_the_next_receive() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path());
    let url = hub.url();
    let (g, [alice, bob, carol]) = three_members(&hub, dir.path()).await;

    // (a) Alice's second update reads her queue before committing: bob's message is in it.
    cli(&url, &alice, &["update", "--group", &g]);
    cli(&url, &bob, &["send", "--group", &g, "--message", "case a"]);
    let (_, stderr) = cli(&url, &alice, &["update", "--group", &g]);
    assert!(stderr.contains("new events waiting"), "{stderr}");
    let first = cli(&url, &alice, &["receive"]).0;
    let second = cli(&url, &alice, &["receive"]).0;
    assert_eq!(shown(&first, "case a"), 1, "{first}");
    assert_eq!(shown(&second, "case a"), 0, "shown once only: {second}");

    // (b) Carol, six epochs behind, sends: WrongEpoch, she catches up (reading alice's message)
    // and sends again.
    cli(&url, &bob, &["receive"]);
    for _ in 0..6 {
        cli(&url, &bob, &["update", "--group", &g]);
    }
    cli(
        &url,
        &alice,
        &["send", "--group", &g, "--message", "case b"],
    );
    let (_, stderr) = cli(
        &url,
        &carol,
        &["send", "--group", &g, "--message", "from carol"],
    );
    assert!(stderr.contains("new events waiting"), "{stderr}");
    let out = cli(&url, &carol, &["receive"]).0;
    assert_eq!(shown(&out, "case a"), 1, "{out}");
    assert_eq!(shown(&out, "case b"), 1, "{out}");
    assert_eq!(shown(&cli(&url, &alice, &["receive"]).0, "from carol"), 1);

    // (c) After alice rotates the state key, carol's send hits WrongEarKey and catches up.
    cli(&url, &alice, &["rotate-key", "--group", &g]);
    cli(
        &url,
        &alice,
        &["send", "--group", &g, "--message", "case c"],
    );
    cli(
        &url,
        &carol,
        &["send", "--group", &g, "--message", "carol again"],
    );
    let out = cli(&url, &carol, &["receive"]).0;
    assert_eq!(shown(&out, "case c"), 1, "{out}");
    assert!(!out.contains("could not process"), "{out}");
    let out = cli(&url, &bob, &["receive"]).0;
    for text in ["case b", "from carol", "case c", "carol again"] {
        assert_eq!(shown(&out, text), 1, "{text}: {out}");
    }
}

/// One `mimi-rm` run that may be killed: its outcome and what it printed.
struct Run {
    killed: bool,
    success: bool,
    stdout: String,
}

/// Starts `mimi-rm`, kills it with SIGKILL after `after` if it is still running.
fn run_killing(hub_url: &str, dir: &Path, args: &[&str], after: Duration) -> Run {
    let mut child = Command::new(cli_binary())
        .arg("--dir")
        .arg(dir)
        .arg("--hub")
        .arg(hub_url)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn mimi-rm");
    std::thread::sleep(after);
    let killed = matches!(child.try_wait(), Ok(None));
    if killed {
        child.kill().expect("SIGKILL");
    }
    let out = child.wait_with_output().expect("wait");
    Run {
        killed,
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
    }
}

/// Milliseconds an undisturbed `receive` takes here (at least 20).
fn typical_run_ms(hub_url: &str, dir: &Path, g: &str) -> u64 {
    let t = std::time::Instant::now();
    cli(hub_url, dir, &["update", "--group", g]);
    cli(hub_url, dir, &["receive", "--ids"]);
    (t.elapsed().as_millis() as u64 / 2).max(20)
}

/// The numbered message lines (`#N [group] leaf L: text`) of a `receive --ids` output.
fn numbered(out: &str) -> Vec<(u64, String)> {
    out.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix('#')?;
            let (n, rest) = rest.split_once(' ')?;
            let (_, text) = rest.split_once(": ")?;
            Some((n.parse().ok()?, text.to_owned()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_killed_at_random_points_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path());
    let url = hub.url();
    let (g, [alice, bob, _]) = three_members(&hub, dir.path()).await;

    // Both directions, each a sender and a receiver process at a time, killed at random.
    let mut acked: BTreeMap<&Path, Vec<String>> = BTreeMap::new();
    let mut unacked: BTreeMap<&Path, Vec<String>> = BTreeMap::new();
    let mut seen: BTreeMap<&Path, String> = BTreeMap::new();
    let (mut kills, mut round) = (0, 0);
    // A run takes some tens of milliseconds: kills land anywhere from start-up to the exit.
    let span = 2 * typical_run_ms(&url, &alice, &g);
    while kills < 24 && round < 300 {
        let (from, to) = if round % 2 == 0 {
            (&alice, &bob)
        } else {
            (&bob, &alice)
        };
        let text = format!("m{round}");
        let (sender_delay, receiver_delay) = (
            Duration::from_millis(rand::random::<u64>() % span),
            Duration::from_millis(rand::random::<u64>() % span),
        );
        let (send, receive) = std::thread::scope(|s| {
            let send = s.spawn(|| {
                let args = ["send", "--group", &g, "--message", &text];
                run_killing(&url, from, &args, sender_delay)
            });
            let receive = s.spawn(|| run_killing(&url, to, &["receive", "--ids"], receiver_delay));
            (send.join().unwrap(), receive.join().unwrap())
        });
        kills += usize::from(send.killed) + usize::from(receive.killed);
        if send.success {
            acked.entry(from).or_default().push(text);
        } else {
            unacked.entry(from).or_default().push(text);
        }
        seen.entry(to).or_default().push_str(&receive.stdout);
        round += 1;
    }
    assert!(kills >= 20, "only {kills} kills hit a running process");

    // Then, undisturbed, everything left is shown.
    for (d, other) in [(&alice, &bob), (&bob, &alice)] {
        for _ in 0..2 {
            seen.entry(d)
                .or_default()
                .push_str(&cli(&url, d, &["receive", "--ids"]).0);
        }
        let sent = acked.get(other.as_path()).cloned().unwrap_or_default();
        let maybe = unacked.get(other.as_path()).cloned().unwrap_or_default();
        let out = &seen[d.as_path()];
        assert!(!out.contains("could not process"), "{out}");
        let mut ids: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
        let mut lines = 0;
        for (n, text) in numbered(out) {
            ids.entry(text).or_default().insert(n);
            lines += 1;
        }
        for text in &sent {
            let got = ids.get(text).map_or(0, BTreeSet::len);
            assert_eq!(
                got, 1,
                "acknowledged {text} shown under {got} event numbers"
            );
        }
        for (text, n) in &ids {
            assert!(n.len() == 1, "{text} is two events: {n:?}");
            assert!(
                sent.contains(text) || maybe.contains(text),
                "{text} was never sent"
            );
        }
        eprintln!(
            "{}: {} acknowledged, {} of {} unacknowledged arrived, {} lines for {} events",
            d.display(),
            sent.len(),
            maybe.iter().filter(|t| ids.contains_key(*t)).count(),
            maybe.len(),
            lines,
            ids.len()
        );
    }
    eprintln!("{kills} kills over {round} rounds");
    assert_private(&alice);
    assert_private(&bob);
}

/// The client directory is 0700 and every file in it 0600.
fn assert_private(dir: &Path) {
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(dir), 0o700, "{}", dir.display());
    let mut db = false;
    for f in std::fs::read_dir(dir).unwrap() {
        let p = f.unwrap().path();
        db |= p.ends_with("client.db");
        assert_eq!(mode(&p), 0o600, "{}", p.display());
    }
    assert!(db, "no client.db in {}", dir.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_json_directory_is_migrated_and_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path());
    let url = hub.url();
    let mut alice = client(&hub, dir.path(), "alice").await;
    let mut bob = client(&hub, dir.path(), "bob").await;
    let g = group_of(&mut alice, &mut [&mut bob]).await;
    alice.send(&g, b"before").await.unwrap();
    // Alice's device as the old client left it; the new-format copy is not used again.
    let old = dir.path().join("alice-old");
    alice.export_legacy(&old).unwrap();
    drop(alice);
    assert!(old.join("client.json").exists() && !old.join("client.db").exists());

    bob.send(&g, b"while away").await.unwrap();
    let out = cli(&url, &old, &["receive"]).0;
    assert_eq!(shown(&out, "while away"), 1, "{out}");
    assert!(!old.join("client.json").exists(), "the old file is removed");
    assert_private(&old);
    cli(
        &url,
        &old,
        &["send", "--group", &g.to_string(), "--message", "after"],
    );
    let got = messages(&bob.receive().await.unwrap());
    assert!(got.contains(&b"after".to_vec()), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passphrase_store_opens_only_with_it_and_shows_a_thief_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path());
    let url = hub.url();
    let pass = dir.path().join("pass");
    std::fs::write(&pass, "a long passphrase\n").unwrap();
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "another passphrase\n").unwrap();

    let alice_dir = dir.path().join("alice");
    let options = RegisterOptions {
        ca_pem: hub.ca_pem(),
        store: StoreOptions::passphrase_file(&pass).unwrap(),
        ..Default::default()
    };
    let mut alice = Client::register_with(&alice_dir, &url, "alice", &options)
        .await
        .unwrap();
    let mut bob = client(&hub, dir.path(), "bob").await;
    let g = group_of(&mut bob, &mut [&mut alice]).await;
    drop(alice);
    bob.send(&g, b"secret words").await.unwrap();

    let pass_arg = pass.to_str().unwrap();
    for (args, why) in [
        (vec!["receive"], "passphrase-protected"),
        (
            vec!["--passphrase-file", wrong.to_str().unwrap(), "receive"],
            "wrong passphrase",
        ),
    ] {
        let out = run(&url, &alice_dir, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(why), "{stderr}");
    }
    let out = cli(
        &url,
        &alice_dir,
        &["--passphrase-file", pass_arg, "receive"],
    )
    .0;
    assert_eq!(shown(&out, "secret words"), 1, "{out}");
    cli(
        &url,
        &alice_dir,
        &[
            "--passphrase-file",
            pass_arg,
            "send",
            "--group",
            &g.to_string(),
            "--message",
            "hi",
        ],
    );
    assert_eq!(
        messages(&bob.receive().await.unwrap()),
        vec![b"hi".to_vec()]
    );
    // Fetched but not yet shown: waiting in the store when the device is taken.
    bob.send(&g, b"unread words").await.unwrap();
    let store = StoreOptions::passphrase_file(&pass).unwrap();
    let mut alice = Client::load_with(&alice_dir, &url, hub.ca_pem(), &store).unwrap();
    alice.fetch().await.unwrap();
    assert_eq!(alice.waiting_events().unwrap(), 1);
    drop(alice);
    assert_private(&alice_dir);

    // The thief reads every file: no handle, no group id, no message text.
    let group_id = hex::decode(g.to_string()).unwrap();
    let needles: [&[u8]; 4] = [b"alice", &group_id, b"unread words", b"secret words"];
    let scan = |d: &Path| -> Vec<usize> {
        let files = dir_files(d);
        needles
            .iter()
            .map(|n| {
                files
                    .iter()
                    .filter(|(_, b)| b.windows(n.len()).any(|w| w == *n))
                    .count()
            })
            .collect()
    };
    assert_eq!(scan(&alice_dir), vec![0; 4], "found in alice's files");
    // Positive control: bob's store (no passphrase) shows the group id and alice's handle.
    let control = scan(&dir.path().join("bob"));
    assert!(control[0] > 0 && control[1] > 0, "{control:?}");
}

/// Bytes bob's store writes per received message in group `g` (over `n` messages).
async fn bytes_per_message(alice: &mut Client, bob: &mut Client, g: &GroupHandle, n: u64) -> u64 {
    bob.receive().await.unwrap();
    let before = bob.store_stats();
    for i in 0..n {
        alice
            .send(g, format!("message {i}").as_bytes())
            .await
            .unwrap();
    }
    assert_eq!(messages(&bob.receive().await.unwrap()).len() as u64, n);
    let after = bob.store_stats();
    (after.bytes_written - before.bytes_written) / n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_received_message_writes_the_same_bytes_in_1_and_100_groups() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path());
    let mut alice = client(&hub, dir.path(), "alice").await;
    let mut bob = client(&hub, dir.path(), "bob").await;
    let g = group_of(&mut alice, &mut [&mut bob]).await;
    let one = bytes_per_message(&mut alice, &mut bob, &g, 20).await;
    for _ in 1..100 {
        let other = alice.create_group().await.unwrap();
        alice
            .invite(&other, &bob.contact_card().unwrap())
            .await
            .unwrap();
    }
    bob.receive().await.unwrap();
    assert_eq!(bob.groups().len(), 100);
    let hundred = bytes_per_message(&mut alice, &mut bob, &g, 20).await;
    // The old client rewrote its whole file per message: what that file is now.
    let old = dir.path().join("bob-old");
    bob.export_legacy(&old).unwrap();
    let old_bytes = std::fs::metadata(old.join("client.json")).unwrap().len();
    eprintln!(
        "bytes written per received message: {one} in 1 group, {hundred} in 100 groups \
         (the old client.json rewrite: {old_bytes})"
    );
    assert!(
        hundred <= one + one / 4,
        "{hundred} B per message in 100 groups against {one} B in 1"
    );
    assert!(
        old_bytes > 20 * hundred,
        "the control: the old file is large"
    );
}
