//! The client library's examples (`client-rm/examples/`), run as a user would against a real
//! hub: the two-user chat to its end, and the echo bot answering a member of its group.
//! `cargo test --workspace` builds them; run alone, this suite needs `cargo build --examples`.

use mimi_client_rm::{ContactCard, Event, Listening};
use mimi_rm_tests::common::*;
use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The built example `name`, beside the test binaries.
fn example(name: &str) -> PathBuf {
    let path = beside_test_executable(&format!("examples/{name}"));
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo test --workspace` or `cargo build --examples`",
        path.display()
    );
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_example_runs_to_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path());
    let out = tokio::task::spawn_blocking({
        let (url, dir) = (hub.url(), dir.path().join("chat"));
        move || {
            Command::new(example("chat"))
                .args(["--hub", &url, "--lines", "2", "--dir"])
                .arg(dir)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "joined the group",
        "bob got: line 2 from alice",
        "alice got: reply 2 from bob",
        "done",
    ] {
        assert!(stdout.contains(line), "{line:?} missing from {stdout}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_echo_bot_answers_a_member_of_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path());
    let mut carol = client(&hub, dir.path(), "carol").await;
    carol.set_listening(Listening::Live {
        fallback: Duration::from_secs(1),
    });
    let mut bot = Command::new(example("echo_bot"))
        .args(["--hub", &hub.url(), "--name", "echo", "--for-secs", "120"])
        .arg("--dir")
        .arg(dir.path().join("bot"))
        .arg("--accept-from")
        .arg(carol.contact_card().unwrap().to_text().unwrap())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(bot.stdout.take().unwrap()).lines();
    let card = tokio::task::block_in_place(|| lines.next().unwrap().unwrap());
    let card = ContactCard::from_text(&card).unwrap();
    carol.add_contact(&card).unwrap();
    let g = carol.create_group().await.unwrap();
    carol.invite(&g, &card).await.unwrap();
    carol.send(&g, b"ping").await.unwrap();

    let answer = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let events = carol.next_events().await.unwrap();
            let last = events.last().unwrap().0;
            carol.events_shown(last).unwrap();
            for (_, e) in events {
                if let Event::Message { plaintext, .. } = e {
                    return plaintext;
                }
            }
        }
    })
    .await
    .expect("the bot answers");
    assert_eq!(answer, b"echo: ping");
    bot.kill().unwrap();
    bot.wait().unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|l| l.starts_with("joined ")), "{rest:?}");
    assert!(rest.iter().any(|l| l.ends_with("] ping")), "{rest:?}");
}
