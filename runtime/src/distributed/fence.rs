//! Fencing: every attempt of a distributed job has an epoch, and every message
//! carries it. The decisions here are pure so that they can be tested
//! exhaustively; the coordinator and the workers call them on every message.

use serde::{Deserialize, Serialize};

/// The identity of one attempt: the coordinator's incarnation (its start time
/// in ms, so a restarted coordinator outranks the one it replaces) and the
/// attempt number within it. Ordered lexicographically.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct Epoch {
    pub incarnation: u64,
    pub attempt: u64,
}

impl std::fmt::Display for Epoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.incarnation, self.attempt)
    }
}

/// What the coordinator does with a message from a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// From the current attempt: act on it (an ack counts towards completion).
    Accept,
    /// From another attempt or worker set: dropped, and counted.
    Drop,
}

/// A worker's message counts only if it comes from the current attempt and from
/// a worker that is part of it. Acks of an older epoch can therefore never
/// complete a checkpoint of the current one.
pub fn coordinator_admits(current: Option<Epoch>, msg: Epoch, worker_in_attempt: bool) -> Admit {
    match current {
        Some(c) if c == msg && worker_in_attempt => Admit::Accept,
        _ => Admit::Drop,
    }
}

/// What a worker does with a request to deploy (or a control message for) an
/// epoch, given the epoch it runs or last ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerDecision {
    /// Newer: tear down what runs and take it.
    TakeOver,
    /// The running epoch: deliver.
    Deliver,
    /// Older: refuse. A stale coordinator cannot drive this worker, and a
    /// notify-complete of an old checkpoint never reaches a new attempt.
    Refuse,
}

pub fn worker_decides(latest: Option<Epoch>, msg: Epoch) -> WorkerDecision {
    match latest {
        None => WorkerDecision::TakeOver,
        Some(l) if msg > l => WorkerDecision::TakeOver,
        Some(l) if msg == l => WorkerDecision::Deliver,
        Some(_) => WorkerDecision::Refuse,
    }
}

/// Whether a peer's data connection may feed this worker's channels: only for
/// exactly the epoch deployed here. Older peers are refused; a newer epoch
/// means this worker has not yet been deployed for it (the caller waits).
pub fn data_admits(deployed: Option<Epoch>, peer: Epoch) -> WorkerDecision {
    worker_decides(deployed, peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(incarnation: u64, attempt: u64) -> Epoch {
        Epoch {
            incarnation,
            attempt,
        }
    }

    #[test]
    fn epochs_order_by_incarnation_then_attempt() {
        assert!(e(1, 9) < e(2, 1));
        assert!(e(2, 1) < e(2, 2));
        assert_eq!(e(3, 4).to_string(), "3.4");
    }

    #[test]
    fn coordinator_drops_everything_but_the_current_attempt() {
        let epochs = [e(1, 1), e(1, 2), e(2, 1)];
        for &cur in &epochs {
            for &m in &epochs {
                for member in [true, false] {
                    let got = coordinator_admits(Some(cur), m, member);
                    let want = if cur == m && member {
                        Admit::Accept
                    } else {
                        Admit::Drop
                    };
                    assert_eq!(got, want, "current {cur} msg {m} member {member}");
                }
            }
            assert_eq!(coordinator_admits(None, cur, true), Admit::Drop);
        }
    }

    #[test]
    fn workers_refuse_older_epochs_and_take_newer_ones() {
        let epochs = [e(1, 1), e(1, 2), e(2, 1)];
        for (i, &l) in epochs.iter().enumerate() {
            for (j, &m) in epochs.iter().enumerate() {
                let want = match j.cmp(&i) {
                    std::cmp::Ordering::Greater => WorkerDecision::TakeOver,
                    std::cmp::Ordering::Equal => WorkerDecision::Deliver,
                    std::cmp::Ordering::Less => WorkerDecision::Refuse,
                };
                assert_eq!(worker_decides(Some(l), m), want);
                assert_eq!(data_admits(Some(l), m), want);
            }
            assert_eq!(worker_decides(None, l), WorkerDecision::TakeOver);
        }
    }
}
