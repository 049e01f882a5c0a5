//! mimi-ds-rm: a reduced-metadata MIMI hub (delivery service + queueing service +
//! authentication service).
//!
//! Layout: [`core`] holds all request logic (sans-I/O over [`store::Txn`]), [`store`] the RocksDB
//! implementation, [`http`] the axum shell, [`privacy_pass`] token redemption and issuance over HTTP, [`push`] Web Push wake-ups, [`tls`] HTTPS serving, [`config`] the operator
//! settings and [`audit`] the "what does a seized disk show" view.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod audit;
pub mod cli;
pub mod config;
pub mod core;
pub mod expire;
pub mod federation;
pub mod http;
pub mod listener;
pub mod live;
pub mod ohttp;
pub mod privacy_pass;
pub mod push;
pub mod relay;
pub mod scrub;
pub mod store;
pub mod tls;

/// Milliseconds since the Unix epoch, from the system clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
