//! The `ds-rm` command line: `serve` a hub or `audit` its data directory.

use crate::config::Config;
use crate::core::Hub;
use crate::store::RocksStore;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// A reduced-metadata MIMI Delivery Service hub (DS + QS + AS) on RocksDB.
/// Command-line arguments.
#[derive(Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

/// Subcommands.
#[derive(Subcommand)]
pub enum Command {
    /// Serve the hub over HTTP, or HTTPS when a TLS certificate and key are configured.
    Serve {
        /// TOML config file; flags override its values. Settings without a flag (body limit,
        /// freshness window, sync writes, client_credential_lifetime_secs) are set there.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Provider domain this hub serves (e.g. chat.example.org).
        #[arg(long)]
        domain: Option<String>,
        /// Listen address, e.g. 127.0.0.1:8080.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// RocksDB data directory.
        #[arg(long)]
        data: Option<PathBuf>,
        /// `rocksdb` (embedded, one process; the default) or `postgres` (shared by several
        /// processes; needs --postgres-url or `postgres_url`).
        #[arg(long)]
        storage: Option<crate::config::Storage>,
        /// PostgreSQL connection URL, e.g. postgres://ds@localhost/mimi.
        #[arg(long)]
        postgres_url: Option<String>,
        /// How many hub processes share the database (each grants 1/N of every allowance).
        #[arg(long)]
        instances: Option<u32>,
        /// PEM certificate chain to serve HTTPS with (needs --tls-key or `tls_key`).
        #[arg(long)]
        tls_cert: Option<PathBuf>,
        /// PEM private key for the TLS certificate (needs --tls-cert or `tls_cert`).
        #[arg(long)]
        tls_key: Option<PathBuf>,
        /// `rm` (reduced metadata, default) or `baseline`: a conventional full-metadata DS for
        /// comparison (plaintext state, real credentials, plain queue ids, per-identity limits).
        #[arg(long)]
        mode: Option<mimi_rm_protocol::DsMode>,
    },
    /// Delete groups and queued messages unused for `--idle-months` whole months (run on a
    /// stopped hub's data directory, e.g. monthly).
    Expire {
        /// RocksDB data directory (the hub must be stopped); not with --postgres-url.
        #[arg(required_unless_present = "postgres_url")]
        data: Option<PathBuf>,
        /// The hubs' PostgreSQL database instead (stop every hub process first, as with
        /// RocksDB: expiry is one batch over the whole store, not taken under request locks).
        #[arg(long, conflicts_with = "data")]
        postgres_url: Option<String>,
        /// Months without activity after which a group or a client's queued messages go.
        #[arg(long)]
        idle_months: u32,
        /// Pretend the current time is this (ms since the Unix epoch); for tests and dry runs
        /// of future schedules.
        #[arg(long)]
        now_ms: Option<u64>,
    },
    /// Print every record the hub stored, as a disk-seizing adversary would see it, then every
    /// file of the directory with the old (overwritten or deleted) values it still holds.
    Audit {
        /// RocksDB data directory (the hub may be running).
        data: PathBuf,
    },
    /// Make single-use invitation codes for a provider with `registration = "invite"` (run on
    /// a stopped hub's data directory); prints one code per line. Only their hashes are stored.
    Invite {
        /// RocksDB data directory (the hub must be stopped); not with --postgres-url.
        #[arg(required_unless_present = "postgres_url")]
        data: Option<PathBuf>,
        /// The hub's PostgreSQL database instead (its hubs may keep running).
        #[arg(long, conflicts_with = "data")]
        postgres_url: Option<String>,
        /// How many codes.
        #[arg(long, default_value_t = 1)]
        count: usize,
    },
    /// Verify a stopped hub's data directory: every log record, table block and slot checks
    /// out, and no acknowledged write is missing. Exits non-zero naming what is damaged.
    Check {
        /// RocksDB data directory (the hub must be stopped).
        data: PathBuf,
    },
    /// Run an Oblivious HTTP relay (RFC 9458) for a hub's gateway. Run it as a different
    /// operator from the hub: the relay sees client addresses, the hub sees requests, and only
    /// the two together could link them.
    Relay {
        /// Address to listen on, e.g. 127.0.0.1:8090.
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// The hub's gateway URL, e.g. https://chat.example.org/ohttp.
        #[arg(long)]
        gateway: String,
    },
}

