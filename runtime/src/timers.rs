//! Per-key timers of a keyed operator. Timers are keyed state: they are
//! checkpointed per key group and move with their key group on rescale.

use std::collections::{BTreeMap, HashSet};

use indexmap::IndexSet;
use serde_bytes::ByteBuf;

use crate::checkpoint::format::{KeyGroupData, TimerData};
use crate::error::SnapshotError;
use crate::functions::TimeDomain;
use crate::keygroup::{KeyGroupRange, key_group_for_bytes};
use crate::state::keyed::Key;

type KeySet<K> = IndexSet<K, foldhash::fast::RandomState>;

pub struct TimerService<K> {
    event: BTreeMap<i64, KeySet<K>>,
    processing: BTreeMap<i64, KeySet<K>>,
}

impl<K: Key> Default for TimerService<K> {
    fn default() -> Self {
        TimerService {
            event: BTreeMap::new(),
            processing: BTreeMap::new(),
        }
    }
}

impl<K: Key> TimerService<K> {
    fn queue(&mut self, d: TimeDomain) -> &mut BTreeMap<i64, KeySet<K>> {
        match d {
            TimeDomain::EventTime => &mut self.event,
            TimeDomain::ProcessingTime => &mut self.processing,
        }
    }

    /// Registering the same (key, timestamp) twice keeps one timer, as in Flink.
    pub fn register(&mut self, d: TimeDomain, key: &K, ts: i64) {
        self.queue(d).entry(ts).or_default().insert(key.clone());
    }

    pub fn delete(&mut self, d: TimeDomain, key: &K, ts: i64) {
        let q = self.queue(d);
        if let Some(set) = q.get_mut(&ts) {
            set.shift_remove(key);
            if set.is_empty() {
                q.remove(&ts);
            }
        }
    }

    /// Pops the earliest timer with timestamp <= `upto`.
    pub fn pop_due(&mut self, d: TimeDomain, upto: i64) -> Option<(i64, K)> {
        let q = self.queue(d);
        let mut entry = q.first_entry()?;
        if *entry.key() > upto {
            return None;
        }
        let ts = *entry.key();
        let key = entry.get_mut().shift_remove_index(0);
        if entry.get().is_empty() {
            entry.remove();
        }
        key.map(|k| (ts, k))
    }

    pub fn next_processing_time(&self) -> Option<i64> {
        self.processing.keys().next().copied()
    }

    pub fn len(&self) -> usize {
        self.event.values().map(|s| s.len()).sum::<usize>()
            + self.processing.values().map(|s| s.len()).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.event.is_empty() && self.processing.is_empty()
    }

    pub(crate) fn snapshot(
        &self,
        max_parallelism: u32,
        out: &mut BTreeMap<u32, KeyGroupData>,
    ) -> Result<(), SnapshotError> {
        for (domain, q) in [(0u8, &self.event), (1u8, &self.processing)] {
            for (ts, keys) in q {
                for k in keys {
                    let kb = postcard::to_allocvec(k)
                        .map_err(|e| SnapshotError::Encode(e.to_string()))?;
                    let kg = key_group_for_bytes(&kb, max_parallelism);
                    out.entry(kg)
                        .or_insert_with(|| KeyGroupData {
                            key_group: kg,
                            ..Default::default()
                        })
                        .timers
                        .push(TimerData {
                            key: ByteBuf::from(kb),
                            timestamp: *ts,
                            domain,
                        });
                }
            }
        }
        Ok(())
    }

    pub(crate) fn restore(
        &mut self,
        range: KeyGroupRange,
        groups: &[KeyGroupData],
    ) -> Result<usize, String> {
        let mut n = 0;
        let mut seen = HashSet::new();
        for g in groups.iter().filter(|g| range.contains(g.key_group)) {
            for t in &g.timers {
                let key: K = postcard::from_bytes(&t.key)
                    .map_err(|e| format!("cannot decode a restored timer key: {e}"))?;
                let d = if t.domain == 0 {
                    TimeDomain::EventTime
                } else {
                    TimeDomain::ProcessingTime
                };
                if seen.insert((t.domain, t.timestamp, t.key.to_vec())) {
                    self.register(d, &key, t.timestamp);
                    n += 1;
                }
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_fire_in_timestamp_order_once_per_key_and_timestamp() {
        let mut t = TimerService::<u64>::default();
        t.register(TimeDomain::EventTime, &1, 20);
        t.register(TimeDomain::EventTime, &2, 10);
        t.register(TimeDomain::EventTime, &1, 20);
        t.register(TimeDomain::EventTime, &3, 30);
        t.delete(TimeDomain::EventTime, &3, 30);
        assert_eq!(t.pop_due(TimeDomain::EventTime, 25), Some((10, 2)));
        assert_eq!(t.pop_due(TimeDomain::EventTime, 25), Some((20, 1)));
        assert_eq!(t.pop_due(TimeDomain::EventTime, 25), None);
        assert!(t.is_empty());
    }

    #[test]
    fn snapshot_restore_keeps_only_owned_key_groups() {
        let mut t = TimerService::<u64>::default();
        for k in 0..100u64 {
            t.register(TimeDomain::ProcessingTime, &k, 1000 + k as i64);
        }
        let mut out = BTreeMap::new();
        t.snapshot(16, &mut out).unwrap();
        let groups: Vec<_> = out.into_values().collect();
        let mut a = TimerService::<u64>::default();
        let mut b = TimerService::<u64>::default();
        let na = a.restore(KeyGroupRange::new(0, 7), &groups).unwrap();
        let nb = b.restore(KeyGroupRange::new(8, 15), &groups).unwrap();
        assert_eq!(na + nb, 100);
    }
}
