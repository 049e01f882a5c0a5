//! What operators watch, as Prometheus text at `/metrics` (`crate::http`), through the
//! `metrics` facade and its Prometheus exporter.
//!
//! Totals are plain atomics on the hot path and handed to the exporter when scraped; request
//! latencies go into exporter histograms as they happen, labelled by route template and HTTP
//! status only. No label ever carries a group id, pseudonym, queue id, handle or address:
//! routes carry none (every identifier travels in request bodies), and gauges are totals over
//! the whole store.

use crate::store::{Cf, Statistic};
use metrics::{Key, Label, Level, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Latency histogram of every answered request.
const REQUEST_SECONDS: &str = "mimi_request_duration_seconds";
/// Its buckets, 100 µs to 5 s.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];
const METADATA: Metadata<'static> = Metadata::new("mimi_ds_rm", Level::INFO, None);

/// One value the hub reads when scraped (a store statistic), with its labels.
#[derive(Debug, Clone, PartialEq)]
pub struct GaugeValue {
    /// Metric name.
    pub name: &'static str,
    /// Labels: fixed names (a column family, a statistic), never an identifier.
    pub labels: Vec<(&'static str, &'static str)>,
    /// The value.
    pub value: f64,
}

/// The exporter: latency histograms, and the snapshot a scrape renders.
pub struct Exporter {
    recorder: PrometheusRecorder,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Exporter")
    }
}

impl Default for Exporter {
    fn default() -> Self {
        let builder = PrometheusBuilder::new();
        // Buckets for the one histogram; the name is a constant, so this cannot fail.
        let builder = builder
            .set_buckets_for_metric(Matcher::Full(REQUEST_SECONDS.into()), &BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        recorder.describe_histogram(
            REQUEST_SECONDS.into(),
            Some(Unit::Seconds),
            "Time from a request's arrival to its answer, by route and status".into(),
        );
        Self { recorder }
    }
}

/// Counters for `/metrics`: totals since start, in memory only.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Histograms and rendering.
    pub exporter: Exporter,
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
    /// Messages stored once for several local queues (each queue got a reference).
    pub stored_once: AtomicU64,
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

impl Metrics {
    /// Records one answered request: `route` is the route's template (never a concrete
    /// identifier), `status` its HTTP status.
    pub fn observe_request(&self, route: &str, status: u16, seconds: f64) {
        let key = Key::from_parts(
            REQUEST_SECONDS,
            vec![
                Label::new("route", route.to_owned()),
                Label::new("status", status.to_string()),
            ],
        );
        self.exporter
            .recorder
            .register_histogram(&key, &METADATA)
            .record(seconds);
    }

    /// Folds recorded samples into the histograms; run every few seconds, so samples do not
    /// pile up in memory between scrapes.
    pub fn upkeep(&self) {
        self.exporter.recorder.handle().run_upkeep();
    }

    /// The Prometheus text of every total, the histograms and the store's `statistics`.
    pub fn render_with(&self, statistics: Vec<Statistic>) -> String {
        self.render(&store_gauges(statistics))
    }

    /// The Prometheus text of every total, the histograms and `gauges`.
    fn render(&self, gauges: &[GaugeValue]) -> String {
        let r = &self.exporter.recorder;
        for (name, help, value) in self.totals() {
            r.describe_counter(name.into(), None, help.into());
            r.register_counter(&Key::from_static_name(name), &METADATA)
                .absolute(value);
        }
        let live = self
            .live_opened
            .load(Relaxed)
            .saturating_sub(self.live_closed.load(Relaxed));
        r.register_gauge(&Key::from_static_name("mimi_live_sockets"), &METADATA)
            .set(live as f64);
        for g in gauges {
            let labels: Vec<Label> = g.labels.iter().map(|(k, v)| Label::new(*k, *v)).collect();
            r.register_gauge(&Key::from_parts(g.name, labels), &METADATA)
                .set(g.value);
        }
        r.handle().render()
    }

