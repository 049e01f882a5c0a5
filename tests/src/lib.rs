//! End-to-end test harness: real hub processes on 127.0.0.1 with temporary RocksDB directories.
#![forbid(unsafe_code)]

pub mod scenario;

use mimi_ds_rm::store::{Cf, RocksStore, Store};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `ds-rm serve` process and its data directory.
pub struct HubProcess {
    child: Option<Child>,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its RocksDB directory.
    pub data: PathBuf,
    /// Its domain.
    pub domain: String,
    binary: PathBuf,
    config: PathBuf,
}

fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

impl HubProcess {
    /// Starts a hub with `binary` (the test's `CARGO_BIN_EXE_hub-under-test`) in `dir`.
    pub fn start(binary: &Path, dir: &Path, domain: &str, max_body: usize) -> Self {
        Self::start_with_config(binary, dir, domain, max_body, "")
    }

    /// Like [`HubProcess::start`], with `extra_config` (TOML lines, e.g.
    /// `client_credential_lifetime_secs = 1`) appended to the config file, for tests that need
    /// a setting the defaults do not give.
    pub fn start_with_config(
        binary: &Path,
        dir: &Path,
        domain: &str,
        max_body: usize,
        extra_config: &str,
    ) -> Self {
        let data = dir.join("hub-data");
        let config = dir.join("hub.toml");
        std::fs::write(
            &config,
            format!(
                "domain = \"{domain}\"\nmax_body_bytes = {max_body}\nfreshness_window_secs = 60\n{extra_config}\n"
            ),
        )
        .expect("write config");
        let mut hub = Self {
            child: None,
            addr: free_port(),
            data,
            domain: domain.to_owned(),
            binary: binary.to_owned(),
            config,
        };
        hub.spawn();
        hub
    }

    fn spawn(&mut self) {
        let child = Command::new(&self.binary)
            .args(["serve", "--config"])
            .arg(&self.config)
            .arg("--listen")
            .arg(self.addr.to_string())
            .arg("--data")
            .arg(&self.data)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start hub");
        self.child = Some(child);
        // Wait until it accepts connections.
        for _ in 0..200 {
            if std::net::TcpStream::connect(self.addr).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("hub did not start listening on {}", self.addr);
    }

    /// Base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the process gracefully (SIGTERM) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            for _ in 0..200 {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the process without warning (crash), then waits for it.
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops (if running) and starts again on the same data directory and port.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Kills the process (SIGKILL, no shutdown) and starts it again on the same data.
    pub fn crash_and_restart(&mut self) {
        self.crash();
        self.spawn();
    }

    /// Every stored key and value, read through a read-only handle (works while running).
    pub fn dump(&self) -> Vec<(Cf, Vec<u8>, Vec<u8>)> {
        RocksStore::open_read_only(&self.data)
            .expect("open read-only")
            .dump()
            .expect("dump")
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        self.crash();
    }
}

/// Whether `needle` occurs anywhere in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// A raw POST: returns the status and body (for requests the client library would never send).
pub async fn post(url: &str, path: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
    let resp = reqwest::Client::new()
        .post(format!("{url}{path}"))
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .expect("post");
    let status = resp.status().as_u16();
    (status, resp.bytes().await.expect("body").to_vec())
}

/// Decodes an error body.
pub fn error_of(body: &[u8]) -> mimi_rm_protocol::ErrorResponse {
    mimi_rm_protocol::decode_exact(body, 1 << 20).expect("error body decodes")
}
