//! Restart strategies: pure decision logic.
//!
//! The tracker only decides *whether* and *after how long* to restart; the
//! executor owns clocks and sleeping. Keeping time as an explicit `now_ms`
//! argument makes every policy deterministic and testable without waiting,
//! and lets recovery be replayed exactly from logged failure timestamps.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// How a job reacts to task failures. Semantics follow Flink's restart
/// strategies of the same names.
///
/// Internally tagged (`{"type": "fixed-delay", ...}`) so configuration files
/// read naturally; this requires a self-describing format (JSON, TOML, YAML)
/// for deserialization — postcard cannot decode internally tagged enums.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum RestartStrategy {
    /// Never restart: for jobs where a failure must surface immediately.
    None,
    /// Restart up to `attempts` times in total, waiting `delay_ms` each time.
    FixedDelay { attempts: u32, delay_ms: u64 },
    /// Back off exponentially across consecutive failures, so a crash loop
    /// does not hammer external systems, but return to fast restarts once
    /// the job has been healthy for `reset_after_ms`.
    ExponentialBackoff {
        initial_ms: u64,
        max_ms: u64,
        multiplier: f64,
        reset_after_ms: u64,
        /// Gives up after this many consecutive restarts (counted since the
        /// last backoff reset); `None` retries forever.
        max_attempts: Option<u32>,
    },
    /// Tolerate occasional failures forever but give up when they cluster:
    /// more than `max_failures_per_interval` within any `interval_ms` window.
    FailureRate {
        max_failures_per_interval: u32,
        interval_ms: u64,
        delay_ms: u64,
    },
}

impl RestartStrategy {
    /// Rejects configurations whose behaviour would be degenerate (e.g. a
    /// backoff that shrinks or never grows from zero), so mistakes surface at
    /// submission time rather than during an outage. The tracker itself never
    /// panics on unvalidated input.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            RestartStrategy::None | RestartStrategy::FixedDelay { .. } => Ok(()),
            RestartStrategy::ExponentialBackoff {
                initial_ms,
                max_ms,
                multiplier,
                reset_after_ms,
                max_attempts: _,
            } => {
                if *initial_ms == 0 {
                    return Err("exponential-backoff: initial_ms must be > 0".to_string());
                }
                if max_ms < initial_ms {
                    return Err(format!(
                        "exponential-backoff: max_ms ({max_ms}) must be >= initial_ms ({initial_ms})"
                    ));
                }
                if !multiplier.is_finite() || *multiplier < 1.0 {
                    return Err(format!(
                        "exponential-backoff: multiplier must be finite and >= 1.0, got {multiplier}"
                    ));
                }
                if *reset_after_ms == 0 {
                    return Err("exponential-backoff: reset_after_ms must be > 0".to_string());
                }
                Ok(())
            }
            RestartStrategy::FailureRate {
                max_failures_per_interval,
                interval_ms,
                delay_ms: _,
            } => {
                if *max_failures_per_interval == 0 {
                    return Err("failure-rate: max_failures_per_interval must be > 0".to_string());
                }
                if *interval_ms == 0 {
                    return Err("failure-rate: interval_ms must be > 0".to_string());
                }
                Ok(())
            }
        }
    }
}

/// Outcome of a failure.
#[derive(Debug, Clone, PartialEq)]
pub enum RestartDecision {
    /// Restart after `delay_ms`. `attempt` is the 1-based total number of
    /// restarts granted so far including this one (same as
    /// [`RestartTracker::restarts`] afterwards), for logs and metrics.
    Restart { delay_ms: u64, attempt: u32 },
    /// Fail the job terminally; `reason` is meant for humans.
    GiveUp { reason: String },
}

/// Applies a [`RestartStrategy`] to a sequence of failures.
///
/// A `GiveUp` is sticky: every later failure returns the same decision, so a
/// late failure report racing with job termination cannot resurrect a job
/// that was already declared failed.
#[derive(Debug, Clone)]
pub struct RestartTracker {
    strategy: RestartStrategy,
    restarts: u32,
    last_failure_ms: Option<u64>,
    /// Exponential backoff: delay granted for the previous consecutive failure.
    current_backoff_ms: u64,
    /// Exponential backoff: restarts since the last reset.
    consecutive: u32,
    /// Failure rate: recent failure timestamps, oldest first. Bounded to
    /// `max_failures_per_interval + 1` entries, the most ever needed.
    window: VecDeque<u64>,
    gave_up: Option<String>,
}

