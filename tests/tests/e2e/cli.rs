//! The `mimi-rm` command line against a real hub process: a consent-based connection (connect,
//! requests, accept), a conversation, a declined request, and linking a second device (request,
//! approve, complete), each step a separate run of the binary as a person would type it.

use mimi_rm_tests::common::*;

/// The line of `text` that starts with `prefix`.
fn line_with<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .map(str::trim)
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_accept_decline_and_link_a_device_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path());
    let url = hub.url();
    let (alice, bob, carol) = (
        dir.path().join("alice"),
        dir.path().join("bob"),
        dir.path().join("carol"),
    );
    for (d, name) in [(&alice, "alice"), (&bob, "bob"), (&carol, "carol")] {
        let out = run_cli(&url, d, &["register", "--name", name]);
        assert!(out.contains("registered"), "{out}");
    }

    // Alice asks bob; bob sees who asks and accepts; they talk.
    let out = run_cli(&url, &alice, &["connect", "--handle", "bob"]);
    let group = out
        .split("(group ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .expect("group id in the output")
        .to_owned();
    let out = run_cli(&url, &bob, &["requests"]);
    let line = out
        .lines()
        .find(|l| l.contains("alice@hub.test wants to connect"))
        .unwrap_or_else(|| panic!("{out}"));
    let id = line.split_whitespace().next().unwrap();
    let out = run_cli(&url, &bob, &["accept", "--id", id]);
    assert!(out.contains(&group), "{out}");
    let out = run_cli(&url, &alice, &["receive"]);
    assert!(
        out.contains("bob accepted your connection request"),
        "{out}"
    );
    run_cli(
        &url,
        &bob,
        &["send", "--group", &group, "--message", "hello alice"],
    );
    let out = run_cli(&url, &alice, &["receive"]);
    assert!(out.contains("hello alice"), "{out}");
    let out = run_cli(&url, &bob, &["users", "--group", &group]);
    assert!(
        out.contains("alice: devices") && out.contains("bob: devices"),
        "{out}"
    );

    // Carol asks bob, who declines: nothing more is listed, and nothing reaches him.
    run_cli(&url, &carol, &["connect", "--handle", "bob"]);
    let out = run_cli(&url, &bob, &["requests"]);
    let line = out
        .lines()
        .find(|l| l.contains("carol@hub.test wants to connect"))
        .unwrap_or_else(|| panic!("{out}"));
    let id = line.split_whitespace().next().unwrap();
    run_cli(&url, &bob, &["decline", "--id", id]);
    assert!(!run_cli(&url, &bob, &["requests"]).contains("carol"));

    // Alice links a second device, which joins the conversation by external commit.
    let alice2 = dir.path().join("alice2");
    let out = run_cli(&url, &alice2, &["device", "request", "--name", "alice"]);
    let request = line_with(&out, "mimi-link-request:").to_owned();
    let out = run_cli(&url, &alice, &["device", "approve", "--request", &request]);
    let grant = line_with(&out, "mimi-link-grant:").to_owned();
    let out = run_cli(&url, &alice2, &["device", "complete", "--grant", &grant]);
    assert!(out.contains("of alice; in 1 groups"), "{out}");
    assert_eq!(
        run_cli(&url, &alice, &["device", "list"]).lines().count(),
        2
    );
    run_cli(&url, &bob, &["receive"]);
    run_cli(
        &url,
        &bob,
        &["send", "--group", &group, "--message", "hi both"],
    );
    assert!(run_cli(&url, &alice2, &["receive"]).contains("hi both"));
    assert!(run_cli(&url, &alice, &["receive"]).contains("hi both"));
}
