//! Shared setup and request builders of the end-to-end tests (`tests/e2e`): hubs, clients,
//! groups, hand-built requests, and the checks every suite makes of a refused request.

use crate::{HubProcess, error_of, post_with_ca};
use ed25519_dalek::{Signer as _, SigningKey};
use mimi_client_rm::{Client, Event, GroupHandle, envelope};
use mimi_ds_rm::store::Cf;
use mimi_rm_protocol::auth::{
    AS_REQUEST_SIGNATURE_LABEL, AsOperation, AsRequest, AsRequestTbs, AsSender,
};
use mimi_rm_protocol::ds::*;
use mimi_rm_protocol::qs::{
    QS_REQUEST_SIGNATURE_LABEL, QsOperation, QsRequest, QsRequestTbs, QsSender,
};
use mimi_rm_protocol::{
    Envelope, ErrorCode, PROTOCOL_VERSION, TransactionType, decode_exact, encode,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Default body limit of test hubs.
pub const MAX_BODY: usize = 256 * 1024;

/// The domain of single-hub tests.
pub const DOMAIN: &str = "hub.test";

/// Config lines that switch Privacy Pass off: no request class asks for a token.
pub const NO_TOKENS: &str = "[privacy_pass]\nrate_limited = []\n";

/// Path of the binary target `name` of this package.
///
/// Cargo passes `CARGO_BIN_EXE_<name>` to integration tests at compile time (`env!`), which a
/// library cannot read; recent Cargo sets it at run time as well. Without it, the binary is
/// where [`beside_test_executable`] looks. `tests/e2e/main.rs` checks both against the
/// compile-time paths.
fn package_binary(name: &str) -> PathBuf {
    match std::env::var_os(format!("CARGO_BIN_EXE_{name}")) {
        Some(path) => path.into(),
        None => beside_test_executable(name),
    }
}

/// Where Cargo puts the binary target `name` for a running test: in the profile directory
/// that holds the test executable's `deps/` directory (built before any integration test runs).
pub fn beside_test_executable(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test executable");
    let dir = exe.parent().expect("the test executable's directory");
    let dir = if dir.ends_with("deps") {
        dir.parent().expect("the profile directory")
    } else {
        dir
    };
    dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

/// The `hub-under-test` executable (the `ds-rm` hub).
pub fn hub_binary() -> PathBuf {
    package_binary("hub-under-test")
}

/// The `mimi-rm-under-test` executable (the `mimi-rm` command line).
pub fn cli_binary() -> PathBuf {
    package_binary("mimi-rm-under-test")
}

/// The `load-under-test` executable (the `mimi-rm-load` generator).
pub fn load_binary() -> PathBuf {
    package_binary("load-under-test")
}

/// Starts a real hub process in `dir`.
pub fn hub(dir: &Path) -> HubProcess {
    hub_with_config(dir, "")
}

/// A hub that asks no Privacy Pass tokens, for the tests of request validation: they post
/// hand-built requests and check that each refusal leaves the database byte-identical, which a
/// token (spent even by a refused request) would change, and the robustness tests, whose
/// requests must reach the checks behind the token gate. Token enforcement itself is covered
/// by `privacy_pass`, and every other test runs with the default (enforced) policy.
pub fn hub_without_tokens(dir: &Path) -> HubProcess {
    hub_with_config(dir, NO_TOKENS)
}

/// Starts a real hub process in `dir` with extra TOML lines in its config file.
pub fn hub_with_config(dir: &Path, extra_config: &str) -> HubProcess {
    HubProcess::start_with_config(&hub_binary(), dir, DOMAIN, MAX_BODY, extra_config)
}

/// Registers a client with its state under `dir/name` (trusting the hub's test CA, if any).
pub async fn client(hub: &HubProcess, dir: &Path, name: &str) -> Client {
    Client::register_with_ca(&dir.join(name), &hub.url(), name, hub.ca_pem())
        .await
        .expect("register")
}

/// Plaintexts of the application messages among `events`.
pub fn messages(events: &[Event]) -> Vec<Vec<u8>> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Message { plaintext, .. } => Some(plaintext.clone()),
            _ => None,
        })
        .collect()
}

/// Creates a group of `creator` and adds `others` one commit each; everyone processes.
pub async fn group_of(creator: &mut Client, others: &mut [&mut Client]) -> GroupHandle {
    let g = creator.create_group().await.expect("create group");
    let creator_card = creator.contact_card().expect("card");
    for i in 0..others.len() {
        // Contacts both ways: the invitee accepts invitations only from its contacts.
        others[i].add_contact(&creator_card).expect("add contact");
        let card = others[i].contact_card().expect("card");
        creator.invite(&g, &card).await.expect("invite");
        for (j, o) in others.iter_mut().enumerate() {
            if j <= i {
                let events = o.receive().await.expect("receive");
                if j == i {
                    assert!(
                        events.contains(&Event::Joined { group: g.clone() }),
                        "joiner {i} got {events:?}"
                    );
                }
            }
        }
    }
    g
}