impl RestartTracker {
    /// A tracker with no failures recorded.
    pub fn new(strategy: RestartStrategy) -> Self {
        RestartTracker {
            strategy,
            restarts: 0,
            last_failure_ms: None,
            current_backoff_ms: 0,
            consecutive: 0,
            window: VecDeque::new(),
            gave_up: None,
        }
    }

    /// Total restarts granted so far.
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// Records a failure at `now_ms` and decides what to do. `now_ms` should
    /// be monotonic; if it goes backwards, elapsed times saturate at zero
    /// (treated as "failed immediately"), the conservative reading.
    pub fn on_failure(&mut self, now_ms: u64) -> RestartDecision {
        if let Some(reason) = &self.gave_up {
            return RestartDecision::GiveUp {
                reason: reason.clone(),
            };
        }
        let since_last = self.last_failure_ms.map(|t| now_ms.saturating_sub(t));
        self.last_failure_ms = Some(now_ms);

        let verdict = match &self.strategy {
            RestartStrategy::None => Err("restart strategy is 'none'; not restarting".to_string()),
            RestartStrategy::FixedDelay { attempts, delay_ms } => {
                if self.restarts < *attempts {
                    Ok(*delay_ms)
                } else {
                    Err(format!(
                        "fixed-delay restart strategy exhausted after {attempts} restarts"
                    ))
                }
            }
            RestartStrategy::ExponentialBackoff {
                initial_ms,
                max_ms,
                multiplier,
                reset_after_ms,
                max_attempts,
            } => {
                // A long healthy run means the previous failures were not a
                // crash loop, so start over with fast restarts.
                let reset = match since_last {
                    None => true,
                    Some(elapsed) => elapsed > *reset_after_ms,
                };
                if reset {
                    self.consecutive = 0;
                    self.current_backoff_ms = (*initial_ms).min(*max_ms);
                } else {
                    self.current_backoff_ms =
                        next_backoff(self.current_backoff_ms, *multiplier, *max_ms);
                }
                match max_attempts {
                    Some(limit) if self.consecutive >= *limit => Err(format!(
                        "exponential-backoff restart strategy exhausted after {limit} \
                         consecutive restarts"
                    )),
                    _ => {
                        self.consecutive = self.consecutive.saturating_add(1);
                        Ok(self.current_backoff_ms)
                    }
                }
            }
            RestartStrategy::FailureRate {
                max_failures_per_interval,
                interval_ms,
                delay_ms,
            } => {
                // Window is inclusive: a failure exactly interval_ms ago still
                // counts (matching Flink, which only forgets failures strictly
                // older than the interval).
                while let Some(&oldest) = self.window.front() {
                    if now_ms.saturating_sub(oldest) > *interval_ms {
                        self.window.pop_front();
                    } else {
                        break;
                    }
                }
                self.window.push_back(now_ms);
                let cap = (*max_failures_per_interval as usize).saturating_add(1);
                while self.window.len() > cap {
                    self.window.pop_front();
                }
                // Unlike Flink's implementation (which fails on reaching the
                // limit), exactly `max` failures per interval are tolerated;
                // the name promises that many are allowed.
                if self.window.len() > *max_failures_per_interval as usize {
                    Err(format!(
                        "failure-rate restart strategy exceeded: {} failures within \
                         {interval_ms} ms (max {max_failures_per_interval})",
                        self.window.len()
                    ))
                } else {
                    Ok(*delay_ms)
                }
            }
        };

        match verdict {
            Ok(delay_ms) => {
                self.restarts = self.restarts.saturating_add(1);
                RestartDecision::Restart {
                    delay_ms,
                    attempt: self.restarts,
                }
            }
            Err(reason) => {
                self.gave_up = Some(reason.clone());
                RestartDecision::GiveUp { reason }
            }
        }
    }
}

