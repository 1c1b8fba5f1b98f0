//! What an operator watches: Prometheus metrics at `GET /metrics` (OpenMetrics text), for
//! a scraper holding the metrics token (`--metrics-token-file`); without a token configured
//! the route answers 404.
//!
//! Counters and histograms are counted where things happen (the sync handler, the edge
//! middleware, the writer threads); gauges that describe the store (the read model's lag,
//! quarantined households, phones by time since their last sync, the writers' queues) are
//! read from it when scraped, so they are never stale and cost nothing between scrapes.
//! Labels are stable codes (the API's error codes, the spec's reject codes), never personal
//! data.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// `ok`, or the error code the client got (`rate_limited`, `cursor_ahead`, ...).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Code {
    /// A reject code's wire name (SYNC-v1 §9).
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Route {
    /// The route's template (`/v1/sync`, `/api/v1/households/{id}`), never the path.
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthFailure {
    /// `login`, `enroll` or `token`.
    pub kind: &'static str,
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinceSync {
    /// `day` (synced within 24 h), `week`, `month`, `older`, or `never`.
    pub since: &'static str,
}

/// Every metric the server exports, registered once at start.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub syncs: Family<Outcome, Counter>,
    pub sync_seconds: Histogram,
    pub sync_bytes_in: Counter,
    pub sync_bytes_out: Counter,
    pub changes_accepted: Counter,
    pub changes_refused: Family<Code, Counter>,
    pub resyncs: Family<Reason, Counter>,
    pub auth_failures: Family<AuthFailure, Counter>,
    pub rate_limited: Family<Route, Counter>,
    /// Uploads a writer took in one group commit (set on the writers by [`Metrics::groups`]).
    pub write_groups: Histogram,
    pub writer_queue: Gauge,
    pub read_model_behind: Gauge,
    pub read_model_behind_seconds: Gauge,
    pub quarantined: Gauge,
    pub phones: Family<SinceSync, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("qiaomen"),
            syncs: Family::default(),
            // 5 ms to ~80 s: an idle check on a LAN to a first sync over 2G.
            sync_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 15)),
            sync_bytes_in: Counter::default(),
            sync_bytes_out: Counter::default(),
            changes_accepted: Counter::default(),
            changes_refused: Family::default(),
            resyncs: Family::default(),
            auth_failures: Family::default(),
            rate_limited: Family::default(),
            write_groups: Histogram::new(exponential_buckets(1.0, 2.0, 9)),
            writer_queue: Gauge::default(),
            read_model_behind: Gauge::default(),
            read_model_behind_seconds: Gauge::default(),
            quarantined: Gauge::default(),
            phones: Family::default(),
        };
        let registry = &mut m.registry;
        registry.register(
            "syncs",
            "Sync requests answered, by outcome (ok or the error code)",
            m.syncs.clone(),
        );
        registry.register_with_unit(
            "sync_duration",
            "Time to answer a sync request, from its headers to its answer",
            Unit::Seconds,
            m.sync_seconds.clone(),
        );
        registry.register_with_unit(
            "sync_received",
            "Sync request bodies received (compressed)",
            Unit::Bytes,
            m.sync_bytes_in.clone(),
        );
        registry.register_with_unit(
            "sync_sent",
            "Sync answer bodies sent (compressed)",
            Unit::Bytes,
            m.sync_bytes_out.clone(),
        );
        registry.register(
            "changes_accepted",
            "Uploaded changes stored or acknowledged again",
            m.changes_accepted.clone(),
        );
        registry.register(
            "changes_refused",
            "Uploaded changes refused, by reject code",
            m.changes_refused.clone(),
        );
        registry.register(
            "full_resyncs",
            "Phones told to sync again from no cursor, by reason",
            m.resyncs.clone(),
        );
        registry.register(
            "auth_failures",
            "Refused logins, enrollments and token rotations, by kind and code",
            m.auth_failures.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests refused by a rate limit, by route",
            m.rate_limited.clone(),
        );
        registry.register(
            "write_group_uploads",
            "Uploads committed together by a writer",
            m.write_groups.clone(),
        );
        registry.register(
            "writer_queue_uploads",
            "Uploads waiting for a writer",
            m.writer_queue.clone(),
        );
        registry.register(
            "read_model_behind_changes",
            "Logged changes the read model (coverage, orders, statistics) does not count yet",
            m.read_model_behind.clone(),
        );
        registry.register_with_unit(
            "read_model_behind",
            "Age of the oldest logged change the read model does not count yet",
            Unit::Seconds,
            m.read_model_behind_seconds.clone(),
        );
        registry.register(
            "quarantined_households",
            "Households that cannot be loaded or checked (admin quarantine)",
            m.quarantined.clone(),
        );
        registry.register(
            "phones",
            "Active phones by time since their last sync",
            m.phones.clone(),
        );
        m
    }

    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String does not fail");
        out
    }

    /// Counts one answered sync request.
    pub fn sync_answered(&self, outcome: &'static str, seconds: f64) {
        self.syncs.get_or_create(&Outcome { outcome }).inc();
        self.sync_seconds.observe(seconds);
    }

    /// Sets the gauge of phones by time since their last sync from the devices' last syncs
    /// (`None`: never synced), at `now_ms`.
    pub fn set_phones(&self, last_syncs: impl IntoIterator<Item = Option<i64>>, now_ms: i64) {
        const DAY: i64 = 24 * 3600 * 1000;
        let mut counts = [0i64; 5];
        for last in last_syncs {
            let i = match last.map(|t| now_ms.saturating_sub(t)) {
                None => 4,
                Some(age) if age <= DAY => 0,
                Some(age) if age <= 7 * DAY => 1,
                Some(age) if age <= 30 * DAY => 2,
                Some(_) => 3,
            };
            counts[i] += 1;
        }
        for (since, n) in ["day", "week", "month", "older", "never"]
            .into_iter()
            .zip(counts)
        {
            self.phones.get_or_create(&SinceSync { since }).set(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_names_each_metric_with_its_labels_and_counts() {
        let m = Metrics::new();
        m.sync_answered("ok", 0.012);
        m.sync_answered("ok", 0.5);
        m.sync_answered("rate_limited", 0.001);
        m.changes_refused
            .get_or_create(&Code {
                code: "broken_history".into(),
            })
            .inc();
        let now = 100 * 24 * 3600 * 1000;
        m.set_phones(
            [Some(now - 1000), Some(now - 3 * 24 * 3600 * 1000), None],
            now,
        );
        let text = m.render();
        assert!(
            text.contains("qiaomen_syncs_total{outcome=\"ok\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("qiaomen_syncs_total{outcome=\"rate_limited\"} 1\n"));
        assert!(text.contains("qiaomen_sync_duration_seconds_count 3\n"));
        assert!(text.contains("qiaomen_changes_refused_total{code=\"broken_history\"} 1\n"));
        assert!(text.contains("qiaomen_phones{since=\"day\"} 1\n"));
        assert!(text.contains("qiaomen_phones{since=\"week\"} 1\n"));
        assert!(text.contains("qiaomen_phones{since=\"older\"} 0\n"));
        assert!(text.contains("qiaomen_phones{since=\"never\"} 1\n"));
        assert!(text.ends_with("# EOF\n"));
    }
}