/// Entry point shared by every binary that embeds the hub CLI.
pub fn main() -> ExitCode {
    // Logs go to stderr; stdout carries command output (audit, check, expire).
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only for a person watching; log files and pipes get plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ds-rm: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
        Command::Serve {
            config,
            domain,
            listen,
            data,
            storage,
            postgres_url,
            instances,
            tls_cert,
            tls_key,
            mode,
        } => {
            let mut cfg = match config {
                Some(p) => Config::from_file(&p)?,
                None => Config::default(),
            };
            if let Some(d) = domain {
                cfg.domain = d;
            }
            if let Some(l) = listen {
                cfg.listen = l;
            }
            if let Some(d) = data {
                cfg.data_dir = d;
            }
            if let Some(s) = storage {
                cfg.storage = s;
            }
            if let Some(u) = postgres_url {
                cfg.postgres_url = Some(u);
            }
            if let Some(n) = instances {
                cfg.instances = n;
            }
            if let Some(c) = tls_cert {
                cfg.tls_cert = Some(c);
            }
            if let Some(k) = tls_key {
                cfg.tls_key = Some(k);
            }
            if let Some(m) = mode {
                cfg.mode = m;
            }
            serve(cfg)
        }
        Command::Expire {
            data,
            postgres_url,
            idle_months,
            now_ms,
        } => {
            let store = operator_store(data, postgres_url)?;
            let done = crate::expire::expire(
                store.as_ref(),
                idle_months,
                now_ms.unwrap_or_else(crate::now_ms),
            )?;
            // What expired must not stay readable in the files until the hub's next scrub.
            store.scrub()?;
            println!(
                "expired {} groups and {} queued messages idle for {idle_months}+ months, \
                 {} stored messages older than that, and {} revocation entries of expired \
                 credentials",
                done.groups, done.queued_messages, done.stored_messages, done.revocations
            );
            Ok(())
        }
        Command::Audit { data } => {
            let store = RocksStore::open_read_only(&data)?;
            print!("{}", crate::audit::render(&store)?);
            drop(store);
            print!("{}", crate::audit::files::audit(&data)?.text);
            Ok(())
        }
        Command::Invite {
            data,
            postgres_url,
            count,
        } => {
            let store = operator_store(data, postgres_url)?;
            for code in crate::core::auth::make_invites(store.as_ref(), count.min(10_000))? {
                println!("{code}");
            }
            store.scrub()?;
            Ok(())
        }
        Command::Check { data } => {
            let report = crate::audit::check::check(&data)?;
            println!("{report}");
            Ok(())
        }
        Command::Relay { listen, gateway } => relay(listen, &gateway),
    }
}

/// The store an operator command works on: a RocksDB data directory, or a PostgreSQL database.
fn operator_store(
    data: Option<PathBuf>,
    postgres_url: Option<String>,
) -> Result<Box<dyn crate::store::Store>, Box<dyn std::error::Error>> {
    Ok(match (postgres_url, data) {
        (Some(url), _) => Box::new(crate::store::PgStore::connect(&url, 1)?),
        (None, Some(data)) => Box::new(RocksStore::open(&data, true)?),
        (None, None) => return Err("name a data directory or --postgres-url".into()),
    })
}

