//! When to trigger the next periodic checkpoint (pure).

use crate::config::{CheckpointConfig, CheckpointMode};

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TriggerDecision {
    Now,
    /// Not before this time (ms on the master's monotonic clock).
    At(u64),
    /// Max concurrent checkpoints are in progress; wait for one to finish.
    Blocked,
    Disabled,
}

/// The next trigger respects the interval since the last trigger, the minimum
/// pause since the last checkpoint ended, and the concurrency limit, which
/// counts savepoints too (`pending`: every snapshot in progress). While a
/// savepoint is in progress or waiting to start (`savepoint_active`), no
/// periodic checkpoint starts: its barrier could overtake the savepoint's
/// in a task that does not block its inputs, and the task would abandon the
/// savepoint (see [`may_start_exclusive`]).
pub(crate) fn decide(
    cfg: &CheckpointConfig,
    now: u64,
    started: u64,
    last_trigger: Option<u64>,
    last_end: Option<u64>,
    pending: usize,
    savepoint_active: bool,
) -> TriggerDecision {
    let Some(interval) = cfg.interval_ms else {
        return TriggerDecision::Disabled;
    };
    if savepoint_active || pending >= cfg.max_concurrent as usize {
        return TriggerDecision::Blocked;
    }
    let mut at = last_trigger.unwrap_or(started).saturating_add(interval);
    if let Some(end) = last_end {
        at = at.max(end.saturating_add(cfg.min_pause_ms));
    }
    if at <= now {
        TriggerDecision::Now
    } else {
        TriggerDecision::At(at)
    }
}

/// Whether a newer barrier can overtake an older one inside a task: only
/// when tasks do not block their inputs while aligning (unaligned and
/// at-least-once modes). With aligned barriers every channel delivers them in
/// order and a blocked channel holds the newer one back, so snapshots can
/// overlap safely.
pub(crate) fn barriers_can_overtake(cfg: &CheckpointConfig) -> bool {
    cfg.unaligned || cfg.mode == CheckpointMode::AtLeastOnce
}

/// Whether a savepoint or the final checkpoint may start, with `pending`
/// snapshots in progress. Where barriers can overtake (see
/// [`barriers_can_overtake`]), only when there are none: a task abandons a
/// snapshot when the barrier of a newer one overtakes it on another input,
/// and the abandoned one fails. A periodic checkpoint failed that way counts
/// against the tolerable failures (0 by default, so the job would restart),
/// and a savepoint failed that way is lost to whoever asked for it. So these
/// wait for the snapshots in progress instead, at most for the checkpoint
/// timeout. With aligned barriers they start at once, as before.
pub(crate) fn may_start_exclusive(overtaking: bool, pending: usize) -> bool {
    !overtaking || pending == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(interval: u64, min_pause: u64, max_concurrent: u32) -> CheckpointConfig {
        CheckpointConfig {
            interval_ms: Some(interval),
            min_pause_ms: min_pause,
            max_concurrent,
            storage: Some("file:///tmp".into()),
            ..Default::default()
        }
    }

    #[test]
    fn interval_from_start_then_from_last_trigger() {
        let c = cfg(100, 0, 1);
        assert_eq!(
            decide(&c, 50, 0, None, None, 0, false),
            TriggerDecision::At(100)
        );
        assert_eq!(
            decide(&c, 100, 0, None, None, 0, false),
            TriggerDecision::Now
        );
        assert_eq!(
            decide(&c, 150, 0, Some(100), Some(120), 0, false),
            TriggerDecision::At(200)
        );
    }

    #[test]
    fn min_pause_counts_from_the_end_of_the_last_checkpoint() {
        let c = cfg(100, 80, 1);
        // Checkpoint triggered at 100 took until 190: next not before 270.
        assert_eq!(
            decide(&c, 200, 0, Some(100), Some(190), 0, false),
            TriggerDecision::At(270)
        );
        assert_eq!(
            decide(&c, 270, 0, Some(100), Some(190), 0, false),
            TriggerDecision::Now
        );
    }

    #[test]
    fn concurrency_limit_blocks() {
        let c = cfg(10, 0, 2);
        assert_eq!(
            decide(&c, 1000, 0, Some(0), None, 2, false),
            TriggerDecision::Blocked
        );
        assert_eq!(
            decide(&c, 1000, 0, Some(0), None, 1, false),
            TriggerDecision::Now
        );
        let off = CheckpointConfig::default();
        assert_eq!(
            decide(&off, 1000, 0, None, None, 0, false),
            TriggerDecision::Disabled
        );
    }

    /// A savepoint in progress or waiting blocks periodic checkpoints
    /// whatever the concurrency limit, and is counted against it once it runs.
    #[test]
    fn savepoints_block_periodic_checkpoints() {
        for max in [1, 2, 5] {
            let c = cfg(10, 0, max);
            for pending in 0..3 {
                assert_eq!(
                    decide(&c, 1000, 0, Some(0), None, pending, true),
                    TriggerDecision::Blocked,
                    "max {max}, pending {pending}"
                );
            }
            assert_eq!(
                decide(&c, 1000, 0, Some(0), None, max as usize, false),
                TriggerDecision::Blocked
            );
        }
    }

    #[test]
    fn exclusive_snapshots_wait_only_where_barriers_can_overtake() {
        for pending in 0..5 {
            assert_eq!(may_start_exclusive(true, pending), pending == 0);
            assert!(may_start_exclusive(false, pending));
        }
        let mut c = cfg(10, 0, 1);
        assert!(!barriers_can_overtake(&c));
        c.unaligned = true;
        assert!(barriers_can_overtake(&c));
        c.unaligned = false;
        c.mode = CheckpointMode::AtLeastOnce;
        assert!(barriers_can_overtake(&c));
    }
}
