//! Window assignment: which windows a timestamp belongs to, when a window is
//! late, and how session windows merge. Pure functions, tested exhaustively.

use serde::{Deserialize, Serialize};

/// A half-open time window `[start, end)` in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TimeWindow {
    pub start: i64,
    pub end: i64,
}

impl TimeWindow {
    pub fn new(start: i64, end: i64) -> Self {
        TimeWindow { start, end }
    }
    /// The last timestamp inside the window; the window fires when the
    /// watermark (or processing time) reaches it, as in Flink.
    pub fn max_timestamp(&self) -> i64 {
        self.end.saturating_sub(1)
    }
    /// Session windows merge when they overlap; `[0,10)` and `[10,20)` only
    /// touch and stay apart, as in Flink.
    pub fn intersects(&self, o: &TimeWindow) -> bool {
        self.start < o.end && o.start < self.end
    }
    pub fn cover(&self, o: &TimeWindow) -> TimeWindow {
        TimeWindow::new(self.start.min(o.start), self.end.max(o.end))
    }
}

/// How records are grouped into windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowAssigner {
    /// Fixed, non-overlapping windows of `size_ms`, aligned to the epoch.
    Tumbling { size_ms: i64 },
    /// Windows of `size_ms` starting every `slide_ms`; a record belongs to
    /// `size / slide` of them.
    Sliding { size_ms: i64, slide_ms: i64 },
    /// A window per burst of activity: closes after `gap_ms` without records.
    Session { gap_ms: i64 },
    /// Every `size` records per key (no time involved).
    Count { size: u64 },
}

impl WindowAssigner {
    /// The windows `ts` belongs to, oldest first (none for count windows).
    pub fn assign(&self, ts: i64) -> Vec<TimeWindow> {
        self.windows(ts).collect()
    }

    /// The same windows as [`assign`](Self::assign), without allocating for
    /// tumbling and session windows: the window operator calls this once per
    /// record, and a heap allocation there was a measurable share of a keyed
    /// window count.
    pub fn windows(&self, ts: i64) -> Windows {
        match *self {
            WindowAssigner::Tumbling { size_ms } => {
                let start = window_start(ts, size_ms);
                Windows::One(Some(TimeWindow::new(start, start.saturating_add(size_ms))))
            }
            WindowAssigner::Session { gap_ms } => {
                Windows::One(Some(TimeWindow::new(ts, ts.saturating_add(gap_ms))))
            }
            WindowAssigner::Sliding { size_ms, slide_ms } => {
                Windows::Many(sliding_windows(ts, size_ms, slide_ms).into_iter())
            }
            WindowAssigner::Count { .. } => Windows::One(None),
        }
    }

    pub fn is_session(&self) -> bool {
        matches!(self, WindowAssigner::Session { .. })
    }
}

/// The sliding windows of `ts`, oldest first.
fn sliding_windows(ts: i64, size_ms: i64, slide_ms: i64) -> Vec<TimeWindow> {
    let last = window_start(ts, slide_ms);
    let mut out = Vec::new();
    let mut start = last;
    while start > ts.saturating_sub(size_ms) {
        out.push(TimeWindow::new(start, start.saturating_add(size_ms)));
        start = start.saturating_sub(slide_ms);
    }
    out.reverse();
    out
}

/// The windows of one timestamp, oldest first (see [`WindowAssigner::windows`]).
#[derive(Debug)]
pub enum Windows {
    One(Option<TimeWindow>),
    Many(std::vec::IntoIter<TimeWindow>),
}

impl Iterator for Windows {
    type Item = TimeWindow;
    fn next(&mut self) -> Option<TimeWindow> {
        match self {
            Windows::One(w) => w.take(),
            Windows::Many(it) => it.next(),
        }
    }
}

/// Start of the window of `size` containing `ts` (Flink's
/// `TimeWindow.getWindowStartWithOffset` with offset 0; correct for negative
/// timestamps too).
pub fn window_start(ts: i64, size: i64) -> i64 {
    ts - ts.rem_euclid(size)
}

