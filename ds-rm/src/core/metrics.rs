//! The hub's counters, served as Prometheus text at `/metrics` (`crate::http`).

use std::sync::atomic::AtomicU64;

/// Counters for `/metrics`: totals since start, in memory only.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Requests answered with 2xx.
    pub ok: AtomicU64,
    /// Requests answered with an error.
    pub errors: AtomicU64,
    /// Messages enqueued.
    pub enqueued: AtomicU64,
    /// Fan-out items that could not be delivered (unknown or foreign queue).
    pub undeliverable: AtomicU64,
    /// Fan-out items queued for other providers.
    pub outboxed: AtomicU64,
    /// Items delivered to other providers.
    pub delivered_to_peers: AtomicU64,
    /// Items other providers delivered here (enqueued, not counting duplicates).
    pub received_from_peers: AtomicU64,
    /// Privacy Pass tokens issued.
    pub tokens_issued: AtomicU64,
    /// Registration tokens issued (for invitation codes, vouching devices, open registration).
    pub registration_tokens_issued: AtomicU64,
    /// Privacy Pass tokens spent (by accepted or refused requests).
    pub tokens_spent: AtomicU64,
    /// Sealed queue refs opened with HPKE (cache misses).
    pub queue_refs_opened: AtomicU64,
    /// Sealed queue refs resolved from the in-memory cache.
    pub queue_refs_cached: AtomicU64,
    /// Live-delivery WebSockets subscribed (their first frame accepted).
    pub live_opened: AtomicU64,
    /// Live-delivery WebSockets closed after subscribing.
    pub live_closed: AtomicU64,
    /// Wake-ups sent on live sockets.
    pub live_wakes: AtomicU64,
    /// Web Push wake-ups the push service accepted.
    pub pushes_sent: AtomicU64,
    /// Web Push wake-ups that failed (or were dropped: no worker, full queue, no subscription).
    pub pushes_dropped: AtomicU64,
    /// Subscriptions dropped because the push service said they are gone (404/410).
    pub push_subscriptions_expired: AtomicU64,
    /// Requests answered through the OHTTP gateway.
    pub ohttp_requests: AtomicU64,
    /// Encapsulated requests refused before anything inside ran (undecryptable, wrong type).
    pub ohttp_refused: AtomicU64,
}
