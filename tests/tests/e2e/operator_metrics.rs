//! What operators watch: `/metrics` in Prometheus text from the `metrics` exporter — request
//! latency histograms per route and status, the queue depth as a gauge, RocksDB's own figures
//! per column family — and no label or value that names a group, a queue, a pseudonym or a
//! handle.

use mimi_rm_protocol::paths;
use mimi_rm_tests::common::*;
use mimi_rm_tests::http_client;

/// The `/metrics` page.
async fn scrape(hub: &mimi_rm_tests::HubProcess) -> String {
    http_client(None)
        .get(format!("{}/metrics", hub.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the sample line that starts with `name{` and carries every label in `labels`.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|label| l.contains(label)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_latency_queue_depth_and_store_figures_and_name_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path());
    let mut alice = client(&hub, dir.path(), "alice").await;
    let mut bob = client(&hub, dir.path(), "bob").await;
    let g = group_of(&mut alice, &mut [&mut bob]).await;
    for i in 0..3 {
        alice.send(&g, format!("m{i}").as_bytes()).await.unwrap();
    }
    let text = scrape(&hub).await;

    // Latency: the sends are counted under their route and status, in a real histogram.
    let route = format!("route=\"{}\"", paths::GROUP_OPERATION);
    let sends = sample(
        &text,
        "mimi_request_duration_seconds_count",
        &[&route, "status=\"200\""],
    )
    .unwrap_or_else(|| panic!("no latency count for the group route in\n{text}"));
    assert!(sends >= 3.0, "{sends}");
    assert!(text.contains("# TYPE mimi_request_duration_seconds histogram"));
    assert!(
        sample(
            &text,
            "mimi_request_duration_seconds_bucket",
            &[&route, "le=\"+Inf\""]
        )
        .is_some()
    );
    // A refused request is counted under its status.
    let (status, _) = mimi_rm_tests::post(&hub.url(), paths::QS, vec![1, 2, 3]).await;
    let text = scrape(&hub).await;
    let refused = format!("status=\"{status}\"");
    assert!(
        sample(
            &text,
            "mimi_request_duration_seconds_count",
            &["route=\"/qs/request\"", &refused]
        )
        .is_some(),
        "{text}"
    );

    // Queue depth: bob has not read the three messages.
    let queued: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("mimi_queued_messages "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no queue depth in\n{text}"));
    assert!(queued >= 3.0, "{queued}");
    // RocksDB's figures per family.
    let users = sample(&text, "mimi_store_keys", &["cf=\"as_users\""]).unwrap();
    assert!(users >= 2.0, "{users}");
    assert!(sample(&text, "mimi_store_sst_bytes", &["cf=\"qs_queues\""]).is_some());
    // Totals are still there.
    assert!(metric(&hub, "mimi_messages_enqueued").await >= 3);

    // Every series the shipped Grafana dashboard plots exists.
    let dashboard = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana-dashboard.json"),
    )
    .unwrap();
    let mut plotted: Vec<&str> = dashboard
        .match_indices("mimi_")
        .map(|(i, _)| {
            let rest = &dashboard[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .filter(|name| *name != "mimi_ds_rm_hub" && !name.starts_with("mimi_ds_rm"))
        .collect();
    plotted.sort_unstable();
    plotted.dedup();
    assert!(plotted.len() >= 10, "{plotted:?}");
    for name in plotted {
        assert!(
            text.lines().any(|l| l.starts_with(name)),
            "the dashboard plots {name}, which /metrics does not have"
        );
    }

    // Nobody is named: not a handle, the group, bob's queue. Positive control: the same needles
    // are in the store (the AS holds the handles), so the scan would find them if leaked.
    let needles = [
        b"alice".to_vec(),
        hex::encode(&g.0).into_bytes(),
        hex::encode(bob.client_id_bytes().unwrap()).into_bytes(),
    ];
    let page = text.as_bytes();
    for n in &needles {
        assert!(
            !page.windows(n.len()).any(|w| w == n.as_slice()),
            "{}",
            String::from_utf8_lossy(n)
        );
    }
    assert!(
        hub.dump()
            .iter()
            .any(|(_, k, v)| k.windows(5).any(|w| w == b"alice")
                || v.windows(5).any(|w| w == b"alice")),
        "control: the handle is in the store"
    );
}
