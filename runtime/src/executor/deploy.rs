//! Turns the logical graph into running subtasks: parallelism, chaining, channels,
//! restored state per subtask, and one thread per subtask.

use std::any::Any;
use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Sender, unbounded};

use super::MasterMsg;
use crate::checkpoint::LoadedSnapshot;
use crate::checkpoint::redistribute::{InFlightAssignment, assign};
use crate::config::{CheckpointMode, JobConfig};
use crate::distributed::exchange::RemoteEnd;
use crate::distributed::wire::ChannelId;
use crate::error::{SnapshotError, TaskError};
use crate::graph::{BuildCtx, EdgeKind, JobGraph, NodeKind};
use crate::keygroup::range_for_subtask;
use crate::metrics::JobMetrics;
use crate::task::aligner::AlignMode;
use crate::task::{Control, Restored, TaskEnv, TaskRunner, UploadJob};

/// Distributed execution: which subtasks run in this process.
pub(crate) trait Placement {
    fn is_local(&self, task: usize, subtask: u32) -> bool;
}

pub(crate) struct TaskHandle {
    pub name: String,
    pub control: Sender<Control>,
    pub is_source: bool,
    pub join: Option<JoinHandle<()>>,
}

/// (task index, subtask, task name, head operator, is source, runner).
type Runner = (usize, u32, String, String, bool, Box<dyn TaskRunner>);

pub(crate) struct Deployed {
    pub tasks: Vec<TaskHandle>,
    /// Distributed execution: the local halves of channels whose other end
    /// runs on another worker.
    pub remote: Vec<(ChannelId, RemoteEnd)>,
    pub source_subtasks: usize,
    /// Parallelism per operator uid (for metadata).
    pub parallelism: HashMap<String, u32>,
}

/// Checks that the snapshot fits the job before anything starts.
pub(crate) fn validate_restore(
    graph: &JobGraph,
    cfg: &JobConfig,
    snap: &LoadedSnapshot,
    allow_non_restored_state: bool,
) -> Result<(), SnapshotError> {
    if snap.metadata.max_parallelism != cfg.max_parallelism {
        return Err(SnapshotError::Incompatible(format!(
            "{} was written with max parallelism {} but the job has {}; max parallelism fixes the key groups and cannot change once state exists",
            snap.uri, snap.metadata.max_parallelism, cfg.max_parallelism
        )));
    }
    let mut missing = Vec::new();
    for op in &snap.metadata.operators {
        if !graph.nodes.iter().any(|n| n.uid == op.uid) {
            missing.push(op.uid.clone());
        }
    }
    if !missing.is_empty() && !allow_non_restored_state {
        return Err(SnapshotError::Incompatible(format!(
            "{} holds state for operators the job no longer has: {}; restore with allow_non_restored_state (--allow-non-restored-state) to skip it",
            snap.uri,
            missing.join(", ")
        )));
    }
    if !missing.is_empty() {
        tracing::warn!(operators = ?missing, "skipping state of operators the job no longer has (allow_non_restored_state)");
    }
    Ok(())
}

pub(crate) fn effective_parallelism(graph: &JobGraph, cfg: &JobConfig) -> Vec<u32> {
    graph
        .nodes
        .iter()
        .map(|n| n.parallelism.unwrap_or(cfg.parallelism))
        .collect()
}

pub(crate) fn deploy(
    graph: &JobGraph,
    cfg: &JobConfig,
    attempt: u64,
    snap: Option<&mut LoadedSnapshot>,
    master: &Sender<MasterMsg>,
    uploader: &Sender<UploadJob>,
    metrics: &Arc<JobMetrics>,
) -> Result<Deployed, TaskError> {
    deploy_placed(graph, cfg, attempt, snap, master, uploader, metrics, None)
}

