//! Barrier handling of a subtask with several input channels, as a pure state
//! machine. The task applies the actions; this decides them.
//!
//! - Aligned (exactly-once): a channel that delivered barrier N is blocked until
//!   every channel delivered it; then the subtask snapshots.
//! - At-least-once: nothing is blocked; the snapshot happens at the last barrier,
//!   so records that overtook it on early channels are in the snapshot and are
//!   replayed again after recovery.
//! - Unaligned: snapshot at the first barrier; records that arrive on channels
//!   whose barrier is still outstanding are recorded as in-flight state.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AlignMode {
    Aligned,
    AtLeastOnce,
    Unaligned,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Stop reading from this channel until the next `Snapshot` or `Abort`.
    Block(usize),
    /// Snapshot now, forward the barrier and unblock all channels. In unaligned
    /// mode, record the records arriving on `record` until `StopRecording`.
    Snapshot {
        id: u64,
        record: Vec<usize>,
    },
    StopRecording(usize),
    /// Unaligned: all barriers of `id` arrived; the snapshot is complete.
    Complete(u64),
    /// A newer barrier superseded checkpoint `id`; unblock everything and decline it.
    Abort(u64),
}

pub(crate) struct BarrierAligner {
    mode: AlignMode,
    /// The mode of the pending checkpoint: `mode`, or aligned for a barrier
    /// that must align (`Barrier::must_align`).
    pending_mode: AlignMode,
    ended: Vec<bool>,
    pending: Option<(u64, Vec<bool>)>,
    /// Highest checkpoint id this subtask has snapshotted or aborted.
    last: u64,
}

impl BarrierAligner {
    pub fn new(mode: AlignMode, channels: usize) -> Self {
        BarrierAligner {
            mode,
            pending_mode: mode,
            ended: vec![false; channels],
            pending: None,
            last: 0,
        }
    }

    fn covered(&self, seen: &[bool]) -> bool {
        seen.iter().zip(&self.ended).all(|(s, e)| *s || *e)
    }

    /// `must_align` turns an unaligned checkpoint into an aligned one (the
    /// final checkpoint, a draining stop); every barrier of one id carries
    /// the same flag.
    pub fn on_barrier(&mut self, ch: usize, id: u64, must_align: bool) -> Vec<Action> {
        let mut out = Vec::new();
        if ch >= self.ended.len() || id <= self.last {
            return out;
        }
        if let Some((pid, _)) = &self.pending {
            if id < *pid {
                return out;
            }
            if id > *pid {
                out.push(Action::Abort(*pid));
                self.last = *pid;
                self.pending = None;
            }
        }
        let first = self.pending.is_none();
        if first {
            self.pending_mode = match self.mode {
                AlignMode::Unaligned if must_align => AlignMode::Aligned,
                m => m,
            };
        }
        let n = self.ended.len();
        let (pid, seen) = self.pending.get_or_insert_with(|| (id, vec![false; n]));
        let pid = *pid;
        seen[ch] = true;
        let seen = seen.clone();
        let all = self.covered(&seen);
        match self.pending_mode {
            AlignMode::Aligned | AlignMode::AtLeastOnce => {
                if all {
                    out.push(Action::Snapshot {
                        id: pid,
                        record: vec![],
                    });
                    self.finish(pid);
                } else if self.pending_mode == AlignMode::Aligned {
                    out.push(Action::Block(ch));
                }
            }
            AlignMode::Unaligned => {
                if first {
                    let record = (0..n).filter(|&c| !seen[c] && !self.ended[c]).collect();
                    out.push(Action::Snapshot { id: pid, record });
                } else {
                    out.push(Action::StopRecording(ch));
                }
                if all {
                    out.push(Action::Complete(pid));
                    self.finish(pid);
                }
            }
        }
        out
    }

    pub fn on_end(&mut self, ch: usize) -> Vec<Action> {
        let mut out = Vec::new();
        if ch >= self.ended.len() {
            return out;
        }
        self.ended[ch] = true;
        let Some((pid, seen)) = &self.pending else {
            return out;
        };
        let pid = *pid;
        let seen = seen.clone();
        if self.pending_mode == AlignMode::Unaligned {
            out.push(Action::StopRecording(ch));
        }
        if self.covered(&seen) {
            out.push(match self.pending_mode {
                AlignMode::Unaligned => Action::Complete(pid),
                _ => Action::Snapshot {
                    id: pid,
                    record: vec![],
                },
            });
            self.finish(pid);
        }
        out
    }

    fn finish(&mut self, id: u64) {
        self.pending = None;
        self.last = id;
    }
}

#[cfg(test)]
mod tests {
    use super::Action::*;
    use super::*;