/// The time at which a window's state is dropped: records for it are late
/// once the watermark reaches this.
pub fn cleanup_time(w: &TimeWindow, allowed_lateness_ms: i64) -> i64 {
    w.max_timestamp().saturating_add(allowed_lateness_ms)
}

/// Flink's `isWindowLate` for event time.
pub fn is_late(w: &TimeWindow, allowed_lateness_ms: i64, watermark: i64) -> bool {
    cleanup_time(w, allowed_lateness_ms) <= watermark
}

/// Merges `new` into the existing session windows of a key: returns the merged
/// window and the existing windows it absorbed.
pub fn merge_session(existing: &[TimeWindow], new: TimeWindow) -> (TimeWindow, Vec<TimeWindow>) {
    let mut merged = new;
    let mut absorbed: Vec<TimeWindow> = Vec::new();
    // Merging can make the window grow into further windows: repeat until stable.
    loop {
        let mut grew = false;
        for w in existing {
            if !absorbed.contains(w) && merged.intersects(w) {
                merged = merged.cover(w);
                absorbed.push(*w);
                grew = true;
            }
        }
        if !grew {
            break;
        }
    }
    absorbed.sort();
    (merged, absorbed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: i64, e: i64) -> TimeWindow {
        TimeWindow::new(s, e)
    }

    #[test]
    fn tumbling_boundaries_are_half_open() {
        let a = WindowAssigner::Tumbling { size_ms: 10 };
        assert_eq!(a.assign(0), vec![w(0, 10)]);
        assert_eq!(a.assign(9), vec![w(0, 10)]);
        assert_eq!(a.assign(10), vec![w(10, 20)]);
        assert_eq!(a.assign(-1), vec![w(-10, 0)]);
        assert_eq!(w(0, 10).max_timestamp(), 9);
    }

    #[test]
    fn sliding_assigns_size_over_slide_windows() {
        let a = WindowAssigner::Sliding {
            size_ms: 10,
            slide_ms: 5,
        };
        assert_eq!(a.assign(0), vec![w(-5, 5), w(0, 10)]);
        assert_eq!(a.assign(4), vec![w(-5, 5), w(0, 10)]);
        assert_eq!(a.assign(5), vec![w(0, 10), w(5, 15)]);
        assert_eq!(a.assign(12), vec![w(5, 15), w(10, 20)]);
        let b = WindowAssigner::Sliding {
            size_ms: 30,
            slide_ms: 10,
        };
        assert_eq!(b.assign(25), vec![w(0, 30), w(10, 40), w(20, 50)]);
    }

    #[test]
    fn lateness_counts_from_the_last_timestamp() {
        let win = w(0, 10);
        assert!(!is_late(&win, 0, 8));
        assert!(is_late(&win, 0, 9));
        assert!(!is_late(&win, 5, 13));
        assert!(is_late(&win, 5, 14));
        assert!(!is_late(&win, 0, i64::MIN));
    }

    #[test]
    fn sessions_merge_transitively_and_not_when_only_touching() {
        let existing = [w(0, 10), w(20, 30), w(40, 50)];
        // Bridges the first two sessions.
        assert_eq!(
            merge_session(&existing, w(9, 21)),
            (w(0, 30), vec![w(0, 10), w(20, 30)])
        );
        // Touching is not overlapping.
        assert_eq!(merge_session(&existing, w(10, 20)), (w(10, 20), vec![]));
        // Inside an existing one.
        assert_eq!(
            merge_session(&existing, w(42, 45)),
            (w(40, 50), vec![w(40, 50)])
        );
        // Spans all of them.
        assert_eq!(
            merge_session(&existing, w(5, 45)),
            (w(0, 50), vec![w(0, 10), w(20, 30), w(40, 50)])
        );
        assert_eq!(merge_session(&[], w(1, 2)), (w(1, 2), vec![]));
    }

    #[test]
    fn count_windows_have_no_time_windows() {
        assert!(WindowAssigner::Count { size: 2 }.assign(5).is_empty());
    }
}