/// `deploy` for the subtasks `placement` puts here (all without one). Channels
/// between a local and a remote subtask become [`RemoteEnd`]s.
#[allow(clippy::too_many_arguments)]
pub(crate) fn deploy_placed(
    graph: &JobGraph,
    cfg: &JobConfig,
    attempt: u64,
    mut snap: Option<&mut LoadedSnapshot>,
    master: &Sender<MasterMsg>,
    uploader: &Sender<UploadJob>,
    metrics: &Arc<JobMetrics>,
    placement: Option<&dyn Placement>,
) -> Result<Deployed, TaskError> {
    let nodes = &graph.nodes;
    let par = effective_parallelism(graph, cfg);
    // Forward edges between different parallelisms become rebalance, as in Flink.
    let kind = |n: usize, e: usize| -> EdgeKind {
        let edge = &nodes[n].inputs[e];
        if edge.kind == EdgeKind::Forward && par[edge.from] != par[n] {
            EdgeKind::Rebalance
        } else {
            edge.kind
        }
    };
    let chained: Vec<bool> = nodes
        .iter()
        .map(|n| {
            n.inputs.len() == 1
                && kind(n.id, 0) == EdgeKind::Forward
                && !matches!(n.kind, NodeKind::Source(_))
        })
        .collect();
    let mut consumers: Vec<Vec<(usize, usize)>> = vec![Vec::new(); nodes.len()];
    for n in nodes {
        for (ei, e) in n.inputs.iter().enumerate() {
            consumers[e.from].push((n.id, ei));
        }
    }
    // Channels for every edge that crosses tasks.
    let mut chans: HashMap<(usize, usize), Box<dyn Any>> = HashMap::new();
    for n in nodes {
        if chained[n.id] {
            continue;
        }
        for (ei, e) in n.inputs.iter().enumerate() {
            let k = kind(n.id, ei);
            chans.insert(
                (n.id, ei),
                nodes[e.from].out_ops.channels(
                    par[e.from] as usize,
                    par[n.id] as usize,
                    k == EdgeKind::Forward,
                    cfg.channel_capacity,
                ),
            );
        }
    }
    let heads: Vec<usize> = nodes
        .iter()
        .filter(|n| !chained[n.id])
        .map(|n| n.id)
        .collect();
    let mut remote = Vec::new();
    if let Some(pl) = placement {
        // Nodes come in topological order: a chained node's task is its input's.
        let mut task_of = vec![0usize; nodes.len()];
        for (ti, &h) in heads.iter().enumerate() {
            task_of[h] = ti;
        }
        for n in nodes.iter().filter(|n| chained[n.id]) {
            task_of[n.id] = task_of[n.inputs[0].from];
        }
        for n in nodes.iter().filter(|n| !chained[n.id]) {
            for (ei, e) in n.inputs.iter().enumerate() {
                let forward = kind(n.id, ei) == EdgeKind::Forward;
                let ch = chans.get_mut(&(n.id, ei)).ok_or_else(|| {
                    TaskError::Internal(format!("no channels for edge {}/{ei}", n.id))
                })?;
                for u in 0..par[e.from] {
                    for d in 0..par[n.id] {
                        let up_local = pl.is_local(task_of[e.from], u);
                        if (forward && u != d) || up_local == pl.is_local(task_of[n.id], d) {
                            continue;
                        }
                        let end = nodes[e.from]
                            .out_ops
                            .remote_end(ch, u as usize, d as usize, up_local)?;
                        let id = ChannelId {
                            node: n.id as u32,
                            input: ei as u32,
                            up: u,
                            down: d,
                        };
                        remote.push((id, end));
                    }
                }
            }
        }
    }
    let mode = match (cfg.checkpoint.mode, cfg.checkpoint.unaligned) {
        (_, true) => AlignMode::Unaligned,
        (CheckpointMode::ExactlyOnce, false) => AlignMode::Aligned,
        (CheckpointMode::AtLeastOnce, false) => AlignMode::AtLeastOnce,
    };
    let mut runners: Vec<Runner> = Vec::new();
    let mut parallelism = HashMap::new();
    for n in nodes {
        parallelism.insert(n.uid.clone(), par[n.id]);
    }
    for (ti, &head) in heads.iter().enumerate() {
        let mut members = vec![head];
        let mut i = 0;
        while i < members.len() {
            for &(c, _) in &consumers[members[i]] {
                if chained[c] {
                    members.push(c);
                }
            }
            i += 1;
        }
        members.sort_unstable();
        let p = par[head];
        let chain_name = members
            .iter()
            .map(|&m| nodes[m].uid.as_str())
            .collect::<Vec<_>>()
            .join(" -> ");
        for s in 0..p {
            if placement.is_some_and(|pl| !pl.is_local(ti, s)) {
                continue;
            }
            let task_name = format!("{chain_name} ({}/{p})", s + 1);
            let mut built: HashMap<usize, Box<dyn Any>> = HashMap::new();
            let mut source_task = None;
            // The head's in-flight records, split off its restored state so
            // that state is assigned (and copied) once.
            let mut head_in_flight = None;
            for &m in members.iter().rev() {
                let node = &nodes[m];
                let mut outs = Vec::new();
                for &(c, ei) in &consumers[m] {
                    if chained[c] {
                        outs.push(built.remove(&c).ok_or_else(|| {
                            TaskError::Internal(format!("chained operator {c} not built"))
                        })?);
                    } else {
                        let ch = chans.get_mut(&(c, ei)).ok_or_else(|| {
                            TaskError::Internal(format!("no channels for edge {c}/{ei}"))
                        })?;
                        outs.push(node.out_ops.writer(
                            ch,
                            s as usize,
                            kind(c, ei),
                            nodes[c].inputs[ei].key_group_fn.as_ref(),
                            &task_name,
                            cfg.batch_size,
                            cfg.max_parallelism,
                            metrics.backpressure(&task_name),
                        )?);
                    }
                }
                let out = node.out_ops.fanout(outs)?;
                let out = node
                    .out_ops
                    .counted(out, metrics.records_out(&node.uid, s))?;
                let restored =
                    restored_for(snap.as_deref_mut(), &node.uid, par[m], s, cfg, node.keyed).map(
                        |(mut r, how)| {
                            if m == head {
                                head_in_flight = Some((std::mem::take(&mut r.in_flight), how));
                            }
                            r
                        },
                    );
                let in_flight =
                    m == head && head_in_flight.as_ref().is_some_and(|(r, _)| !r.is_empty());
                let ctx = BuildCtx {
                    uid: &node.uid,
                    subtask: s,
                    parallelism: par[m],
                    config: cfg,
                    restored,
                    in_flight,
                    metrics,
                };
                let built_one = catch_unwind(AssertUnwindSafe(|| match &node.kind {
                    NodeKind::Source(f) => f.build_task(out, ctx).map(Err),
                    NodeKind::Operator(f) => f.build(out, ctx).map(Ok),
                }))
                .map_err(|p| TaskError::Panic {
                    task: task_name.clone(),
                    message: panic_message(&p),
                })??;
                match built_one {
                    Ok(op) => {
                        let in_ops = node.in_ops.as_ref().ok_or_else(|| {
                            TaskError::Internal(format!("operator {} has no input type", node.uid))
                        })?;
                        let op = in_ops.counted(op, metrics.records_in(&node.uid, s))?;
                        built.insert(m, op);
                    }
                    Err(task) => source_task = Some(task),
                }
            }
            let runner = match source_task {
                Some(t) => t,
                None => {
                    let node = &nodes[head];
                    let mut readers = Vec::new();
                    for (ei, e) in node.inputs.iter().enumerate() {
                        let ch = chans.get_mut(&(head, ei)).ok_or_else(|| {
                            TaskError::Internal(format!("no channels for edge {head}/{ei}"))
                        })?;
                        readers.push(nodes[e.from].out_ops.readers(ch, s as usize)?);
                    }
                    let (in_flight, filter) = match head_in_flight.take() {
                        Some((records, InFlightAssignment::FilterByKeyGroup)) => (
                            records,
                            node.inputs
                                .first()
                                .and_then(|e| e.key_group_fn.clone())
                                .map(|f| (f, range_for_subtask(cfg.max_parallelism, p, s))),
                        ),
                        Some((records, _)) => (records, None),
                        None => (Vec::new(), None),
                    };
                    let in_ops = node.in_ops.as_ref().ok_or_else(|| {
                        TaskError::Internal(format!("operator {} has no input type", node.uid))
                    })?;
                    let head_op = built.remove(&head).ok_or_else(|| {
                        TaskError::Internal(format!("chain head {head} not built"))
                    })?;
                    in_ops.input_task(head_op, readers, in_flight, filter, &task_name)?
                }
            };
            let is_source = matches!(nodes[head].kind, NodeKind::Source(_));
            runners.push((ti, s, task_name, nodes[head].uid.clone(), is_source, runner));
        }
    }
    let mut tasks = Vec::new();
    let mut source_subtasks = 0;
    for (ti, s, name, head_uid, is_source, runner) in runners {
        let (ctx, crx) = unbounded();
        let env = TaskEnv {
            name: name.clone(),
            task_index: ti,
            subtask: s,
            attempt,
            head_uid,
            control: crx,
            master: master.clone(),
            uploader: uploader.clone(),
            mode,
            clock: cfg.clock.clone(),
            faults: cfg.faults.clone(),
            flush_interval: Duration::from_millis(50),
            watermark_interval_ms: cfg.watermark_interval_ms as i64,
        };
        let master = master.clone();
        let thread_name: String = name.chars().take(60).collect();
        let join = std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || {
                let result = match catch_unwind(AssertUnwindSafe(|| runner.run(&env))) {
                    Ok(r) => r,
                    Err(p) => Err(TaskError::Panic {
                        task: env.name.clone(),
                        message: panic_message(&p),
                    }),
                };
                let _ = master.send(MasterMsg::TaskExited {
                    attempt: env.attempt,
                    result,
                });
            })
            .map_err(|e| TaskError::Internal(format!("cannot spawn task thread: {e}")))?;
        if is_source {
            source_subtasks += 1;
        }
        tasks.push(TaskHandle {
            name,
            control: ctx,
            is_source,
            join: Some(join),
        });
    }
    Ok(Deployed {
        tasks,
        remote,
        source_subtasks,
        parallelism,
    })
}