    #[test]
    fn single_channel_snapshots_at_once() {
        for mode in [AlignMode::Aligned, AlignMode::AtLeastOnce] {
            let mut a = BarrierAligner::new(mode, 1);
            assert_eq!(
                a.on_barrier(0, 1, false),
                vec![Snapshot {
                    id: 1,
                    record: vec![]
                }]
            );
        }
        let mut a = BarrierAligner::new(AlignMode::Unaligned, 1);
        assert_eq!(
            a.on_barrier(0, 1, false),
            vec![
                Snapshot {
                    id: 1,
                    record: vec![]
                },
                Complete(1)
            ]
        );
    }

    #[test]
    fn aligned_blocks_until_all_channels_delivered() {
        let mut a = BarrierAligner::new(AlignMode::Aligned, 3);
        assert_eq!(a.on_barrier(1, 5, false), vec![Block(1)]);
        assert_eq!(a.on_barrier(0, 5, false), vec![Block(0)]);
        assert_eq!(
            a.on_barrier(2, 5, false),
            vec![Snapshot {
                id: 5,
                record: vec![]
            }]
        );
        // A duplicate or stale barrier is ignored.
        assert_eq!(a.on_barrier(2, 5, false), vec![]);
        assert_eq!(a.on_barrier(0, 4, false), vec![]);
    }

    #[test]
    fn at_least_once_never_blocks() {
        let mut a = BarrierAligner::new(AlignMode::AtLeastOnce, 2);
        assert_eq!(a.on_barrier(0, 1, false), vec![]);
        assert_eq!(
            a.on_barrier(1, 1, false),
            vec![Snapshot {
                id: 1,
                record: vec![]
            }]
        );
    }

    #[test]
    fn unaligned_snapshots_at_first_barrier_and_records_the_rest() {
        let mut a = BarrierAligner::new(AlignMode::Unaligned, 3);
        assert_eq!(
            a.on_barrier(1, 2, false),
            vec![Snapshot {
                id: 2,
                record: vec![0, 2]
            }]
        );
        assert_eq!(a.on_barrier(0, 2, false), vec![StopRecording(0)]);
        assert_eq!(
            a.on_barrier(2, 2, false),
            vec![StopRecording(2), Complete(2)]
        );
    }

    #[test]
    fn newer_barrier_aborts_pending_checkpoint() {
        let mut a = BarrierAligner::new(AlignMode::Aligned, 2);
        assert_eq!(a.on_barrier(0, 1, false), vec![Block(0)]);
        assert_eq!(a.on_barrier(1, 2, false), vec![Abort(1), Block(1)]);
        assert_eq!(a.on_barrier(0, 1, false), vec![]);
        assert_eq!(
            a.on_barrier(0, 2, false),
            vec![Snapshot {
                id: 2,
                record: vec![]
            }]
        );
    }

    #[test]
    fn ended_channels_count_as_aligned() {
        let mut a = BarrierAligner::new(AlignMode::Aligned, 2);
        assert_eq!(a.on_barrier(0, 1, false), vec![Block(0)]);
        assert_eq!(
            a.on_end(1),
            vec![Snapshot {
                id: 1,
                record: vec![]
            }]
        );
        assert_eq!(
            a.on_barrier(0, 2, false),
            vec![Snapshot {
                id: 2,
                record: vec![]
            }]
        );
        let mut u = BarrierAligner::new(AlignMode::Unaligned, 2);
        assert_eq!(
            u.on_barrier(0, 1, false),
            vec![Snapshot {
                id: 1,
                record: vec![1]
            }]
        );
        assert_eq!(u.on_end(1), vec![StopRecording(1), Complete(1)]);
    }

    #[test]
    fn out_of_range_channel_is_ignored() {
        let mut a = BarrierAligner::new(AlignMode::Aligned, 1);
        assert_eq!(a.on_barrier(7, 1, false), vec![]);
        assert_eq!(a.on_end(7), vec![]);
    }

    #[test]
    fn a_barrier_that_must_align_aligns_in_unaligned_mode() {
        let mut a = BarrierAligner::new(AlignMode::Unaligned, 2);
        assert_eq!(a.on_barrier(0, 3, true), vec![Block(0)]);
        assert_eq!(
            a.on_barrier(1, 3, true),
            vec![Snapshot {
                id: 3,
                record: vec![]
            }]
        );
        // The next ordinary checkpoint is unaligned again.
        assert_eq!(
            a.on_barrier(1, 4, false),
            vec![Snapshot {
                id: 4,
                record: vec![0]
            }]
        );
        assert_eq!(
            a.on_barrier(0, 4, false),
            vec![StopRecording(0), Complete(4)]
        );
        // An input that ends while a must-align barrier waits completes it
        // as an aligned snapshot.
        assert_eq!(a.on_barrier(0, 5, true), vec![Block(0)]);
        assert_eq!(
            a.on_end(1),
            vec![Snapshot {
                id: 5,
                record: vec![]
            }]
        );
    }
}