/// Seconds since the Unix epoch, as credentials count them.
pub fn now_s() -> u64 {
    mimi_ds_rm::now_ms() / 1000
}

/// A DS request signed with a raw Ed25519 key (the way MLS leaf keys sign).
pub fn ds_signed(
    group: &GroupHandle,
    ear: &[u8],
    sender: DsSender,
    operation: DsOperation,
    key: &SigningKey,
    timestamp_ms: u64,
) -> Vec<u8> {
    let tbs = DsRequestTbs {
        group_id: group.0.clone().into(),
        ear_key: Some(ear.to_vec().into()),
        timestamp_ms,
        nonce: rand::random(),
        sender,
        operation,
    };
    let tt = ds_transaction_type(&tbs.operation);
    let mut signed = DS_REQUEST_SIGNATURE_LABEL.to_vec();
    signed.extend(encode(&tbs).unwrap());
    let req = DsRequest {
        tbs,
        signature: key.sign(&signed).to_bytes().to_vec().into(),
    };
    envelope(tt, &req).unwrap()
}

/// The transaction type (and so the endpoint) of a DS operation.
pub fn ds_transaction_type(operation: &DsOperation) -> TransactionType {
    match operation {
        DsOperation::WelcomeInfo(_) => TransactionType::WelcomeInformation,
        DsOperation::ExternalCommitInfo => TransactionType::ExternalCommitInformation,
        _ => TransactionType::GroupOperation,
    }
}

/// The DS request in `body` if it gets through the hub's decoding at the endpoint of
/// `endpoint`, judged with the same public decoders the hub uses: the body within
/// [`MAX_BODY`], an envelope of the current version and of this endpoint's type, a DS request
/// whose operation belongs to this endpoint, each decoded exactly (no trailing bytes).
pub fn decoded_ds_request(endpoint: TransactionType, body: &[u8]) -> Option<DsRequest> {
    let env: Envelope = decode_exact(body, MAX_BODY).ok()?;
    if env.version != PROTOCOL_VERSION || env.transaction_type != endpoint {
        return None;
    }
    let req: DsRequest = decode_exact(env.payload.as_slice(), MAX_BODY).ok()?;
    (ds_transaction_type(&req.tbs.operation) == endpoint).then_some(req)
}

/// The DS requests among recorded `(path, body)` pairs, oldest first.
pub fn recorded_ds_requests(recorded: &[(String, Vec<u8>)]) -> Vec<DsRequest> {
    recorded
        .iter()
        .filter_map(|(_, body)| {
            let env: Envelope = decode_exact(body, 1 << 20).ok()?;
            decoded_ds_request(env.transaction_type, body)
        })
        .collect()
}

/// An AS request; signed by `signer` over [`AS_REQUEST_SIGNATURE_LABEL`] when given.
pub fn as_request(
    sender: AsSender,
    operation: AsOperation,
    signer: Option<&mimi_rm_crypto::sign::SigningKey>,
) -> Vec<u8> {
    let tbs = AsRequestTbs {
        timestamp_ms: mimi_ds_rm::now_ms(),
        nonce: rand::random(),
        sender,
        operation,
    };
    let signature = match signer {
        Some(k) => k.sign(AS_REQUEST_SIGNATURE_LABEL, &encode(&tbs).unwrap()),
        None => Vec::new(),
    };
    envelope(
        TransactionType::AuthService,
        &AsRequest {
            tbs,
            signature: signature.into(),
        },
    )
    .unwrap()
}

/// An anonymous (unsigned) AS request.
pub fn as_anonymous(operation: AsOperation) -> Vec<u8> {
    as_request(AsSender::Anonymous, operation, None)
}

/// An anonymous AddPackage fetch with `friendship_token` (what a contact card allows).
pub fn add_package_fetch(friendship_token: &[u8]) -> Vec<u8> {
    let req = QsRequest {
        tbs: QsRequestTbs {
            timestamp_ms: mimi_ds_rm::now_ms(),
            nonce: rand::random(),
            sender: QsSender::Anonymous,
            operation: QsOperation::FetchAddPackages(friendship_token.to_vec().into()),
        },
        signature: Vec::new().into(),
    };
    envelope(TransactionType::QueueService, &req).unwrap()
}