/// `current * multiplier`, capped at `max_ms`. Float math is fine here: the
/// delay is advisory, and `as u64` saturates (NaN → 0) instead of wrapping,
/// so unvalidated multipliers cannot panic; the final `min` enforces the cap.
fn next_backoff(current_ms: u64, multiplier: f64, max_ms: u64) -> u64 {
    let scaled = current_ms as f64 * multiplier;
    (scaled as u64).min(max_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn restart(delay_ms: u64, attempt: u32) -> RestartDecision {
        RestartDecision::Restart { delay_ms, attempt }
    }

    fn is_give_up(d: &RestartDecision) -> bool {
        matches!(d, RestartDecision::GiveUp { .. })
    }

    fn expo(max_attempts: Option<u32>) -> RestartStrategy {
        RestartStrategy::ExponentialBackoff {
            initial_ms: 100,
            max_ms: 1_000,
            multiplier: 2.0,
            reset_after_ms: 10_000,
            max_attempts,
        }
    }

    #[test]
    fn none_always_gives_up() {
        let mut t = RestartTracker::new(RestartStrategy::None);
        for now in [0, 1, 1_000_000] {
            match t.on_failure(now) {
                RestartDecision::GiveUp { reason } => assert!(reason.contains("none")),
                d => panic!("unexpected {d:?}"),
            }
        }
        assert_eq!(t.restarts(), 0);
    }

    #[test]
    fn fixed_delay_exactly_at_limit() {
        let mut t = RestartTracker::new(RestartStrategy::FixedDelay {
            attempts: 3,
            delay_ms: 500,
        });
        assert_eq!(t.on_failure(0), restart(500, 1));
        assert_eq!(t.on_failure(10), restart(500, 2));
        assert_eq!(t.on_failure(20), restart(500, 3));
        assert_eq!(t.restarts(), 3);
        assert_eq!(
            t.on_failure(1_000_000),
            RestartDecision::GiveUp {
                reason: "fixed-delay restart strategy exhausted after 3 restarts".to_string()
            }
        );
        assert_eq!(t.restarts(), 3);
    }

    #[test]
    fn fixed_delay_zero_attempts() {
        let mut t = RestartTracker::new(RestartStrategy::FixedDelay {
            attempts: 0,
            delay_ms: 5,
        });
        assert!(is_give_up(&t.on_failure(0)));
        assert_eq!(t.restarts(), 0);
    }

    #[test]
    fn exponential_grows_and_caps() {
        let mut t = RestartTracker::new(expo(None));
        let delays: Vec<u64> = (0..7)
            .map(|i| match t.on_failure(i * 100) {
                RestartDecision::Restart { delay_ms, .. } => delay_ms,
                d => panic!("unexpected {d:?}"),
            })
            .collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1_000, 1_000, 1_000]);
        assert_eq!(t.restarts(), 7);
    }

    #[test]
    fn exponential_resets_after_healthy_run() {
        let mut t = RestartTracker::new(expo(None));
        assert_eq!(t.on_failure(0), restart(100, 1));
        assert_eq!(t.on_failure(1_000), restart(200, 2));
        assert_eq!(t.on_failure(2_000), restart(400, 3));
        // Exactly reset_after_ms since the previous failure: not yet a reset.
        assert_eq!(t.on_failure(12_000), restart(800, 4));
        // Strictly longer: reset to initial.
        assert_eq!(t.on_failure(22_001), restart(100, 5));
        assert_eq!(t.on_failure(22_002), restart(200, 6));
    }

    #[test]
    fn exponential_max_attempts_counts_since_reset() {
        let mut t = RestartTracker::new(expo(Some(2)));
        assert_eq!(t.on_failure(0), restart(100, 1));
        assert_eq!(t.on_failure(1), restart(200, 2));
        // Healthy run resets the consecutive counter, not the total.
        assert_eq!(t.on_failure(20_000), restart(100, 3));
        assert_eq!(t.on_failure(20_001), restart(200, 4));
        match t.on_failure(20_002) {
            RestartDecision::GiveUp { reason } => {
                assert!(reason.contains("exponential-backoff"), "{reason}");
                assert!(reason.contains("2 consecutive"), "{reason}");
            }
            d => panic!("unexpected {d:?}"),
        }
        assert_eq!(t.restarts(), 4);
    }

    #[test]
    fn exponential_zero_max_attempts_never_restarts() {
        let mut t = RestartTracker::new(expo(Some(0)));
        assert!(is_give_up(&t.on_failure(0)));
    }

    #[test]
    fn exponential_unvalidated_inputs_do_not_panic() {
        let weird = [f64::NAN, f64::INFINITY, 0.5, 1e300];
        for multiplier in weird {
            let mut t = RestartTracker::new(RestartStrategy::ExponentialBackoff {
                initial_ms: u64::MAX,
                max_ms: 50,
                multiplier,
                reset_after_ms: 0,
                max_attempts: None,
            });
            for now in 0..5 {
                match t.on_failure(now) {
                    RestartDecision::Restart { delay_ms, .. } => assert!(delay_ms <= 50),
                    d => panic!("unexpected {d:?}"),
                }
            }
        }
        // Time going backwards counts as an immediate failure (no reset).
        let mut t = RestartTracker::new(expo(None));
        assert_eq!(t.on_failure(50_000), restart(100, 1));
        assert_eq!(t.on_failure(10), restart(200, 2));
    }

    fn rate(max: u32, interval_ms: u64) -> RestartTracker {
        RestartTracker::new(RestartStrategy::FailureRate {
            max_failures_per_interval: max,
            interval_ms,
            delay_ms: 7,
        })
    }

    #[test]
    fn failure_rate_tolerates_exactly_max() {
        let mut t = rate(3, 1_000);
        assert_eq!(t.on_failure(0), restart(7, 1));
        assert_eq!(t.on_failure(100), restart(7, 2));
        assert_eq!(t.on_failure(200), restart(7, 3));
        match t.on_failure(300) {
            RestartDecision::GiveUp { reason } => {
                assert!(reason.contains("failure-rate"), "{reason}");
                assert!(
                    reason.contains("4 failures within 1000 ms (max 3)"),
                    "{reason}"
                );
            }
            d => panic!("unexpected {d:?}"),
        }
    }

    #[test]
    fn failure_rate_window_slides() {
        let mut t = rate(2, 1_000);
        assert_eq!(t.on_failure(0), restart(7, 1));
        assert_eq!(t.on_failure(500), restart(7, 2));
        // Failure at 0 is 1001 ms old: out of the window.
        assert_eq!(t.on_failure(1_001), restart(7, 3));
        // Failure at 500 is exactly 1000 ms old: still inside (inclusive).
        assert!(is_give_up(&t.on_failure(1_500)));
    }

    #[test]
    fn failure_rate_spaced_failures_run_forever() {
        let mut t = rate(1, 1_000);
        for i in 0..1_000u64 {
            assert_eq!(t.on_failure(i * 1_001), restart(7, (i + 1) as u32));
        }
        assert!(t.window.len() <= 2);
    }

    #[test]
    fn give_up_is_sticky() {
        let mut t = rate(1, 10);
        assert_eq!(t.on_failure(0), restart(7, 1));
        let first = t.on_failure(1);
        assert!(is_give_up(&first));
        // Much later the window would be clear, but the job is already failed.
        assert_eq!(t.on_failure(1_000_000), first);
        assert_eq!(t.restarts(), 1);
    }

    #[test]
    fn validate_rules() {
        assert!(RestartStrategy::None.validate().is_ok());
        assert!(
            RestartStrategy::FixedDelay {
                attempts: 0,
                delay_ms: 0
            }
            .validate()
            .is_ok()
        );
        assert!(expo(Some(3)).validate().is_ok());

        let bad_expo = |initial_ms, max_ms, multiplier, reset_after_ms| {
            RestartStrategy::ExponentialBackoff {
                initial_ms,
                max_ms,
                multiplier,
                reset_after_ms,
                max_attempts: None,
            }
            .validate()
            .unwrap_err()
        };
        assert!(bad_expo(0, 10, 2.0, 1).contains("initial_ms"));
        assert!(bad_expo(20, 10, 2.0, 1).contains("max_ms"));
        assert!(bad_expo(1, 10, 0.99, 1).contains("multiplier"));
        assert!(bad_expo(1, 10, f64::NAN, 1).contains("multiplier"));
        assert!(bad_expo(1, 10, f64::INFINITY, 1).contains("multiplier"));
        assert!(bad_expo(1, 10, 2.0, 0).contains("reset_after_ms"));
        // Boundary values that are fine.
        assert!(
            RestartStrategy::ExponentialBackoff {
                initial_ms: 10,
                max_ms: 10,
                multiplier: 1.0,
                reset_after_ms: 1,
                max_attempts: Some(0),
            }
            .validate()
            .is_ok()
        );

        let fr = |max, interval| RestartStrategy::FailureRate {
            max_failures_per_interval: max,
            interval_ms: interval,
            delay_ms: 0,
        };
        assert!(fr(1, 1).validate().is_ok());
        assert!(fr(0, 1).validate().unwrap_err().contains("max_failures"));
        assert!(fr(1, 0).validate().unwrap_err().contains("interval_ms"));
    }

    #[test]
    fn serializes_with_kebab_case_tag() {
        // Only serialization can be checked with postcard (non-self-describing);
        // the tag is written as a leading struct field.
        let bytes = postcard::to_allocvec(&RestartStrategy::FixedDelay {
            attempts: 3,
            delay_ms: 9,
        })
        .unwrap();
        assert_eq!(&bytes[..12], b"\x0bfixed-delay");
        let bytes = postcard::to_allocvec(&RestartStrategy::None).unwrap();
        assert_eq!(bytes, b"\x04none");
    }
}
