//! The agent's Prometheus metrics, served at `/metrics` on its health port
//! in the OpenMetrics text format: what the Service proxy did (sync
//! durations, the last sync) and which Services it could not program.
//!
//! It owns the metric names and their labels; it must not decide anything
//! (the proxy's loop reports what happened) and holds no I/O.

use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Why a Service has no rules on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
pub enum Cause {
    /// The Service is invalid as the API server would judge it.
    Invalid,
    /// nft refused the rules planned for it.
    NftRejected,
}

/// Which kind of sync wrote the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
pub enum SyncKind {
    /// The whole table, from the proxy's state.
    Full,
    /// Only the Services that changed.
    Partial,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ServiceLabels {
    namespace: String,
    name: String,
    cause: Cause,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SyncLabels {
    kind: SyncKind,
}

pub struct Metrics {
    registry: Registry,
    not_programmed: Family<ServiceLabels, Gauge>,
    sync_seconds: Family<SyncLabels, Histogram>,
    partial_sync_failures: Counter,
    last_sync: Gauge<f64, AtomicU64>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("weft_proxy");
        let not_programmed = Family::<ServiceLabels, Gauge>::default();
        registry.register(
            "services_not_programmed",
            "Services with no rules on this node (1 each), and why",
            not_programmed.clone(),
        );
        // 1 ms to ~16 s: a one-Service change to a 100k-element full sync.
        let sync_seconds = Family::<SyncLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 15))
        });
        registry.register(
            "sync_duration_seconds",
            "How long writing the Service table took",
            sync_seconds.clone(),
        );
        let partial_sync_failures = Counter::default();
        registry.register(
            "partial_sync_failures",
            "Partial syncs that failed and fell back to a full sync",
            partial_sync_failures.clone(),
        );
        let last_sync = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "last_sync_timestamp_seconds",
            "When the Service table was last written (Unix time)",
            last_sync.clone(),
        );
        Metrics {
            registry,
            not_programmed,
            sync_seconds,
            partial_sync_failures,
            last_sync,
        }
    }
}

impl Metrics {
    /// Replaces the Services without rules by `services` (namespace, name,
    /// cause).
    pub fn set_not_programmed<'a>(
        &self,
        services: impl IntoIterator<Item = (&'a str, &'a str, Cause)>,
    ) {
        self.not_programmed.clear();
        for (namespace, name, cause) in services {
            let labels = ServiceLabels {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                cause,
            };
            self.not_programmed.get_or_create(&labels).set(1);
        }
    }

    /// A sync of `kind` wrote the table in `took`.
    pub fn synced(&self, kind: SyncKind, took: Duration) {
        self.sync_seconds
            .get_or_create(&SyncLabels { kind })
            .observe(took.as_secs_f64());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.last_sync.set(now.as_secs_f64());
    }

    pub fn partial_sync_failed(&self) {
        self.partial_sync_failures.inc();
    }

    /// The exposition text.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// OpenMetrics' content type, which Prometheus asks for.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_without_rules_are_listed_and_dropped_when_fixed() {
        let metrics = Metrics::default();
        metrics.set_not_programmed([
            ("demo", "bad", Cause::Invalid),
            ("demo", "huge", Cause::NftRejected),
        ]);
        let text = metrics.encode();
        assert!(text.contains(
            "weft_proxy_services_not_programmed{namespace=\"demo\",name=\"bad\",cause=\"Invalid\"} 1"
        ), "{text}");
        assert!(
            text.contains("name=\"huge\",cause=\"NftRejected\"} 1"),
            "{text}"
        );
        metrics.set_not_programmed([("demo", "huge", Cause::NftRejected)]);
        let text = metrics.encode();
        assert!(!text.contains("name=\"bad\""), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn syncs_are_timed_by_kind() {
        let metrics = Metrics::default();
        metrics.synced(SyncKind::Partial, Duration::from_millis(3));
        metrics.synced(SyncKind::Full, Duration::from_millis(900));
        metrics.partial_sync_failed();
        let text = metrics.encode();
        assert!(
            text.contains("weft_proxy_sync_duration_seconds_count{kind=\"Partial\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "weft_proxy_sync_duration_seconds_bucket{le=\"0.004\",kind=\"Partial\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("weft_proxy_sync_duration_seconds_sum{kind=\"Full\"} 0.9"),
            "{text}"
        );
        assert!(
            text.contains("weft_proxy_partial_sync_failures_total 1"),
            "{text}"
        );
        assert!(
            !text.contains("weft_proxy_last_sync_timestamp_seconds 0\n"),
            "{text}"
        );
    }
}
