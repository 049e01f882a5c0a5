//! HTTPS end to end: real hub processes serving TLS with a throwaway CA.

use mimi_client_rm::{Client, Transport};
use mimi_rm_protocol::paths;
use mimi_rm_tests::common::{DOMAIN, MAX_BODY, group_of, hub_binary, messages};
use mimi_rm_tests::tls::generate_test_ca;
use mimi_rm_tests::{HubProcess, free_port, http_client};
use std::path::Path;
use std::process::Command;

fn tls_hub(dir: &Path) -> HubProcess {
    HubProcess::start_tls(&hub_binary(), dir, DOMAIN, MAX_BODY)
}

/// A client trusting the CA reaches the discovery endpoint over https.
async fn discovery_works(hub: &HubProcess) {
    let resp = http_client(hub.ca_pem())
        .get(format!("{}{}", hub.url(), paths::DS_DOMAIN))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "status {}", resp.status());
    assert_eq!(resp.text().await.unwrap(), "hub.test");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_over_https_with_trusted_ca() {
    let dir = tempfile::tempdir().unwrap();
    let hub = tls_hub(dir.path());
    assert!(hub.url().starts_with("https://127.0.0.1:"), "{}", hub.url());
    discovery_works(&hub).await;
    // The client library's transport, trusting the CA, sees the same.
    let transport = Transport::with_root_ca(hub.url(), hub.ca_pem().unwrap()).unwrap();
    assert_eq!(transport.domain().await.unwrap(), "hub.test");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_the_tls_port_fails() {
    let dir = tempfile::tempdir().unwrap();
    let hub = tls_hub(dir.path());
    let result = reqwest::Client::new()
        .get(format!("http://{}{}", hub.addr, paths::DS_DOMAIN))
        .send()
        .await;
    assert!(result.is_err(), "plain HTTP got an answer: {result:?}");
    // The failed handshake did not take the accept loop down.
    discovery_works(&hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_not_trusting_the_ca_fails_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let hub = tls_hub(dir.path());
    let result = reqwest::Client::new()
        .get(format!("{}{}", hub.url(), paths::DS_DOMAIN))
        .send()
        .await;
    let err = result.expect_err("an untrusted certificate was accepted");
    assert!(err.is_connect(), "{err:?}");
    // Neither does the client library without the CA.
    assert!(Transport::new(hub.url()).unwrap().domain().await.is_err());
    // A CA that did not issue the hub's certificate does not help either.
    let other = tempfile::tempdir().unwrap();
    let other_ca = generate_test_ca(other.path(), &[]).unwrap();
    let transport = Transport::with_root_ca(hub.url(), &other_ca.ca_pem).unwrap();
    assert!(transport.domain().await.is_err());
    discovery_works(&hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_create_a_group_and_talk_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let hub = tls_hub(dir.path());
    let ca = hub.ca_pem().unwrap();
    let mut alice =
        Client::register_with_ca(&dir.path().join("alice"), &hub.url(), "alice", Some(ca))
            .await
            .unwrap();
    let mut bob = Client::register_with_ca(&dir.path().join("bob"), &hub.url(), "bob", Some(ca))
        .await
        .unwrap();
    // group_of exchanges the contact cards before the invite.
    let g = group_of(&mut alice, &mut [&mut bob]).await;
    alice.send(&g, b"hello over tls").await.unwrap();
    assert_eq!(
        messages(&bob.receive().await.unwrap()),
        vec![b"hello over tls".to_vec()]
    );
    // A client reloaded from disk with the CA keeps talking to the same hub.
    drop(bob);
    let mut bob = Client::load_with_ca(&dir.path().join("bob"), &hub.url(), Some(ca)).unwrap();
    bob.send(&g, b"reply").await.unwrap();
    assert_eq!(
        messages(&alice.receive().await.unwrap()),
        vec![b"reply".to_vec()]
    );
}

/// Runs `ds-rm serve` with `extra_config` and returns (success, stderr).
fn run_hub_expecting_exit(dir: &Path, extra_config: &str) -> (bool, String) {
    let config = dir.join("hub.toml");
    std::fs::write(&config, format!("domain = \"hub.test\"\n{extra_config}\n")).unwrap();
    let port = free_port();
    let out = Command::new(hub_binary())
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--listen")
        .arg(port.to_string())
        .arg("--data")
        .arg(dir.join("hub-data"))
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn only_a_certificate_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let ca = generate_test_ca(dir.path(), &["hub.test"]).unwrap();
    let leaf = ca.leaf("hub.test").unwrap();
    let (ok, stderr) = run_hub_expecting_exit(
        dir.path(),
        &format!("tls_cert = {:?}", leaf.cert.display().to_string()),
    );
    assert!(!ok, "hub started with only tls_cert");
    assert!(stderr.contains("tls_key"), "{stderr}");
    // Nothing was opened: the TLS check comes before the store.
    assert!(!dir.path().join("hub-data").exists());
}

#[test]
fn only_a_key_or_an_unreadable_certificate_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let ca = generate_test_ca(dir.path(), &["hub.test"]).unwrap();
    let leaf = ca.leaf("hub.test").unwrap();
    let key = leaf.key.display().to_string();
    let (ok, stderr) = run_hub_expecting_exit(dir.path(), &format!("tls_key = {key:?}"));
    assert!(!ok, "hub started with only tls_key");
    assert!(stderr.contains("tls_cert"), "{stderr}");

    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let (ok, stderr) = run_hub_expecting_exit(
        dir.path(),
        &format!(
            "tls_cert = {:?}\ntls_key = {key:?}",
            garbage.display().to_string()
        ),
    );
    assert!(!ok, "hub started with a garbage certificate");
    assert!(stderr.contains("garbage.pem"), "{stderr}");

    let missing = dir.path().join("missing.pem");
    let (ok, stderr) = run_hub_expecting_exit(
        dir.path(),
        &format!(
            "tls_cert = {:?}\ntls_key = {key:?}",
            missing.display().to_string()
        ),
    );
    assert!(!ok, "hub started with a missing certificate");
    assert!(stderr.contains("missing.pem"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_cleanly_with_open_connections() {
    let dir = tempfile::tempdir().unwrap();
    let ca = generate_test_ca(dir.path(), &["hub.test"]).unwrap();
    let leaf = ca.leaf("hub.test").unwrap();
    let config = dir.path().join("hub.toml");
    std::fs::write(
        &config,
        format!(
            "domain = \"hub.test\"\ntls_cert = {:?}\ntls_key = {:?}\n",
            leaf.cert.display().to_string(),
            leaf.key.display().to_string()
        ),
    )
    .unwrap();
    // A port outside the ephemeral range, as every test hub gets (see `free_port`).
    let addr = free_port();
    let mut child = Command::new(hub_binary())
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--data")
        .arg(dir.path().join("hub-data"))
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    // A keep-alive client: its pooled connection stays open after the answer.
    let http = http_client(Some(&ca.ca_pem));
    let url = format!("https://{addr}{}", paths::DS_DOMAIN);
    let mut answered = false;
    for _ in 0..200 {
        if let Ok(resp) = http.get(&url).send().await {
            assert_eq!(resp.text().await.unwrap(), "hub.test");
            answered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(answered, "the TLS hub never answered");
    // A connection that never finishes its handshake must not block shutdown either.
    let _stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let mut exit = None;
    for _ in 0..400 {
        if let Some(s) = child.try_wait().unwrap() {
            exit = Some(s);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let Some(exit) = exit else {
        let _ = child.kill();
        panic!("the hub did not exit after SIGTERM");
    };
    assert!(exit.success(), "{exit}");
}