    /// Every total: name, help text, value.
    fn totals(&self) -> [(&'static str, &'static str, u64); 19] {
        let v = |a: &AtomicU64| a.load(Relaxed);
        [
            (
                "mimi_requests_ok",
                "Requests answered with 2xx",
                v(&self.ok),
            ),
            (
                "mimi_requests_error",
                "Requests answered with an error",
                v(&self.errors),
            ),
            (
                "mimi_messages_enqueued",
                "Messages enqueued",
                v(&self.enqueued),
            ),
            (
                "mimi_fanout_undeliverable",
                "Fan-out items with no queue",
                v(&self.undeliverable),
            ),
            (
                "mimi_fanout_outboxed",
                "Fan-out items queued for peers",
                v(&self.outboxed),
            ),
            (
                "mimi_messages_stored_once",
                "Messages stored once for several local queues",
                v(&self.stored_once),
            ),
            (
                "mimi_delivered_to_peers",
                "Items delivered to peers",
                v(&self.delivered_to_peers),
            ),
            (
                "mimi_received_from_peers",
                "Items peers delivered here",
                v(&self.received_from_peers),
            ),
            (
                "mimi_tokens_issued",
                "Privacy Pass request tokens issued",
                v(&self.tokens_issued),
            ),
            (
                "mimi_registration_tokens_issued",
                "Registration tokens issued",
                v(&self.registration_tokens_issued),
            ),
            (
                "mimi_tokens_spent",
                "Privacy Pass tokens spent",
                v(&self.tokens_spent),
            ),
            (
                "mimi_queue_refs_opened",
                "Sealed queue refs opened with HPKE",
                v(&self.queue_refs_opened),
            ),
            (
                "mimi_queue_refs_cached",
                "Sealed queue refs resolved from cache",
                v(&self.queue_refs_cached),
            ),
            (
                "mimi_live_wakes",
                "Wake-ups sent on live sockets",
                v(&self.live_wakes),
            ),
            (
                "mimi_pushes_sent",
                "Web Push wake-ups accepted",
                v(&self.pushes_sent),
            ),
            (
                "mimi_pushes_dropped",
                "Web Push wake-ups failed or dropped",
                v(&self.pushes_dropped),
            ),
            (
                "mimi_push_subscriptions_expired",
                "Push subscriptions the push service declared gone",
                v(&self.push_subscriptions_expired),
            ),
            (
                "mimi_ohttp_requests",
                "Requests answered through the OHTTP gateway",
                v(&self.ohttp_requests),
            ),
            (
                "mimi_ohttp_refused",
                "Encapsulated requests refused",
                v(&self.ohttp_refused),
            ),
        ]
    }
}

/// The store's figures as gauges: each as `mimi_store_<name>{cf}`, and the two queue depths
/// operators watch under their own names.
fn store_gauges(statistics: Vec<Statistic>) -> Vec<GaugeValue> {
    let mut out = Vec::with_capacity(statistics.len() + 2);
    for s in statistics {
        let value = s.value as f64;
        if s.name == "keys" {
            match s.cf {
                Cf::QsQueues => out.push(GaugeValue {
                    name: "mimi_queued_messages",
                    labels: Vec::new(),
                    value,
                }),
                Cf::FedOutbox => out.push(GaugeValue {
                    name: "mimi_outbox_items",
                    labels: Vec::new(),
                    value,
                }),
                _ => {}
            }
        }
        let name = match s.name {
            "keys" => "mimi_store_keys",
            "sst_bytes" => "mimi_store_sst_bytes",
            "memtable_bytes" => "mimi_store_memtable_bytes",
            _ => "mimi_store_pending_compaction_bytes",
        };
        out.push(GaugeValue {
            name,
            labels: vec![("cf", s.cf.name())],
            value,
        });
    }
    out
}
