//! Operator configuration: TOML file, overridden by command-line flags.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything `ds-rm serve` needs. Every field has a default so a config file may set any subset.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The provider domain this hub serves; group ids and queue refs are qualified by it.
    pub domain: String,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// `rocksdb` (the default: an embedded database in `data_dir`, one hub process) or
    /// `postgres` (the database at `postgres_url`, which several hub processes may share).
    pub storage: Storage,
    /// RocksDB data directory (`storage = "rocksdb"`).
    pub data_dir: PathBuf,
    /// PostgreSQL connection URL (`storage = "postgres"`), e.g.
    /// `postgres://ds@db.internal/mimi`. The password may also come from `PGPASSWORD`-style
    /// key-value syntax (`host=… user=… password=…`). Only PostgreSQL is tested.
    pub postgres_url: Option<String>,
    /// Connections per pool (`storage = "postgres"`): one pool serves reads and writes, one
    /// holds each in-flight request's row locks, so this also bounds concurrent requests.
    pub postgres_pool_size: usize,
    /// How many hub processes share the database. Token allowances are counted in each
    /// process's memory (never stored per device), so each process grants 1/`instances` of
    /// every allowance (rounded up): a device that visits every process gets at most
    /// `instances` × that share.
    pub instances: u32,
    /// Largest request body in bytes; larger bodies get 413 before decoding.
    pub max_body_bytes: usize,
    /// Accepted request age / clock skew in seconds.
    pub freshness_window_secs: u64,
    /// fsync every batch before answering (turning this off risks losing acknowledged data).
    pub sync_writes: bool,
    /// `open` (anyone may register a free handle) or `invite` (a registration needs a
    /// single-use code from `ds-rm invite`, which bounds how many users — and so token
    /// allowances — anyone can create).
    pub registration: Registration,
    /// Seconds between scrubs: each flushes and compacts what changed, so an overwritten or
    /// deleted value is gone from the data directory's files within this many seconds (plus
    /// one scrub's duration), and at once after a clean stop. 0 turns scrubbing off, and with
    /// it that bound (queue ratchets stay erasable either way: they never enter the LSM).
    pub scrub_interval_secs: u64,
    /// Lifetime of client credentials the AS issues, in seconds: how long a device key stays
    /// certified before the user must re-certify it from another current device.
    pub client_credential_lifetime_secs: u64,
    /// PEM certificate chain to serve HTTPS with (with `tls_key`); plain HTTP when absent.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Extra PEM root certificate trusted for outgoing federation requests (a private CA).
    pub peer_ca_cert: Option<PathBuf>,
    /// Federation peers: domain → base URL.
    pub peers: std::collections::BTreeMap<String, String>,
    /// Most members a group may have; larger adds are refused (`LimitExceeded`).
    pub max_group_size: usize,
    /// Seconds the hub keeps the ratchet tree of a Welcome's epoch for invitees that have not
    /// joined yet; afterwards they must join by external commit.
    pub welcome_tree_ttl_secs: u64,
    /// Seconds a client may take to send its request body; slower uploads get 408, so slow
    /// clients cannot hold connections forever.
    pub request_timeout_secs: u64,
    /// Seconds a connection may take to send a request header, counted from when the hub waits
    /// for it: also how long a kept-alive connection may stay idle. Slow or silent connections
    /// are closed, so they cannot hold descriptors.
    pub header_read_timeout_secs: u64,
    /// Most connections open at once; lowered at start to fit the process's open-file limit
    /// (less 64 descriptors kept for the store and federation). New connections over it are
    /// closed at once, with a log line.
    pub max_connections: usize,
    /// Most connections open at once from one IP address, so one address cannot take every
    /// connection slot.
    pub max_connections_per_address: usize,
    /// Most messages one dequeue returns (clients fetch again for the rest).
    pub max_messages_per_fetch: u32,
    /// Most undelivered messages one queue holds; messages for a full queue are dropped and
    /// counted, so a client that stopped fetching cannot fill the disk.
    pub max_queue_length: u64,
    /// Messages at least this long (encoded) fanned out to two or more local queues — large
    /// commits — are stored once, each queue getting a small reference, so a commit to N
    /// members writes O(N) bytes rather than O(N²). 0 stores every shared message once.
    pub store_once_min_bytes: usize,
    /// Length of an OHTTP gateway key epoch in seconds (default a day): the gateway takes a
    /// new key each epoch, still opens the previous one, and deletes older seeds, so a seized
    /// disk opens no relayed request recorded two epochs before.
    pub ohttp_key_epoch_secs: u64,
    /// Serve `/metrics` to any address. Off by default: only loopback clients (a local
    /// Prometheus, an SSH tunnel) get it, since counts and their changes over time are
    /// themselves metadata for whoever can poll them.
    pub metrics_public: bool,
    /// Also federate with domains not in `peers`, at `https://<domain>`. Off by default: with
    /// it on, any client can make this server connect to a host it names.
    pub open_federation: bool,
    /// Privacy Pass rate limiting (the `[privacy_pass]` table).
    pub privacy_pass: PrivacyPassConfig,
    /// Web Push wake-ups for offline clients (the `[push]` table).
    pub push: PushConfig,
    /// `rm` (reduced metadata, the default) or `baseline`: a conventional full-metadata DS
    /// (plaintext group state, real credentials in leaves, plain queue ids, rate limits by
    /// identity) for comparing both on the same scenario. Baseline mode ignores `[privacy_pass]`.
    pub mode: mimi_rm_protocol::DsMode,
    /// Baseline mode only: DS requests one client identity may send per minute (0: no limit).
    pub baseline_requests_per_minute: u32,
    /// How many opened sealed queue refs the hub keeps in memory, so fan-out does not repeat an
    /// HPKE decryption per recipient and message (0 disables the cache; never written to disk).
    pub queue_ref_cache_entries: usize,
    /// Seconds without any request after which the hub proposes removing a client from a group
    /// (it is the group's external sender; members commit the proposal).
    pub inactive_client_limit_secs: u64,
    /// Granularity of the per-client activity the hub keeps inside each group's encrypted state,
    /// in seconds: coarse on purpose (one day by default).
    pub activity_period_secs: u64,
}

