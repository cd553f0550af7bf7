//! Prometheus metrics of the operator (prometheus-client).

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::crd::LifecycleState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LifecycleLabel {
    pub lifecycle: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SavepointLabel {
    pub trigger: String,
    pub result: String,
}

pub struct Metrics {
    registry: Registry,
    pub reconciles: Family<ResultLabel, Counter>,
    pub reconcile_duration: Histogram,
    pub jobs: Family<LifecycleLabel, Gauge>,
    pub savepoints: Family<SavepointLabel, Counter>,
    pub savepoint_duration: Histogram,
    lifecycles: Mutex<HashMap<String, LifecycleState>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

const ALL_STATES: [LifecycleState; 8] = [
    LifecycleState::Created,
    LifecycleState::Deploying,
    LifecycleState::Running,
    LifecycleState::Upgrading,
    LifecycleState::Suspended,
    LifecycleState::RollingBack,
    LifecycleState::RolledBack,
    LifecycleState::Failed,
];

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("runnel_operator");
        let reconciles = Family::<ResultLabel, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciles by result (ok, error)",
            reconciles.clone(),
        );
        let reconcile_duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register(
            "reconcile_duration_seconds",
            "Duration of one reconcile (observe, decide, write, act)",
            reconcile_duration.clone(),
        );
        let jobs = Family::<LifecycleLabel, Gauge>::default();
        registry.register("jobs", "StreamJobs per lifecycle state", jobs.clone());
        let savepoints = Family::<SavepointLabel, Counter>::default();
        registry.register(
            "savepoints",
            "Savepoints by trigger and result",
            savepoints.clone(),
        );
        let savepoint_duration = Histogram::new(exponential_buckets(0.1, 2.0, 14));
        registry.register(
            "savepoint_duration_seconds",
            "From the operator's decision to take a savepoint to its completion",
            savepoint_duration.clone(),
        );
        Metrics {
            registry,
            reconciles,
            reconcile_duration,
            jobs,
            savepoints,
            savepoint_duration,
            lifecycles: Mutex::new(HashMap::new()),
        }
    }

    /// Records the lifecycle state of one StreamJob (`None`: it is gone).
    pub fn set_lifecycle(&self, key: &str, state: Option<LifecycleState>) {
        let Ok(mut m) = self.lifecycles.lock() else {
            return;
        };
        match state {
            Some(s) => {
                m.insert(key.to_string(), s);
            }
            None => {
                m.remove(key);
            }
        }
        for s in ALL_STATES {
            let n = m.values().filter(|v| **v == s).count();
            self.jobs
                .get_or_create(&LifecycleLabel {
                    lifecycle: format!("{s:?}"),
                })
                .set(n as i64);
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_gauges_count_jobs() {
        let m = Metrics::new();
        m.set_lifecycle("a", Some(LifecycleState::Running));
        m.set_lifecycle("b", Some(LifecycleState::Running));
        m.set_lifecycle("c", Some(LifecycleState::Upgrading));
        m.set_lifecycle("b", None);
        let t = m.encode();
        assert!(
            t.contains("runnel_operator_jobs{lifecycle=\"Running\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("runnel_operator_jobs{lifecycle=\"Upgrading\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("runnel_operator_jobs{lifecycle=\"Failed\"} 0"),
            "{t}"
        );
    }
}
