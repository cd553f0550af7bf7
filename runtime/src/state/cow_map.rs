//! The hash map behind each heap keyed-state table, built so that a checkpoint
//! can take a consistent snapshot in O(shards) on the task thread and serialize
//! it on another thread while the task keeps mutating its state.
//!
//! The map is split into [`SHARDS`] hash tables. Taking a snapshot turns every
//! shard into an `Arc` shared between the live map and the snapshot (no entry is
//! copied). The first write to a shared shard afterwards takes the table back:
//! for free if the snapshot has already been serialized and dropped, otherwise by
//! cloning that one shard (copy-on-write). Reads never copy. This is the idea of
//! Flink's `CopyOnWriteStateMap` at shard instead of entry granularity: no
//! per-entry version field, and no check on the hot path besides "is this shard
//! owned", which is a plain enum match.
//!
//! `hashbrown::HashTable` is used rather than `std::collections::HashMap` so the
//! key is hashed once per operation: the same hash picks the shard and probes the
//! table, and a read-modify-write is a single probe (`entry`).

use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

/// log2 of the shard count. 256 shards keep the snapshot handoff trivial (256
/// `Arc`s) while a copy-on-write copies only 1/256 of the state at a time.
const SHARD_BITS: u32 = 8;

type Table<K, S> = HashTable<(K, S)>;

enum Shard<K, S> {
    Owned(Table<K, S>),
    /// Shared with at least one snapshot taken since the last write to this shard
    /// (or the snapshot is gone and nobody wrote yet).
    Shared(Arc<Table<K, S>>),
}

impl<K, S> Shard<K, S> {
    fn table(&self) -> &Table<K, S> {
        match self {
            Shard::Owned(t) => t,
            Shard::Shared(t) => t,
        }
    }
}

/// A sharded, snapshot-able hash map from key to stored state `S`.
pub(crate) struct CowMap<K, S> {
    /// Random per map: in-memory layout only, never persisted.
    hasher: foldhash::fast::RandomState,
    shards: Box<[Shard<K, S>]>,
    /// shard count - 1 (a power of two).
    mask: usize,
}

/// The state of a [`CowMap`] at the moment [`CowMap::snapshot`] was called,
/// immutable, and safe to read from another thread.
pub(crate) struct Frozen<K, S> {
    shards: Vec<Arc<Table<K, S>>>,
}

impl<K, S> Frozen<K, S> {
    pub fn iter(&self) -> impl Iterator<Item = (&K, &S)> {
        self.shards
            .iter()
            .flat_map(|t| t.iter().map(|(k, s)| (k, s)))
    }
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.shards.iter().map(|t| t.len()).sum()
    }
}

impl<K: Hash + Eq + Clone, S: Clone> Default for CowMap<K, S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Hash + Eq + Clone, S: Clone> CowMap<K, S> {
    pub fn new() -> Self {
        Self::with_shard_bits(SHARD_BITS)
    }

    /// 2^`bits` shards (tests use one shard to force keys to share a shard).
    fn with_shard_bits(bits: u32) -> Self {
        let n = 1usize << bits;
        CowMap {
            hasher: foldhash::fast::RandomState::default(),
            shards: (0..n).map(|_| Shard::Owned(HashTable::new())).collect(),
            mask: n - 1,
        }
    }

    #[inline]
    fn hash(&self, k: &K) -> u64 {
        self.hasher.hash_one(k)
    }

    /// hashbrown uses the low bits of the hash for the bucket and the top 7 for
    /// the control tag, so the shard is taken from the middle bits: entries of a
    /// shard then still spread over buckets and tags.
    #[inline]
    fn shard_of(&self, hash: u64) -> usize {
        ((hash >> 32) as usize) & self.mask
    }

    /// The shard's table for writing; takes it back from snapshots first: free
    /// when no snapshot holds it any more, a copy of this one shard otherwise.
    #[inline(always)]
    fn owned(shards: &mut [Shard<K, S>], i: usize) -> &mut Table<K, S> {
        let slot = &mut shards[i];
        if let Shard::Shared(arc) = slot {
            *slot = Shard::Owned(take_or_clone(arc));
        }
        match slot {
            Shard::Owned(t) => t,
            // Not reached (just replaced); `make_mut` is the correct answer anyway.
            Shard::Shared(arc) => Arc::make_mut(arc),
        }
    }

    #[inline]
    pub fn get(&self, k: &K) -> Option<&S> {
        let h = self.hash(k);
        self.shards[self.shard_of(h)]
            .table()
            .find(h, |(q, _)| q == k)
            .map(|(_, s)| s)
    }

    /// Mutable access; copies the shard first if a snapshot still shares it.
    /// A miss never copies.
    #[inline]
    pub fn get_mut(&mut self, k: &K) -> Option<&mut S> {
        let h = self.hash(k);
        let i = self.shard_of(h);
        if let Shard::Shared(t) = &self.shards[i] {
            t.find(h, |(q, _)| q == k)?;
        }
        Self::owned(&mut self.shards, i)
            .find_mut(h, |(q, _)| q == k)
            .map(|(_, s)| s)
    }