/// Where the hub keeps its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// Embedded RocksDB in `data_dir`: one process.
    Rocksdb,
    /// PostgreSQL at `postgres_url`: any number of processes.
    Postgres,
}

/// Who may register a handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Registration {
    /// Anyone.
    Open,
    /// Holders of an unused invitation code only.
    Invite,
}

/// `[privacy_pass]`: which requests cost a token, and how tokens are issued.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrivacyPassConfig {
    /// Request classes that need a token: any of `group_creation`, `group_operation`,
    /// `application_message`, `add_package_fetch`, `qs_record_creation`,
    /// `connection_request`, `registration` (a registration token). Default: all. Queue
    /// reads, token issuance and AS lookups never need one.
    pub rate_limited: Vec<mimi_rm_protocol::tokens::RateClass>,
    /// Length of an issuer key epoch in seconds; keys and allowances roll over with it.
    pub key_epoch_secs: u64,
    /// Seconds after its epoch during which a key still redeems.
    pub key_overlap_secs: u64,
    /// Tokens one device may obtain per key epoch.
    pub allowance_per_epoch: u32,
    /// Registration tokens one device may obtain per key epoch, to vouch for a new user
    /// (`mimi-rm vouch`). 0: devices cannot vouch. Default 1 at an open provider and 0 at an
    /// invitation-only one, where vouching would let users multiply beyond the codes handed out.
    pub registration_allowance_per_epoch: Option<u32>,
    /// Registration tokens one client address may obtain per key epoch without an invitation
    /// or a vouch (`registration = "open"` only; counted in memory).
    pub registrations_per_address_per_epoch: u32,
}

/// `[push]`: Web Push (RFC 8030/8291/8292) wake-ups for clients with a push subscription and
/// no open live socket.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushConfig {
    /// Send pushes at all. Off, subscriptions are still stored (sealed) but nobody is woken.
    pub enabled: bool,
    /// The VAPID `sub` claim: how a push service reaches the operator (`mailto:` or `https:`).
    /// Default `mailto:postmaster@<domain>`.
    pub vapid_subject: Option<String>,
    /// Seconds a push service keeps an undelivered wake-up (the `TTL` header).
    pub ttl_secs: u64,
    /// Hosts (or parent domains) a push endpoint may name; empty: any. Endpoints are chosen by
    /// clients, so this bounds which servers the hub can be made to call.
    pub endpoint_hosts: Vec<String>,
    /// Accept `http://` endpoints and IP-literal hosts in private or loopback ranges. For tests
    /// and development only: with it on, a client can make the hub call internal addresses.
    pub allow_insecure_endpoints: bool,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            vapid_subject: None,
            ttl_secs: 24 * 60 * 60,
            endpoint_hosts: Vec::new(),
            allow_insecure_endpoints: false,
        }
    }
}

impl Default for PrivacyPassConfig {
    fn default() -> Self {
        let policy = crate::core::tokens::TokenPolicy::default();
        Self {
            rate_limited: policy.rate_limited.into_iter().collect(),
            key_epoch_secs: policy.schedule.epoch_secs,
            key_overlap_secs: policy.schedule.overlap_secs,
            allowance_per_epoch: policy.allowance_per_epoch,
            registration_allowance_per_epoch: None,
            registrations_per_address_per_epoch: policy.registrations_per_address_per_epoch,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            domain: "localhost".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            storage: Storage::Rocksdb,
            data_dir: PathBuf::from("./ds-rm-data"),
            postgres_url: None,
            postgres_pool_size: 16,
            instances: 1,
            max_body_bytes: 1 << 20,
            freshness_window_secs: 60,
            sync_writes: true,
            registration: Registration::Open,
            scrub_interval_secs: 60,
            client_credential_lifetime_secs: 90 * 24 * 60 * 60,
            tls_cert: None,
            tls_key: None,
            peer_ca_cert: None,
            peers: std::collections::BTreeMap::new(),
            open_federation: false,
            max_group_size: 10_000,
            welcome_tree_ttl_secs: 14 * 24 * 60 * 60,
            max_messages_per_fetch: 500,
            max_queue_length: 10_000,
            store_once_min_bytes: 1024,
            request_timeout_secs: 30,
            header_read_timeout_secs: 10,
            max_connections: 4096,
            max_connections_per_address: 256,
            metrics_public: false,
            ohttp_key_epoch_secs: 24 * 60 * 60,
            privacy_pass: PrivacyPassConfig::default(),
            push: PushConfig::default(),
            mode: mimi_rm_protocol::DsMode::Rm,
            baseline_requests_per_minute: 6_000,
            queue_ref_cache_entries: 100_000,
            inactive_client_limit_secs: 90 * 24 * 60 * 60,
            activity_period_secs: 24 * 60 * 60,
        }
    }
}

