//! Which worker pods of a distributed job to create and delete (pure).
//!
//! The operator, not a ReplicaSet, keeps a deployment's worker pods: they
//! belong to one deployment (its job file, its coordinator's `--workers`
//! names) and must go with it, and a StatefulSet would outlive the
//! deployment's coordinator or restart workers of a stopped job. The kubelet
//! restarts a crashed worker in place (restartPolicy `Always`); this plan
//! replaces a worker pod that was deleted or evicted, and removes workers
//! whose coordinator is gone.

use std::collections::{BTreeMap, BTreeSet};

use crate::machine::PodPhase;

/// A deployment's coordinator pod, as listed (or just created).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Coordinator {
    pub deploy_id: u64,
    pub phase: PodPhase,
    /// Its worker count (0: a one-pod job).
    pub replicas: u32,
}

/// A worker pod, as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Worker {
    pub name: String,
    pub deploy_id: u64,
    pub index: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// (deploy id, index) of worker pods to create.
    pub create: Vec<(u64, u32)>,
    /// Names of worker pods to delete.
    pub delete: Vec<String>,
}

/// `coordinators` are the deployments' coordinator pods after this round's
/// actions (a pod deleted this round is left out or `Terminating`).
///
/// A worker is kept while its coordinator is pending or running, and only
/// if its index is below that coordinator's worker count; everything else
/// goes. A live coordinator's missing indices are created.
pub fn plan(coordinators: &[Coordinator], workers: &[Worker]) -> Plan {
    let live: BTreeMap<u64, u32> = coordinators
        .iter()
        .filter(|c| matches!(c.phase, PodPhase::Pending | PodPhase::Running))
        .map(|c| (c.deploy_id, c.replicas))
        .collect();
    let mut have: BTreeSet<(u64, u32)> = BTreeSet::new();
    let mut delete = Vec::new();
    for w in workers {
        match live.get(&w.deploy_id) {
            Some(&n) if w.index < n => {
                have.insert((w.deploy_id, w.index));
            }
            _ => delete.push(w.name.clone()),
        }
    }
    let create = live
        .iter()
        .flat_map(|(&id, &n)| (0..n).map(move |i| (id, i)))
        .filter(|k| !have.contains(k))
        .collect();
    Plan { create, delete }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PHASES: [PodPhase; 5] = [
        PodPhase::Pending,
        PodPhase::Running,
        PodPhase::Succeeded,
        PodPhase::Failed,
        PodPhase::Terminating,
    ];

    fn w(deploy_id: u64, index: u32) -> Worker {
        Worker {
            name: format!("j-{deploy_id}-worker-{index}"),
            deploy_id,
            index,
        }
    }

    fn c(deploy_id: u64, phase: PodPhase, replicas: u32) -> Coordinator {
        Coordinator {
            deploy_id,
            phase,
            replicas,
        }
    }

    #[test]
    fn a_running_deployment_gets_exactly_its_missing_workers() {
        let p = plan(&[c(3, PodPhase::Running, 3)], &[w(3, 1)]);
        assert_eq!(p.create, vec![(3, 0), (3, 2)]);
        assert!(p.delete.is_empty());
        let p = plan(&[c(3, PodPhase::Pending, 2)], &[w(3, 0), w(3, 1)]);
        assert_eq!(p, Plan::default());
    }

    #[test]
    fn workers_go_with_their_coordinator() {
        for phase in PHASES {
            let p = plan(&[c(1, phase, 2)], &[w(1, 0), w(1, 1)]);
            if matches!(phase, PodPhase::Pending | PodPhase::Running) {
                assert_eq!(p, Plan::default(), "{phase:?}");
            } else {
                assert!(p.create.is_empty(), "{phase:?}");
                assert_eq!(p.delete, vec!["j-1-worker-0", "j-1-worker-1"], "{phase:?}");
            }
        }
        // No coordinator at all (deleted this round, or by hand): orphans.
        let p = plan(&[], &[w(1, 0)]);
        assert_eq!(p.delete, vec!["j-1-worker-0"]);
    }

    #[test]
    fn an_upgrade_keeps_only_the_new_deployments_workers() {
        let p = plan(
            &[c(1, PodPhase::Terminating, 2), c(2, PodPhase::Pending, 3)],
            &[w(1, 0), w(1, 1), w(2, 0)],
        );
        assert_eq!(p.create, vec![(2, 1), (2, 2)]);
        assert_eq!(p.delete, vec!["j-1-worker-0", "j-1-worker-1"]);
    }

    #[test]
    fn indices_beyond_the_worker_count_and_one_pod_jobs_have_no_workers() {
        let p = plan(&[c(4, PodPhase::Running, 1)], &[w(4, 0), w(4, 1)]);
        assert_eq!(p.delete, vec!["j-4-worker-1"]);
        assert!(p.create.is_empty());
        let p = plan(&[c(5, PodPhase::Running, 0)], &[w(5, 0)]);
        assert_eq!(p.delete, vec!["j-5-worker-0"]);
        assert!(p.create.is_empty());
    }

    /// Every combination of two deployments' phases and counts, and any
    /// subset of their workers present: the plan leaves exactly the live
    /// deployments' full worker sets.
    #[test]
    fn applying_the_plan_always_leaves_exactly_the_live_worker_sets() {
        for p1 in PHASES {
            for p2 in PHASES {
                for n1 in 0..3u32 {
                    for n2 in 0..3u32 {
                        for mask in 0u32..64 {
                            let all: Vec<Worker> =
                                (0..3).flat_map(|i| [w(1, i), w(2, i)]).collect();
                            let present: Vec<Worker> = all
                                .into_iter()
                                .enumerate()
                                .filter(|(k, _)| mask & (1 << k) != 0)
                                .map(|(_, x)| x)
                                .collect();
                            let cs = [c(1, p1, n1), c(2, p2, n2)];
                            let p = plan(&cs, &present);
                            let mut after: BTreeSet<(u64, u32)> = present
                                .iter()
                                .filter(|x| !p.delete.contains(&x.name))
                                .map(|x| (x.deploy_id, x.index))
                                .collect();
                            for k in &p.create {
                                assert!(after.insert(*k), "creates an existing worker {k:?}");
                            }
                            let want: BTreeSet<(u64, u32)> = cs
                                .iter()
                                .filter(|c| {
                                    matches!(c.phase, PodPhase::Pending | PodPhase::Running)
                                })
                                .flat_map(|c| (0..c.replicas).map(move |i| (c.deploy_id, i)))
                                .collect();
                            assert_eq!(after, want, "{cs:?} {mask:b}");
                        }
                    }
                }
            }
        }
    }
}
