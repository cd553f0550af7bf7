//! Remote channels: the bridge between an in-process bounded channel and a TCP
//! connection, with credit-based flow control.
//!
//! A remote edge keeps the engine's in-process channel on both sides, so the
//! sending chain (`NetworkOutput`) and the receiving task (`InputTask`, with
//! its barrier aligner and watermark valve) are exactly those of a local run:
//!
//! ```text
//! worker A: NetworkOutput ─bounded─▶ outbound thread ══TCP══▶ inbound thread ─bounded─▶ InputTask :worker B
//!                                    (waits for credit)  ◀══ credits ══ (grants one per delivered batch)
//! ```
//!
//! Each (upstream subtask, downstream subtask) channel has its own credit
//! window of `channel_capacity` batches. The sender ships a batch only with a
//! credit; the receiver returns the credit once the batch is in the task's
//! channel. A slow receiver therefore stops only the channels that feed it:
//! their outbound threads wait for credit, their in-process channels fill, and
//! the sending chain blocks exactly as it would locally. The frames received
//! but not yet delivered are at most the window, so memory stays bounded.
//! Records, watermarks, barriers and end-of-input travel in one ordered frame
//! stream per channel, so a barrier never overtakes a record.
//!
//! Each remote channel end has a thread (encoding and decoding run there, in
//! parallel across channels; blocking sends and receives need no async
//! adapters), and each connection has a reader and a writer task on tokio.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use serde::{Deserialize, Serialize};

use super::wire::{ChannelId, DataFrame, ExchangeStats, WireBarrier};
use crate::event::{Batch, Event, StreamRecord};
use crate::functions::Data;
use crate::storage::CheckpointStorage;

/// Resolves a storage root URI to storage (cached by the caller).
pub(crate) type OpenStorageFn =
    dyn Fn(&str) -> Result<Arc<dyn CheckpointStorage>, String> + Send + Sync;
pub(crate) type OpenStorage = Arc<OpenStorageFn>;

/// The local half of a remote channel, typed erased.
pub(crate) enum RemoteEnd {
    /// The upstream subtask runs here: drain its channel onto the wire.
    Out(Box<dyn OutboundChannel>),
    /// The downstream subtask runs here: feed its channel from the wire.
    In(Box<dyn InboundChannel>),
}

pub(crate) trait OutboundChannel: Send {
    /// Blocks for the next batch and appends its encoding to `buf`; returns
    /// the number of records, or `None` once the sending task is gone.
    fn next_encoded(&mut self, buf: &mut Vec<u8>) -> Result<Option<u32>, String>;
}

pub(crate) trait InboundChannel: Send {
    /// Decodes a batch and hands it to the receiving task, blocking while its
    /// channel is full. `Ok(false)` once the task is gone.
    fn deliver(&mut self, bytes: &[u8], open: &OpenStorage) -> Result<bool, String>;
}

#[derive(Serialize)]
enum WireEventRef<'a, T> {
    Record(&'a StreamRecord<T>),
    Watermark(i64),
    Idle(bool),
    Barrier(WireBarrier),
    End { drain: bool },
}

#[derive(Deserialize)]
enum WireEvent<T> {
    Record(StreamRecord<T>),
    Watermark(i64),
    Idle(bool),
    Barrier(WireBarrier),
    End { drain: bool },
}

struct Outbound<T>(Receiver<Batch<T>>);
struct Inbound<T>(Sender<Batch<T>>);

pub(crate) fn outbound<T: Data>(rx: Receiver<Batch<T>>) -> RemoteEnd {
    RemoteEnd::Out(Box::new(Outbound(rx)))
}

pub(crate) fn inbound<T: Data>(tx: Sender<Batch<T>>) -> RemoteEnd {
    RemoteEnd::In(Box::new(Inbound(tx)))
}

/// Encodes a batch (appending to `buf`); returns its record count.
pub(crate) fn encode_batch<T: Data>(batch: &Batch<T>, buf: &mut Vec<u8>) -> Result<u32, String> {
    let mut records = 0u32;
    let refs: Vec<WireEventRef<'_, T>> = batch
        .iter()
        .map(|e| match e {
            Event::Record(r) => {
                records += 1;
                WireEventRef::Record(r)
            }
            Event::Watermark(w) => WireEventRef::Watermark(*w),
            Event::Idle(i) => WireEventRef::Idle(*i),
            Event::Barrier(b) => WireEventRef::Barrier(WireBarrier::from_barrier(b)),
            Event::End { drain } => WireEventRef::End { drain: *drain },
        })
        .collect();
    let out = std::mem::take(buf);
    *buf = postcard::to_extend(&refs, out).map_err(|e| format!("cannot encode a batch: {e}"))?;
    Ok(records)
}