/// A QS request signed by `key` under [`QS_REQUEST_SIGNATURE_LABEL`].
pub fn qs_signed(
    sender: QsSender,
    operation: QsOperation,
    key: &mimi_rm_crypto::sign::SigningKey,
) -> Vec<u8> {
    let tbs = QsRequestTbs {
        timestamp_ms: mimi_ds_rm::now_ms(),
        nonce: rand::random(),
        sender,
        operation,
    };
    let signature = key.sign(QS_REQUEST_SIGNATURE_LABEL, &encode(&tbs).unwrap());
    let req = QsRequest {
        tbs,
        signature: signature.into(),
    };
    envelope(TransactionType::QueueService, &req).unwrap()
}

/// Posts `body`, checks status and code, and checks the whole database is byte-for-byte
/// unchanged; `case` names the request in failure messages.
pub async fn rejected_case(
    hub: &HubProcess,
    case: &str,
    path: &str,
    body: Vec<u8>,
    status: u16,
    code: ErrorCode,
) {
    let before = hub.dump();
    let (s, resp) = post_with_ca(hub.ca_pem(), &hub.url(), path, body).await;
    let got = error_of(&resp);
    assert_eq!((s, got.code), (status, code), "{case}: {got}");
    let after = hub.dump();
    assert!(
        before == after,
        "{case}: stored data changed after a rejected request ({code:?}) in {:?}",
        changed_families(&before, &after)
    );
}

/// The column families whose entries differ between two dumps (for failure messages).
pub fn changed_families(
    before: &[(Cf, Vec<u8>, Vec<u8>)],
    after: &[(Cf, Vec<u8>, Vec<u8>)],
) -> Vec<Cf> {
    Cf::ALL
        .into_iter()
        .filter(|cf| {
            let rows = |d: &[(Cf, Vec<u8>, Vec<u8>)]| {
                d.iter()
                    .filter(|(c, _, _)| c == cf)
                    .cloned()
                    .collect::<Vec<_>>()
            };
            rows(before) != rows(after)
        })
        .collect()
}

/// [`rejected_case`] for a request named by its expected code.
pub async fn rejected(hub: &HubProcess, path: &str, body: Vec<u8>, status: u16, code: ErrorCode) {
    rejected_case(hub, &format!("{code:?}"), path, body, status, code).await;
}

/// The stored row of group `g` in `dump`, if any.
pub fn group_row(dump: &[(Cf, Vec<u8>, Vec<u8>)], g: &GroupHandle) -> Option<Vec<u8>> {
    dump.iter()
        .find(|(cf, k, _)| *cf == Cf::DsGroups && *k == g.0)
        .map(|(_, _, v)| v.clone())
}

/// The value of counter `name` on the hub's `/metrics` page.
pub async fn metric(hub: &HubProcess, name: &str) -> u64 {
    metric_at(&hub.url(), hub.ca_pem(), name).await
}

/// The value of counter `name` on the `/metrics` page of the server at `base` (a hub or a
/// relay).
pub async fn metric_at(base: &str, ca_pem: Option<&[u8]>, name: &str) -> u64 {
    let text = crate::http_client(ca_pem)
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in {text}"))
}

/// Runs `mimi-rm --dir <dir> --hub <url> <args…>` to completion.
pub fn cli_output(hub_url: &str, dir: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(cli_binary())
        .arg("--dir")
        .arg(dir)
        .arg("--hub")
        .arg(hub_url)
        .args(args)
        .output()
        .expect("run mimi-rm")
}