/// Config-file problems.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// File path.
        path: PathBuf,
        /// I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for [`Config`].
    #[error("parsing {path}: {source}")]
    Parse {
        /// File path.
        path: PathBuf,
        /// Parser error.
        source: toml::de::Error,
    },
}

impl Config {
    /// Loads a TOML config file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// This process's share of an allowance of `total` per epoch when `instances` processes
    /// count it apart (rounded up, so a share is never 0 where the total is not).
    pub fn share(&self, total: u32) -> u32 {
        total.div_ceil(self.instances.max(1))
    }

    /// The core's view of the config.
    pub fn hub_config(&self) -> crate::core::HubConfig {
        crate::core::HubConfig {
            domain: self.domain.clone(),
            max_body: self.max_body_bytes,
            freshness_window_ms: self.freshness_window_secs.saturating_mul(1000),
            client_credential_lifetime_secs: self.client_credential_lifetime_secs,
            max_group_size: self.max_group_size,
            welcome_tree_ttl_ms: self.welcome_tree_ttl_secs.saturating_mul(1000),
            request_timeout_ms: self.request_timeout_secs.saturating_mul(1000),
            max_messages_per_fetch: self.max_messages_per_fetch,
            max_queue_length: self.max_queue_length,
            store_once: crate::core::stored::StoreOncePolicy {
                min_bytes: self.store_once_min_bytes,
            },
            mode: self.mode,
            identity_requests_per_minute: self.baseline_requests_per_minute,
            invite_only: self.registration == Registration::Invite,
            metrics_public: self.metrics_public,
            ohttp_key_epoch_secs: self.ohttp_key_epoch_secs,
            queue_ref_cache: self.queue_ref_cache_entries,
            inactive_client_limit_ms: self.inactive_client_limit_secs.saturating_mul(1000),
            activity_period_ms: self.activity_period_secs.max(1).saturating_mul(1000),
            tokens: crate::core::tokens::TokenPolicy {
                // A baseline hub limits by identity instead of tokens.
                rate_limited: match self.mode {
                    mimi_rm_protocol::DsMode::Rm => {
                        self.privacy_pass.rate_limited.iter().copied().collect()
                    }
                    mimi_rm_protocol::DsMode::Baseline => Default::default(),
                },
                schedule: crate::core::tokens::keys::KeySchedule {
                    epoch_secs: self.privacy_pass.key_epoch_secs.max(1),
                    overlap_secs: self.privacy_pass.key_overlap_secs,
                },
                allowance_per_epoch: self.share(self.privacy_pass.allowance_per_epoch),
                registration_allowance_per_epoch: self.share(
                    self.privacy_pass
                        .registration_allowance_per_epoch
                        .unwrap_or(match self.registration {
                            Registration::Open => 1,
                            Registration::Invite => 0,
                        }),
                ),
                registrations_per_address_per_epoch: self
                    .share(self.privacy_pass.registrations_per_address_per_epoch),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowances_are_shared_between_instances_rounding_up() {
        let cfg: Config = toml::from_str(
            "storage = \"postgres\"\npostgres_url = \"postgres://x@h/db\"\ninstances = 3\n\
             [privacy_pass]\nallowance_per_epoch = 10\nregistrations_per_address_per_epoch = 5\n",
        )
        .unwrap();
        assert_eq!(cfg.storage, Storage::Postgres);
        let tokens = cfg.hub_config().tokens;
        assert_eq!(tokens.allowance_per_epoch, 4, "⌈10 / 3⌉");
        assert_eq!(tokens.registrations_per_address_per_epoch, 2, "⌈5 / 3⌉");
        assert_eq!(
            tokens.registration_allowance_per_epoch, 1,
            "⌈1 / 3⌉: never 0 from 1"
        );
        // One process, or a nonsensical 0, keeps the whole allowance.
        for n in [0, 1] {
            let one = Config {
                instances: n,
                ..cfg.clone()
            };
            assert_eq!(one.hub_config().tokens.allowance_per_epoch, 10);
        }
        assert!(toml::from_str::<Config>("storage = \"sqlite\"\n").is_err());
        assert_eq!(Config::default().storage, Storage::Rocksdb);
    }
}
