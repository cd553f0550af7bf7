//! What travels between the coordinator and the workers, and between workers.
//!
//! Every TCP connection carries length-delimited frames (`tokio-util`'s
//! `LengthDelimitedCodec`). The first frame names the connection's role
//! ([`Hello`]). Control frames are postcard-encoded enums; data frames carry a
//! fixed header and a postcard-encoded batch of events (see [`DataFrame`]).
//! Every message after the hello carries the epoch of the attempt it belongs
//! to (see `fence.rs`). The protocol is versioned by [`PROTOCOL_VERSION`]:
//! processes of different versions refuse each other.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use super::assign::Assignment;
use super::fence::Epoch;
use crate::checkpoint::format::{KeyedStateMeta, SubtaskMeta};
use crate::error::{TaskError, UserError};
use crate::event::{Barrier, SnapshotKind, SnapshotTarget};
use crate::executor::AckedOp;
use crate::task::Control;
use crate::task::chain::Notification;

pub const PROTOCOL_VERSION: u32 = 2;

/// Largest frame accepted (a batch of big records, or an ack of many files).
pub const MAX_FRAME: usize = 256 << 20;

#[derive(Debug, Serialize, Deserialize)]
pub enum Hello {
    /// A coordinator takes control of the worker.
    Coordinator { version: u32, incarnation: u64 },
    /// A peer worker opens the data connection for its channels to this
    /// worker in one attempt.
    Data {
        version: u32,
        epoch: Epoch,
        from: u32,
    },
    /// A client asks for the exchange statistics (tests, tools).
    Stats { version: u32 },
}

/// Coordinator → worker.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToWorker {
    Deploy(Box<DeploySpec>),
    Control {
        epoch: Epoch,
        task: (usize, u32),
        control: WireControl,
    },
    /// The attempt is over (the job ended): release its resources.
    Release {
        epoch: Epoch,
    },
    /// Answered with `SyncAck` once every earlier message has been handed to
    /// the tasks (control messages are delivered in connection order).
    Sync {
        seq: u64,
    },
    Heartbeat,
}

/// What a worker needs to deploy its share of one attempt. The job graph is
/// not in it: every process builds it from the same job definition, and
/// `fingerprint` proves that they did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploySpec {
    pub epoch: Epoch,
    pub fingerprint: u64,
    /// `--parallelism` override of the job's default parallelism.
    pub parallelism: Option<u32>,
    pub restore: Option<String>,
    pub assignment: Assignment,
    /// This worker's index in `peers`.
    pub worker: u32,
    /// Data addresses of the attempt's workers.
    pub peers: Vec<String>,
    /// Task names by index, to check that both sides built the same graph.
    pub task_names: Vec<String>,
}

