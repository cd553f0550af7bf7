//! Subtask-to-worker assignment: pure logic, no I/O.
//!
//! Flink's slot sharing: slot `i` holds subtask `i` of every task (a task is a
//! whole operator chain, so chained operators always stay together). A job needs
//! as many slots as its largest task parallelism. Slots are spread over the
//! workers in contiguous, balanced blocks, so subtask `i` of a forward edge's
//! both ends land on the same worker and only hash, rebalance and broadcast
//! edges cross the network. The result depends only on its inputs: every
//! process computes the same assignment.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Why a job cannot be placed on the workers at hand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssignError {
    #[error("no workers are available")]
    NoWorkers,
    #[error("worker slots must be at least 1")]
    NoSlots,
    #[error(
        "the job needs {needed} slots (its largest parallelism) but {workers} workers with {slots_per_worker} slots each offer only {offered}"
    )]
    NotEnoughSlots {
        needed: u32,
        workers: u32,
        slots_per_worker: u32,
        offered: u32,
    },
}

/// Which worker (an index into the live worker list) runs each subtask.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// Parallelism per task index.
    pub parallelism: Vec<u32>,
    /// Worker of slot `i`.
    pub slot_worker: Vec<u32>,
    pub workers: u32,
}

impl Assignment {
    /// The worker that runs subtask `subtask` of task `task`.
    pub fn worker_of(&self, _task: usize, subtask: u32) -> u32 {
        self.slot_worker[subtask as usize]
    }

    /// The subtasks (task, subtask) of one worker, in order.
    pub fn subtasks_of(&self, worker: u32) -> Vec<(usize, u32)> {
        let mut v = Vec::new();
        for (t, &p) in self.parallelism.iter().enumerate() {
            for s in 0..p {
                if self.worker_of(t, s) == worker {
                    v.push((t, s));
                }
            }
        }
        v
    }

    /// Number of subtasks per worker.
    pub fn load(&self) -> BTreeMap<u32, usize> {
        (0..self.workers)
            .map(|w| (w, self.subtasks_of(w).len()))
            .collect()
    }
}

/// Places the subtasks of tasks with the given parallelisms on `workers`
/// workers of `slots_per_worker` slots each.
pub fn assign(
    parallelism: &[u32],
    workers: u32,
    slots_per_worker: u32,
) -> Result<Assignment, AssignError> {
    if workers == 0 {
        return Err(AssignError::NoWorkers);
    }
    if slots_per_worker == 0 {
        return Err(AssignError::NoSlots);
    }
    let needed = parallelism.iter().copied().max().unwrap_or(0);
    let offered = workers.saturating_mul(slots_per_worker);
    if needed > offered {
        return Err(AssignError::NotEnoughSlots {
            needed,
            workers,
            slots_per_worker,
            offered,
        });
    }
    // Balanced contiguous blocks: worker w gets slots [w*S/W, (w+1)*S/W), so
    // block sizes differ by at most one and never exceed ceil(S/W) <= slots.
    let s = needed as u64;
    let w = workers as u64;
    let slot_worker = (0..s).map(|i| ((i * w) / s.max(1)) as u32).collect();
    Ok(Assignment {
        parallelism: parallelism.to_vec(),
        slot_worker,
        workers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_reported() {
        assert_eq!(assign(&[2], 0, 4), Err(AssignError::NoWorkers));
        assert_eq!(assign(&[2], 2, 0), Err(AssignError::NoSlots));
        assert_eq!(
            assign(&[1, 9], 2, 4),
            Err(AssignError::NotEnoughSlots {
                needed: 9,
                workers: 2,
                slots_per_worker: 4,
                offered: 8
            })
        );
    }

    #[test]
    fn examples() {
        let a = assign(&[1, 4, 4], 2, 2).unwrap();
        assert_eq!(a.slot_worker, vec![0, 0, 1, 1]);
        assert_eq!(
            a.subtasks_of(0),
            vec![(0, 0), (1, 0), (1, 1), (2, 0), (2, 1)]
        );
        assert_eq!(a.subtasks_of(1), vec![(1, 2), (1, 3), (2, 2), (2, 3)]);
        let a = assign(&[6], 3, 2).unwrap();
        assert_eq!(a.slot_worker, vec![0, 0, 1, 1, 2, 2]);
        // More workers than slots needed: some stay idle.
        let a = assign(&[2], 3, 1).unwrap();
        assert_eq!(a.slot_worker, vec![0, 1]);
        assert_eq!(a.subtasks_of(2), vec![]);
    }

    /// Every combination up to a size: each subtask is placed exactly once, on
    /// a valid worker, no worker exceeds its slots, subtask i of every task
    /// shares a worker (forward edges and slot sharing), blocks are contiguous
    /// and balanced, and the result is deterministic.
    #[test]
    fn exhaustive_properties() {
        for workers in 1..=6u32 {
            for slots in 1..=5u32 {
                for p1 in 1..=8u32 {
                    for p2 in 1..=8u32 {
                        let par = [p1, p2, 1];
                        let r = assign(&par, workers, slots);
                        let needed = p1.max(p2);
                        if needed > workers * slots {
                            assert!(r.is_err());
                            continue;
                        }
                        let a = r.unwrap();
                        assert_eq!(a, assign(&par, workers, slots).unwrap());
                        let mut seen = 0;
                        for w in 0..workers {
                            let mine = a.subtasks_of(w);
                            seen += mine.len();
                            let used_slots: std::collections::BTreeSet<u32> =
                                mine.iter().map(|(_, s)| *s).collect();
                            assert!(used_slots.len() as u32 <= slots);
                        }
                        assert_eq!(seen as u32, p1 + p2 + 1);
                        for (t, &p) in par.iter().enumerate() {
                            for s in 0..p {
                                let w = a.worker_of(t, s);
                                assert!(w < workers);
                                assert_eq!(w, a.slot_worker[s as usize]);
                                if s < p1.min(p2) {
                                    assert_eq!(a.worker_of(0, s), a.worker_of(1, s));
                                }
                            }
                        }
                        // Contiguous and non-decreasing; balanced within one.
                        assert!(a.slot_worker.windows(2).all(|x| x[0] <= x[1]));
                        let counts: Vec<usize> = (0..workers)
                            .map(|w| a.slot_worker.iter().filter(|&&x| x == w).count())
                            .collect();
                        let used: Vec<usize> = counts.iter().copied().filter(|c| *c > 0).collect();
                        let (mn, mx) = (used.iter().min().unwrap(), used.iter().max().unwrap());
                        assert!(mx - mn <= 1, "{counts:?}");
                        if needed >= workers {
                            assert!(counts.iter().all(|c| *c > 0), "idle worker {counts:?}");
                        }
                    }
                }
            }
        }
    }
}