    /// One probe: the slot for `k`, to read-modify-write or fill.
    #[inline]
    pub fn entry<'a>(&'a mut self, k: &'a K) -> Slot<'a, K, S> {
        let h = self.hash(k);
        let i = self.shard_of(h);
        let hasher = &self.hasher;
        match Self::owned(&mut self.shards, i).entry(
            h,
            |(q, _)| q == k,
            |(q, _)| hasher.hash_one(q),
        ) {
            Entry::Occupied(o) => Slot::Occupied(&mut o.into_mut().1),
            Entry::Vacant(v) => Slot::Vacant(VacantSlot { v, key: k }),
        }
    }

    pub fn insert(&mut self, k: K, s: S) -> Option<S> {
        match self.entry(&k) {
            Slot::Occupied(old) => Some(std::mem::replace(old, s)),
            Slot::Vacant(v) => {
                v.insert(s);
                None
            }
        }
    }

    /// Removes `k`; a miss never copies a shared shard.
    pub fn remove(&mut self, k: &K) -> Option<S> {
        let h = self.hash(k);
        let i = self.shard_of(h);
        if let Shard::Shared(t) = &self.shards[i] {
            t.find(h, |(q, _)| q == k)?;
        }
        match Self::owned(&mut self.shards, i).find_entry(h, |(q, _)| q == k) {
            Ok(o) => Some(o.remove().0.1),
            Err(_) => None,
        }
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.table().len()).sum()
    }

    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = (&K, &S)> {
        self.shards
            .iter()
            .flat_map(|s| s.table().iter().map(|(k, v)| (k, v)))
    }

    /// A consistent view of the whole map, in O(shards): no entry is copied now;
    /// shards are copied later only if written while the view is still alive.
    pub fn snapshot(&mut self) -> Frozen<K, S> {
        let mut shards = Vec::with_capacity(self.shards.len());
        for slot in self.shards.iter_mut() {
            let arc = match std::mem::replace(slot, Shard::Owned(HashTable::new())) {
                Shard::Owned(t) => Arc::new(t),
                Shard::Shared(a) => a,
            };
            shards.push(arc.clone());
            *slot = Shard::Shared(arc);
        }
        Frozen { shards }
    }
}

/// Takes the table out of a shared shard without copying if this map holds the
/// only reference (the snapshot was serialized and dropped), else clones it.
#[cold]
fn take_or_clone<T: Clone + Default>(arc: &mut Arc<T>) -> T {
    match Arc::get_mut(arc) {
        Some(t) => std::mem::take(t),
        None => (**arc).clone(),
    }
}

/// The result of [`CowMap::entry`].
pub(crate) enum Slot<'a, K, S> {
    Occupied(&'a mut S),
    Vacant(VacantSlot<'a, K, S>),
}

pub(crate) struct VacantSlot<'a, K, S> {
    v: hashbrown::hash_table::VacantEntry<'a, (K, S)>,
    key: &'a K,
}

impl<'a, K: Clone, S> VacantSlot<'a, K, S> {
    /// Inserts, cloning the key only now that it is needed.
    pub fn insert(self, s: S) -> &'a mut S {
        &mut self.v.insert((self.key.clone(), s)).into_mut().1
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[derive(Clone, Copy, Debug)]
    enum Op {
        Insert(u8),
        Remove(u8),
        /// Read-modify-write through `entry` (inserts 0 when absent).
        Bump(u8),
        /// In-place write through `get_mut` (no-op when absent).
        Double(u8),
    }

    const KEYS: u8 = 2;

    fn all_ops() -> Vec<Op> {
        (0..KEYS)
            .flat_map(|k| [Op::Insert(k), Op::Remove(k), Op::Bump(k), Op::Double(k)])
            .collect()
    }

    /// Every sequence of at most `len` operations.
    fn sequences(len: usize) -> Vec<Vec<Op>> {
        let ops = all_ops();
        let mut out = vec![vec![]];
        let mut last = vec![vec![]];
        for _ in 0..len {
            let mut next = Vec::new();
            for seq in &last {
                for op in &ops {
                    let mut s: Vec<Op> = seq.clone();
                    s.push(*op);
                    next.push(s);
                }
            }
            out.extend(next.iter().cloned());
            last = next;
        }
        out
    }

    fn apply(m: &mut CowMap<u8, u64>, model: &mut BTreeMap<u8, u64>, op: Op, step: u64) {
        match op {
            Op::Insert(k) => {
                assert_eq!(m.insert(k, step), model.insert(k, step));
            }
            Op::Remove(k) => assert_eq!(m.remove(&k), model.remove(&k)),
            Op::Bump(k) => {
                match m.entry(&k) {
                    Slot::Occupied(v) => *v += 1,
                    Slot::Vacant(s) => {
                        s.insert(0);
                    }
                }
                match model.get_mut(&k) {
                    Some(v) => *v += 1,
                    None => {
                        model.insert(k, 0);
                    }
                }
            }
            Op::Double(k) => {
                if let Some(v) = m.get_mut(&k) {
                    *v *= 2;
                }
                if let Some(v) = model.get_mut(&k) {
                    *v *= 2;
                }
            }
        }
    }

