//! Prometheus metrics of the reconcile loop under the names, labels and buckets of
//! controller-runtime (pkg/internal/controller/metrics, pkg/metrics/leaderelection.go), so
//! dashboards and alerts written for Go operators work unchanged; plus ours where they say
//! more (the outcome and the failed operation). Labels are closed sets: never object names,
//! so cardinality stays flat with 10 or 10,000 ScalableApis.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::error::Error;

/// The `controller` label of the controller-runtime metrics (its lowercased kind, as
/// controller-runtime names a controller built `For` a kind).
pub const CONTROLLER: &str = "scalableapi";

/// Prefix of our own metrics: `scalable_api_operator_reconciliations_total`, ...
pub const PREFIX: &str = "scalable_api_operator";

/// controller-runtime's `result` values (kube-runtime has no immediate requeue, so
/// `requeue` never appears).
pub const RESULT_SUCCESS: &str = "success";
pub const RESULT_ERROR: &str = "error";
pub const RESULT_REQUEUE_AFTER: &str = "requeue_after";

/// controller-runtime's buckets (seconds) of `controller_runtime_reconcile_time_seconds`.
const RECONCILE_TIME_BUCKETS: [f64; 40] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.9,
    1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 15.0, 20.0,
    25.0, 30.0, 40.0, 50.0, 60.0,
];

const CONTROLLER_LABELS: ControllerLabels = ControllerLabels {
    controller: CONTROLLER,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabels {
    controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    controller: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LeaseLabels {
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    reason: &'static str,
}

type HistogramFamily = Family<ControllerLabels, Histogram, fn() -> Histogram>;

#[derive(Clone)]
pub struct Metrics {
    reconcile_total: Family<ResultLabels, Counter>,
    reconcile_errors: Family<ControllerLabels, Counter>,
    reconcile_time: HistogramFamily,
    max_concurrent: Family<ControllerLabels, Gauge>,
    active_workers: Family<ControllerLabels, Gauge>,
    leader: Family<LeaseLabels, Gauge>,
    outcomes: Family<OutcomeLabels, Counter>,
    failures: Family<ErrorLabels, Counter>,
    managed: Gauge,
}

impl Metrics {
    /// Creates the metrics and registers them: controller-runtime's at the top level,
    /// ours under `PREFIX`. The help texts are controller-runtime's (the encoder adds the
    /// final period).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            reconcile_total: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_time: Family::new_with_constructor(|| Histogram::new(RECONCILE_TIME_BUCKETS)),
            max_concurrent: Family::default(),
            active_workers: Family::default(),
            leader: Family::default(),
            outcomes: Family::default(),
            failures: Family::default(),
            managed: Gauge::default(),
        };
        registry.register(
            "controller_runtime_reconcile",
            "Total number of reconciliations per controller",
            m.reconcile_total.clone(),
        );
        registry.register(
            "controller_runtime_reconcile_errors",
            "Total number of reconciliation errors per controller",
            m.reconcile_errors.clone(),
        );
        registry.register(
            "controller_runtime_reconcile_time_seconds",
            "Length of time per reconciliation per controller",
            m.reconcile_time.clone(),
        );
        registry.register(
            "controller_runtime_max_concurrent_reconciles",
            "Maximum number of concurrent reconciles per controller",
            m.max_concurrent.clone(),
        );
        registry.register(
            "controller_runtime_active_workers",
            "Number of currently used workers per controller",
            m.active_workers.clone(),
        );
        registry.register(
            "leader_election_master_status",
            "Gauge of if the reporting system is master of the relevant lease, 0 indicates \
             backup, 1 indicates master. 'name' is the string used to identify the lease. \
             Please make sure to group by name",
            m.leader.clone(),
        );
        let ours = registry.sub_registry_with_prefix(PREFIX);
        ours.register(
            "reconciliations",
            "Reconciliations by outcome (applied, suspended, waiting_for_secret, invalid_spec, deleting, error)",
            m.outcomes.clone(),
        );
        ours.register(
            "reconcile_errors",
            "Failed reconciliations by the operation that failed",
            m.failures.clone(),
        );
        ours.register(
            "managed_objects",
            "ScalableApis known to the controller",
            m.managed.clone(),
        );
        m
    }

    /// The controller starts: its series appear at zero, as controller-runtime's do when a
    /// controller starts (a standby shows none of them).
    pub fn controller_started(&self, max_concurrent_reconciles: u16) {
        for result in [RESULT_SUCCESS, RESULT_ERROR, RESULT_REQUEUE_AFTER] {
            self.reconcile_total
                .get_or_create(&ResultLabels {
                    controller: CONTROLLER,
                    result,
                })
                .inc_by(0);
        }
        self.reconcile_errors
            .get_or_create(&CONTROLLER_LABELS)
            .inc_by(0);
        self.active_workers
            .get_or_create(&CONTROLLER_LABELS)
            .inc_by(0);
        self.max_concurrent
            .get_or_create(&CONTROLLER_LABELS)
            .set(i64::from(max_concurrent_reconciles));
    }

    /// Starts timing one reconciliation; call `ReconcileTimer::finish` with the result.
    /// The reconcile counts as an active worker until the timer is dropped.
    pub fn start(&self) -> ReconcileTimer<'_> {
        self.active_workers.get_or_create(&CONTROLLER_LABELS).inc();
        ReconcileTimer {
            metrics: self,
            started: Instant::now(),
        }
    }

    pub fn set_managed_objects(&self, n: usize) {
        self.managed.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// `leader_election_master_status{name=lease}`: 1 while leading, 0 while standing by.
    pub fn set_leader(&self, lease: &str, leading: bool) {
        self.leader
            .get_or_create(&LeaseLabels {
                name: lease.to_owned(),
            })
            .set(i64::from(leading));
    }
}