/// Worker → coordinator.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToCoordinator {
    HelloAck {
        version: u32,
        /// Address peers use for data connections.
        data_addr: String,
        slots: u32,
    },
    /// The coordinator is older than the one this worker follows.
    Refused {
        reason: String,
    },
    Deployed {
        epoch: Epoch,
        tasks: u32,
    },
    DeployFailed {
        epoch: Epoch,
        error: String,
    },
    Task {
        epoch: Epoch,
        msg: WireMasterMsg,
    },
    Heartbeat {
        stats: ExchangeStats,
    },
    SyncAck {
        seq: u64,
    },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExchangeStats {
    pub frames_sent: u64,
    pub bytes_sent: u64,
    pub records_sent: u64,
    pub frames_received: u64,
    pub bytes_received: u64,
    /// Times a channel had a batch ready but no credit (back-pressure).
    pub credit_stalls: u64,
    /// Frames received and not yet handed to their task, now and at most.
    pub inbound_queued: u64,
    pub inbound_queued_max: u64,
    /// Largest number of frames any one channel held received but undelivered
    /// (bounded by the credit window).
    pub channel_queued_max: u64,
    pub fenced_messages: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireBarrier {
    pub id: u64,
    pub timestamp_ms: i64,
    pub kind: SnapshotKind,
    /// Root URI of the snapshot storage, and the directory under it.
    pub root: String,
    pub dir: String,
    pub location: String,
    pub is_final: bool,
}

impl WireBarrier {
    pub fn from_barrier(b: &Barrier) -> Self {
        WireBarrier {
            id: b.id,
            timestamp_ms: b.timestamp_ms,
            kind: b.kind,
            root: b.target.storage.uri(""),
            dir: b.target.dir.clone(),
            location: b.target.location.clone(),
            is_final: b.is_final,
        }
    }

    /// Rebuilds the barrier; `open` resolves (and caches) storage roots.
    pub fn to_barrier(&self, open: &super::exchange::OpenStorageFn) -> Result<Barrier, String> {
        Ok(Barrier {
            id: self.id,
            timestamp_ms: self.timestamp_ms,
            kind: self.kind,
            target: Arc::new(SnapshotTarget {
                storage: open(&self.root)?,
                dir: self.dir.clone(),
                location: self.location.clone(),
            }),
            is_final: self.is_final,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum WireControl {
    Trigger(WireBarrier),
    Complete(u64),
    Aborted(u64),
    FinishSources,
    Cancel,
}

impl WireControl {
    pub fn from_control(c: &Control) -> Self {
        match c {
            Control::Trigger(b) => WireControl::Trigger(WireBarrier::from_barrier(b)),
            Control::Notify(Notification::Complete(id)) => WireControl::Complete(*id),
            Control::Notify(Notification::Aborted(id)) => WireControl::Aborted(*id),
            Control::FinishSources => WireControl::FinishSources,
            Control::Cancel => WireControl::Cancel,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireAckedOp {
    pub uid: String,
    pub keyed_metas: Vec<KeyedStateMeta>,
    pub meta: SubtaskMeta,
}

/// A task failure as the coordinator's restart logic needs to see it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum WireTaskError {
    Cancelled,
    /// Restarting cannot help.
    Incompatible(String),
    Fatal {
        task: String,
        message: String,
    },
    Other(String),
}

impl WireTaskError {
    pub fn from_task_error(e: &TaskError) -> Self {
        match e {
            TaskError::Cancelled => WireTaskError::Cancelled,
            TaskError::Incompatible(m) => WireTaskError::Incompatible(m.clone()),
            TaskError::User { task, error } if error.is_fatal() => WireTaskError::Fatal {
                task: task.clone(),
                message: error.to_string(),
            },
            other => WireTaskError::Other(other.to_string()),
        }
    }

    pub fn into_task_error(self, worker: &str) -> TaskError {
        match self {
            WireTaskError::Cancelled => TaskError::Cancelled,
            WireTaskError::Incompatible(m) => TaskError::Incompatible(m),
            WireTaskError::Fatal { task, message } => TaskError::User {
                task,
                error: UserError::fatal(message),
            },
            WireTaskError::Other(m) => TaskError::Internal(format!("on worker {worker}: {m}")),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub enum WireMasterMsg {
    Ack {
        checkpoint_id: u64,
        task: (usize, u32),
        ops: Vec<WireAckedOp>,
        alignment_ms: u64,
    },
    Decline {
        checkpoint_id: u64,
        reason: String,
    },
    SourceFinished,
    TaskExited {
        result: Result<(), WireTaskError>,
    },
}

impl WireAckedOp {
    pub fn from_acked(a: AckedOp) -> Self {
        WireAckedOp {
            uid: a.uid,
            keyed_metas: a.keyed_metas,
            meta: a.meta,
        }
    }
    pub fn into_acked(self) -> AckedOp {
        AckedOp {
            uid: self.uid,
            keyed_metas: self.keyed_metas,
            meta: self.meta,
        }
    }
}

/// Identifies one remote channel of an attempt: the consuming node and its
/// input edge, and the (upstream, downstream) subtask pair. The same on both
/// sides because both build the same graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChannelId {
    pub node: u32,
    pub input: u32,
    pub up: u32,
    pub down: u32,
}

/// Data-connection frames. Hand-laid header (tag + channel id, 17 bytes) in
/// front of the batch bytes so that a batch is encoded once, by the channel's
/// own thread, and never copied into an enclosing message.
#[derive(Debug, PartialEq)]
pub enum DataFrame {
    /// Sender → receiver: one batch (postcard-encoded events).
    Batch {
        channel: ChannelId,
        records: u32,
        payload: Bytes,
    },
    /// Receiver → sender: `n` more batches may be sent on `channel`.
    Credit { channel: ChannelId, n: u32 },
}

const TAG_BATCH: u8 = 1;
const TAG_CREDIT: u8 = 2;

impl DataFrame {
    pub fn encode(&self) -> Bytes {
        let (tag, ch, n, payload) = match self {
            DataFrame::Batch {
                channel,
                records,
                payload,
            } => (TAG_BATCH, channel, *records, Some(payload)),
            DataFrame::Credit { channel, n } => (TAG_CREDIT, channel, *n, None),
        };
        let mut b = BytesMut::with_capacity(21 + payload.map_or(0, |p| p.len()));
        b.put_u8(tag);
        b.put_u32_le(ch.node);
        b.put_u32_le(ch.input);
        b.put_u32_le(ch.up);
        b.put_u32_le(ch.down);
        b.put_u32_le(n);
        if let Some(p) = payload {
            b.put_slice(p);
        }
        b.freeze()
    }

    /// The header of a batch frame, to encode the batch right behind it
    /// (the record count is set afterwards with [`DataFrame::set_records`]).
    pub fn batch_header(channel: ChannelId) -> Vec<u8> {
        let mut b = Vec::with_capacity(4096);
        b.push(TAG_BATCH);
        for v in [channel.node, channel.input, channel.up, channel.down, 0] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b
    }

    pub fn set_records(frame: &mut [u8], records: u32) {
        if frame.len() >= 21 {
            frame[17..21].copy_from_slice(&records.to_le_bytes());
        }
    }

    pub fn decode(mut b: Bytes) -> Result<Self, String> {
        if b.len() < 21 {
            return Err(format!("data frame of {} bytes is too short", b.len()));
        }
        let head = b.split_to(21);
        let u = |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
        let channel = ChannelId {
            node: u(1),
            input: u(5),
            up: u(9),
            down: u(13),
        };
        match head[0] {
            TAG_BATCH => Ok(DataFrame::Batch {
                channel,
                records: u(17),
                payload: b,
            }),
            TAG_CREDIT => Ok(DataFrame::Credit { channel, n: u(17) }),
            t => Err(format!("unknown data frame tag {t}")),
        }
    }
}

pub fn encode_msg<M: Serialize>(m: &M) -> Result<Bytes, String> {
    postcard::to_allocvec(m)
        .map(Bytes::from)
        .map_err(|e| format!("cannot encode a message: {e}"))
}

pub fn decode_msg<M: for<'de> Deserialize<'de>>(b: &[u8]) -> Result<M, String> {
    postcard::from_bytes(b).map_err(|e| format!("cannot decode a message: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_frames_round_trip() {
        let channel = ChannelId {
            node: 3,
            input: 1,
            up: 7,
            down: 65_000,
        };
        let f = DataFrame::Batch {
            channel,
            records: 12,
            payload: Bytes::from_static(b"hello"),
        };
        assert_eq!(DataFrame::decode(f.encode()).unwrap(), f);
        let c = DataFrame::Credit { channel, n: 8 };
        assert_eq!(DataFrame::decode(c.encode()).unwrap(), c);
        assert!(DataFrame::decode(Bytes::from_static(b"\x01abc")).is_err());
        let mut bad = c.encode().to_vec();
        bad[0] = 9;
        assert!(DataFrame::decode(Bytes::from(bad)).is_err());
    }

    #[test]
    fn task_errors_keep_what_restart_decisions_need() {
        let e = WireTaskError::from_task_error(&TaskError::Incompatible("ttl".into()));
        assert!(matches!(e.into_task_error("w"), TaskError::Incompatible(m) if m == "ttl"));
        let e = WireTaskError::from_task_error(&TaskError::User {
            task: "t".into(),
            error: UserError::fatal("poison"),
        });
        assert!(
            matches!(e.into_task_error("w"), TaskError::User { error, .. } if error.is_fatal())
        );
        let e = WireTaskError::from_task_error(&TaskError::Cancelled);
        assert!(matches!(e.into_task_error("w"), TaskError::Cancelled));
        let e = WireTaskError::from_task_error(&TaskError::Injected("x".into()));
        assert!(matches!(e.into_task_error("w"), TaskError::Internal(m) if m.contains("injected")));
    }
}
