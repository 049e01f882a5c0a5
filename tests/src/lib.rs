//! End-to-end test harness: real hub processes on 127.0.0.1 with temporary RocksDB directories.
#![forbid(unsafe_code)]

pub mod balancer;
pub mod common;
pub mod observer;
pub mod postgres;
pub mod scenario;
pub mod tls;

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
    /// Its RocksDB directory (unused when it runs on PostgreSQL).
    pub data: PathBuf,
    /// Its PostgreSQL database, when it runs on one (see [`postgres`]).
    pub postgres: Option<String>,
    /// Its domain.
    pub domain: String,
    binary: PathBuf,
    config: PathBuf,
    /// PEM root that certifies the hub's HTTPS certificate; `None` for a plain-HTTP hub.
    ca_pem: Option<Vec<u8>>,
    /// Where the hub's log goes and at which `RUST_LOG` level; `None`: warnings to the test's
    /// stderr.
    log: Option<(PathBuf, String)>,
}

/// Every test client registers from 127.0.0.1, far more often than the open-registration
/// allowance per address lets one address: `extra_config` with that allowance raised, unless
/// the test sets it itself (the registration suite does).
fn many_registrations_per_address(extra_config: &str) -> String {
    const KEY: &str = "registrations_per_address_per_epoch";
    const TABLE: &str = "[privacy_pass]\n";
    if extra_config.contains(KEY) {
        extra_config.to_owned()
    } else if extra_config.contains(TABLE) {
        extra_config.replacen(TABLE, &format!("{TABLE}{KEY} = 100000\n"), 1)
    } else {
        format!("{extra_config}\n{TABLE}{KEY} = 100000\n")
    }
}

/// Config lines serving HTTPS with `ca`'s leaf for `domain`, then `extra_config`.
fn tls_config(ca: &tls::TestCa, domain: &str, extra_config: &str) -> String {
    let leaf = ca
        .leaf(domain)
        .expect("the test CA has a leaf for this domain");
    format!(
        "tls_cert = {:?}\ntls_key = {:?}\n{extra_config}",
        leaf.cert.display().to_string(),
        leaf.key.display().to_string(),
    )
}

/// A loopback address with a free port (for hubs whose peers must know their URL up front).
///
/// The port is drawn below the kernel's ephemeral range (32768 and up), and never twice in one
/// test process. A port from `bind(0)` is ephemeral: after it is released, the kernel may give
/// it to another test's `bind(0)` before our hub binds it. The other hub then answers our
/// readiness probe, and this hub fails to bind.
pub fn free_port() -> SocketAddr {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = 20_000 + rand::random::<u16>() % 12_000;
        if handed_out.contains(&port) {
            continue;
        }
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            handed_out.push(port);
            return l.local_addr().expect("addr");
        }
    }
}

