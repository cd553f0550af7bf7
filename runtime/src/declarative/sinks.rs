//! Declarative sinks: stdout (JSON lines, not transactional) and an
//! exactly-once file sink.
//!
//! The file sink follows Flink's FileSink two-phase commit:
//! - each subtask appends JSON lines to its in-progress file
//!   `.part-<s>-<token>-<n>.inprogress` (hidden);
//! - when a checkpoint's barrier reaches it, the file is flushed, fsynced and
//!   renamed to `.part-<s>-<token>-<n>.pending`, and its name is recorded in
//!   the checkpoint (operator state);
//! - when the checkpoint completes, pending files are renamed to
//!   `part-<s>-<token>-<n>.jsonl` (visible, final);
//! - on restore, the pending files recorded in the restored checkpoint (which
//!   is complete by definition) are published if a crash came between the
//!   checkpoint and its notification; records after it are replayed by the
//!   sources into new files. Files of attempts that never completed a
//!   checkpoint stay hidden (`.inprogress`/`.pending`) and are never published.
//!
//! So every record appears exactly once in the visible `part-*.jsonl` files,
//! once the checkpoint that covers it completes. Without checkpointing the
//! sink publishes at end of input only. The token is random per subtask
//! attempt, so names never collide across attempts or restores.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{FnResult, UserError};
use crate::functions::{
    CheckpointListener, InitContext, SinkContext, SinkFunction, SnapshotContext,
};
use crate::state::operator::{OperatorListState, OperatorListStateDescriptor};

use super::value::Value;

/// Prints one JSON document per line.
#[derive(Clone)]
pub struct StdoutSink {
    pub prefix: Option<String>,
}

impl CheckpointListener for StdoutSink {}

impl SinkFunction<Value> for StdoutSink {
    fn invoke(&mut self, value: Value, _ctx: &SinkContext) -> FnResult {
        let mut out = std::io::stdout().lock();
        match &self.prefix {
            Some(p) => writeln!(out, "{p}: {value}")?,
            None => writeln!(out, "{value}")?,
        }
        Ok(())
    }
}

/// A pending file: (checkpoint id that recorded it, hidden name, final name).
type Pending = (u64, String, String);

/// The exactly-once JSON-lines file sink (see the module docs).
pub struct FileSink {
    dir: PathBuf,
    checkpointing: bool,
    subtask: u32,
    token: String,
    seq: u64,
    current: Option<(String, BufWriter<File>)>,
    pending: Vec<Pending>,
    state: Option<OperatorListState<Pending>>,
}

impl Clone for FileSink {
    fn clone(&self) -> Self {
        // A fresh instance per subtask and attempt: open files are not shared.
        FileSink::new(self.dir.clone(), self.checkpointing)
    }
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> UserError {
    UserError::msg(format!("file sink: cannot {what} {}: {e}", path.display()))
}

impl FileSink {
    pub fn new(dir: PathBuf, checkpointing: bool) -> Self {
        FileSink {
            dir,
            checkpointing,
            subtask: 0,
            token: String::new(),
            seq: 0,
            current: None,
            pending: Vec::new(),
            state: None,
        }
    }

    /// Closes the in-progress file into a pending one.
    fn roll(&mut self, checkpoint_id: u64) -> FnResult {
        if let Some((base, mut w)) = self.current.take() {
            let from = self.dir.join(format!(".{base}.inprogress"));
            w.flush().map_err(|e| io_err("write", &from, e))?;
            let f = w
                .into_inner()
                .map_err(|e| io_err("write", &from, e.into_error()))?;
            f.sync_all().map_err(|e| io_err("sync", &from, e))?;
            let hidden = format!(".{base}.pending");
            let to = self.dir.join(&hidden);
            std::fs::rename(&from, &to).map_err(|e| io_err("rename", &from, e))?;
            self.pending
                .push((checkpoint_id, hidden, format!("{base}.jsonl")));
        }
        Ok(())
    }