/// Takes the subtask's key groups out of `snap` (see [`assign`]).
fn restored_for(
    snap: Option<&mut LoadedSnapshot>,
    uid: &str,
    p: u32,
    s: u32,
    cfg: &JobConfig,
    keyed: bool,
) -> Option<(Restored, InFlightAssignment)> {
    let snap = snap?;
    let meta = snap.metadata.operators.iter().find(|o| o.uid == uid)?;
    let old = snap
        .states
        .get_mut(uid)
        .map(|v| v.as_mut_slice())
        .unwrap_or(&mut []);
    Some(assign(
        old,
        meta.parallelism,
        &meta.keyed_states,
        p,
        s,
        cfg.max_parallelism,
        keyed,
    ))
}

pub(crate) fn panic_message(p: &Box<dyn Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".into()
    }
}

/// Writes state files for one subtask snapshot; runs on the uploader thread so
/// tasks never wait on storage. Each file is streamed to storage as it is
/// encoded (multipart on S3), with its size and checksum computed on the way, so
/// a large state is never held in memory a second time as bytes.
///
/// Keyed state arrives frozen (see `OperatorSnapshot::keyed`) and is encoded
/// here, so the checkpoint is acknowledged only once its encoded file is written.
pub(crate) fn upload(job: &mut UploadJob) -> Result<Vec<super::AckedOp>, String> {
    let mut out = Vec::new();
    for op in &mut job.ops {
        let file = crate::checkpoint::unique_state_file_name(&op.uid, job.subtask);
        let path = crate::storage::join(&job.target.dir, &file);
        let fail =
            |e: &dyn std::fmt::Display| format!("writing {}: {e}", job.target.storage.uri(&path));
        op.materialize().map_err(|e| fail(&e))?;
        let mut w = job.target.storage.create(&path).map_err(|e| fail(&e))?;
        let digest =
            crate::checkpoint::format::write_state_file(&op.state, &mut w).map_err(|e| fail(&e))?;
        w.finish().map_err(|e| fail(&e))?;
        out.push(super::AckedOp {
            uid: op.uid.clone(),
            keyed_metas: op.keyed_metas.clone(),
            meta: crate::checkpoint::format::SubtaskMeta {
                index: job.subtask,
                key_groups: op.key_groups,
                file,
                size: digest.size,
                checksum: digest.checksum,
                keyed_entries: op.keyed_entries,
                operator_state_items: op
                    .state
                    .operator_states
                    .iter()
                    .map(|l| l.items.len() as u64)
                    .sum(),
                in_flight_records: op.state.in_flight.len() as u64,
            },
        });
    }
    Ok(out)
}

pub(crate) fn spawn_uploader(
    rx: crossbeam_channel::Receiver<UploadJob>,
    master: Sender<MasterMsg>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("snapshot-uploader".into())
        .spawn(move || {
            for mut job in rx {
                let msg = match upload(&mut job) {
                    Ok(ops) => MasterMsg::Ack {
                        attempt: job.attempt,
                        checkpoint_id: job.checkpoint_id,
                        task: (job.task_index, job.subtask),
                        ops,
                        alignment_ms: job.alignment_ms,
                    },
                    Err(reason) => MasterMsg::Decline {
                        attempt: job.attempt,
                        checkpoint_id: job.checkpoint_id,
                        reason,
                    },
                };
                if master.send(msg).is_err() {
                    return;
                }
            }
        })
}
