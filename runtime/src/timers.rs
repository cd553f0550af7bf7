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

/// The timers of one timestamp, in registration order. Firing walks a cursor
/// over the set instead of removing the first element (`shift_remove_index(0)`
/// moved every later key, which made firing n timers of one timestamp O(n²):
/// a window end fires one timer per key at the same timestamp). Keys before
/// the cursor have fired and are no longer timers; the set is dropped when
/// the cursor reaches its end.
struct Due<K> {
    keys: KeySet<K>,
    fired: usize,
}

impl<K> Default for Due<K> {
    fn default() -> Self {
        Due {
            keys: KeySet::default(),
            fired: 0,
        }
    }
}

impl<K: Key> Due<K> {
    /// Timers that have not fired yet, in firing order.
    fn live(&self) -> impl Iterator<Item = &K> {
        self.keys.iter().skip(self.fired)
    }

    fn live_len(&self) -> usize {
        self.keys.len() - self.fired
    }

    fn insert(&mut self, key: &K) {
        let (i, new) = self.keys.insert_full(key.clone());
        if !new && i < self.fired {
            // It fired already at this timestamp (a timer callback registered
            // it again): it is a new timer, queued after the pending ones, as
            // if the fired entry had been removed when it fired.
            self.keys.shift_remove_index(i);
            self.fired -= 1;
            self.keys.insert(key.clone());
        }
    }

    /// Removes a pending timer; a fired one is not a timer any more.
    fn remove(&mut self, key: &K) {
        if let Some(i) = self.keys.get_index_of(key)
            && i >= self.fired
        {
            self.keys.shift_remove_index(i);
        }
    }
}

pub struct TimerService<K> {
    event: BTreeMap<i64, Due<K>>,
    processing: BTreeMap<i64, Due<K>>,
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
    fn queue(&mut self, d: TimeDomain) -> &mut BTreeMap<i64, Due<K>> {
        match d {
            TimeDomain::EventTime => &mut self.event,
            TimeDomain::ProcessingTime => &mut self.processing,
        }
    }

    /// Registering the same (key, timestamp) twice keeps one timer, as in Flink.
    pub fn register(&mut self, d: TimeDomain, key: &K, ts: i64) {
        self.queue(d).entry(ts).or_default().insert(key);
    }

    pub fn delete(&mut self, d: TimeDomain, key: &K, ts: i64) {
        let q = self.queue(d);
        if let Some(set) = q.get_mut(&ts) {
            set.remove(key);
            if set.live_len() == 0 {
                q.remove(&ts);
            }
        }
    }

    /// Pops the earliest timer with timestamp <= `upto`. Timers of one
    /// timestamp fire in registration order.
    pub fn pop_due(&mut self, d: TimeDomain, upto: i64) -> Option<(i64, K)> {
        let q = self.queue(d);
        let mut entry = q.first_entry()?;
        if *entry.key() > upto {
            return None;
        }
        let ts = *entry.key();
        let due = entry.get_mut();
        let key = due.keys.get_index(due.fired).cloned();
        due.fired += 1;
        if due.live_len() == 0 {
            entry.remove();
        }
        key.map(|k| (ts, k))
    }

    pub fn next_processing_time(&self) -> Option<i64> {
        self.processing.keys().next().copied()
    }

    pub fn len(&self) -> usize {
        self.event.values().map(Due::live_len).sum::<usize>()
            + self.processing.values().map(Due::live_len).sum::<usize>()
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
            for (ts, due) in q {
                for k in due.live() {
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
    fn timers_of_one_timestamp_fire_in_registration_order() {
        let mut t = TimerService::<u64>::default();
        let keys: Vec<u64> = (0..1000).map(|i| (i * 7919) % 1000).collect();
        for k in &keys {
            t.register(TimeDomain::EventTime, k, 10);
        }
        t.register(TimeDomain::EventTime, &5, 10);
        assert_eq!(t.len(), 1000);
        let mut fired = Vec::new();
        while let Some((ts, k)) = t.pop_due(TimeDomain::EventTime, 10) {
            assert_eq!(ts, 10);
            fired.push(k);
        }
        assert_eq!(fired, keys);
        assert!(t.is_empty());
    }

    /// What a timer callback may do while the timers of its timestamp fire:
    /// the same outcomes as when each fired timer was removed as it fired.
    #[test]
    fn registering_and_deleting_while_a_timestamp_fires() {
        let ev = TimeDomain::EventTime;
        let mut t = TimerService::<u64>::default();
        for k in [1, 2, 3, 4] {
            t.register(ev, &k, 10);
        }
        assert_eq!(t.pop_due(ev, 10), Some((10, 1)));
        assert_eq!(t.pop_due(ev, 10), Some((10, 2)));
        // Pending: 3, 4. Fired: 1, 2.
        t.register(ev, &1, 10); // fired: a new timer, after the pending ones
        t.register(ev, &3, 10); // pending: stays one timer, same place
        t.delete(ev, &4, 10); // pending: gone
        t.delete(ev, &2, 10); // fired: nothing to delete
        assert_eq!(t.len(), 2);
        let mut snap = BTreeMap::new();
        t.snapshot(4, &mut snap).unwrap();
        let mut snapped: Vec<u64> = snap
            .values()
            .flat_map(|g| g.timers.iter())
            .map(|td| postcard::from_bytes(&td.key).unwrap())
            .collect();
        snapped.sort();
        assert_eq!(snapped, vec![1, 3], "only pending timers are snapshotted");
        assert_eq!(t.pop_due(ev, 10), Some((10, 3)));
        assert_eq!(t.pop_due(ev, 10), Some((10, 1)));
        assert_eq!(t.pop_due(ev, 10), None);
        assert!(t.is_empty());
        // Deleting the last pending timer of a timestamp removes it.
        t.register(ev, &1, 20);
        t.register(ev, &2, 20);
        assert_eq!(t.pop_due(ev, 20), Some((20, 1)));
        t.delete(ev, &2, 20);
        assert!(t.is_empty());
        assert_eq!(t.pop_due(ev, 20), None);
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
