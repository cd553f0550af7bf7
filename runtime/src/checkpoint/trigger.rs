//! When to trigger the next periodic checkpoint (pure).

use crate::config::CheckpointConfig;

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
/// pause since the last checkpoint ended, and the concurrency limit.
pub(crate) fn decide(
    cfg: &CheckpointConfig,
    now: u64,
    started: u64,
    last_trigger: Option<u64>,
    last_end: Option<u64>,
    pending: usize,
) -> TriggerDecision {
    let Some(interval) = cfg.interval_ms else {
        return TriggerDecision::Disabled;
    };
    if pending >= cfg.max_concurrent as usize {
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
        assert_eq!(decide(&c, 50, 0, None, None, 0), TriggerDecision::At(100));
        assert_eq!(decide(&c, 100, 0, None, None, 0), TriggerDecision::Now);
        assert_eq!(
            decide(&c, 150, 0, Some(100), Some(120), 0),
            TriggerDecision::At(200)
        );
    }

    #[test]
    fn min_pause_counts_from_the_end_of_the_last_checkpoint() {
        let c = cfg(100, 80, 1);
        // Checkpoint triggered at 100 took until 190: next not before 270.
        assert_eq!(
            decide(&c, 200, 0, Some(100), Some(190), 0),
            TriggerDecision::At(270)
        );
        assert_eq!(
            decide(&c, 270, 0, Some(100), Some(190), 0),
            TriggerDecision::Now
        );
    }

    #[test]
    fn concurrency_limit_blocks() {
        let c = cfg(10, 0, 2);
        assert_eq!(
            decide(&c, 1000, 0, Some(0), None, 2),
            TriggerDecision::Blocked
        );
        assert_eq!(decide(&c, 1000, 0, Some(0), None, 1), TriggerDecision::Now);
        let off = CheckpointConfig::default();
        assert_eq!(
            decide(&off, 1000, 0, None, None, 0),
            TriggerDecision::Disabled
        );
    }
}
