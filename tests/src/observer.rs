//! A live operator's view, for tests: a recording reverse proxy where the hub's listener
//! stands, and the linkability it allows.
//!
//! The proxy forwards every byte unchanged and parses the requests that pass (HTTP/1.1 with
//! `Content-Length` bodies, as our clients send them), recording per request the connection it
//! came on, the address it came from, when, its path and its body. [`names`] then reads each
//! body as the hub would and says which identity (a handle) or pseudonym (a group, a queue) it
//! names; [`links`] counts the pairs a shared connection or a shared address joins.

use mimi_rm_protocol::auth::{AsOperation, AsRequest, AsSender};
use mimi_rm_protocol::ds::DsRequest;
use mimi_rm_protocol::qs::{QsRequest, QsSender};
use mimi_rm_protocol::{Envelope, decode_exact, paths};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// One request as the operator saw it.
#[derive(Debug, Clone)]
pub struct Observed {
    /// The connection it came on (numbered in accept order).
    pub conn: u64,
    /// The address it came from.
    pub peer: IpAddr,
    /// Milliseconds since the proxy started.
    pub at_ms: u64,
    /// Request path.
    pub path: String,
    /// Request headers (lower-case names).
    pub headers: Vec<(String, Vec<u8>)>,
    /// Request body.
    pub body: Vec<u8>,
    /// Whether it arrived encapsulated (OHTTP) and was opened with the gateway's key, as the
    /// operator running the gateway opens it.
    pub oblivious: bool,
}

/// The recording proxy.
pub struct Observer {
    addr: SocketAddr,
    records: Arc<Mutex<Vec<Observed>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Observer {
    /// Starts a proxy in front of the hub at `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        Self::start_with_gateway(upstream, None).await
    }

    /// [`Observer::start`] for an operator who also runs the hub's OHTTP gateway: requests
    /// to the gateway are opened with its key (the key id and seed the hub stores) and recorded
    /// as the requests inside.
    pub async fn start_with_gateway(upstream: SocketAddr, gateway: Option<(u8, &[u8])>) -> Self {
        let gateway = gateway.map(|(key_id, seed)| {
            let config = mimi_ds_rm::ohttp::key_config(key_id, seed).expect("gateway key");
            Arc::new(ohttp::Server::new(config).expect("gateway"))
        });
        let listener = TcpListener::bind(crate::free_port()).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let records: Arc<Mutex<Vec<Observed>>> = Arc::default();
        let started = std::time::Instant::now();
        let conns = Arc::new(AtomicU64::new(0));
        let rec = records.clone();
        let gw = gateway.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, peer)) = listener.accept().await {
                let conn = conns.fetch_add(1, Ordering::Relaxed);
                let (rec, gw) = (rec.clone(), gw.clone());
                tokio::spawn(async move {
                    let Ok(hub) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    relay(client, hub, conn, peer.ip(), started, rec, gw).await;
                });
            }
        });
        Self {
            addr,
            records,
            task,
        }
    }

    /// The URL clients use instead of the hub's.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything recorded so far.
    pub fn records(&self) -> Vec<Observed> {
        self.records.lock().unwrap().clone()
    }
}

/// Forwards both directions; parses and records what the client sends.
async fn relay(
    client: TcpStream,
    hub: TcpStream,
    conn: u64,
    peer: IpAddr,
    started: std::time::Instant,
    records: Arc<Mutex<Vec<Observed>>>,
    gateway: Option<Arc<ohttp::Server>>,
) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut hub_read, mut hub_write) = hub.into_split();
    let back = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut hub_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    });
    let mut pending: Vec<u8> = Vec::new();
    let mut raw = false;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match client_read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if hub_write.write_all(&buf[..n]).await.is_err() {
            break;
        }
        if raw {
            continue;
        }
        pending.extend_from_slice(&buf[..n]);
        while let Some((request, used, upgrade)) = parse(&pending) {
            pending.drain(..used);
            let request = match &gateway {
                Some(gw) if request.path == mimi_rm_protocol::oblivious::GATEWAY_PATH => {
                    open(gw, request)
                }
                _ => request,
            };
            records.lock().unwrap().push(Observed {
                conn,
                peer,
                at_ms: started.elapsed().as_millis() as u64,
                ..request
            });
            if upgrade {
                // A WebSocket from here on: frames, not requests.
                raw = true;
                pending.clear();
                break;
            }
        }
    }
    let _ = hub_write.shutdown().await;
    let _ = back.await;
}

/// The request inside an encapsulated one, as the gateway sees it (unchanged if it does not
/// open).
fn open(gateway: &ohttp::Server, outer: Observed) -> Observed {
    let Ok((plain, _)) = gateway.decapsulate(&outer.body) else {
        return outer;
    };
    let Ok(inner) = mimi_rm_protocol::oblivious::decode_request(&plain) else {
        return outer;
    };
    Observed {
        path: inner.path,
        headers: inner.headers,
        body: inner.body,
        oblivious: true,
        ..outer
    }
}