pub(crate) fn decode_batch<T: Data>(bytes: &[u8], open: &OpenStorage) -> Result<Batch<T>, String> {
    let events: Vec<WireEvent<T>> =
        postcard::from_bytes(bytes).map_err(|e| format!("cannot decode a batch: {e}"))?;
    events
        .into_iter()
        .map(|e| {
            Ok(match e {
                WireEvent::Record(r) => Event::Record(r),
                WireEvent::Watermark(w) => Event::Watermark(w),
                WireEvent::Idle(i) => Event::Idle(i),
                WireEvent::Barrier(b) => Event::Barrier(b.to_barrier(open.as_ref())?),
                WireEvent::End { drain } => Event::End { drain },
            })
        })
        .collect()
}

impl<T: Data> OutboundChannel for Outbound<T> {
    fn next_encoded(&mut self, buf: &mut Vec<u8>) -> Result<Option<u32>, String> {
        match self.0.recv() {
            Ok(batch) => encode_batch(&batch, buf).map(Some),
            Err(_) => Ok(None),
        }
    }
}

impl<T: Data> InboundChannel for Inbound<T> {
    fn deliver(&mut self, bytes: &[u8], open: &OpenStorage) -> Result<bool, String> {
        let batch = decode_batch::<T>(bytes, open)?;
        Ok(self.0.send(batch).is_ok())
    }
}

/// Exchange counters of one worker.
#[derive(Default)]
pub(crate) struct Stats {
    pub frames_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub records_sent: AtomicU64,
    pub frames_received: AtomicU64,
    pub bytes_received: AtomicU64,
    pub credit_stalls: AtomicU64,
    pub inbound_queued: AtomicU64,
    pub inbound_queued_max: AtomicU64,
    pub channel_queued_max: AtomicU64,
    pub fenced_messages: AtomicU64,
}

impl Stats {
    pub fn snapshot(&self) -> ExchangeStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ExchangeStats {
            frames_sent: g(&self.frames_sent),
            bytes_sent: g(&self.bytes_sent),
            records_sent: g(&self.records_sent),
            frames_received: g(&self.frames_received),
            bytes_received: g(&self.bytes_received),
            credit_stalls: g(&self.credit_stalls),
            inbound_queued: g(&self.inbound_queued),
            inbound_queued_max: g(&self.inbound_queued_max),
            channel_queued_max: g(&self.channel_queued_max),
            fenced_messages: g(&self.fenced_messages),
        }
    }

    /// A frame was queued for delivery (called before it is queued, so that
    /// the delivering thread's decrement never comes first).
    pub fn frame_queued(&self, channel_len: usize) {
        let now = self
            .inbound_queued
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1);
        self.inbound_queued_max.fetch_max(now, Ordering::Relaxed);
        self.channel_queued_max
            .fetch_max(channel_len as u64 + 1, Ordering::Relaxed);
    }

    pub fn frame_delivered(&self) {
        self.inbound_queued.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Credits of one outbound channel: a counting semaphore on a channel of
/// tokens, so that waiting for credit is a plain blocking receive that ends
/// when the connection (the only other holder) goes away.
pub(crate) fn credit_window(initial: usize) -> (Sender<()>, Receiver<()>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    for _ in 0..initial {
        let _ = tx.send(());
    }
    (tx, rx)
}

/// Runs one outbound channel until its task or its connection is gone.
pub(crate) fn spawn_outbound(
    id: ChannelId,
    mut end: Box<dyn OutboundChannel>,
    credits: Receiver<()>,
    frames: tokio::sync::mpsc::UnboundedSender<Bytes>,
    stats: Arc<Stats>,
    on_error: impl FnOnce(String) + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!(
            "out {}.{} {}>{}",
            id.node, id.input, id.up, id.down
        ))
        .spawn(move || {
            loop {
                if credits.is_empty() {
                    stats.credit_stalls.fetch_add(1, Ordering::Relaxed);
                }
                if credits.recv().is_err() {
                    return; // The connection is gone.
                }
                let mut buf = DataFrame::batch_header(id);
                match end.next_encoded(&mut buf) {
                    Ok(Some(records)) => {
                        DataFrame::set_records(&mut buf, records);
                        stats.frames_sent.fetch_add(1, Ordering::Relaxed);
                        stats
                            .bytes_sent
                            .fetch_add(buf.len() as u64, Ordering::Relaxed);
                        stats
                            .records_sent
                            .fetch_add(records as u64, Ordering::Relaxed);
                        if frames.send(Bytes::from(buf)).is_err() {
                            return;
                        }
                    }
                    Ok(None) => return, // The task finished or was cancelled.
                    Err(e) => {
                        on_error(e);
                        return;
                    }
                }
            }
        })
}

