//! Pure decisions of the source: which subtask reads which partition, and
//! where each partition starts. No I/O here, so every case is unit-tested.

use std::collections::BTreeMap;

use super::config::{OffsetReset, StartPosition, TopicPartition};

/// The subtask that reads a partition. Deterministic (no consumer-group
/// rebalancing) and stable when partitions are added: partition `p` of a topic
/// goes to `(start(topic) + p) % parallelism`, so a topic's partitions spread
/// round-robin from a per-topic offset (Flink's `KafkaTopicPartitionAssigner`).
/// The per-topic start uses the fixed XXH64 seed 0, never std's random hasher.
pub fn subtask_for(tp: &TopicPartition, parallelism: u32) -> u32 {
    let p = u64::from(parallelism.max(1));
    let start = xxhash_rust::xxh64::xxh64(tp.topic.as_bytes(), 0) % p;
    ((start + tp.partition.max(0) as u64) % p) as u32
}

/// The partitions of `all` that `subtask` reads, sorted.
pub fn assigned(all: &[TopicPartition], subtask: u32, parallelism: u32) -> Vec<TopicPartition> {
    let mut v: Vec<TopicPartition> = all
        .iter()
        .filter(|tp| subtask_for(tp, parallelism) == subtask)
        .cloned()
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Where one partition starts, before logical positions are resolved against
/// the broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    Offset(i64),
    Earliest,
    Latest,
    Timestamp(i64),
    /// The group's committed offset, else `reset`.
    Group(OffsetReset),
}

/// Why the partitions start where they do; logged once per subtask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartPlan {
    pub starts: BTreeMap<TopicPartition, Start>,
    pub log_line: String,
}

fn configured(tp: &TopicPartition, start: &StartPosition) -> Start {
    match start {
        StartPosition::GroupOffsets { reset } => Start::Group(*reset),
        StartPosition::Earliest => Start::Earliest,
        StartPosition::Latest => Start::Latest,
        StartPosition::Timestamp(t) => Start::Timestamp(*t),
        StartPosition::Specific { offsets, fallback } => match offsets.get(tp) {
            Some(o) => Start::Offset(*o),
            None => reset_start(*fallback),
        },
    }
}

/// The start a reset policy stands for (`Fail` is resolved as a group lookup
/// without a fallback, which fails when there is no committed offset).
pub fn reset_start(reset: OffsetReset) -> Start {
    match reset {
        OffsetReset::Earliest => Start::Earliest,
        OffsetReset::Latest => Start::Latest,
        OffsetReset::Fail => Start::Group(OffsetReset::Fail),
    }
}

fn render(offsets: &BTreeMap<TopicPartition, i64>) -> String {
    let items: Vec<String> = offsets.iter().map(|(tp, o)| format!("{tp}: {o}")).collect();
    format!("{{{}}}", items.join(", "))
}

/// Decides where the assigned partitions start.
///
/// - Without restored state, the configured start position applies:
///   "no restored state, starting from {position}".
/// - With restored state, restored offsets win over the configured position,
///   and assigned partitions the state does not know start from earliest (they
///   appeared after the snapshot, so all their records are new to the job):
///   "restored offsets {t-0: 5, ...}" (plus the partitions starting from earliest).
pub fn plan_starts(
    assigned: &[TopicPartition],
    restored: Option<&BTreeMap<TopicPartition, i64>>,
    start: &StartPosition,
) -> StartPlan {
    let mut starts = BTreeMap::new();
    match restored {
        None => {
            for tp in assigned {
                starts.insert(tp.clone(), configured(tp, start));
            }
            StartPlan {
                starts,
                log_line: format!("no restored state, starting from {start}"),
            }
        }
        Some(r) => {
            let mut known = BTreeMap::new();
            let mut unknown = Vec::new();
            for tp in assigned {
                match r.get(tp) {
                    Some(o) => {
                        known.insert(tp.clone(), *o);
                        starts.insert(tp.clone(), Start::Offset(*o));
                    }
                    None => {
                        unknown.push(tp.to_string());
                        starts.insert(tp.clone(), Start::Earliest);
                    }
                }
            }
            let mut log_line = format!("restored offsets {}", render(&known));
            if !unknown.is_empty() {
                log_line.push_str(&format!(
                    "; partitions not in the restored state start from earliest: [{}]",
                    unknown.join(", ")
                ));
            }
            StartPlan { starts, log_line }
        }
    }
}