/// controller-runtime's `result` of a successful reconcile with this outcome label:
/// `requeue_after` when the outcome asks to run again after a delay (`Action::requeue`),
/// `success` when it waits for a change (`Action::await_change`). Kept in step with
/// `controller::Outcome::action` by a test.
fn result_of(outcome: &str) -> &'static str {
    match outcome {
        "applied" | "waiting_for_secret" | "child_conflict" | "waiting_for_collector" => {
            RESULT_REQUEUE_AFTER
        }
        _ => RESULT_SUCCESS,
    }
}

pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    started: Instant,
}

impl ReconcileTimer<'_> {
    /// Records the duration, the result and our outcome label (`error` plus the reason on
    /// failure).
    pub fn finish(self, outcome: Result<&'static str, &Error>) {
        let m = self.metrics;
        m.reconcile_time
            .get_or_create(&CONTROLLER_LABELS)
            .observe(self.started.elapsed().as_secs_f64());
        let (label, result) = match outcome {
            Ok(label) => (label, result_of(label)),
            Err(e) => {
                m.reconcile_errors.get_or_create(&CONTROLLER_LABELS).inc();
                m.failures
                    .get_or_create(&ErrorLabels {
                        reason: e.metric_label(),
                    })
                    .inc();
                ("error", RESULT_ERROR)
            }
        };
        m.reconcile_total
            .get_or_create(&ResultLabels {
                controller: CONTROLLER,
                result,
            })
            .inc();
        m.outcomes
            .get_or_create(&OutcomeLabels { outcome: label })
            .inc();
    }
}

