//! Pure parts of the exactly-once sink's write-ahead design (see
//! docs/kafka-exactly-once.md): the checkpointed epoch buffers, the record
//! marker header, and the recovery decisions. No I/O here.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// Name of the sink's union list state. The `v1` versions the encoding of
/// [`SinkTxnState`]; a new encoding gets a new name.
pub const EOS_STATE: &str = "kafka-sink-eos-v1";

/// Header that tags every record the exactly-once sink writes: 16 bytes, the
/// epoch's unique id and the record's sequence number in the epoch (both
/// big-endian u64). Recovery finds what is already visible by these.
pub const MARKER_HEADER: &str = "runnel.eos";

/// One record as buffered in checkpointed state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutRecord {
    pub key: Option<ByteBuf>,
    pub value: ByteBuf,
    pub timestamp: Option<i64>,
}

/// The output of one checkpoint of one subtask, waiting to be committed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingEpoch {
    pub checkpoint_id: u64,
    /// Random, unique per epoch: ties records to this epoch across job runs,
    /// restores from older snapshots and checkpoint-id reuse.
    pub uid: u64,
    /// Per output partition, the log end offset when the epoch was sealed.
    /// Every record of this epoch is written after that, so recovery reads
    /// back from here.
    pub start_offsets: Vec<(i32, i64)>,
    pub records: Vec<OutRecord>,
}

/// What one sink subtask checkpoints: its identity (which transactional id it
/// used) and its uncommitted epochs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkTxnState {
    pub subtask: u32,
    pub epochs: Vec<PendingEpoch>,
}

pub fn transactional_id(prefix: &str, subtask: u32) -> String {
    format!("{prefix}-{subtask}")
}

pub fn encode_marker(uid: u64, seq: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&uid.to_be_bytes());
    b[8..].copy_from_slice(&seq.to_be_bytes());
    b
}

pub fn decode_marker(b: &[u8]) -> Option<(u64, u64)> {
    if b.len() != 16 {
        return None;
    }
    let mut u = [0u8; 8];
    let mut s = [0u8; 8];
    u.copy_from_slice(&b[..8]);
    s.copy_from_slice(&b[8..]);
    Some((u64::from_be_bytes(u), u64::from_be_bytes(s)))
}

/// The restored entries a new subtask takes over: old subtask `j` goes to new
/// subtask `j % parallelism`, so every old transactional id (including those
/// of subtasks removed by downscaling) is recovered and ended by exactly one
/// new subtask. Union redistribution hands every subtask all entries.
pub fn owned(entries: &[SinkTxnState], subtask: u32, parallelism: u32) -> Vec<SinkTxnState> {
    let p = parallelism.max(1);
    let mut by_id: BTreeMap<u32, SinkTxnState> = BTreeMap::new();
    for e in entries.iter().filter(|e| e.subtask % p == subtask) {
        let slot = by_id.entry(e.subtask).or_insert_with(|| SinkTxnState {
            subtask: e.subtask,
            epochs: vec![],
        });
        for ep in &e.epochs {
            if !slot.epochs.iter().any(|x| x.uid == ep.uid) {
                slot.epochs.push(ep.clone());
            }
        }
    }
    let mut v: Vec<SinkTxnState> = by_id.into_values().collect();
    for s in &mut v {
        s.epochs.sort_by_key(|e| e.checkpoint_id);
    }
    v
}

/// Per partition, where recovery starts reading back: the lowest start offset
/// over the epochs.
pub fn scan_start(epochs: &[PendingEpoch]) -> BTreeMap<i32, i64> {
    let mut m: BTreeMap<i32, i64> = BTreeMap::new();
    for e in epochs {
        for (p, o) in &e.start_offsets {
            m.entry(*p).and_modify(|x| *x = (*x).min(*o)).or_insert(*o);
        }
    }
    m
}

/// The records of `epochs` not yet visible, given the markers seen when
/// reading back: (epoch index, record index) in commit order.
pub fn missing(epochs: &[PendingEpoch], seen: &HashSet<(u64, u64)>) -> Vec<(usize, usize)> {
    let mut v = Vec::new();
    for (ei, e) in epochs.iter().enumerate() {
        for ri in 0..e.records.len() {
            if !seen.contains(&(e.uid, ri as u64)) {
                v.push((ei, ri));
            }
        }
    }
    v
}