/// [`cli_output`]; returns stdout, failing on a non-zero exit.
pub fn run_cli(hub_url: &str, dir: &Path, args: &[&str]) -> String {
    let out = cli_output(hub_url, dir, args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "mimi-rm {args:?} failed: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// How far into the hub a refused request got, told by its error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reached {
    /// Refused while framing or decoding: body size, envelope, version, endpoint, or a
    /// structure that does not decode. The DS core also answers `Malformed` when an operation's
    /// inner payload (MLS message, GroupInfo, Welcome, ratchet tree) does not decode, after the
    /// request decoded and its sender was authenticated; the code cannot tell the two apart.
    Decoding,
    /// Decoded, then stopped at the Privacy Pass gate (no, or a bad, token).
    TokenGate,
    /// Decoded and admitted, then refused by a check of its content: freshness, replay,
    /// group, EAR key, signature, membership, epoch, MLS validation, operation rules.
    Validation,
}

impl Reached {
    /// The stage that answers with `code`.
    pub fn of(code: ErrorCode) -> Self {
        match code {
            ErrorCode::Malformed
            | ErrorCode::UnsupportedVersion
            | ErrorCode::TooLarge
            | ErrorCode::WrongEndpoint
            | ErrorCode::Timeout => Self::Decoding,
            ErrorCode::TokenRequired
            | ErrorCode::TokenMalformed
            | ErrorCode::TokenWrongType
            | ErrorCode::TokenUnknownKey
            | ErrorCode::TokenExpiredKey
            | ErrorCode::TokenInvalid
            | ErrorCode::TokenSpent
            | ErrorCode::AllowanceExhausted => Self::TokenGate,
            _ => Self::Validation,
        }
    }
}

/// Tally of the answers to many refused requests, by stage and by status and code.
#[derive(Debug, Default)]
pub struct Refusals {
    /// Requests per stage reached.
    pub by_stage: BTreeMap<Reached, usize>,
    /// Requests per `(status, code)`.
    pub by_code: BTreeMap<(u16, String), usize>,
}

impl Refusals {
    /// Records one answer, which must be a 4xx with an error body; returns its stage and code.
    pub fn record(&mut self, what: &str, status: u16, body: &[u8]) -> (Reached, ErrorCode) {
        assert!(
            (400..500).contains(&status),
            "{what}: status {status} (a hub fault or an accepted request)"
        );
        let code = error_of(body).code;
        let reached = Reached::of(code);
        *self.by_stage.entry(reached).or_default() += 1;
        *self
            .by_code
            .entry((status, format!("{code:?}")))
            .or_default() += 1;
        (reached, code)
    }

    /// How many answers came from `stage`.
    pub fn count(&self, stage: Reached) -> usize {
        self.by_stage.get(&stage).copied().unwrap_or(0)
    }

    /// How many answers were recorded.
    pub fn total(&self) -> usize {
        self.by_stage.values().sum()
    }
}

impl std::fmt::Display for Refusals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests: {} refused while decoding, {} at the token gate, {} by validation; by code:",
            self.total(),
            self.count(Reached::Decoding),
            self.count(Reached::TokenGate),
            self.count(Reached::Validation),
        )?;
        for ((status, code), n) in &self.by_code {
            write!(f, " {n} x {status} {code},")?;
        }
        Ok(())
    }
}

/// Two members keep talking in `g` (every 600 ms, up to about 7 s) until `a` receives a removal
/// proposal of the hub (a silent member passed the inactivity limit); whether it did.
pub async fn talk_until_the_hub_proposes(a: &mut Client, b: &mut Client, g: &GroupHandle) -> bool {
    for _ in 0..12 {
        tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        a.send(g, b"tick").await.expect("send");
        b.send(g, b"tock").await.expect("send");
        if a.receive()
            .await
            .expect("receive")
            .contains(&Event::Proposal { group: g.clone() })
        {
            return true;
        }
    }
    false
}

/// Links a new device of `existing`'s user, with its state under `dir/name`: the request, the
/// approval on `existing`, and the completion.
pub async fn link_device(
    hub: &HubProcess,
    dir: &Path,
    existing: &mut Client,
    name: &str,
) -> Client {
    let (pending, request) =
        mimi_client_rm::PendingDevice::request(&dir.join(name), &hub.url(), existing.name(), None)
            .expect("link request");
    let grant = existing.approve_link(&request).await.expect("approve link");
    pending.complete(&grant).await.expect("complete link")
}

/// Copies the directory tree `from` to `to` (a data directory, a client's state).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create copy");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("dir entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("file type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).expect("copy file");
        }
    }
}

/// Every regular file directly in `dir`, by name, with its bytes, sorted by name: what an
/// attacker holding the directory reads.
pub fn dir_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("dir entry"))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).expect("read file"),
            )
        })
        .collect();
    files.sort();
    files
}

/// The body of the last request to `path` a client recorded (`Client::set_recorder`): an
/// accepted request, for tests that replay it.
pub fn last_recorded(recorder: &std::sync::Mutex<Vec<(String, Vec<u8>)>>, path: &str) -> Vec<u8> {
    recorder
        .lock()
        .expect("recorder")
        .iter()
        .rev()
        .find(|(p, _)| p == path)
        .map(|(_, body)| body.clone())
        .expect("a recorded request to that path")
}

/// Runs `ds-rm expire` on the stopped `hub`'s store as of `now_ms`, checks that it succeeded,
/// and returns what it printed.
pub fn expire(hub: &HubProcess, idle_months: u32, now_ms: u64) -> String {
    let out = std::process::Command::new(hub_binary())
        .args([
            "expire",
            "--idle-months",
            &idle_months.to_string(),
            "--now-ms",
            &now_ms.to_string(),
        ])
        .args(hub.store_args())
        .output()
        .expect("run ds-rm expire");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
