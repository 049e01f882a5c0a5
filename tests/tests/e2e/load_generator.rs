//! Messages built ahead of sending (`Client::prepare_messages`, `Transport::send_prepared`) and
//! the load generator's `--prebuilt` mode that uses them, against real hub processes: prepared
//! messages are paid, delivered once and in order, refused once older than the hub's freshness
//! window, and the generator counts such refusals instead of hiding them.

use mimi_rm_protocol::ErrorCode;
use mimi_rm_tests::HubProcess;
use mimi_rm_tests::common::*;
use std::path::Path;
use std::process::{Command, Output};

/// `mimi-rm-load run` against `url` with a small population, its clients and report under
/// `dir`, and `extra` arguments (separated by spaces).
fn load_command(url: &str, dir: &Path, extra: &str) -> Command {
    std::fs::create_dir_all(dir).unwrap();
    let mut cmd = Command::new(load_binary());
    cmd.args(["run", "--url", url, "--groups", "2", "--group-size", "3"])
        .arg("--data-dir")
        .arg(dir.join("clients"))
        .arg("--out")
        .arg(dir.join("load"))
        .args(extra.split_whitespace());
    cmd
}

/// Runs [`load_command`] to completion.
fn run_load(url: &str, dir: &Path, extra: &str) -> Output {
    load_command(url, dir, extra)
        .output()
        .expect("run mimi-rm-load")
}

/// A hub in `dir/hub` with `extra_config`, beside the generator's directories.
fn hub_in(dir: &Path, extra_config: &str) -> HubProcess {
    let hub_dir = dir.join("hub");
    std::fs::create_dir_all(&hub_dir).unwrap();
    hub_with_config(&hub_dir, extra_config)
}