    fn contents<'a>(it: impl Iterator<Item = (&'a u8, &'a u64)>) -> BTreeMap<u8, u64> {
        it.map(|(k, v)| (*k, *v)).collect()
    }

    /// A snapshot taken, then the map mutated, then the snapshot read: it holds
    /// exactly the values at snapshot time, and the live map exactly the
    /// mutations. Exhaustive over all sequences of operations on 2 keys before
    /// and after (up to 3 each with both keys in one shard, up to 2 each with the
    /// real shard count), with the snapshot dropped early (the take-back path)
    /// or kept to the end.
    #[test]
    fn snapshot_holds_the_values_at_snapshot_time_exhaustively() {
        let mut cases = 0u64;
        let mut expected = 0u64;
        for (bits, len) in [(0, 3), (SHARD_BITS, 2)] {
            let seqs = sequences(len);
            expected += 2 * (seqs.len() as u64).pow(2);
            for before in &seqs {
                let mut m = CowMap::with_shard_bits(bits);
                let mut model = BTreeMap::new();
                for (i, op) in before.iter().enumerate() {
                    apply(&mut m, &mut model, *op, 100 + i as u64);
                }
                for after in &seqs {
                    for drop_early in [false, true] {
                        // Each case starts from the same state.
                        let mut m = clone_map(&m);
                        let mut live = model.clone();
                        let snap = m.snapshot();
                        let at_barrier = model.clone();
                        let mut kept = Some(snap);
                        for (i, op) in after.iter().enumerate() {
                            if drop_early && i == 1 {
                                let s = kept.take().expect("snapshot present");
                                assert_eq!(contents(s.iter()), at_barrier);
                            }
                            apply(&mut m, &mut live, *op, 200 + i as u64);
                        }
                        if let Some(s) = kept {
                            assert_eq!(contents(s.iter()), at_barrier, "{before:?} / {after:?}");
                            assert_eq!(s.len(), at_barrier.len());
                        }
                        assert_eq!(contents(m.iter()), live, "{before:?} / {after:?}");
                        assert_eq!(m.len(), live.len());
                        for k in 0..KEYS {
                            assert_eq!(m.get(&k), live.get(&k));
                        }
                        cases += 1;
                    }
                }
            }
        }
        assert_eq!(cases, expected);
    }

    fn clone_map(m: &CowMap<u8, u64>) -> CowMap<u8, u64> {
        let mut c = CowMap::with_shard_bits(m.mask.trailing_ones());
        for (k, v) in m.iter() {
            c.insert(*k, *v);
        }
        c
    }

    #[test]
    fn overlapping_snapshots_each_keep_their_own_view() {
        let mut m: CowMap<u32, u32> = CowMap::new();
        for k in 0..1000 {
            m.insert(k, 1);
        }
        let s1 = m.snapshot();
        for k in 0..1000 {
            if let Some(v) = m.get_mut(&k) {
                *v = 2;
            }
        }
        let s2 = m.snapshot();
        for k in 0..500 {
            m.remove(&k);
        }
        assert!(s1.iter().all(|(_, v)| *v == 1) && s1.len() == 1000);
        assert!(s2.iter().all(|(_, v)| *v == 2) && s2.len() == 1000);
        assert_eq!(m.len(), 500);
        drop(s1);
        drop(s2);
        m.insert(0, 3);
        assert_eq!(m.get(&0), Some(&3));
    }

    #[test]
    fn a_snapshot_is_read_on_another_thread_while_the_map_changes() {
        let mut m: CowMap<u64, u64> = CowMap::new();
        for k in 0..10_000 {
            m.insert(k, k);
        }
        let snap = m.snapshot();
        let reader = std::thread::spawn(move || {
            let mut sum = 0u64;
            for (k, v) in snap.iter() {
                assert_eq!(k, v);
                sum += v;
            }
            sum
        });
        for k in 0..10_000 {
            if let Slot::Occupied(v) = m.entry(&k) {
                *v += 1;
            }
        }
        assert_eq!(reader.join().expect("reader"), (0..10_000).sum::<u64>());
        assert!(m.iter().all(|(k, v)| *v == k + 1));
    }

    #[test]
    fn misses_on_a_shared_shard_do_not_copy_it() {
        let mut m: CowMap<u8, u8> = CowMap::with_shard_bits(0);
        m.insert(1, 1);
        let snap = m.snapshot();
        assert_eq!(m.get_mut(&2), None);
        assert_eq!(m.remove(&2), None);
        assert!(matches!(m.shards[0], Shard::Shared(_)), "still shared");
        m.remove(&1);
        assert!(matches!(m.shards[0], Shard::Owned(_)), "copied on write");
        assert_eq!(contents_u8(snap.iter()), vec![(1, 1)]);
    }

    fn contents_u8<'a>(it: impl Iterator<Item = (&'a u8, &'a u8)>) -> Vec<(u8, u8)> {
        it.map(|(k, v)| (*k, *v)).collect()
    }
}
