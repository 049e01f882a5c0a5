//! Connection scopes: which requests may share a TCP/TLS connection to the hub.
//!
//! A live operator links whatever arrives on one connection. So requests that name our
//! identity (the handle, the client credential) and requests that name a pseudonym (a group
//! leaf, the QS client) never share one, and neither do two pseudonyms: each scope has its own
//! connection pool — its own `reqwest::Client`, with its own rustls configuration and so its
//! own TLS session-ticket store, so a resumed session cannot link two scopes either. Requests
//! that name someone else (lookups of a contact's handle, AddPackage fetches, discovery) open a
//! fresh connection each and keep none. `ConnectionPolicy::Shared` opts out: one pool for
//! everything, fewer TLS handshakes, every request linkable.

use crate::error::ClientError;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

/// How long an idle pooled connection is kept: long enough for one operation's burst of
/// requests, short enough that later unrelated operations open a new one.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most scopes with a pool at once. A client in many groups would otherwise keep a connection
/// per group; past this the pools are dropped (their idle connections close) and rebuilt as
/// needed.
const MAX_POOLS: usize = 64;

/// Which requests may share a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConnectionPolicy {
    /// One pool per [`Scope`] (the default): the hub cannot join an identity to a pseudonym,
    /// or two pseudonyms, by the connection they arrive on.
    #[default]
    Scoped,
    /// One pool for every request: fewer TLS handshakes; a live hub can link everything a
    /// device sends.
    Shared,
}

/// How a client connects to its hub: the connection policy, optionally the local address to
/// connect from, and optionally an Oblivious HTTP relay for pseudonymous requests.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnectionOptions {
    /// Which requests may share a connection.
    pub policy: ConnectionPolicy,
    /// The local address to connect from (multi-homed hosts; tests that give each device its
    /// own address, as separate devices have).
    pub local_address: Option<IpAddr>,
    /// An OHTTP relay (RFC 9458) run by someone other than the hub's operator: pseudonymous
    /// requests (queue, groups, lookups) go through it, encapsulated for the hub's gateway,
    /// so the hub never sees our address on them. Identity requests still go direct.
    pub ohttp_relay: Option<String>,
    /// The longest one request may take, connecting included; `None` is
    /// [`DEFAULT_REQUEST_TIMEOUT`]. A hub that accepts a connection and never answers must not
    /// hold an application's call forever: the request fails as a transport error, which every
    /// caller already treats as "the outcome is unknown, try again" (a commit checks the group's
    /// epoch before it resends).
    pub request_timeout: Option<Duration>,
}

/// How long a request may take unless [`ConnectionOptions::request_timeout`] says otherwise:
/// long enough for a commit to a 10,000-member group on a loaded hub.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long opening a connection (TCP and TLS) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Whose requests a connection carries.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Requests that carry our identity: AS requests we sign, registration, token issuance.
    Identity,
    /// Requests of our QS client (queue): dequeue, rekey, AddPackages, push subscription.
    Queue,
    /// Requests our pseudonymous QS user signs (creating a client, removing a device's).
    User,
    /// Requests of our leaf in one group (the group id): DS operations and fetches.
    Group(Vec<u8>),
    /// Requests that name nobody of ours, or someone else: a new connection each time.
    Fresh,
}

/// The connection pools of one transport.
pub struct Pools {
    policy: ConnectionPolicy,
    root_ca: Option<Vec<u8>>,
    local_address: Option<IpAddr>,
    timeout: Duration,
    shared: reqwest::Client,
    scoped: Mutex<HashMap<Scope, reqwest::Client>>,
}

impl std::fmt::Debug for Pools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pools")
            .field("policy", &self.policy)
            .field("local_address", &self.local_address)
            .finish_non_exhaustive()
    }
}

impl Pools {
    /// Pools as `options` say (policy, local address, request timeout), trusting the public
    /// web roots plus `root_ca` (PEM).
    pub fn new(options: &ConnectionOptions, root_ca: Option<Vec<u8>>) -> Result<Self, ClientError> {
        let local_address = options.local_address;
        let timeout = options.request_timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT);
        let shared = build(root_ca.as_deref(), local_address, timeout, true)?;
        Ok(Self {
            policy: options.policy,
            root_ca,
            local_address,
            timeout,
            shared,
            scoped: Mutex::new(HashMap::new()),
        })
    }

    /// The local address every connection binds to, when one was chosen.
    pub fn local_address(&self) -> Option<IpAddr> {
        self.local_address
    }

    /// The policy these pools follow.
    pub fn policy(&self) -> ConnectionPolicy {
        self.policy
    }

    /// A client of its own, keeping no connection: a fresh request shares neither a connection
    /// nor a TLS session cache (whose tickets would chain one fresh connection to the next)
    /// with any other.
    fn fresh(&self) -> Result<reqwest::Client, ClientError> {
        build(
            self.root_ca.as_deref(),
            self.local_address,
            self.timeout,
            false,
        )
    }

    /// The client (pool) for requests of `scope`.
    pub fn client(&self, scope: &Scope) -> Result<reqwest::Client, ClientError> {
        if self.policy == ConnectionPolicy::Shared {
            return Ok(self.shared.clone());
        }
        if *scope == Scope::Fresh {
            return self.fresh();
        }
        let mut scoped = self.scoped.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = scoped.get(scope) {
            return Ok(c.clone());
        }
        let c = build(
            self.root_ca.as_deref(),
            self.local_address,
            self.timeout,
            true,
        )?;
        if scoped.len() >= MAX_POOLS {
            scoped.clear();
        }
        scoped.insert(scope.clone(), c.clone());
        Ok(c)
    }
}

/// One `reqwest::Client`: its own pool and TLS configuration; `pooled = false` keeps no idle
/// connection, so each request opens its own.
fn build(
    root_ca: Option<&[u8]>,
    local_address: Option<IpAddr>,
    timeout: Duration,
    pooled: bool,
) -> Result<reqwest::Client, ClientError> {
    let mut builder = reqwest::Client::builder()
        .local_address(local_address)
        .timeout(timeout)
        .connect_timeout(CONNECT_TIMEOUT.min(timeout));
    builder = if pooled {
        builder.pool_idle_timeout(IDLE_TIMEOUT)
    } else {
        builder.pool_max_idle_per_host(0)
    };
    if let Some(pem) = root_ca {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| ClientError::Transport(format!("root CA certificate: {e}")))?;
        if certs.is_empty() {
            return Err(ClientError::Transport(
                "root CA certificate: no PEM certificate found".into(),
            ));
        }
        builder = certs
            .into_iter()
            .fold(builder, |b, c| b.add_root_certificate(c));
    }
    builder
        .build()
        .map_err(|e| ClientError::Transport(format!("building the HTTP client: {e}")))
}
