//! What `runnel savepoint inspect` reports beyond the metadata: the size of
//! each named state, and decoded connector positions (Kafka offsets). Pure
//! over a loaded snapshot, so it is unit-tested without storage.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::LoadedSnapshot;
use super::format::SubtaskState;

/// Entries and bytes (keys plus values, as stored) of one named state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateSize {
    pub entries: u64,
    pub bytes: u64,
}

/// One operator's states by name: keyed states (`keyed`) and operator list
/// states (`operator`), summed over subtasks.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorStateSizes {
    pub keyed: BTreeMap<String, StateSize>,
    pub operator: BTreeMap<String, StateSize>,
    pub timers: u64,
}

/// A Kafka source's next-to-read offset of one partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaOffset {
    pub operator: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// Uncommitted output an exactly-once Kafka sink holds (committed after the
/// checkpoint completes, or by recovery on restore).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaPendingOutput {
    pub operator: String,
    pub subtask: u32,
    pub epochs: u64,
    pub records: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotSummary {
    pub state_sizes: BTreeMap<String, OperatorStateSizes>,
    pub kafka_offsets: Vec<KafkaOffset>,
    pub kafka_pending_output: Vec<KafkaPendingOutput>,
}

fn add_subtask(sizes: &mut OperatorStateSizes, s: &SubtaskState) {
    for l in &s.operator_states {
        let e = sizes.operator.entry(l.name.clone()).or_default();
        e.entries += l.items.len() as u64;
        e.bytes += l.items.iter().map(|i| i.len() as u64).sum::<u64>();
    }
    for kg in &s.key_groups {
        sizes.timers += kg.timers.len() as u64;
        for t in &kg.tables {
            let e = sizes.keyed.entry(t.name.clone()).or_default();
            e.entries += t.entries.len() as u64;
            e.bytes += t.entries.bytes();
        }
    }
}

/// Summarises a snapshot. Connector states that do not decode are left out
/// of the connector lists (the sizes still count them): inspecting must not
/// fail on a state written by a newer connector version.
pub fn summarize(snap: &LoadedSnapshot) -> SnapshotSummary {
    let mut out = SnapshotSummary::default();
    let mut uids: Vec<&String> = snap.states.keys().collect();
    uids.sort();
    for uid in uids {
        let mut subtasks: Vec<&(u32, SubtaskState)> = snap.states[uid].iter().collect();
        subtasks.sort_by_key(|(i, _)| *i);
        let sizes = out.state_sizes.entry(uid.clone()).or_default();
        for (_, s) in subtasks {
            add_subtask(sizes, s);
            #[cfg(feature = "kafka")]
            kafka_positions(
                &mut out.kafka_offsets,
                &mut out.kafka_pending_output,
                uid,
                s,
            );
        }
    }
    out.kafka_offsets.sort_by(|a, b| {
        (&a.operator, &a.topic, a.partition).cmp(&(&b.operator, &b.topic, b.partition))
    });
    out.kafka_offsets.dedup_by(|a, b| {
        (&a.operator, &a.topic, a.partition) == (&b.operator, &b.topic, b.partition)
    });
    out
}

