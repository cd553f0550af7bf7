//! Maps restored state onto the new job's subtasks (pure, exhaustively tested).
//! Keyed state moves by key group; operator list state is split evenly or
//! given to everyone (union); in-flight records follow their keys.

use std::collections::BTreeMap;

use serde_bytes::ByteBuf;

use super::format::{KeyGroupData, OperatorListData, Redistribution, SubtaskState};
use crate::keygroup::range_for_subtask;
use crate::task::Restored;

/// Contiguous even split of `n` items into `parts`, as Flink's round-robin
/// operator state repartitioner does: part `i` gets `[i*n/parts, (i+1)*n/parts)`.
pub fn even_split_bounds(n: usize, parts: usize, i: usize) -> (usize, usize) {
    if parts == 0 {
        return (0, 0);
    }
    (i * n / parts, (i + 1) * n / parts)
}

/// How in-flight records of an operator are assigned on restore.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum InFlightAssignment {
    /// Parallelism unchanged: each subtask replays its own records.
    Own,
    /// Rescaled keyed input: every subtask gets all records and keeps its keys.
    FilterByKeyGroup,
    /// Rescaled non-keyed input: records are split evenly.
    EvenSplit,
}

/// Key groups are moved out of `old`, not copied: each belongs to exactly one
/// new subtask, and a restore used to hold every byte of keyed state twice
/// (the loaded snapshot and each subtask's deep copy) for as long as the
/// attempt ran. Operator lists and in-flight records, which several subtasks
/// may receive, are cloned.
pub(crate) fn assign(
    old: &mut [(u32, SubtaskState)],
    old_parallelism: u32,
    keyed_metas: &[crate::checkpoint::format::KeyedStateMeta],
    new_parallelism: u32,
    subtask: u32,
    max_parallelism: u32,
    keyed_input: bool,
) -> (Restored, InFlightAssignment) {
    let mut sorted: Vec<&mut (u32, SubtaskState)> = old.iter_mut().collect();
    sorted.sort_by_key(|e| e.0);

    // Operator list state: concatenate in old subtask order, then split or union.
    let mut lists: BTreeMap<String, (Redistribution, Vec<ByteBuf>)> = BTreeMap::new();
    for (_, s) in &sorted {
        for l in &s.operator_states {
            let e = lists
                .entry(l.name.clone())
                .or_insert_with(|| (l.mode, Vec::new()));
            e.1.extend(l.items.iter().cloned());
        }
    }
    let operator_states = lists
        .into_iter()
        .map(|(name, (mode, items))| {
            let items = match mode {
                Redistribution::Union => items,
                Redistribution::EvenSplit => {
                    let (a, b) =
                        even_split_bounds(items.len(), new_parallelism as usize, subtask as usize);
                    items[a..b].to_vec()
                }
            };
            OperatorListData { name, mode, items }
        })
        .collect();

    // Keyed state and timers: the key groups this subtask now owns.
    let range = range_for_subtask(max_parallelism, new_parallelism, subtask);
    let mut key_groups = Vec::new();
    for e in &mut sorted {
        let (mine, rest): (Vec<KeyGroupData>, Vec<KeyGroupData>) =
            std::mem::take(&mut e.1.key_groups)
                .into_iter()
                .partition(|g| range.contains(g.key_group));
        e.1.key_groups = rest;
        key_groups.extend(mine);
    }
    key_groups.sort_by_key(|g| g.key_group);

    let (in_flight, how) = if old_parallelism == new_parallelism {
        (
            sorted
                .iter()
                .filter(|(i, _)| *i == subtask)
                .flat_map(|(_, s)| s.in_flight.iter().cloned())
                .collect(),
            InFlightAssignment::Own,
        )
    } else {
        let all: Vec<ByteBuf> = sorted
            .iter()
            .flat_map(|(_, s)| s.in_flight.iter().cloned())
            .collect();
        if keyed_input {
            (all, InFlightAssignment::FilterByKeyGroup)
        } else {
            let (a, b) = even_split_bounds(all.len(), new_parallelism as usize, subtask as usize);
            (all[a..b].to_vec(), InFlightAssignment::EvenSplit)
        }
    };

    (
        Restored {
            operator_states,
            key_groups,
            keyed_metas: keyed_metas.to_vec(),
            in_flight,
        },
        how,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::format::OperatorListData;

    fn old_state(p: u32, maxp: u32, items_per_subtask: usize) -> Vec<(u32, SubtaskState)> {
        (0..p)
            .map(|i| {
                let range = range_for_subtask(maxp, p, i);
                (
                    i,
                    SubtaskState {
                        operator_states: vec![
                            OperatorListData {
                                name: "even".into(),
                                mode: Redistribution::EvenSplit,
                                items: (0..items_per_subtask)
                                    .map(|j| ByteBuf::from(vec![i as u8, j as u8]))
                                    .collect(),
                            },
                            OperatorListData {
                                name: "union".into(),
                                mode: Redistribution::Union,
                                items: vec![ByteBuf::from(vec![i as u8])],
                            },
                        ],
                        key_groups: range
                            .iter()
                            .map(|kg| KeyGroupData {
                                key_group: kg,
                                ..Default::default()
                            })
                            .collect(),
                        in_flight: vec![ByteBuf::from(vec![i as u8; 3])],
                    },
                )
            })
            .collect()
    }

    #[test]
    fn every_rescale_preserves_every_key_group_and_item_exactly_once() {
        let maxp = 24;
        for old_p in 1..=6u32 {
            for new_p in 1..=6u32 {
                for items in [0usize, 1, 5] {
                    let mut old = old_state(old_p, maxp, items);
                    let mut kgs = Vec::new();
                    let mut even = Vec::new();
                    let mut in_flight = 0;
                    for s in 0..new_p {
                        let (r, how) = assign(&mut old, old_p, &[], new_p, s, maxp, false);
                        let range = range_for_subtask(maxp, new_p, s);
                        assert!(r.key_groups.iter().all(|g| range.contains(g.key_group)));
                        kgs.extend(r.key_groups.iter().map(|g| g.key_group));
                        let e = r.operator_states.iter().find(|l| l.name == "even").unwrap();
                        even.extend(e.items.clone());
                        let u = r
                            .operator_states
                            .iter()
                            .find(|l| l.name == "union")
                            .unwrap();
                        assert_eq!(u.items.len(), old_p as usize, "union gives everyone all");
                        in_flight += r.in_flight.len();
                        let expect = if old_p == new_p {
                            InFlightAssignment::Own
                        } else {
                            InFlightAssignment::EvenSplit
                        };
                        assert_eq!(how, expect);
                    }
                    kgs.sort();
                    assert_eq!(kgs, (0..maxp).collect::<Vec<_>>());
                    assert!(
                        old.iter().all(|(_, s)| s.key_groups.is_empty()),
                        "key groups are moved to their subtask, not copied"
                    );
                    assert_eq!(even.len(), old_p as usize * items);
                    even.sort();
                    even.dedup();
                    assert_eq!(even.len(), old_p as usize * items, "no item duplicated");
                    assert_eq!(in_flight, old_p as usize);
                }
            }
        }
    }

    #[test]
    fn even_split_sizes_differ_by_at_most_one() {
        for n in 0..40 {
            for parts in 1..9 {
                let sizes: Vec<usize> = (0..parts)
                    .map(|i| {
                        let (a, b) = even_split_bounds(n, parts, i);
                        b - a
                    })
                    .collect();
                assert_eq!(sizes.iter().sum::<usize>(), n);
                let (mn, mx) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
                assert!(mx - mn <= 1);
            }
        }
    }
}
