//! The persisted snapshot format, shared by checkpoints and savepoints (version 1,
//! documented in docs/snapshot-format.md). Changing anything here needs a version
//! bump and a reader for the old version.
//!
//! A snapshot directory holds `_metadata` (JSON, written last and atomically) and
//! one state file per stateful operator subtask. All paths in `_metadata` are
//! relative to the directory, so a snapshot can be copied anywhere and restored.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use xxhash_rust::xxh64::Xxh64;

use super::body_input::{BodyInput, Checked};
pub use super::entries::Entries;
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
    /// (postcard-encoded key, postcard-encoded entry) pairs; persisted as a
    /// `Vec<(ByteBuf, ByteBuf)>` (see [`Entries`]).
    pub entries: Entries,
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

/// Size and whole-file checksum of a state file, as recorded in `_metadata`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileDigest {
    pub size: u64,
    /// XXH64 (seed 0) of the whole file, lower-case hex.
    pub checksum: String,
}

const HEADER_LEN: u64 = 6;
const TRAILER_LEN: u64 = 8;

/// Passes bytes through to `inner`, hashing the whole stream and, while
/// `in_body` is set, the body separately: the checksums are computed as bytes go
/// by instead of over a buffered copy of the file.
struct HashingWriter<W: Write> {
    inner: W,
    whole: Xxh64,
    body: Xxh64,
    in_body: bool,
    written: u64,
    /// The first I/O error, kept because postcard's `to_io` reports only that
    /// serialization failed, not why.
    error: Option<std::io::Error>,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.inner.write(buf) {
            Ok(n) => {
                self.whole.update(&buf[..n]);
                if self.in_body {
                    self.body.update(&buf[..n]);
                }
                self.written += n as u64;
                Ok(n)
            }
            Err(e) => {
                if self.error.is_none() {
                    self.error = Some(std::io::Error::new(e.kind(), e.to_string()));
                }
                Err(e)
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Streams a state file into `out`: magic, version (u16 LE), postcard body, XXH64
/// of the body (u64 LE). The trailing checksum catches truncation and bit rot even
/// when the metadata is unavailable (e.g. `runnel inspect` on a single file).
/// Returns the size and whole-file checksum for `_metadata`.
pub fn write_state_file(
    state: &SubtaskState,
    out: &mut dyn Write,
) -> Result<FileDigest, SnapshotError> {
    let mut w = HashingWriter {
        inner: out,
        whole: Xxh64::new(0),
        body: Xxh64::new(0),
        in_body: false,
        written: 0,
        error: None,
    };
    let io_err = |w: &mut HashingWriter<&mut dyn Write>, e: std::io::Error| {
        SnapshotError::Write(w.error.take().unwrap_or(e))
    };
    let mut header = [0u8; HEADER_LEN as usize];
    header[..4].copy_from_slice(STATE_FILE_MAGIC);
    header[4..].copy_from_slice(&STATE_FILE_VERSION.to_le_bytes());
    if let Err(e) = w.write_all(&header) {
        return Err(io_err(&mut w, e));
    }
    w.in_body = true;
    // postcard writes many small pieces; batch them before hashing and storage.
    let buffered = std::io::BufWriter::with_capacity(256 * 1024, &mut w);
    let flushed = postcard::to_io(state, buffered)
        .map_err(|e| e.to_string())
        .and_then(|b| {
            b.into_inner()
                .map(|_| ())
                .map_err(|e| e.error().to_string())
        });
    if let Err(reason) = flushed {
        return Err(match w.error.take() {
            Some(e) => SnapshotError::Write(e),
            None => SnapshotError::Encode(reason),
        });
    }
    w.in_body = false;
    let sum = w.body.digest();
    if let Err(e) = w.write_all(&sum.to_le_bytes()).and_then(|_| w.flush()) {
        return Err(io_err(&mut w, e));
    }
    Ok(FileDigest {
        size: w.written,
        checksum: format!("{:016x}", w.whole.digest()),
    })
}

/// Encodes a state file into memory (tests and small tools; the runtime streams
/// with [`write_state_file`]).
pub fn encode_state_file(state: &SubtaskState) -> Result<Vec<u8>, SnapshotError> {
    let mut out = Vec::with_capacity(64);
    write_state_file(state, &mut out)?;
    Ok(out)
}

/// Reads a state file of `size` bytes from a stream, verifying it as it goes: the
/// body checksum in the trailer, the exact length, and (when given) the
/// whole-file checksum recorded in `_metadata`. A corrupt file is reported as a
/// checksum mismatch when the checksum says so, whatever the decoder tripped on.
pub fn read_state_file(
    path: &str,
    input: &mut dyn Read,
    size: u64,
    expected_checksum: Option<&str>,
) -> Result<SubtaskState, SnapshotError> {
    let corrupt = |reason: String| SnapshotError::CorruptStateFile {
        path: path.to_string(),
        reason,
    };
    let read_err = |e: std::io::Error| SnapshotError::Read {
        path: path.to_string(),
        source: e,
    };
    if size < HEADER_LEN + TRAILER_LEN {
        return Err(corrupt(format!("truncated: only {size} bytes")));
    }
    let mut header = [0u8; HEADER_LEN as usize];
    input.read_exact(&mut header).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            corrupt("truncated header".into())
        } else {
            read_err(e)
        }
    })?;
    if &header[..4] != STATE_FILE_MAGIC {
        return Err(corrupt("not a Runnel state file (bad magic)".into()));
    }
    let version = u16::from_le_bytes([header[4], header[5]]);
    if version != STATE_FILE_VERSION {
        return Err(corrupt(format!(
            "unsupported state file version {version} (this runtime reads {STATE_FILE_VERSION})"
        )));
    }
    let hash = match expected_checksum {
        Some(_) => {
            let mut whole = Xxh64::new(0);
            whole.update(&header);
            Checked::Whole(whole)
        }
        None => Checked::Body(Xxh64::new(0)),
    };
    let body_len = size - HEADER_LEN - TRAILER_LEN;
    let mut de = postcard::Deserializer::from_flavor(BodyInput::new(input, body_len, hash));
    let decoded = SubtaskState::deserialize(&mut de);
    let end = de
        .finalize()
        .map_err(|e| corrupt(format!("undecodable body: {e}")))?
        .finish();
    // A failing source is a storage problem, not a corrupt file: reporting it
    // as corruption would let discovery skip to an older checkpoint.
    if let Some(e) = end.error {
        return Err(read_err(e));
    }
    let mut tail = [0u8; TRAILER_LEN as usize];
    let tail_ok = end.unread == 0 && read_full(input, &mut tail).map_err(read_err)?;
    let mut extra = [0u8; 1];
    let longer = tail_ok && read_full(input, &mut extra).map_err(read_err)?;
    if !tail_ok {
        return Err(corrupt(format!(
            "truncated: the stream ended after {} of {size} bytes (truncated or replaced)",
            HEADER_LEN + body_len - end.unread
        )));
    }
    // The whole-file checksum covers the trailer: a match proves the body
    // checksum in it right as well, so only one of the two is computed.
    let body_digest = match end.hash {
        Checked::Whole(mut whole) => {
            whole.update(&tail);
            let whole_sum = format!("{:016x}", whole.digest());
            if expected_checksum != Some(whole_sum.as_str()) {
                return Err(corrupt("checksum does not match _metadata".into()));
            }
            None
        }
        Checked::Body(body) => Some(body.digest()),
    };
    if longer {
        return Err(corrupt(format!(
            "longer than the {size} bytes _metadata records (truncated or replaced)"
        )));
    }
    if body_digest.is_some_and(|d| d != u64::from_le_bytes(tail)) {
        return Err(corrupt(
            "checksum mismatch (the file is truncated or corrupt)".into(),
        ));
    }
    let state = decoded.map_err(|e| corrupt(format!("undecodable body: {e}")))?;
    if end.unconsumed != 0 {
        return Err(corrupt(format!(
            "{} bytes after the encoded state (corrupt)",
            end.unconsumed
        )));
    }
    Ok(state)
}