#[cfg(feature = "kafka")]
fn kafka_positions(
    offsets: &mut Vec<KafkaOffset>,
    pending: &mut Vec<KafkaPendingOutput>,
    uid: &str,
    s: &SubtaskState,
) {
    use crate::kafka::OFFSETS_STATE;
    use crate::kafka::OffsetEntry;
    use crate::kafka::eos::{EOS_STATE, SinkTxnState};
    for l in &s.operator_states {
        if l.name == OFFSETS_STATE {
            for item in &l.items {
                if let Ok(e) = postcard::from_bytes::<OffsetEntry>(item) {
                    offsets.push(KafkaOffset {
                        operator: uid.to_string(),
                        topic: e.topic,
                        partition: e.partition,
                        offset: e.offset,
                    });
                }
            }
        } else if l.name == EOS_STATE {
            for item in &l.items {
                if let Ok(t) = postcard::from_bytes::<SinkTxnState>(item) {
                    pending.push(KafkaPendingOutput {
                        operator: uid.to_string(),
                        subtask: t.subtask,
                        epochs: t.epochs.len() as u64,
                        records: t.epochs.iter().map(|e| e.records.len() as u64).sum(),
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_bytes::ByteBuf;

    use super::*;
    use crate::checkpoint::format::{
        KeyGroupData, OperatorListData, Redistribution, SnapshotMetadata, TableData, TimerData,
    };

    fn b(v: &[u8]) -> ByteBuf {
        ByteBuf::from(v.to_vec())
    }

    fn snapshot(states: HashMap<String, Vec<(u32, SubtaskState)>>) -> LoadedSnapshot {
        LoadedSnapshot {
            uri: "file:///x".into(),
            metadata: SnapshotMetadata {
                format: "runnel-snapshot".into(),
                version: 1,
                kind: "savepoint".into(),
                checkpoint_id: 1,
                job_name: "j".into(),
                created_ms: 0,
                max_parallelism: 128,
                operators: vec![],
            },
            states,
        }
    }

    #[test]
    fn sizes_are_summed_per_state_over_subtasks() {
        let sub = |n: usize| SubtaskState {
            operator_states: vec![OperatorListData {
                name: "buffer".into(),
                mode: Redistribution::EvenSplit,
                items: vec![b(b"abc"); n],
            }],
            key_groups: vec![KeyGroupData {
                key_group: 3,
                tables: vec![TableData {
                    name: "count".into(),
                    entries: vec![(b(b"k"), b(b"1234")); n].into_iter().collect(),
                }],
                timers: vec![
                    TimerData {
                        key: b(b"k"),
                        timestamp: 5,
                        domain: 0,
                    };
                    n
                ],
            }],
            in_flight: vec![],
        };
        let snap = snapshot(HashMap::from([(
            "op".to_string(),
            vec![(0, sub(2)), (1, sub(3))],
        )]));
        let s = summarize(&snap);
        let op = &s.state_sizes["op"];
        assert_eq!(
            op.keyed["count"],
            StateSize {
                entries: 5,
                bytes: 25
            }
        );
        assert_eq!(
            op.operator["buffer"],
            StateSize {
                entries: 5,
                bytes: 15
            }
        );
        assert_eq!(op.timers, 5);
        assert!(s.kafka_offsets.is_empty());
    }

    #[cfg(feature = "kafka")]
    #[test]
    fn kafka_offsets_and_pending_output_are_decoded() {
        use crate::kafka::eos::{EOS_STATE, OutRecord, PendingEpoch, SinkTxnState};
        use crate::kafka::{OFFSETS_STATE, OffsetEntry};
        let offsets = |entries: &[(&str, i32, i64)]| OperatorListData {
            name: OFFSETS_STATE.into(),
            mode: Redistribution::Union,
            items: entries
                .iter()
                .map(|(t, p, o)| {
                    ByteBuf::from(
                        postcard::to_allocvec(&OffsetEntry {
                            topic: t.to_string(),
                            partition: *p,
                            offset: *o,
                        })
                        .unwrap(),
                    )
                })
                .collect(),
        };
        let src = |l| SubtaskState {
            operator_states: vec![l],
            key_groups: vec![],
            in_flight: vec![],
        };
        let rec = OutRecord {
            key: None,
            value: b(b"v"),
            timestamp: None,
        };
        let sink = SubtaskState {
            operator_states: vec![
                OperatorListData {
                    name: EOS_STATE.into(),
                    mode: Redistribution::Union,
                    items: vec![ByteBuf::from(
                        postcard::to_allocvec(&SinkTxnState {
                            subtask: 0,
                            epochs: vec![PendingEpoch {
                                checkpoint_id: 4,
                                uid: 9,
                                start_offsets: vec![(0, 10)],
                                records: vec![rec; 3],
                            }],
                        })
                        .unwrap(),
                    )],
                },
                // A state that does not decode is skipped, not fatal.
                OperatorListData {
                    name: OFFSETS_STATE.into(),
                    mode: Redistribution::Union,
                    items: vec![b(&[0xff, 0xff, 0xff])],
                },
            ],
            key_groups: vec![],
            in_flight: vec![],
        };
        let snap = snapshot(HashMap::from([
            (
                "in".to_string(),
                vec![
                    (1, src(offsets(&[("t", 1, 7)]))),
                    (0, src(offsets(&[("t", 0, 5), ("u", 0, 2)]))),
                ],
            ),
            ("out".to_string(), vec![(0, sink)]),
        ]));
        let s = summarize(&snap);
        let got: Vec<(String, String, i32, i64)> = s
            .kafka_offsets
            .iter()
            .map(|o| (o.operator.clone(), o.topic.clone(), o.partition, o.offset))
            .collect();
        assert_eq!(
            got,
            vec![
                ("in".into(), "t".into(), 0, 5),
                ("in".into(), "t".into(), 1, 7),
                ("in".into(), "u".into(), 0, 2),
            ]
        );
        assert_eq!(
            s.kafka_pending_output,
            vec![KafkaPendingOutput {
                operator: "out".into(),
                subtask: 0,
                epochs: 1,
                records: 3,
            }]
        );
    }
}