/// One whole request at the start of `data`: the request, the bytes it took, and whether it
/// upgrades the connection. `None` until it is all there.
fn parse(data: &[u8]) -> Option<(Observed, usize, bool)> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(head) = req.parse(data).ok()? else {
        return None;
    };
    let headers: Vec<(String, Vec<u8>)> = req
        .headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    let length: usize = header("content-length")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    if data.len() < head + length {
        return None;
    }
    let upgrade = header("upgrade").is_some();
    Some((
        Observed {
            conn: 0,
            peer: IpAddr::from([0, 0, 0, 0]),
            at_ms: 0,
            path: req.path.unwrap_or_default().to_owned(),
            body: data[head..head + length].to_vec(),
            headers,
            oblivious: false,
        },
        head + length,
        upgrade,
    ))
}

/// What a request names, as the hub reads it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Name {
    /// A handle: our identity (registration, signed AS requests, token issuance).
    Handle(String),
    /// A group (our leaf there), by group id.
    Group(Vec<u8>),
    /// A QS client (queue), by client id.
    Queue([u8; 16]),
    /// A pseudonymous QS user, by user id.
    QsUser([u8; 16]),
}

impl Name {
    /// Whether this is an identity (a handle) rather than a pseudonym.
    pub fn is_identity(&self) -> bool {
        matches!(self, Name::Handle(_))
    }
}

/// The identity or pseudonym `o` names, if any. Requests that name only others (lookups of a
/// contact's handle or AddPackages, discovery, key directories) name nothing of the sender's;
/// neither does a new client's creation (`NewClient`: its id is in the body, under a key). Not
/// seen at all: frames on a live socket after its upgrade, and timing.
pub fn names(o: &Observed) -> Option<Name> {
    let payload = || -> Option<Vec<u8>> {
        let env: Envelope = decode_exact(&o.body, 16 << 20).ok()?;
        Some(env.payload.as_slice().to_vec())
    };
    match o.path.as_str() {
        paths::GROUP_OPERATION
        | paths::WELCOME_INFORMATION
        | paths::EXTERNAL_COMMIT_INFORMATION => {
            let req: DsRequest = decode_exact(&payload()?, 16 << 20).ok()?;
            let g = req.tbs.group_id.as_slice();
            (!g.is_empty()).then(|| Name::Group(g.to_vec()))
        }
        paths::QS => {
            let req: QsRequest = decode_exact(&payload()?, 16 << 20).ok()?;
            match req.tbs.sender {
                QsSender::Client(id) => Some(Name::Queue(id)),
                QsSender::User(id) => Some(Name::QsUser(id)),
                _ => None,
            }
        }
        paths::AS => {
            let req: AsRequest = decode_exact(&payload()?, 16 << 20).ok()?;
            match (&req.tbs.sender, &req.tbs.operation) {
                (AsSender::Client(c), _) => Some(Name::Handle(c.handle_str())),
                (_, AsOperation::RegisterUser(csr)) => {
                    Some(Name::Handle(csr.tbs.identity.handle_str()))
                }
                (_, AsOperation::RegisterInvited(r)) => {
                    Some(Name::Handle(r.csr.tbs.identity.handle_str()))
                }
                _ => None,
            }
        }
        mimi_rm_protocol::tokens::ISSUER_REQUEST_PATH => {
            let auth = o
                .headers
                .iter()
                .find(|(n, _)| n == mimi_rm_protocol::tokens::ISSUANCE_AUTH_HEADER)?;
            let auth = mimi_rm_protocol::tokens::decode_b64url(std::str::from_utf8(&auth.1).ok()?)?;
            let auth: mimi_rm_protocol::tokens::IssuanceAuth =
                decode_exact(&auth, 64 << 10).ok()?;
            Some(Name::Handle(auth.credential.tbs.identity.handle_str()))
        }
        _ => None,
    }
}

/// Pairs of distinct names that something the operator sees joins.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Links {
    /// (handle, pseudonym) pairs.
    pub identity_pseudonym: usize,
    /// (pseudonym, pseudonym) pairs.
    pub pseudonym_pseudonym: usize,
}

/// Counts the distinct pairs of names that share a key (`by` maps a request to its connection,
/// or to its address). A pair is counted once however many keys join it.
pub fn links<K: Ord>(records: &[Observed], by: impl Fn(&Observed) -> K) -> Links {
    let mut groups: BTreeMap<K, BTreeSet<Name>> = BTreeMap::new();
    for o in records {
        if let Some(n) = names(o) {
            groups.entry(by(o)).or_default().insert(n);
        }
    }
    let mut pairs: BTreeSet<(Name, Name)> = BTreeSet::new();
    for names in groups.values() {
        let names: Vec<&Name> = names.iter().collect();
        for (i, a) in names.iter().enumerate() {
            for b in &names[i + 1..] {
                pairs.insert(((*a).clone(), (*b).clone()));
            }
        }
    }
    let mut links = Links::default();
    for (a, b) in &pairs {
        match (a.is_identity(), b.is_identity()) {
            (true, true) => {}
            (false, false) => links.pseudonym_pseudonym += 1,
            _ => links.identity_pseudonym += 1,
        }
    }
    links
}

/// How many connections carried at least one request.
pub fn connections(records: &[Observed]) -> usize {
    records
        .iter()
        .map(|o| o.conn)
        .collect::<BTreeSet<_>>()
        .len()
}