fn serve(cfg: Config) -> Result<(), Box<dyn std::error::Error>> {
    // Before opening the store: a half-configured or unreadable TLS setup must not start a hub.
    let tls = crate::tls::server_config(&cfg)?;
    let store: Arc<dyn crate::store::Store> = match cfg.storage {
        crate::config::Storage::Rocksdb => {
            Arc::new(RocksStore::open(&cfg.data_dir, cfg.sync_writes)?)
        }
        crate::config::Storage::Postgres => {
            let url = cfg
                .postgres_url
                .as_deref()
                .ok_or("storage = \"postgres\" needs postgres_url (or --postgres-url)")?;
            Arc::new(crate::store::PgStore::connect(url, cfg.postgres_pool_size)?)
        }
    };
    let hub = Arc::new(Hub::new(store.clone(), cfg.hub_config(), crate::now_ms())?);
    let rt = tokio::runtime::Runtime::new()?;
    let scrub_every = cfg.scrub_interval_secs;
    let served = rt.block_on(async move {
        // Everything that writes at start-up (the OHTTP gateway's key seed, via the router) is
        // done before the port opens: a client, or a test reading the store, never sees a
        // half-started hub.
        let peers = Arc::new(crate::federation::Peers::new(&cfg)?);
        let router = crate::http::router_with_peers(hub.clone(), peers.clone());
        // Start-up writes (new issuer keys, the gateway seed) are scrubbed before the port
        // opens, so no flush or compaction of them runs under the first requests.
        if scrub_every > 0 {
            let first: Arc<dyn crate::store::Store> = hub.store().clone();
            match tokio::task::spawn_blocking(move || first.scrub()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "start-up scrub failed; retrying on schedule")
                }
                Err(e) => tracing::error!(error = %e, "start-up scrub task panicked"),
            }
        }
        let listener = tokio::net::TcpListener::bind(cfg.listen).await?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        if cfg.mode == mimi_rm_protocol::DsMode::Baseline {
            tracing::warn!(
                "baseline mode: this hub stores group state, member identities and queue ids \
                 in the clear (for comparison with RM mode; not for private deployments)"
            );
        }
        tracing::info!(
            domain = %cfg.domain,
            mode = %cfg.mode,
            storage = ?cfg.storage,
            data = %cfg.data_dir.display(),
            "ds-rm hub listening on {scheme}://{}",
            listener.local_addr()?
        );
        // Fan-out for other providers' members leaves the durable outbox from here.
        tokio::spawn(crate::federation::run_outbox(hub.clone(), peers.clone()));
        tokio::spawn(crate::privacy_pass::run_rotation(hub.clone()));
        // Latency samples are folded into their histograms every few seconds, scraped or not.
        let upkeep = hub.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                upkeep.metrics.upkeep();
            }
        });
        if cfg.push.enabled && cfg.mode == mimi_rm_protocol::DsMode::Rm {
            tokio::spawn(crate::push::run(hub.clone(), cfg.push.clone()));
        }
        if scrub_every > 0 {
            let store: Arc<dyn crate::store::Store> = hub.store().clone();
            tokio::spawn(crate::scrub::run(
                store,
                std::time::Duration::from_secs(scrub_every),
            ));
        } else {
            tracing::warn!(
                "scrub_interval_secs = 0: overwritten and deleted records stay in the data \
                 directory's files until RocksDB happens to compact them"
            );
        }
        let limits = crate::listener::Limits::new(&cfg, crate::listener::open_file_limit());
        crate::listener::serve(listener, tls, router, limits, shutdown_signal()).await;
        Ok::<(), Box<dyn std::error::Error>>(())
    });
    // No task writes any more: the last scrub leaves only current values in the files.
    drop(rt);
    crate::scrub::at_shutdown(store.as_ref());
    tracing::info!("ds-rm hub stopped");
    served
}

fn relay(listen: std::net::SocketAddr, gateway: &str) -> Result<(), Box<dyn std::error::Error>> {
    let relay = crate::relay::Relay::new(gateway)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        tracing::info!(
            "OHTTP relay listening on http://{} for {gateway}",
            listener.local_addr()?
        );
        // The hub's connection hygiene (timeouts, connection limits) with its defaults.
        let limits =
            crate::listener::Limits::new(&Config::default(), crate::listener::open_file_limit());
        crate::listener::serve(listener, None, relay.router(), limits, shutdown_signal()).await;
        Ok::<(), Box<dyn std::error::Error>>(())
    })?;
    tracing::info!("OHTTP relay stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutdown signal received, draining requests");
}