impl HubProcess {
    /// Starts a hub with `binary` (normally [`common::hub_binary`]) in `dir`.
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
        Self::start_inner(binary, dir, domain, max_body, extra_config, None)
    }

    /// Like [`HubProcess::start_tls_with_config`], listening on `addr` (so peers can be
    /// configured with this hub's URL before it starts).
    pub fn start_tls_at(
        binary: &Path,
        dir: &Path,
        domain: &str,
        ca: &tls::TestCa,
        addr: SocketAddr,
        extra_config: &str,
    ) -> Self {
        let database = postgres::default_backend_is_postgres().then(postgres::fresh_database);
        Self::start_tls_on(binary, dir, domain, ca, addr, extra_config, database)
    }

    /// A hub serving HTTPS with `ca`'s leaf on `addr`, on `database` (RocksDB when `None`).
    fn start_tls_on(
        binary: &Path,
        dir: &Path,
        domain: &str,
        ca: &tls::TestCa,
        addr: SocketAddr,
        extra_config: &str,
        database: Option<String>,
    ) -> Self {
        let tls_config = tls_config(ca, domain, extra_config);
        let mut hub = Self::prepare_on(
            binary,
            dir,
            domain,
            1 << 20,
            &tls_config,
            Some(ca.ca_pem.clone()),
            database,
        );
        hub.addr = addr;
        hub.spawn();
        hub
    }

    /// Like [`HubProcess::start_with_config`], with the hub's log at `level` (a `RUST_LOG`
    /// value) appended to `dir/hub.log` (see [`HubProcess::log_path`]), for tests that read it.
    pub fn start_logging(
        binary: &Path,
        dir: &Path,
        domain: &str,
        extra_config: &str,
        level: &str,
    ) -> Self {
        let mut hub = Self::prepare(binary, dir, domain, 1 << 20, extra_config, None);
        hub.log = Some((dir.join("hub.log"), level.to_owned()));
        hub.spawn();
        hub
    }

    /// The log file of a hub started with [`HubProcess::start_logging`].
    pub fn log_path(&self) -> Option<&Path> {
        self.log.as_ref().map(|(p, _)| p.as_path())
    }

    fn start_inner(
        binary: &Path,
        dir: &Path,
        domain: &str,
        max_body: usize,
        extra_config: &str,
        ca_pem: Option<Vec<u8>>,
    ) -> Self {
        let mut hub = Self::prepare(binary, dir, domain, max_body, extra_config, ca_pem);
        hub.spawn();
        hub
    }

    fn prepare(
        binary: &Path,
        dir: &Path,
        domain: &str,
        max_body: usize,
        extra_config: &str,
        ca_pem: Option<Vec<u8>>,
    ) -> Self {
        let database = postgres::default_backend_is_postgres().then(postgres::fresh_database);
        Self::prepare_on(
            binary,
            dir,
            domain,
            max_body,
            extra_config,
            ca_pem,
            database,
        )
    }

    /// [`HubProcess::prepare`] on the PostgreSQL database `database` (RocksDB when `None`).
    fn prepare_on(
        binary: &Path,
        dir: &Path,
        domain: &str,
        max_body: usize,
        extra_config: &str,
        ca_pem: Option<Vec<u8>>,
        database: Option<String>,
    ) -> Self {
        let data = dir.join("hub-data");
        let config = dir.join("hub.toml");
        let extra_config = many_registrations_per_address(extra_config);
        // Top-level keys before any table of `extra_config`.
        let storage = match &database {
            // Small pools: many hubs of parallel tests share the cluster's connections.
            Some(url) => {
                format!("storage = \"postgres\"\npostgres_url = {url:?}\npostgres_pool_size = 8\n")
            }
            None => String::new(),
        };
        // A test that sets its own freshness window (a top-level key) replaces this one.
        let freshness = if extra_config.contains("freshness_window_secs") {
            ""
        } else {
            "freshness_window_secs = 60\n"
        };
        std::fs::write(
            &config,
            format!(
                "domain = \"{domain}\"\nmax_body_bytes = {max_body}\n{freshness}{storage}{extra_config}\n"
            ),
        )
        .expect("write config");
        Self {
            child: None,
            addr: free_port(),
            postgres: database,
            data,
            domain: domain.to_owned(),
            binary: binary.to_owned(),
            config,
            ca_pem,
            log: None,
        }
    }

    /// Starts one of several hub processes sharing the PostgreSQL database `database` (each
    /// in its own `dir`), with `extra_config`.
    pub fn start_shared(
        binary: &Path,
        dir: &Path,
        domain: &str,
        database: &str,
        extra_config: &str,
    ) -> Self {
        let mut hub = Self::prepare_on(
            binary,
            dir,
            domain,
            1 << 20,
            extra_config,
            None,
            Some(database.to_owned()),
        );
        hub.spawn();
        hub
    }

    /// Starts one process per directory of `dirs`, all on `database` and all at once (none
    /// waits for another to be ready), as an operator's service manager starts them.
    pub fn start_shared_together(
        binary: &Path,
        dirs: &[PathBuf],
        domain: &str,
        database: &str,
        extra_config: &str,
    ) -> Vec<Self> {
        let mut hubs: Vec<Self> = dirs
            .iter()
            .map(|d| {
                Self::prepare_on(
                    binary,
                    d,
                    domain,
                    1 << 20,
                    extra_config,
                    None,
                    Some(database.to_owned()),
                )
            })
            .collect();
        for h in &mut hubs {
            h.launch();
        }
        for h in &mut hubs {
            h.wait_ready();
        }
        hubs
    }

    /// [`HubProcess::start_shared`] serving HTTPS with `ca`'s leaf for `domain` on `addr` (so
    /// a federation peer can be configured with its URL before it starts).
    pub fn start_shared_tls_at(
        binary: &Path,
        dir: &Path,
        domain: &str,
        database: &str,
        ca: &tls::TestCa,
        addr: SocketAddr,
        extra_config: &str,
    ) -> Self {
        let database = Some(database.to_owned());
        Self::start_tls_on(binary, dir, domain, ca, addr, extra_config, database)
    }

    /// Starts a hub serving HTTPS with a fresh throwaway CA (written to `dir/tls`) that
    /// certifies `domain`, `localhost` and `127.0.0.1`; [`HubProcess::ca_pem`] returns the root
    /// clients must trust.
    pub fn start_tls(binary: &Path, dir: &Path, domain: &str, max_body: usize) -> Self {
        let tls_dir = dir.join("tls");
        std::fs::create_dir_all(&tls_dir).expect("create tls dir");
        let ca = tls::generate_test_ca(&tls_dir, &[domain]).expect("generate test CA");
        Self::start_tls_with_config(binary, dir, domain, max_body, &ca, "")
    }

    /// Like [`HubProcess::start_with_config`], serving HTTPS with the leaf `ca` issued for
    /// `domain` (so several hubs can share one CA, e.g. for federation tests).
    pub fn start_tls_with_config(
        binary: &Path,
        dir: &Path,
        domain: &str,
        max_body: usize,
        ca: &tls::TestCa,
        extra_config: &str,
    ) -> Self {
        let tls_config = tls_config(ca, domain, extra_config);
        Self::start_inner(
            binary,
            dir,
            domain,
            max_body,
            &tls_config,
            Some(ca.ca_pem.clone()),
        )
    }

    /// The PEM root certifying this hub's HTTPS certificate (`None` for plain HTTP).
    pub fn ca_pem(&self) -> Option<&[u8]> {
        self.ca_pem.as_deref()
    }

    /// Starts the process without waiting for it.
    fn launch(&mut self) {
        let (level, stderr) = match &self.log {
            Some((path, level)) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .expect("hub log file");
                (level.as_str(), Stdio::from(file))
            }
            None => ("warn", Stdio::inherit()),
        };
        let child = Command::new(&self.binary)
            .args(["serve", "--config"])
            .arg(&self.config)
            .arg("--listen")
            .arg(self.addr.to_string())
            .arg("--data")
            .arg(&self.data)
            .env("RUST_LOG", level)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start hub");
        self.child = Some(child);
    }

    fn spawn(&mut self) {
        self.launch();
        self.wait_ready();
    }

    /// Waits until the launched process accepts connections (TLS setup happens before the
    /// hub binds, so an open port means the HTTPS endpoint is ready too), then, for HTTPS
    /// hubs, until a client trusting the CA completes a request.
    fn wait_ready(&mut self) {
        for _ in 0..200 {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("hub exited during startup: {status}");
            }
            if std::net::TcpStream::connect(self.addr).is_ok() && self.answers_https() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("hub did not start listening on {}", self.addr);
    }

    /// For HTTPS hubs: whether the discovery endpoint answers over TLS with the test CA.
    /// Always true for plain-HTTP hubs (the TCP check suffices there).
    fn answers_https(&self) -> bool {
        let Some(ca) = &self.ca_pem else {
            return true;
        };
        let url = format!("{}{}", self.url(), mimi_rm_protocol::paths::DS_DOMAIN);
        let ca = ca.clone();
        // A separate thread: callers may be inside a tokio runtime, where blocking on another
        // one is not allowed.
        std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return false;
            };
            rt.block_on(async {
                match http_client(Some(&ca)).get(&url).send().await {
                    Ok(resp) => resp.status().is_success(),
                    Err(_) => false,
                }
            })
        })
        .join()
        .unwrap_or(false)
    }

    /// The running hub's process id (to pause it with SIGSTOP, as a hub that stops answering).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }

    /// Base URL: `https://…` when the hub serves TLS, `http://…` otherwise.
    pub fn url(&self) -> String {
        let scheme = if self.ca_pem.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// Tries to serve `data` with this hub's binary and config on a fresh port: `Err` with the
    /// process's stderr if it exits (refuses to start) within `wait`, `Ok` if it starts
    /// listening (it is then killed).
    pub fn try_serve(&self, data: &Path, wait: Duration) -> Result<(), String> {
        let addr = free_port();
        let mut child = Command::new(&self.binary)
            .args(["serve", "--config"])
            .arg(&self.config)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--data")
            .arg(data)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start hub");
        let started = std::time::Instant::now();
        while started.elapsed() < wait {
            if let Ok(Some(_)) = child.try_wait() {
                let out = child.wait_with_output().expect("hub output");
                return Err(String::from_utf8_lossy(&out.stderr).into_owned());
            }
            if std::net::TcpStream::connect(addr).is_ok() {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        Err("neither started nor exited".into())
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

    /// How `ds-rm`'s operator commands (`invite`) name this hub's store: its data directory,
    /// or `--postgres-url` and its database.
    pub fn store_args(&self) -> Vec<std::ffi::OsString> {
        match &self.postgres {
            Some(url) => vec!["--postgres-url".into(), url.into()],
            None => vec![self.data.clone().into_os_string()],
        }
    }

    /// Every stored key and value, read through a read-only handle (works while running).
    pub fn dump(&self) -> Vec<(Cf, Vec<u8>, Vec<u8>)> {
        if let Some(url) = &self.postgres {
            // One transaction-consistent read per family; the hub is idle when tests compare.
            return mimi_ds_rm::store::PgStore::connect(url, 1)
                .expect("connect to the hub's database")
                .dump()
                .expect("dump");
        }
        // Right after start the hub may be switching its MANIFEST (start-up compaction), and
        // a read-only open can then miss `CURRENT` for a moment: retry briefly.
        let mut attempt = 0;
        let store = loop {
            match RocksStore::open_read_only(&self.data) {
                Ok(store) => break store,
                Err(e) if attempt < 40 => {
                    attempt += 1;
                    eprintln!("read-only open failed ({e}); retrying");
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("open read-only: {e}"),
            }
        };
        let mut last = store.dump().expect("dump");
        drop(store);
        // A read-only open under a running flush or compaction can see a moment between two
        // versions of the files: read until two reads agree, so a comparison sees what the
        // hub holds, not how its files were being rewritten.
        for _ in 0..10 {
            let again = RocksStore::open_read_only(&self.data)
                .expect("open read-only")
                .dump()
                .expect("dump");
            if again == last {
                break;
            }
            eprintln!("two reads of the store differ; reading again");
            last = again;
        }
        last
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        self.crash();
    }
}

/// A `ds-rm relay` process (an Oblivious HTTP relay), killed on drop.
pub struct RelayProcess {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl RelayProcess {
    /// Starts a relay for the gateway at `gateway_url` and waits until it listens.
    pub fn start(gateway_url: &str) -> Self {
        let addr = free_port();
        let child = Command::new(common::hub_binary())
            .args([
                "relay",
                "--listen",
                &addr.to_string(),
                "--gateway",
                gateway_url,
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start relay");
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the relay did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, addr }
    }

    /// The URL clients send encapsulated requests to.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `needle` occurs anywhere in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// A raw POST: returns the status and body (for requests the client library would never send).
pub async fn post(url: &str, path: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
    post_with_ca(None, url, path, body).await
}

/// Like [`post`], additionally trusting the PEM root `ca_pem` (for HTTPS test hubs).
pub async fn post_with_ca(
    ca_pem: Option<&[u8]>,
    url: &str,
    path: &str,
    body: Vec<u8>,
) -> (u16, Vec<u8>) {
    let resp = http_client(ca_pem)
        .post(format!("{url}{path}"))
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .expect("post");
    let status = resp.status().as_u16();
    (status, resp.bytes().await.expect("body").to_vec())
}

/// The body of a `GET` of `url` (any status), trusting `ca_pem` as an extra root.
pub async fn get_bytes(ca_pem: Option<&[u8]>, url: &str) -> Vec<u8> {
    http_client(ca_pem)
        .get(url)
        .send()
        .await
        .expect("GET")
        .bytes()
        .await
        .expect("GET body")
        .to_vec()
}

/// A reqwest client that also trusts `ca_pem` when given (a throwaway test CA).
pub fn http_client(ca_pem: Option<&[u8]>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder();
    if let Some(pem) = ca_pem {
        for cert in reqwest::Certificate::from_pem_bundle(pem).expect("CA PEM parses") {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().expect("build HTTP client")
}

/// Decodes an error body.
pub fn error_of(body: &[u8]) -> mimi_rm_protocol::ErrorResponse {
    mimi_rm_protocol::decode_exact(body, 1 << 20).expect("error body decodes")
}

/// Posts `body` with extra `headers`; returns status, body and the response headers (for the
/// Privacy Pass tests, which look at `WWW-Authenticate`).
pub async fn post_with_headers(
    url: &str,
    path: &str,
    body: Vec<u8>,
    headers: &[(&str, String)],
) -> (u16, Vec<u8>, reqwest::header::HeaderMap) {
    let mut req = http_client(None).post(format!("{url}{path}"));
    if !headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
    {
        req = req.header("content-type", "application/octet-stream");
    }
    for (name, value) in headers {
        req = req.header(*name, value);
    }
    let resp = req.body(body).send().await.expect("post");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, resp.bytes().await.expect("body").to_vec(), headers)
}

/// Posts `body` paying with `token` (an `Authorization: PrivateToken` header).
pub async fn post_paid(
    url: &str,
    path: &str,
    body: Vec<u8>,
    token: &mimi_rm_protocol::tokens::PresentedToken,
) -> (u16, Vec<u8>) {
    let (status, body, _) = post_with_headers(
        url,
        path,
        body,
        &[("authorization", token.to_authorization())],
    )
    .await;
    (status, body)
}
