//! The persisted snapshot format, shared by checkpoints and savepoints (version 1,
//! documented in docs/snapshot-format.md). Changing anything here needs a version
//! bump and a reader for the old version.
//!
//! A snapshot directory holds `_metadata` (JSON, written last and atomically) and
//! one state file per stateful operator subtask. All paths in `_metadata` are
//! relative to the directory, so a snapshot can be copied anywhere and restored.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::error::SnapshotError;
use crate::keygroup::KeyGroupRange;

pub const METADATA_FILE: &str = "_metadata";
pub const FORMAT_NAME: &str = "runnel-snapshot";
pub const FORMAT_VERSION: u32 = 1;
pub const STATE_FILE_MAGIC: &[u8; 4] = b"RNLS";
pub const STATE_FILE_VERSION: u16 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapshotMetadata {
    pub format: String,
    pub version: u32,
    /// "checkpoint" or "savepoint".
    pub kind: String,
    pub checkpoint_id: u64,
    pub job_name: String,
    pub created_ms: i64,
    pub max_parallelism: u32,
    pub operators: Vec<OperatorMeta>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OperatorMeta {
    /// The operator's name, which is its stable identity across job versions.
    pub uid: String,
    pub parallelism: u32,
    /// Keyed state descriptors registered by the operator.
    pub keyed_states: Vec<KeyedStateMeta>,
    pub subtasks: Vec<SubtaskMeta>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyedStateMeta {
    pub name: String,
    /// value | list | map | reducing | aggregating
    pub kind: String,
    /// The TTL the state was written with. TTL-enabled entries carry a last-access
    /// timestamp, so this decides how entries are decoded.
    pub ttl: Option<TtlMeta>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TtlMeta {
    pub ttl_ms: u64,
    pub update_type: String,
    pub visibility: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubtaskMeta {
    pub index: u32,
    /// Key groups this subtask owned; absent for non-keyed operators.
    pub key_groups: Option<KeyGroupRange>,
    /// State file, relative to the snapshot directory.
    pub file: String,
    pub size: u64,
    /// XXH64 (seed 0) of the whole state file, lower-case hex.
    pub checksum: String,
    pub keyed_entries: u64,
    pub operator_state_items: u64,
    pub in_flight_records: u64,
}

/// Contents of one state file (one operator subtask).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SubtaskState {
    pub operator_states: Vec<OperatorListData>,
    /// Sorted by key group.
    pub key_groups: Vec<KeyGroupData>,
    /// Records that were in flight on the operator's inputs (unaligned checkpoints),
    /// each encoded as a `StreamRecord` of the input type.
    pub in_flight: Vec<ByteBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Redistribution {
    /// On restore the concatenated list is split evenly among the new subtasks.
    EvenSplit,
    /// On restore every subtask receives the whole concatenated list.
    Union,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OperatorListData {
    pub name: String,
    pub mode: Redistribution,
    pub items: Vec<ByteBuf>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KeyGroupData {
    pub key_group: u32,
    pub tables: Vec<TableData>,
    pub timers: Vec<TimerData>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TableData {
    pub name: String,
    /// (postcard-encoded key, postcard-encoded entry) pairs.
    pub entries: Vec<(ByteBuf, ByteBuf)>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimerData {
    pub key: ByteBuf,
    pub timestamp: i64,
    /// 0 = event time, 1 = processing time.
    pub domain: u8,
}

pub fn checksum_hex(bytes: &[u8]) -> String {
    format!("{:016x}", xxhash_rust::xxh64::xxh64(bytes, 0))
}

/// Encodes a state file: magic, version (u16 LE), postcard body, XXH64 of the body
/// (u64 LE). The trailing checksum catches truncation and bit rot even when the
/// metadata is unavailable (e.g. `runnel inspect` on a single file).
pub fn encode_state_file(state: &SubtaskState) -> Result<Vec<u8>, SnapshotError> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(STATE_FILE_MAGIC);
    out.extend_from_slice(&STATE_FILE_VERSION.to_le_bytes());
    let out = postcard::to_extend(state, out).map_err(|e| SnapshotError::Encode(e.to_string()))?;
    let mut out = out;
    let sum = xxhash_rust::xxh64::xxh64(&out[6..], 0);
    out.extend_from_slice(&sum.to_le_bytes());
    Ok(out)
}

pub fn decode_state_file(path: &str, bytes: &[u8]) -> Result<SubtaskState, SnapshotError> {
    let corrupt = |reason: String| SnapshotError::CorruptStateFile {
        path: path.to_string(),
        reason,
    };
    if bytes.len() < 14 {
        return Err(corrupt(format!("truncated: only {} bytes", bytes.len())));
    }
    if &bytes[..4] != STATE_FILE_MAGIC {
        return Err(corrupt("not a Runnel state file (bad magic)".into()));
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version != STATE_FILE_VERSION {
        return Err(corrupt(format!(
            "unsupported state file version {version} (this runtime reads {STATE_FILE_VERSION})"
        )));
    }
    let body = &bytes[6..bytes.len() - 8];
    let mut tail = [0u8; 8];
    tail.copy_from_slice(&bytes[bytes.len() - 8..]);
    if xxhash_rust::xxh64::xxh64(body, 0) != u64::from_le_bytes(tail) {
        return Err(corrupt(
            "checksum mismatch (the file is truncated or corrupt)".into(),
        ));
    }
    postcard::from_bytes(body).map_err(|e| corrupt(format!("undecodable body: {e}")))
}

pub fn decode_metadata(path: &str, bytes: &[u8]) -> Result<SnapshotMetadata, SnapshotError> {
    #[derive(Deserialize)]
    struct Probe {
        format: Option<String>,
        version: Option<u32>,
    }
    let corrupt = |reason: String| SnapshotError::CorruptMetadata {
        path: path.to_string(),
        reason,
    };
    let probe: Probe = serde_json::from_slice(bytes)
        .map_err(|e| corrupt(format!("not valid JSON ({e}); the file may be truncated")))?;
    if probe.format.as_deref() != Some(FORMAT_NAME) {
        return Err(corrupt(format!(
            "format is {:?}, expected \"{FORMAT_NAME}\"",
            probe.format
        )));
    }
    match probe.version {
        Some(FORMAT_VERSION) => {}
        Some(v) => {
            return Err(SnapshotError::UnsupportedVersion {
                path: path.to_string(),
                found: v,
                supported: FORMAT_VERSION.to_string(),
            });
        }
        None => return Err(corrupt("missing version".into())),
    }
    let md: SnapshotMetadata = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    for op in &md.operators {
        for st in &op.subtasks {
            if st.file.contains("..") || st.file.starts_with('/') {
                return Err(corrupt(format!(
                    "state file path '{}' escapes the snapshot directory",
                    st.file
                )));
            }
        }
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SubtaskState {
        SubtaskState {
            operator_states: vec![OperatorListData {
                name: "offsets".into(),
                mode: Redistribution::Union,
                items: vec![ByteBuf::from(vec![1, 2, 3])],
            }],
            key_groups: vec![KeyGroupData {
                key_group: 7,
                tables: vec![TableData {
                    name: "count".into(),
                    entries: vec![(ByteBuf::from(vec![9]), ByteBuf::from(vec![4, 2]))],
                }],
                timers: vec![],
            }],
            in_flight: vec![],
        }
    }

    #[test]
    fn state_file_roundtrip() {
        let bytes = encode_state_file(&sample()).unwrap();
        assert_eq!(decode_state_file("f", &bytes).unwrap(), sample());
    }

    #[test]
    fn every_truncation_and_every_single_bit_flip_is_detected() {
        let bytes = encode_state_file(&sample()).unwrap();
        for len in 0..bytes.len() {
            let err = decode_state_file("f", &bytes[..len]).unwrap_err();
            assert!(matches!(err, SnapshotError::CorruptStateFile { .. }));
        }
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                assert!(decode_state_file("f", &b).is_err(), "flip at {i}:{bit}");
            }
        }
    }

    #[test]
    fn metadata_version_and_truncation_errors_are_clear() {
        let md = SnapshotMetadata {
            format: FORMAT_NAME.into(),
            version: FORMAT_VERSION,
            kind: "checkpoint".into(),
            checkpoint_id: 3,
            job_name: "j".into(),
            created_ms: 0,
            max_parallelism: 128,
            operators: vec![],
        };
        let bytes = serde_json::to_vec(&md).unwrap();
        assert_eq!(decode_metadata("m", &bytes).unwrap(), md);
        let err = decode_metadata("m", &bytes[..bytes.len() / 2]).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        let mut v2 = md.clone();
        v2.version = 99;
        let err = decode_metadata("m", &serde_json::to_vec(&v2).unwrap()).unwrap_err();
        assert!(
            err.to_string()
                .contains("unsupported snapshot format version 99"),
            "{err}"
        );
    }
}