    /// Publishes a pending file; idempotent (a restore may repeat it).
    fn publish(dir: &Path, hidden: &str, visible: &str) -> FnResult {
        let from = dir.join(hidden);
        let to = dir.join(visible);
        match std::fs::rename(&from, &to) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && to.exists() => Ok(()),
            Err(e) => Err(io_err("publish", &from, e)),
        }
    }

    fn sync_dir(&self) {
        // Makes the renames durable; best effort where directories cannot be
        // opened (not on Linux).
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
    }
}

impl CheckpointListener for FileSink {
    fn notify_checkpoint_complete(&mut self, checkpoint_id: u64) -> FnResult {
        let (done, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|(id, _, _)| *id <= checkpoint_id);
        self.pending = keep;
        for (_, hidden, visible) in &done {
            Self::publish(&self.dir, hidden, visible)?;
        }
        if !done.is_empty() {
            self.sync_dir();
        }
        Ok(())
    }
}

impl SinkFunction<Value> for FileSink {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> FnResult {
        self.subtask = ctx.subtask_index();
        self.token = format!("{:016x}", rand::random::<u64>());
        std::fs::create_dir_all(&self.dir).map_err(|e| io_err("create", &self.dir, e))?;
        // Union state: every subtask sees all pending files of the restored
        // checkpoint; subtask 0 publishes them (at any new parallelism).
        let st = ctx.list_state(&OperatorListStateDescriptor::<Pending>::union(
            "pending-files",
        ))?;
        if ctx.is_restored() && self.subtask == 0 {
            let restored: Vec<Pending> = st.get(ctx.operator_state())?.to_vec();
            for (_, hidden, visible) in &restored {
                Self::publish(&self.dir, hidden, visible)?;
            }
            self.sync_dir();
        }
        self.state = Some(st);
        Ok(())
    }

    fn invoke(&mut self, value: Value, _ctx: &SinkContext) -> FnResult {
        if self.current.is_none() {
            self.seq += 1;
            let base = format!("part-{}-{}-{}", self.subtask, self.token, self.seq);
            let path = self.dir.join(format!(".{base}.inprogress"));
            let f = OpenOptions::new()
                .create_new(true)
                .write(true)
                .open(&path)
                .map_err(|e| io_err("create", &path, e))?;
            self.current = Some((base, BufWriter::new(f)));
        }
        if let Some((base, w)) = &mut self.current {
            let line = value.to_string();
            w.write_all(line.as_bytes())
                .and_then(|_| w.write_all(b"\n"))
                .map_err(|e| io_err("write", &self.dir.join(base.as_str()), e))?;
        }
        Ok(())
    }

    fn snapshot_state(&mut self, ctx: &mut SnapshotContext<'_>) -> FnResult {
        self.roll(ctx.checkpoint_id())?;
        if let Some(st) = &self.state {
            st.update(ctx.operator_state(), self.pending.clone())?;
        }
        Ok(())
    }

    fn finish(&mut self) -> FnResult {
        if !self.checkpointing {
            // No checkpoint will commit: publish at end of input.
            self.roll(u64::MAX)?;
            let pending = std::mem::take(&mut self.pending);
            for (_, hidden, visible) in &pending {
                Self::publish(&self.dir, hidden, visible)?;
            }
            self.sync_dir();
        }
        Ok(())
    }
}

/// Reads every published record of a file sink directory (tests, tools):
/// the lines of `part-*.jsonl`, in file-name order.
pub fn read_published(dir: &Path) -> std::io::Result<Vec<serde_json::Value>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("part-") && n.ends_with(".jsonl"))
        .collect();
    names.sort();
    let mut out = Vec::new();
    for n in names {
        let text = std::fs::read_to_string(dir.join(n))?;
        for line in text.lines().filter(|l| !l.is_empty()) {
            out.push(serde_json::from_str(line).map_err(std::io::Error::other)?);
        }
    }
    Ok(out)
}