/// The report `run_load` wrote.
fn report(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("load.json")).expect("the JSON report");
    serde_json::from_str(&text).expect("a JSON report")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_messages_are_paid_delivered_once_in_order_and_refused_when_stale() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_with_config(dir.path(), "freshness_window_secs = 5\n");
    let mut alice = client(&hub, dir.path(), "alice").await;
    let mut bob = client(&hub, dir.path(), "bob").await;
    let g = group_of(&mut alice, &mut [&mut bob]).await;
    // A live send first: the hub's token challenge tells alice's wallet that messages cost one.
    alice.send(&g, b"first").await.unwrap();

    let texts: Vec<Vec<u8>> = (0..5).map(|i| format!("built {i}").into_bytes()).collect();
    let (spent, enqueued) = (
        metric(&hub, "mimi_tokens_spent").await,
        metric(&hub, "mimi_messages_enqueued").await,
    );
    let prepared = alice
        .prepare_messages(&g, texts.iter().map(Vec::as_slice))
        .await
        .unwrap();
    assert_eq!(prepared.len(), 5);
    assert!(
        prepared.iter().all(|p| p.is_paid()),
        "every message carries a token"
    );
    // Building reaches the hub for nothing: no message, no token.
    assert_eq!(metric(&hub, "mimi_messages_enqueued").await, enqueued);
    assert_eq!(metric(&hub, "mimi_tokens_spent").await, spent);

    let transport = alice.transport().clone();
    for p in prepared {
        transport.send_prepared(p).await.unwrap();
    }
    assert_eq!(metric(&hub, "mimi_tokens_spent").await, spent + 5);
    assert_eq!(metric(&hub, "mimi_messages_enqueued").await, enqueued + 5);
    let mut expected = vec![b"first".to_vec()];
    expected.extend(texts.iter().cloned());
    assert_eq!(messages(&bob.receive().await.unwrap()), expected);

    // Held past the hub's window, a prepared message is refused and nothing reaches bob.
    let late = alice
        .prepare_messages(&g, [b"late".as_slice()])
        .await
        .unwrap()
        .pop()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(6_500)).await;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        now_ms - late.timestamp_ms() > 3_000,
        "older than the window"
    );
    let err = transport.send_prepared(late).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::StaleRequest), "{err}");
    assert_eq!(
        metric(&hub, "mimi_messages_enqueued").await,
        enqueued + 5,
        "a stale message is not enqueued"
    );
    assert!(messages(&bob.receive().await.unwrap()).is_empty());
    // The live path goes on past the message key the stale request used up.
    alice.send(&g, b"after").await.unwrap();
    assert_eq!(messages(&bob.receive().await.unwrap()), [b"after".to_vec()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generator_sends_prebuilt_messages_and_counts_what_the_hub_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_in(dir.path(), "");
    let url = hub.url();
    let enqueued = metric(&hub, "mimi_messages_enqueued").await;

    // 2 groups x 3 members, 1 s of warm-up and 2 s measured at 20/s: 60 messages built ahead.
    let run = dir.path().join("run");
    let out = run_load(&url, &run, "--rate 20 --warmup 1 --duration 2 --prebuilt");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("built 60 messages"), "{}", text(&out));
    let r = report(&run);
    let send = &r["ops"]["send"];
    assert_eq!(send["count"], 40, "{r}");
    assert_eq!(
        send["errors"], 0,
        "every prebuilt message was accepted: {r}"
    );
    assert!(r["prebuilt_in_s"].as_f64().is_some(), "{r}");
    // Each message to a group of 3 is enqueued for 2 recipients: the 60 built ones and the 6
    // priming sends, on top of what building the groups enqueued.
    let added = metric(&hub, "mimi_messages_enqueued").await - enqueued;
    assert!(added >= 2 * 66, "enqueued {added}");

    // Commits cannot be built ahead: a mix with them is refused before anything is set up.
    let out = run_load(
        &url,
        &dir.path().join("mixed"),
        "--prebuilt --mix send=90,update=10",
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("send-only mix"), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_longer_than_the_freshness_window_is_refused_or_counted_as_errors() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_in(dir.path(), "freshness_window_secs = 5\n");
    let url = hub.url();

    // Told the window, the generator refuses a run that cannot fit in it.
    let told = dir.path().join("told");
    let out = run_load(
        &url,
        &told,
        "--rate 10 --warmup 1 --duration 4 --prebuilt --freshness-secs 5",
    );
    let out_text = text(&out);
    assert!(!out.status.success(), "{out_text}");
    assert!(out_text.contains("freshness window"), "{out_text}");

    // Misinformed, it sends anyway: the hub refuses the messages that aged past 5 s, and the
    // report counts them (the positive control that refusals are not hidden).
    let misinformed = dir.path().join("misinformed");
    let out = run_load(
        &url,
        &misinformed,
        "--rate 10 --warmup 0 --duration 8 --prebuilt --freshness-secs 60",
    );
    assert!(out.status.success(), "{}", text(&out));
    let r = report(&misinformed);
    let errors = r["ops"]["send"]["errors"].as_u64().unwrap();
    // Arrivals due from 5 s on (30 of 80) were at least that old when sent.
    assert!(errors >= 30, "the last seconds' messages were stale: {r}");
    assert!(errors < 80, "the first messages were fresh: {r}");
}

/// A hub that stops answering mid-run (SIGSTOP after the messages are built) must not hold the
/// generator forever: every operation fails as timed out and the run still reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_the_hub_never_answers_time_out_and_the_run_still_reports() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_in(dir.path(), "");
    let pid = hub.pid().expect("the hub runs").to_string();
    let run = dir.path().join("run");
    let mut child = load_command(
        &hub.url(),
        &run,
        "--rate 10 --warmup 3 --duration 2 --prebuilt --op-timeout-secs 2",
    )
    .stdout(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut lines = stdout.lines();
    // Built: the population exists and nothing more needs the hub's setup paths.
    assert!(
        lines
            .by_ref()
            .map_while(Result::ok)
            .any(|l| l.starts_with("built ")),
        "the generator built its messages"
    );
    let signal = |sig: &str| {
        std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
    };
    assert!(signal("-STOP").success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(signal("-CONT").success());
    let status = status.expect("the generator finished instead of waiting forever");
    assert!(status.success());
    let r = report(&run);
    let send = &r["ops"]["send"];
    assert_eq!(send["count"], 20, "{r}");
    assert_eq!(send["errors"], 20, "no answer, no success: {r}");
    assert!(
        send["error_kinds"]
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k.contains("timed out")),
        "{r}"
    );
}