/// Runs one inbound channel: delivers queued frames and returns a credit for
/// each, until the queue (the connection) or the task is gone.
pub(crate) fn spawn_inbound(
    id: ChannelId,
    mut end: Box<dyn InboundChannel>,
    queue: Receiver<Bytes>,
    credits: tokio::sync::mpsc::UnboundedSender<Bytes>,
    open: OpenStorage,
    stats: Arc<Stats>,
    on_error: impl FnOnce(String) + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("in {}.{} {}>{}", id.node, id.input, id.up, id.down))
        .spawn(move || {
            for bytes in queue {
                let r = end.deliver(&bytes, &open);
                stats.frame_delivered();
                match r {
                    Ok(true) => {
                        let credit = DataFrame::Credit { channel: id, n: 1 }.encode();
                        if credits.send(credit).is_err() {
                            return;
                        }
                    }
                    Ok(false) => return,
                    Err(e) => {
                        on_error(e);
                        return;
                    }
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Barrier, SnapshotKind, SnapshotTarget};

    #[test]
    fn batches_round_trip_with_barriers() {
        let dir = tempfile::tempdir().unwrap();
        let root = format!("file://{}", dir.path().display());
        let storage = crate::storage::open(&root).unwrap();
        let batch: Batch<(String, u64)> = vec![
            Event::Record(StreamRecord {
                value: ("a".into(), 1),
                timestamp: Some(5),
            }),
            Event::Watermark(4),
            Event::Idle(true),
            Event::Barrier(Barrier {
                id: 7,
                timestamp_ms: 9,
                kind: SnapshotKind::StopSavepoint { drain: true },
                target: Arc::new(SnapshotTarget {
                    location: storage.uri("chk-7"),
                    storage,
                    dir: "chk-7".into(),
                }),
                is_final: true,
            }),
            Event::Record(StreamRecord {
                value: ("b".into(), 2),
                timestamp: None,
            }),
            Event::End { drain: false },
        ];
        let mut buf = vec![1, 2, 3];
        assert_eq!(encode_batch(&batch, &mut buf).unwrap(), 2);
        assert_eq!(&buf[..3], &[1, 2, 3]);
        let open: OpenStorage =
            Arc::new(|r: &str| crate::storage::open(r).map_err(|e| e.to_string()));
        let back: Batch<(String, u64)> = decode_batch(&buf[3..], &open).unwrap();
        assert_eq!(back.len(), 6);
        match (&back[0], &back[1], &back[2], &back[3], &back[4], &back[5]) {
            (
                Event::Record(r),
                Event::Watermark(wm),
                Event::Idle(idle),
                Event::Barrier(b),
                Event::Record(r2),
                Event::End { drain },
            ) => {
                assert_eq!(r.value, ("a".to_string(), 1));
                assert_eq!(*wm, 4);
                assert!(*idle);
                assert_eq!(r2.value, ("b".to_string(), 2));
                assert_eq!(r2.timestamp, None);
                assert_eq!(r.timestamp, Some(5));
                assert_eq!(b.id, 7);
                assert_eq!(b.kind, SnapshotKind::StopSavepoint { drain: true });
                assert_eq!(b.target.dir, "chk-7");
                assert_eq!(b.target.storage.uri("x"), format!("{root}/x"));
                assert!(!drain);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(decode_batch::<(String, u64)>(&[0xff, 0xff], &open).is_err());
    }

    /// The credit window bounds what is in flight: with a receiver that
    /// delivers nothing, the sender ships exactly `window` frames and stalls.
    #[test]
    fn a_stalled_receiver_stops_its_channel_after_the_window() {
        let (tx, rx) = crossbeam_channel::bounded::<Batch<u64>>(100);
        let (_credit_tx, credit_rx) = credit_window(3);
        let (frames_tx, mut frames_rx) = tokio::sync::mpsc::unbounded_channel();
        let stats = Arc::new(Stats::default());
        let id = ChannelId {
            node: 1,
            input: 0,
            up: 0,
            down: 1,
        };
        let h = spawn_outbound(
            id,
            Box::new(Outbound(rx)),
            credit_rx,
            frames_tx,
            stats.clone(),
            |_| {},
        )
        .unwrap();
        for i in 0..10u64 {
            tx.send(vec![Event::Record(StreamRecord {
                value: i,
                timestamp: None,
            })])
            .unwrap();
        }
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(frames_rx.blocking_recv().unwrap());
        }
        // The fourth batch waits for a credit: the channel still holds it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while stats.credit_stalls.load(Ordering::Relaxed) == 0 {
            assert!(std::time::Instant::now() < deadline);
            std::thread::yield_now();
        }
        assert!(frames_rx.try_recv().is_err());
        assert_eq!(tx.len(), 7);
        match DataFrame::decode(got.remove(0)).unwrap() {
            DataFrame::Batch {
                channel, records, ..
            } => {
                assert_eq!(channel, id);
                assert_eq!(records, 1);
            }
            f => panic!("{f:?}"),
        }
        drop(_credit_tx);
        h.join().unwrap();
    }

    /// Credit is per channel: a receiver that stops taking one channel's
    /// batches stalls that channel only. Another channel on the same
    /// connection (the same peer) keeps flowing, so a slow receiver
    /// back-pressures only what feeds it.
    #[test]
    fn a_stalled_channel_does_not_hold_up_another_on_the_same_connection() {
        let (frames_tx, mut frames_rx) = tokio::sync::mpsc::unbounded_channel();
        let stats = Arc::new(Stats::default());
        let channel = |down| ChannelId {
            node: 1,
            input: 0,
            up: 0,
            down,
        };
        let (stalled, flowing) = (channel(1), channel(2));
        let mut senders = Vec::new();
        let mut credits = Vec::new();
        let mut joins = Vec::new();
        for id in [stalled, flowing] {
            let (tx, rx) = crossbeam_channel::bounded::<Batch<u64>>(100);
            let (credit_tx, credit_rx) = credit_window(2);
            joins.push(
                spawn_outbound(
                    id,
                    Box::new(Outbound(rx)),
                    credit_rx,
                    frames_tx.clone(),
                    stats.clone(),
                    |_| {},
                )
                .unwrap(),
            );
            for i in 0..10u64 {
                tx.send(vec![Event::Record(StreamRecord {
                    value: i,
                    timestamp: None,
                })])
                .unwrap();
            }
            senders.push(tx);
            credits.push(credit_tx);
        }
        // The receiver returns a credit for every batch of the flowing
        // channel it takes, and none for the stalled one.
        let mut got = std::collections::HashMap::<u32, usize>::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let count = |got: &std::collections::HashMap<u32, usize>, c: ChannelId| {
            got.get(&c.down).copied().unwrap_or(0)
        };
        while count(&got, flowing) < 10 || count(&got, stalled) < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "the flowing channel is held up: {got:?}"
            );
            let Ok(f) = frames_rx.try_recv() else {
                std::thread::yield_now();
                continue;
            };
            if let DataFrame::Batch { channel, .. } = DataFrame::decode(f).unwrap() {
                *got.entry(channel.down).or_default() += 1;
                if channel == flowing {
                    credits[1].send(()).unwrap();
                }
            }
        }
        assert!(senders[1].is_empty());
        assert!(
            frames_rx.try_recv().is_err(),
            "the stalled channel sent more"
        );
        assert_eq!(senders[0].len(), 8, "the stalled channel keeps the rest");
        drop(credits);
        drop(senders);
        for j in joins {
            j.join().unwrap();
        }
    }
}