/// Splits off the epochs a completed checkpoint makes committable (all with
/// id <= `checkpoint_id`, by the subsuming contract), oldest first.
pub fn take_committable(pending: &mut Vec<PendingEpoch>, checkpoint_id: u64) -> Vec<PendingEpoch> {
    let (ready, keep): (Vec<PendingEpoch>, Vec<PendingEpoch>) = pending
        .drain(..)
        .partition(|e| e.checkpoint_id <= checkpoint_id);
    *pending = keep;
    let mut ready = ready;
    ready.sort_by_key(|e| e.checkpoint_id);
    ready
}

/// The uids of a set of epochs (to filter read-back markers).
pub fn uids(epochs: &[PendingEpoch]) -> BTreeSet<u64> {
    epochs.iter().map(|e| e.uid).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(v: &str) -> OutRecord {
        OutRecord {
            key: None,
            value: ByteBuf::from(v.as_bytes().to_vec()),
            timestamp: None,
        }
    }

    fn epoch(id: u64, uid: u64, starts: &[(i32, i64)], n: usize) -> PendingEpoch {
        PendingEpoch {
            checkpoint_id: id,
            uid,
            start_offsets: starts.to_vec(),
            records: (0..n).map(|i| rec(&format!("{id}-{i}"))).collect(),
        }
    }

    #[test]
    fn marker_round_trip() {
        let m = encode_marker(0xdead_beef_0000_0001, 7);
        assert_eq!(decode_marker(&m), Some((0xdead_beef_0000_0001, 7)));
        assert_eq!(decode_marker(&m[..15]), None);
        assert_eq!(decode_marker(&[]), None);
    }

    #[test]
    fn ownership_covers_every_old_subtask_once() {
        let entries: Vec<SinkTxnState> = (0..5)
            .map(|j| SinkTxnState {
                subtask: j,
                epochs: vec![epoch(3, 100 + j as u64, &[(0, 1)], 1)],
            })
            .collect();
        for par in 1..=6 {
            let mut seen = Vec::new();
            for s in 0..par {
                for o in owned(&entries, s, par) {
                    assert_eq!(o.subtask % par, s);
                    seen.push(o.subtask);
                }
            }
            seen.sort();
            assert_eq!(seen, vec![0, 1, 2, 3, 4], "parallelism {par}");
        }
    }

    #[test]
    fn owned_merges_duplicate_entries_by_uid() {
        let e = SinkTxnState {
            subtask: 1,
            epochs: vec![epoch(4, 9, &[], 1), epoch(2, 8, &[], 1)],
        };
        let o = owned(&[e.clone(), e], 1, 2);
        assert_eq!(o.len(), 1);
        assert_eq!(
            o[0].epochs
                .iter()
                .map(|e| e.checkpoint_id)
                .collect::<Vec<_>>(),
            vec![2, 4]
        );
    }

    #[test]
    fn scan_starts_at_lowest_offset() {
        let es = vec![
            epoch(1, 1, &[(0, 10), (1, 5)], 1),
            epoch(2, 2, &[(0, 7), (2, 3)], 1),
        ];
        let s = scan_start(&es);
        assert_eq!(
            s.into_iter().collect::<Vec<_>>(),
            vec![(0, 7), (1, 5), (2, 3)]
        );
    }

    #[test]
    fn missing_lists_only_invisible_records() {
        let es = vec![epoch(1, 11, &[], 3), epoch(2, 22, &[], 2)];
        let none = HashSet::new();
        assert_eq!(missing(&es, &none).len(), 5);
        let seen: HashSet<(u64, u64)> = [(11, 0), (11, 2), (22, 1), (99, 0)].into_iter().collect();
        assert_eq!(missing(&es, &seen), vec![(0, 1), (1, 0)]);
        let all: HashSet<(u64, u64)> = [(11, 0), (11, 1), (11, 2), (22, 0), (22, 1)]
            .into_iter()
            .collect();
        assert!(missing(&es, &all).is_empty());
    }

    #[test]
    fn committable_respects_subsumption() {
        let mut p = vec![
            epoch(5, 5, &[], 1),
            epoch(3, 3, &[], 1),
            epoch(7, 7, &[], 1),
        ];
        let r = take_committable(&mut p, 5);
        assert_eq!(
            r.iter().map(|e| e.checkpoint_id).collect::<Vec<_>>(),
            vec![3, 5]
        );
        assert_eq!(
            p.iter().map(|e| e.checkpoint_id).collect::<Vec<_>>(),
            vec![7]
        );
        assert!(take_committable(&mut p, 6).is_empty());
        assert_eq!(p.len(), 1);
    }
}