/// Fills `buf` from `r`: `Ok(false)` if the stream ends first.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<bool> {
    match r.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// Decodes a state file held in memory (see [`read_state_file`]).
pub fn decode_state_file(path: &str, bytes: &[u8]) -> Result<SubtaskState, SnapshotError> {
    let mut r = bytes;
    read_state_file(path, &mut r, bytes.len() as u64, None)
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
                    entries: [(vec![9u8], vec![4u8, 2])].into_iter().collect(),
                }],
                timers: vec![],
            }],
            in_flight: vec![],
        }
    }

    /// The persisted bytes of a small state file, pinned: a change here is a
    /// format change and needs a version bump and a reader for version 1.
    #[test]
    fn state_file_bytes_are_pinned() {
        let bytes = encode_state_file(&sample()).unwrap();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "524e4c53010001076f66667365747301010301020301070105636f756e74010109020402000025f52d190c2d5eb5"
        );
    }

    #[test]
    fn state_file_roundtrip() {
        let bytes = encode_state_file(&sample()).unwrap();
        assert_eq!(decode_state_file("f", &bytes).unwrap(), sample());
    }

    #[test]
    fn streamed_digest_matches_the_bytes_and_metadata_checksum_is_checked() {
        let mut out = Vec::new();
        let d = write_state_file(&sample(), &mut out).unwrap();
        assert_eq!(d.size, out.len() as u64);
        assert_eq!(d.checksum, checksum_hex(&out));
        let mut r = &out[..];
        assert_eq!(
            read_state_file("f", &mut r, d.size, Some(&d.checksum)).unwrap(),
            sample()
        );
        let mut r = &out[..];
        let err = read_state_file("f", &mut r, d.size, Some("0000000000000000")).unwrap_err();
        assert!(err.to_string().contains("checksum does not match"), "{err}");
        // Longer than recorded.
        let mut longer = out.clone();
        longer.push(0);
        let mut r = &longer[..];
        let err = read_state_file("f", &mut r, d.size, None).unwrap_err();
        assert!(err.to_string().contains("longer than"), "{err}");
        // Shorter than recorded.
        let mut r = &out[..out.len() - 1];
        let err = read_state_file("f", &mut r, d.size, Some(&d.checksum)).unwrap_err();
        assert!(err.to_string().contains("truncated or replaced"), "{err}");
    }

    #[test]
    fn a_corrupt_length_never_allocates_beyond_the_file() {
        // Body: one operator list whose name claims 2^62 bytes.
        let mut body = vec![1u8];
        body.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40]);
        let mut file = STATE_FILE_MAGIC.to_vec();
        file.extend_from_slice(&STATE_FILE_VERSION.to_le_bytes());
        file.extend_from_slice(&body);
        file.extend_from_slice(&xxhash_rust::xxh64::xxh64(&body, 0).to_le_bytes());
        let err = decode_state_file("f", &file).unwrap_err();
        assert!(err.to_string().contains("undecodable body"), "{err}");
    }

    #[test]
    fn large_state_streams_through_a_small_writer() {
        // Many entries and a value larger than any internal buffer.
        let mut st = sample();
        st.key_groups[0].tables[0].entries = (0..50_000u32)
            .map(|i| {
                (
                    ByteBuf::from(i.to_le_bytes().to_vec()),
                    ByteBuf::from(vec![7u8; 9]),
                )
            })
            .collect();
        st.in_flight = vec![ByteBuf::from(vec![3u8; 1 << 20])];
        let mut out = Vec::new();
        let d = write_state_file(&st, &mut out).unwrap();
        let mut r = std::io::BufReader::with_capacity(17, &out[..]);
        assert_eq!(
            read_state_file("f", &mut r, d.size, Some(&d.checksum)).unwrap(),
            st
        );
    }

    /// Byte strings that straddle read blocks, or exceed one, come out whole;
    /// sources that return a few bytes per read are fine.
    #[test]
    fn byte_strings_across_and_beyond_blocks_decode() {
        use crate::checkpoint::body_input::BLOCK;
        let mut st = sample();
        st.key_groups[0].tables[0].entries = (0..3000u32)
            .map(|i| {
                (
                    ByteBuf::from(i.to_le_bytes().to_vec()),
                    ByteBuf::from(vec![i as u8; 1000 + (i as usize % 7)]),
                )
            })
            .collect();
        st.in_flight = vec![
            ByteBuf::from(vec![1u8; BLOCK]),
            ByteBuf::from(vec![2u8; 3 * BLOCK + 5]),
        ];
        let bytes = encode_state_file(&st).unwrap();
        assert!(bytes.len() > 4 * BLOCK);
        assert_eq!(decode_state_file("f", &bytes).unwrap(), st);
        let mut r = std::io::BufReader::with_capacity(4093, &bytes[..]);
        assert_eq!(
            read_state_file("f", &mut r, bytes.len() as u64, None).unwrap(),
            st
        );
    }

    /// A source that fails mid-body (S3 going away) is a read error, not a
    /// corrupt file: discovery must not skip to an older checkpoint for it.
    #[test]
    fn a_failing_source_is_a_read_error_not_corruption() {
        struct Failing<'a>(&'a [u8]);
        impl Read for Failing<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.0.is_empty() {
                    return Err(std::io::Error::other("connection reset"));
                }
                let n = self.0.len().min(buf.len()).min(100);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut st = sample();
        st.in_flight = vec![ByteBuf::from(vec![5u8; 10_000])];
        let bytes = encode_state_file(&st).unwrap();
        let mut r = Failing(&bytes[..bytes.len() / 2]);
        let err = read_state_file("f", &mut r, bytes.len() as u64, None).unwrap_err();
        assert!(matches!(err, SnapshotError::Read { .. }), "{err:?}");
        assert!(err.to_string().contains("connection reset"), "{err}");
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
                // With the checksum of `_metadata`, only the whole-file
                // checksum is computed: it alone must catch every flip,
                // in the trailer too.
                let mut r = &b[..];
                let err = read_state_file("f", &mut r, b.len() as u64, Some(&checksum_hex(&bytes)))
                    .unwrap_err();
                assert!(
                    matches!(err, SnapshotError::CorruptStateFile { .. }),
                    "flip at {i}:{bit}: {err:?}"
                );
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