impl Drop for ReconcileTimer<'_> {
    /// Also when the reconcile future is dropped before it finished.
    fn drop(&mut self) {
        self.metrics
            .active_workers
            .get_or_create(&CONTROLLER_LABELS)
            .dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::{Outcome, RESYNC_INTERVAL};
    use kube::runtime::controller::Action;
    use prometheus_client::encoding::text::encode;

    fn text(registry: &Registry) -> String {
        let mut out = String::new();
        encode(&mut out, registry).unwrap();
        out
    }

    fn has_line(text: &str, line: &str) -> bool {
        text.lines().any(|l| l == line)
    }

    /// Every `Outcome`; the match stops compiling when a variant is added, so it is listed.
    fn every_outcome() -> Vec<Outcome> {
        let all = vec![
            Outcome::Applied,
            Outcome::Suspended,
            Outcome::WaitingForSecret,
            Outcome::InvalidSpec,
            Outcome::ChildConflict,
            Outcome::WaitingForCollector,
            Outcome::Deleting,
        ];
        for o in &all {
            match o {
                Outcome::Applied
                | Outcome::Suspended
                | Outcome::WaitingForSecret
                | Outcome::InvalidSpec
                | Outcome::ChildConflict
                | Outcome::WaitingForCollector
                | Outcome::Deleting => {}
            }
        }
        all
    }

    #[test]
    fn reconciles_are_counted_under_controller_runtime_names() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        metrics.controller_started(32);
        metrics.start().finish(Ok("applied"));
        metrics.start().finish(Ok("suspended"));
        metrics.start().finish(Err(&Error::MissingNamespace));
        let out = text(&registry);
        for line in [
            "# TYPE controller_runtime_reconcile counter",
            "# HELP controller_runtime_reconcile Total number of reconciliations per controller.",
            r#"controller_runtime_reconcile_total{controller="scalableapi",result="requeue_after"} 1"#,
            r#"controller_runtime_reconcile_total{controller="scalableapi",result="success"} 1"#,
            r#"controller_runtime_reconcile_total{controller="scalableapi",result="error"} 1"#,
            "# TYPE controller_runtime_reconcile_errors counter",
            r#"controller_runtime_reconcile_errors_total{controller="scalableapi"} 1"#,
            "# TYPE controller_runtime_reconcile_time_seconds histogram",
            r#"controller_runtime_reconcile_time_seconds_count{controller="scalableapi"} 3"#,
            r#"controller_runtime_reconcile_time_seconds_bucket{le="60.0",controller="scalableapi"} 3"#,
            "# TYPE controller_runtime_max_concurrent_reconciles gauge",
            r#"controller_runtime_max_concurrent_reconciles{controller="scalableapi"} 32"#,
            "# TYPE controller_runtime_active_workers gauge",
            r#"controller_runtime_active_workers{controller="scalableapi"} 0"#,
        ] {
            assert!(has_line(&out, line), "no line {line:?} in\n{out}");
        }
    }

    #[test]
    fn a_started_controller_shows_every_result_at_zero() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        assert!(!text(&registry).contains("controller_runtime_reconcile_total{"));
        metrics.controller_started(32);
        let out = text(&registry);
        for result in ["success", "error", "requeue_after"] {
            let line = format!(
                r#"controller_runtime_reconcile_total{{controller="scalableapi",result="{result}"}} 0"#
            );
            assert!(has_line(&out, &line), "no line {line:?} in\n{out}");
        }
        assert!(has_line(
            &out,
            r#"controller_runtime_reconcile_errors_total{controller="scalableapi"} 0"#
        ));
    }

    #[test]
    fn a_running_reconcile_is_an_active_worker_until_its_timer_is_dropped() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let running = metrics.start();
        let cancelled = metrics.start();
        let active =
            |n: u8| format!(r#"controller_runtime_active_workers{{controller="scalableapi"}} {n}"#);
        assert!(has_line(&text(&registry), &active(2)));
        drop(cancelled);
        running.finish(Ok("applied"));
        assert!(has_line(&text(&registry), &active(0)));
    }

    #[test]
    fn errors_are_also_counted_by_their_stable_reason() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        metrics.start().finish(Ok("applied"));
        metrics.start().finish(Err(&Error::MissingNamespace));
        metrics.set_managed_objects(3);
        let out = text(&registry);
        for line in [
            r#"scalable_api_operator_reconciliations_total{outcome="applied"} 1"#,
            r#"scalable_api_operator_reconciliations_total{outcome="error"} 1"#,
            r#"scalable_api_operator_reconcile_errors_total{reason="missing_namespace"} 1"#,
            "scalable_api_operator_managed_objects 3",
        ] {
            assert!(has_line(&out, line), "no line {line:?} in\n{out}");
        }
        assert!(!out.contains("scalable_api_operator_reconcile_duration_seconds"));
    }

    #[test]
    fn leader_election_master_status_is_labelled_with_the_lease_name() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        metrics.set_leader("scalable-api-operator", false);
        let standby = text(&registry);
        assert!(has_line(
            &standby,
            "# TYPE leader_election_master_status gauge"
        ));
        assert!(has_line(
            &standby,
            r#"leader_election_master_status{name="scalable-api-operator"} 0"#
        ));
        assert!(standby.contains("Please make sure to group by name.\n"));
        metrics.set_leader("scalable-api-operator", true);
        assert!(has_line(
            &text(&registry),
            r#"leader_election_master_status{name="scalable-api-operator"} 1"#
        ));
    }

    #[test]
    fn the_result_label_follows_the_requeue_of_each_outcome() {
        for outcome in every_outcome() {
            let want = if outcome.action(RESYNC_INTERVAL) == Action::await_change() {
                RESULT_SUCCESS
            } else {
                RESULT_REQUEUE_AFTER
            };
            assert_eq!(result_of(outcome.metric_label()), want, "{outcome:?}");
        }
    }
}
