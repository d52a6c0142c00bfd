//! Prometheus metrics of the reconcile loop. Labels are closed sets (outcome, error reason):
//! never object names, so cardinality stays flat with 10 or 10,000 ScalableApis.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::error::Error;

/// Prefix of every metric name: `scalable_api_operator_reconciliations_total`, ...
pub const PREFIX: &str = "scalable_api_operator";

/// Upper bounds (seconds) of the reconcile duration histogram.
const DURATION_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    reason: &'static str,
}

#[derive(Clone)]
pub struct Metrics {
    reconciliations: Family<OutcomeLabels, Counter>,
    failures: Family<ErrorLabels, Counter>,
    duration: Histogram,
    managed: Gauge,
    leader: Gauge,
}

impl Metrics {
    /// Creates the metrics and registers them under `PREFIX`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            reconciliations: Family::default(),
            failures: Family::default(),
            duration: Histogram::new(DURATION_BUCKETS),
            managed: Gauge::default(),
            leader: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix(PREFIX);
        r.register(
            "reconciliations",
            "Reconciliations by outcome (applied, suspended, waiting_for_secret, invalid_spec, error)",
            m.reconciliations.clone(),
        );
        r.register(
            "reconcile_errors",
            "Failed reconciliations by the operation that failed",
            m.failures.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Duration of one reconciliation",
            m.duration.clone(),
        );
        r.register(
            "managed_objects",
            "ScalableApis known to the controller",
            m.managed.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the leader Lease",
            m.leader.clone(),
        );
        m
    }

    /// Starts timing one reconciliation; call `ReconcileTimer::finish` with the result.
    pub fn start(&self) -> ReconcileTimer<'_> {
        ReconcileTimer {
            metrics: self,
            started: Instant::now(),
        }
    }

    pub fn set_managed_objects(&self, n: usize) {
        self.managed.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }
}

pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    started: Instant,
}

impl ReconcileTimer<'_> {
    /// Records the duration and the outcome label (`error` plus the reason on failure).
    pub fn finish(self, outcome: Result<&'static str, &Error>) {
        let m = self.metrics;
        m.duration.observe(self.started.elapsed().as_secs_f64());
        let label = match outcome {
            Ok(label) => label,
            Err(e) => {
                m.failures
                    .get_or_create(&ErrorLabels {
                        reason: e.metric_label(),
                    })
                    .inc();
                "error"
            }
        };
        m.reconciliations
            .get_or_create(&OutcomeLabels { outcome: label })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn errors_are_counted_by_their_stable_reason() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        metrics.start().finish(Ok("applied"));
        metrics.start().finish(Err(&Error::MissingNamespace));
        metrics.set_managed_objects(3);
        let mut out = String::new();
        encode(&mut out, &registry).unwrap();
        assert!(out.contains("scalable_api_operator_reconciliations_total{outcome=\"applied\"} 1"));
        assert!(out.contains("scalable_api_operator_reconciliations_total{outcome=\"error\"} 1"));
        assert!(out.contains(
            "scalable_api_operator_reconcile_errors_total{reason=\"missing_namespace\"} 1"
        ));
        assert!(out.contains("scalable_api_operator_managed_objects 3"));
        assert!(out.contains("scalable_api_operator_reconcile_duration_seconds_count 2"));
    }
}