/// Partitions of `now` that are new compared with `known` (discovery).
pub fn discovered(known: &[TopicPartition], now: &[TopicPartition]) -> Vec<TopicPartition> {
    let mut v: Vec<TopicPartition> = now
        .iter()
        .filter(|tp| !known.contains(tp))
        .cloned()
        .collect();
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tps(topic: &str, n: i32) -> Vec<TopicPartition> {
        (0..n).map(|p| TopicPartition::new(topic, p)).collect()
    }

    #[test]
    fn every_partition_has_exactly_one_subtask() {
        for par in 1..=9 {
            let all: Vec<TopicPartition> = tps("a", 8).into_iter().chain(tps("bb", 5)).collect();
            let mut seen = Vec::new();
            for s in 0..par {
                seen.extend(assigned(&all, s, par));
            }
            seen.sort();
            let mut want = all.clone();
            want.sort();
            assert_eq!(seen, want, "parallelism {par}");
        }
    }

    #[test]
    fn partitions_of_a_topic_spread_evenly_and_stably() {
        let all = tps("orders", 8);
        for s in 0..4 {
            assert_eq!(assigned(&all, s, 4).len(), 2);
        }
        // Adding partitions never moves existing ones.
        let more = tps("orders", 12);
        for tp in &all {
            assert_eq!(
                subtask_for(tp, 4),
                subtask_for(&more[tp.partition as usize], 4)
            );
        }
        // Fixed forever: the hash is seeded XXH64, not a random hasher.
        let first = subtask_for(&TopicPartition::new("orders", 0), 4);
        assert_eq!(first, subtask_for(&TopicPartition::new("orders", 0), 4));
        assert_eq!(
            (1..4)
                .map(|p| subtask_for(&TopicPartition::new("orders", p), 4))
                .collect::<Vec<_>>(),
            (1..4).map(|p| (first + p) % 4).collect::<Vec<_>>()
        );
    }

    #[test]
    fn fresh_start_uses_configured_position() {
        let a = tps("t", 2);
        let p = plan_starts(&a, None, &StartPosition::Earliest);
        assert_eq!(p.log_line, "no restored state, starting from earliest");
        assert!(p.starts.values().all(|s| *s == Start::Earliest));
        let p = plan_starts(&a, None, &StartPosition::Latest);
        assert_eq!(p.log_line, "no restored state, starting from latest");
        assert!(p.starts.values().all(|s| *s == Start::Latest));
        let p = plan_starts(&a, None, &StartPosition::Timestamp(77));
        assert!(p.starts.values().all(|s| *s == Start::Timestamp(77)));
        let p = plan_starts(
            &a,
            None,
            &StartPosition::GroupOffsets {
                reset: OffsetReset::Latest,
            },
        );
        assert!(
            p.starts
                .values()
                .all(|s| *s == Start::Group(OffsetReset::Latest))
        );
        assert_eq!(
            p.log_line,
            "no restored state, starting from committed group offsets (reset: Latest)"
        );
    }

    #[test]
    fn specific_offsets_fall_back_per_partition() {
        let a = tps("t", 3);
        let mut offsets = BTreeMap::new();
        offsets.insert(TopicPartition::new("t", 1), 42);
        let start = StartPosition::Specific {
            offsets,
            fallback: OffsetReset::Latest,
        };
        let p = plan_starts(&a, None, &start);
        assert_eq!(p.starts[&a[0]], Start::Latest);
        assert_eq!(p.starts[&a[1]], Start::Offset(42));
        assert_eq!(p.starts[&a[2]], Start::Latest);
        assert_eq!(
            p.log_line,
            "no restored state, starting from specific offsets {t-1: 42} (fallback: Latest)"
        );
        let start = StartPosition::Specific {
            offsets: BTreeMap::new(),
            fallback: OffsetReset::Fail,
        };
        let p = plan_starts(&a, None, &start);
        assert_eq!(p.starts[&a[0]], Start::Group(OffsetReset::Fail));
    }

    #[test]
    fn restored_offsets_win_and_unknown_partitions_start_from_earliest() {
        let a = tps("t", 3);
        let mut r = BTreeMap::new();
        r.insert(TopicPartition::new("t", 0), 5);
        r.insert(TopicPartition::new("t", 2), 9);
        r.insert(TopicPartition::new("other", 0), 1);
        let p = plan_starts(&a, Some(&r), &StartPosition::Latest);
        assert_eq!(p.starts[&a[0]], Start::Offset(5));
        assert_eq!(p.starts[&a[1]], Start::Earliest);
        assert_eq!(p.starts[&a[2]], Start::Offset(9));
        assert_eq!(
            p.log_line,
            "restored offsets {t-0: 5, t-2: 9}; partitions not in the restored state start from earliest: [t-1]"
        );
        let p = plan_starts(&a[..1], Some(&r), &StartPosition::Latest);
        assert_eq!(p.log_line, "restored offsets {t-0: 5}");
        // Restored but empty (the subtask had no partitions): still restored.
        let p = plan_starts(&[], Some(&BTreeMap::new()), &StartPosition::Latest);
        assert_eq!(p.log_line, "restored offsets {}");
    }

    #[test]
    fn discovery_finds_only_new_partitions() {
        let known = tps("t", 2);
        let mut now = tps("t", 3);
        now.push(TopicPartition::new("u", 0));
        assert_eq!(
            discovered(&known, &now),
            vec![TopicPartition::new("t", 2), TopicPartition::new("u", 0)]
        );
        assert!(discovered(&now, &now).is_empty());
    }
}
