//! A worker process: runs the subtasks a coordinator assigns to it, bridges
//! their remote channels to peer workers, and relays task messages (acks,
//! declines, exits) to the coordinator, each stamped with the attempt's epoch.
//!
//! A worker is long-lived, like a Flink TaskManager: it serves one coordinator
//! at a time and one attempt at a time. It takes a newer coordinator or a newer
//! epoch over from an older one, refuses older ones, and cancels its tasks when
//! it loses its coordinator (closed connection or missed heartbeats), so that a
//! worker cut off from the job stops by itself.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Sender, unbounded};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;

use super::assign::Assignment;
use super::conn::{self, connect_retry, next_frame, next_msg, send_msg, write_loop};
use super::exchange::{
    OpenStorage, RemoteEnd, Stats, credit_window, spawn_inbound, spawn_outbound,
};
use super::fence::{Epoch, WorkerDecision, data_admits, worker_decides};
use super::wire::{
    ChannelId, DataFrame, DeploySpec, Hello, PROTOCOL_VERSION, ToCoordinator, ToWorker,
    WireAckedOp, WireControl, WireMasterMsg, WireTaskError, encode_msg,
};
use super::{DistributedError, JobFactory};
use crate::error::TaskError;
use crate::executor::MasterMsg;
use crate::executor::deploy::{Placement, deploy_placed, spawn_uploader};
use crate::storage::CheckpointStorage;
use crate::task::Control;
use crate::task::chain::Notification;

/// How a worker runs.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    pub listen: SocketAddr,
    /// Subtask slots offered to the coordinator.
    pub slots: u32,
    /// Identifies the job definition; the coordinator's must match.
    pub fingerprint: u64,
    pub heartbeat_interval: Duration,
    /// Silence from the coordinator after which the worker cancels its tasks.
    pub heartbeat_timeout: Duration,
}

/// A running worker (its threads stop when the process exits).
pub struct WorkerHandle {
    pub local_addr: SocketAddr,
    runtime: tokio::runtime::Runtime,
}

impl WorkerHandle {
    /// Serves until the process is killed.
    pub fn wait(self) {
        self.runtime.block_on(std::future::pending::<()>());
    }
}

struct Placed<'a>(&'a Assignment, u32);

impl Placement for Placed<'_> {
    fn is_local(&self, task: usize, subtask: u32) -> bool {
        self.0.worker_of(task, subtask) == self.1
    }
}

struct InboundPeer {
    queues: HashMap<ChannelId, Sender<Bytes>>,
    credits: Option<mpsc::UnboundedReceiver<Bytes>>,
}

/// The attempt deployed here.
struct Running {
    epoch: Epoch,
    tasks: HashMap<(usize, u32), Sender<Control>>,
    joins: Vec<JoinHandle<()>>,
    inbound: HashMap<u32, InboundPeer>,
    aborts: Vec<AbortHandle>,
}

struct Shared {
    opts: WorkerOptions,
    factory: JobFactory,
    stats: Arc<Stats>,
    /// Highest coordinator incarnation accepted, and the active connection.
    coordinator: Mutex<(u64, u64)>,
    next_conn: AtomicU64,
    running: Mutex<Option<Running>>,
    /// Held for the whole of a teardown, so that a second teardown (a deploy,
    /// a new coordinator's hello) returns only once the attempt's threads have
    /// stopped, not as soon as the first one has taken `running`.
    teardown_gate: Mutex<()>,
    /// Latest epoch deployed (or refused to go below).
    latest: Mutex<Option<Epoch>>,
    deployed: watch::Sender<Option<Epoch>>,
    open: OpenStorage,
    handle: tokio::runtime::Handle,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Starts a worker listening on `opts.listen`.
pub fn start_worker(
    factory: JobFactory,
    opts: WorkerOptions,
) -> Result<WorkerHandle, DistributedError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("worker-io")
        .enable_all()
        .build()
        .map_err(|e| DistributedError::Io(format!("cannot start the I/O runtime: {e}")))?;
    let listener = runtime
        .block_on(TcpListener::bind(opts.listen))
        .map_err(|e| DistributedError::Io(format!("cannot listen on {}: {e}", opts.listen)))?;
    let local_addr = listener
        .local_addr()
        .map_err(|e| DistributedError::Io(e.to_string()))?;
    let cache: Arc<Mutex<HashMap<String, Arc<dyn CheckpointStorage>>>> = Arc::default();
    let open: OpenStorage = Arc::new(move |root: &str| {
        let mut c = lock(&cache);
        if let Some(s) = c.get(root) {
            return Ok(s.clone());
        }
        let s = crate::storage::open(root).map_err(|e| e.to_string())?;
        c.insert(root.to_string(), s.clone());
        Ok(s)
    });
    let shared = Arc::new(Shared {
        opts,
        factory,
        stats: Arc::new(Stats::default()),
        coordinator: Mutex::new((0, 0)),
        next_conn: AtomicU64::new(1),
        running: Mutex::new(None),
        teardown_gate: Mutex::new(()),
        latest: Mutex::new(None),
        deployed: watch::channel(None).0,
        open,
        handle: runtime.handle().clone(),
    });
    runtime.spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve_connection(shared, stream).await {
                            tracing::debug!(%peer, error = %e, "connection ended");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    tracing::info!(addr = %local_addr, "worker listening");
    Ok(WorkerHandle {
        local_addr,
        runtime,
    })
}

async fn serve_connection(shared: Arc<Shared>, stream: TcpStream) -> Result<(), String> {
    let (mut r, mut w) = conn::split(stream);
    let hello: Hello = next_msg(&mut r, Some(Duration::from_secs(10))).await?;
    match hello {
        Hello::Stats { .. } => send_msg(&mut w, &shared.stats.snapshot()).await,
        Hello::Data {
            version,
            epoch,
            from,
        } if version == PROTOCOL_VERSION => serve_data(shared, r, w, epoch, from).await,
        Hello::Coordinator {
            version,
            incarnation,
        } if version == PROTOCOL_VERSION => serve_coordinator(shared, r, w, incarnation).await,
        other => Err(format!(
            "protocol mismatch: {other:?} (this worker speaks version {PROTOCOL_VERSION})"
        )),
    }
}

async fn serve_coordinator(
    shared: Arc<Shared>,
    mut r: conn::Reader,
    mut w: conn::Writer,
    incarnation: u64,
) -> Result<(), String> {
    let conn_id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let refused = {
        let mut c = lock(&shared.coordinator);
        if incarnation < c.0 {
            Some(format!(
                "this worker follows a newer coordinator ({} > {incarnation})",
                c.0
            ))
        } else {
            *c = (incarnation, conn_id);
            None
        }
    };
    if let Some(reason) = refused {
        let _ = send_msg(
            &mut w,
            &ToCoordinator::Refused {
                reason: reason.clone(),
            },
        )
        .await;
        return Err(reason);
    }
    tracing::info!(incarnation, "coordinator connected");
    // Whatever attempt still runs here belongs to a coordinator that is gone
    // or replaced. It must stop before this coordinator deploys anything,
    // on this worker or any other: a sink of the old attempt still
    // committing while the new attempt's sink takes over its transactional
    // id is a zombie writer (on the test broker it even wedges the last
    // stable offset for good). The coordinator deploys only after every
    // worker's hello answer, so answering after the teardown orders it.
    let shared2 = shared.clone();
    let _ = tokio::task::spawn_blocking(move || teardown(&shared2)).await;
    send_msg(
        &mut w,
        &ToCoordinator::HelloAck {
            version: PROTOCOL_VERSION,
            data_addr: String::new(),
            slots: shared.opts.slots,
        },
    )
    .await?;
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    let writer = tokio::spawn(write_loop(w, rx));
    let beat = {
        let tx = tx.clone();
        let stats = shared.stats.clone();
        let every = shared.opts.heartbeat_interval;
        tokio::spawn(async move {
            loop {
                let hb = ToCoordinator::Heartbeat {
                    stats: stats.snapshot(),
                };
                let Ok(b) = encode_msg(&hb) else { return };
                if tx.send(b).is_err() {
                    return;
                }
                tokio::time::sleep(every).await;
            }
        })
    };
    let result = loop {
        let msg: ToWorker = match next_msg(&mut r, Some(shared.opts.heartbeat_timeout)).await {
            Ok(m) => m,
            Err(e) => break Err(e),
        };
        match msg {
            ToWorker::Heartbeat => {}
            ToWorker::Sync { seq } => {
                if let Ok(b) = encode_msg(&ToCoordinator::SyncAck { seq }) {
                    let _ = tx.send(b);
                }
            }
            ToWorker::Deploy(spec) => {
                let shared2 = shared.clone();
                let tx2 = tx.clone();
                let epoch = spec.epoch;
                let reply = off_runtime(move || deploy(&shared2, *spec, tx2))
                    .await
                    .and_then(|r| r);
                let reply = match reply {
                    Ok(tasks) => ToCoordinator::Deployed { epoch, tasks },
                    Err(error) => {
                        tracing::warn!(%epoch, %error, "deploy failed");
                        ToCoordinator::DeployFailed { epoch, error }
                    }
                };
                if let Ok(b) = encode_msg(&reply) {
                    let _ = tx.send(b);
                }
            }
            ToWorker::Control {
                epoch,
                task,
                control,
            } => {
                // Off the runtime: a barrier may open its storage (an S3
                // client), which blocks. Awaited, so that order is kept.
                let shared2 = shared.clone();
                let _ = off_runtime(move || deliver_control(&shared2, epoch, task, control)).await;
            }
            ToWorker::Release { epoch } => {
                let shared2 = shared.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    let mine = lock(&shared2.running)
                        .as_ref()
                        .is_some_and(|r| r.epoch == epoch);
                    if mine {
                        teardown(&shared2);
                    }
                })
                .await;
            }
        }
    };
    beat.abort();
    writer.abort();
    // Only the active coordinator's loss stops the tasks: a replaced one's
    // connection ending must not cancel its successor's attempt.
    let active = lock(&shared.coordinator).1 == conn_id;
    if active {
        if lock(&shared.running).is_some() {
            tracing::warn!(error = ?result, "lost the coordinator; cancelling local tasks");
        } else {
            tracing::info!("the coordinator disconnected");
        }
        let shared2 = shared.clone();
        let _ = tokio::task::spawn_blocking(move || teardown(&shared2)).await;
    }
    result
}

/// Runs blocking work that may use checkpoint storage on a plain thread and
/// awaits it. Not `spawn_blocking`: its threads carry the runtime's context,
/// and S3 storage refuses to block any thread that does (it cannot tell
/// them from executor threads), so a barrier or a restore from `s3://`
/// failed there.
async fn off_runtime<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("runnel-worker-io".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| format!("cannot start a thread: {e}"))?;
    rx.await
        .map_err(|_| "the worker's I/O thread panicked".to_string())
}

fn deliver_control(shared: &Shared, epoch: Epoch, task: (usize, u32), control: WireControl) {
    let mut running = lock(&shared.running);
    let current = running.as_ref().map(|r| r.epoch);
    if worker_decides(current, epoch) != WorkerDecision::Deliver {
        shared.stats.fenced_messages.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%epoch, ?current, "dropping a control message of another epoch");
        return;
    }
    let Some(tx) = running.as_ref().and_then(|r| r.tasks.get(&task)) else {
        return;
    };
    let c = match control {
        WireControl::Trigger(b) => match b.to_barrier(shared.open.as_ref()) {
            Ok(b) => Control::Trigger(b),
            Err(e) => {
                tracing::warn!(error = %e, "cannot open the snapshot storage of a barrier");
                return;
            }
        },
        WireControl::Complete(id) => Control::Notify(Notification::Complete(id)),
        WireControl::Aborted(id) => Control::Notify(Notification::Aborted(id)),
        WireControl::FinishSources => Control::FinishSources,
        WireControl::Cancel => Control::Cancel,
    };
    let cancel = matches!(c, Control::Cancel);
    let _ = tx.send(c);
    if cancel && let Some(run) = running.as_mut() {
        // The master cancels only to end the attempt. A task blocked sending
        // to a peer that gives no credit (a frozen worker keeps its TCP
        // connections open) cannot see the cancel: cutting the attempt's
        // connections unblocks every channel, so its tasks can exit.
        cut_exchange(run);
    }
}

fn cut_exchange(run: &mut Running) {
    for a in run.aborts.drain(..) {
        a.abort();
    }
    run.inbound.clear();
}

/// Stops the attempt running here: cancels its tasks, cuts its connections
/// (which unblocks every channel), and waits for its threads.
fn teardown(shared: &Shared) {
    let _gate = lock(&shared.teardown_gate);
    let Some(run) = lock(&shared.running).take() else {
        return;
    };
    tracing::info!(epoch = %run.epoch, "tearing down");
    for tx in run.tasks.values() {
        let _ = tx.send(Control::Cancel);
    }
    let mut run = run;
    cut_exchange(&mut run);
    drop(run.tasks);
    let deadline = Instant::now() + Duration::from_secs(30);
    for j in run.joins {
        while !j.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if j.is_finished() {
            let _ = j.join();
        } else {
            tracing::error!("a task did not stop within 30 s; abandoning it");
        }
    }
}

fn to_wire(m: MasterMsg, attempt: u64) -> Option<WireMasterMsg> {
    Some(match m {
        MasterMsg::Ack {
            attempt: a,
            checkpoint_id,
            task,
            ops,
            alignment_ms,
        } if a == attempt => WireMasterMsg::Ack {
            checkpoint_id,
            task,
            ops: ops.into_iter().map(WireAckedOp::from_acked).collect(),
            alignment_ms,
        },
        MasterMsg::Decline {
            attempt: a,
            checkpoint_id,
            reason,
        } if a == attempt => WireMasterMsg::Decline {
            checkpoint_id,
            reason,
        },
        MasterMsg::SourceFinished { attempt: a } if a == attempt => WireMasterMsg::SourceFinished,
        MasterMsg::TaskExited { attempt: a, result } if a == attempt => WireMasterMsg::TaskExited {
            result: result.map_err(|e| WireTaskError::from_task_error(&e)),
        },
        _ => return None,
    })
}

/// Deploys this worker's share of an attempt; returns its number of subtasks.
fn deploy(
    shared: &Arc<Shared>,
    spec: DeploySpec,
    coordinator: mpsc::UnboundedSender<Bytes>,
) -> Result<u32, String> {
    let epoch = spec.epoch;
    {
        let mut latest = lock(&shared.latest);
        match worker_decides(*latest, epoch) {
            WorkerDecision::Refuse => {
                shared.stats.fenced_messages.fetch_add(1, Ordering::Relaxed);
                return Err(format!(
                    "epoch {epoch} is older than {} which this worker already runs",
                    latest.unwrap_or_default()
                ));
            }
            WorkerDecision::Deliver => {
                return Err(format!("epoch {epoch} was already deployed here"));
            }
            WorkerDecision::TakeOver => *latest = Some(epoch),
        }
    }
    teardown(shared);
    if spec.fingerprint != shared.opts.fingerprint {
        return Err(format!(
            "the coordinator runs a different job definition (fingerprint {:016x}, this worker has {:016x})",
            spec.fingerprint, shared.opts.fingerprint
        ));
    }
    let (graph, cfg) = (shared.factory)(spec.parallelism).map_err(|e| e.to_string())?;
    let plan = super::plan::plan(&graph, &cfg);
    let names: Vec<&str> = plan.iter().map(|t| t.name.as_str()).collect();
    if names != spec.task_names {
        return Err(format!(
            "this worker built tasks {names:?} but the coordinator planned {:?}",
            spec.task_names
        ));
    }
    let mut snap = match &spec.restore {
        Some(uri) => Some(crate::checkpoint::load_snapshot(uri).map_err(|e| e.to_string())?),
        None => None,
    };
    // Local attempt numbers are per deployment; the epoch carries identity.
    let attempt = epoch.attempt;
    let (mtx, mrx) = unbounded::<MasterMsg>();
    let (up_tx, up_rx) = unbounded();
    let uploader = spawn_uploader(up_rx, mtx.clone()).map_err(|e| format!("uploader: {e}"))?;
    let metrics = graph.metrics.clone();
    let placed = Placed(&spec.assignment, spec.worker);
    let mut d = deploy_placed(
        &graph,
        &cfg,
        attempt,
        snap.as_mut(),
        &mtx,
        &up_tx,
        &metrics,
        Some(&placed),
    )
    .map_err(|e| e.to_string())?;
    drop(up_tx);
    drop(snap);
    let mine = spec.assignment.subtasks_of(spec.worker);
    if mine.len() != d.tasks.len() {
        return Err(format!(
            "deployed {} subtasks, assigned {}",
            d.tasks.len(),
            mine.len()
        ));
    }
    let mut tasks = HashMap::new();
    let mut joins = vec![uploader];
    for (&(ti, s), h) in mine.iter().zip(d.tasks.iter_mut()) {
        let want = plan[ti].subtask_name(s);
        if h.name != want {
            return Err(format!("deployed {} where {want} was planned", h.name));
        }
        tasks.insert((ti, s), h.control.clone());
        if let Some(j) = h.join.take() {
            joins.push(j);
        }
    }
    // A broken remote channel fails the attempt like a failed task.
    let fail = {
        let mtx = mtx.clone();
        move |what: String| {
            let mtx = mtx.clone();
            move |e: String| {
                tracing::warn!(channel = %what, error = %e, "remote channel failed");
                let _ = mtx.send(MasterMsg::TaskExited {
                    attempt,
                    result: Err(TaskError::Internal(format!("remote channel {what}: {e}"))),
                });
            }
        }
    };
    let mut out_by_peer: HashMap<u32, Vec<_>> = HashMap::new();
    let mut in_by_peer: HashMap<u32, Vec<_>> = HashMap::new();
    for (id, end) in std::mem::take(&mut d.remote) {
        match end {
            RemoteEnd::Out(o) => out_by_peer
                .entry(spec.assignment.worker_of(0, id.down))
                .or_default()
                .push((id, o)),
            RemoteEnd::In(i) => in_by_peer
                .entry(spec.assignment.worker_of(0, id.up))
                .or_default()
                .push((id, i)),
        }
    }
    let window = cfg.channel_capacity.max(1);
    let mut inbound = HashMap::new();
    for (peer, ends) in in_by_peer {
        let (ctx, crx) = mpsc::unbounded_channel();
        let mut queues = HashMap::new();
        for (id, end) in ends {
            let (qtx, qrx) = unbounded();
            queues.insert(id, qtx);
            let what = format!("{}.{} {}>{}", id.node, id.input, id.up, id.down);
            let j = spawn_inbound(
                id,
                end,
                qrx,
                ctx.clone(),
                shared.open.clone(),
                shared.stats.clone(),
                fail(what),
            )
            .map_err(|e| format!("cannot start a channel thread: {e}"))?;
            joins.push(j);
        }
        inbound.insert(
            peer,
            InboundPeer {
                queues,
                credits: Some(crx),
            },
        );
    }
    let mut aborts = Vec::new();
    for (peer, ends) in out_by_peer {
        let addr = spec
            .peers
            .get(peer as usize)
            .cloned()
            .ok_or_else(|| format!("no address for worker {peer}"))?;
        let (ftx, frx) = mpsc::unbounded_channel::<Bytes>();
        let mut credit_txs = HashMap::new();
        for (id, end) in ends {
            let (ctx, crx) = credit_window(window);
            credit_txs.insert(id, ctx);
            let what = format!("{}.{} {}>{}", id.node, id.input, id.up, id.down);
            let j = spawn_outbound(id, end, crx, ftx.clone(), shared.stats.clone(), fail(what))
                .map_err(|e| format!("cannot start a channel thread: {e}"))?;
            joins.push(j);
        }
        drop(ftx);
        let on_lost = fail(format!("to worker {peer} at {addr}"));
        let from = spec.worker;
        let task = shared.handle.spawn(async move {
            if let Err(e) = run_outbound_connection(&addr, epoch, from, frx, credit_txs).await {
                on_lost(e);
            }
        });
        aborts.push(task.abort_handle());
    }
    let n = tasks.len() as u32;
    *lock(&shared.running) = Some(Running {
        epoch,
        tasks,
        joins,
        inbound,
        aborts,
    });
    shared.deployed.send_replace(Some(epoch));
    // Relays task messages to the coordinator, stamped with the epoch.
    let stats = shared.stats.clone();
    std::thread::Builder::new()
        .name("relay".into())
        .spawn(move || {
            let mut connected = true;
            for m in mrx {
                // Logged here as well: once this attempt is torn down (or cut
                // off from its coordinator), a task that still ends, such as
                // one abandoned in a blocking call, has nobody else to tell.
                if let MasterMsg::TaskExited { result: Err(e), .. } = &m {
                    tracing::warn!(%epoch, error = %e, "a task failed");
                }
                let Some(msg) = to_wire(m, attempt) else {
                    stats.fenced_messages.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                if !connected {
                    continue;
                }
                match encode_msg(&ToCoordinator::Task { epoch, msg }) {
                    Ok(b) => {
                        // The coordinator is gone: keep draining, so that
                        // the failures above are still logged.
                        connected = coordinator.send(b).is_ok();
                    }
                    Err(e) => tracing::error!(error = %e, "cannot encode a task message"),
                }
            }
        })
        .map_err(|e| format!("cannot start the relay thread: {e}"))?;
    drop(mtx);
    drop(fail);
    tracing::info!(%epoch, subtasks = n, "deployed");
    Ok(n)
}

/// The sending side of a data connection to one peer: ships the frames of all
/// channels to it and hands its credits to the channels.
async fn run_outbound_connection(
    addr: &str,
    epoch: Epoch,
    from: u32,
    frames: mpsc::UnboundedReceiver<Bytes>,
    credits: HashMap<ChannelId, Sender<()>>,
) -> Result<(), String> {
    let stream = connect_retry(addr, Duration::from_secs(20)).await?;
    let (mut r, mut w) = conn::split(stream);
    send_msg(
        &mut w,
        &Hello::Data {
            version: PROTOCOL_VERSION,
            epoch,
            from,
        },
    )
    .await?;
    let writer = tokio::spawn(write_loop(w, frames));
    let result = loop {
        let b = match next_frame(&mut r, None).await {
            Ok(b) => b,
            Err(e) => break e,
        };
        match DataFrame::decode(b) {
            Ok(DataFrame::Credit { channel, n }) => {
                if let Some(tx) = credits.get(&channel) {
                    for _ in 0..n {
                        let _ = tx.send(());
                    }
                }
            }
            Ok(other) => break format!("unexpected frame from a receiver: {other:?}"),
            Err(e) => break e,
        }
    };
    // Every channel ended (its task finished and its frames left) before the
    // peer closed: not a failure.
    let done = writer.is_finished();
    writer.abort();
    if done { Ok(()) } else { Err(result) }
}

/// The receiving side of a data connection from one peer.
async fn serve_data(
    shared: Arc<Shared>,
    mut r: conn::Reader,
    w: conn::Writer,
    epoch: Epoch,
    from: u32,
) -> Result<(), String> {
    // The peer may have been deployed first: wait for this worker's deploy.
    let mut deployed = shared.deployed.subscribe();
    let wait = deployed.wait_for(|d| d.is_some_and(|d| d >= epoch));
    let _ = tokio::time::timeout(Duration::from_secs(30), wait).await;
    let (queues, credits) = {
        let mut running = lock(&shared.running);
        let current = running.as_ref().map(|r| r.epoch);
        if data_admits(current, epoch) != WorkerDecision::Deliver {
            shared.stats.fenced_messages.fetch_add(1, Ordering::Relaxed);
            return Err(format!(
                "refusing data of epoch {epoch} from worker {from}: running {current:?}"
            ));
        }
        let Some(run) = running.as_mut() else {
            return Err("no attempt".into());
        };
        let Some(peer) = run.inbound.get_mut(&from) else {
            return Err(format!("no channels from worker {from}"));
        };
        let Some(credits) = peer.credits.take() else {
            return Err(format!("worker {from} connected twice"));
        };
        let queues = peer.queues.clone();
        (queues, credits)
    };
    let writer = tokio::spawn(write_loop(w, credits));
    let stats = shared.stats.clone();
    let reader = tokio::spawn(async move {
        loop {
            let b = next_frame(&mut r, None).await?;
            stats.frames_received.fetch_add(1, Ordering::Relaxed);
            stats
                .bytes_received
                .fetch_add(b.len() as u64, Ordering::Relaxed);
            match DataFrame::decode(b)? {
                DataFrame::Batch {
                    channel, payload, ..
                } => {
                    let q = queues
                        .get(&channel)
                        .ok_or_else(|| format!("frame for unknown channel {channel:?}"))?;
                    stats.frame_queued(q.len());
                    if q.send(payload).is_err() {
                        stats.frame_delivered();
                        continue; // That task is gone; the attempt is ending.
                    }
                }
                other => return Err::<(), String>(format!("unexpected frame: {other:?}")),
            }
        }
    });
    if let Some(run) = lock(&shared.running).as_mut()
        && run.epoch == epoch
    {
        run.aborts.push(writer.abort_handle());
        run.aborts.push(reader.abort_handle());
    } else {
        writer.abort();
        reader.abort();
    }
    match reader.await {
        Ok(r) => r,
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// S3 storage blocks only on threads without a runtime context; the
    /// worker's barrier and deploy work must run on such a thread.
    #[tokio::test]
    async fn off_runtime_work_has_no_runtime_context() {
        let inside = tokio::task::spawn_blocking(|| tokio::runtime::Handle::try_current().is_ok())
            .await
            .unwrap();
        assert!(
            inside,
            "spawn_blocking threads carry the context (why off_runtime exists)"
        );
        let off = off_runtime(|| tokio::runtime::Handle::try_current().is_ok())
            .await
            .unwrap();
        assert!(!off);
    }
    use crate::error::JobError;

    fn epoch(attempt: u64) -> Epoch {
        Epoch {
            incarnation: 9,
            attempt,
        }
    }

    fn shared(rt: &tokio::runtime::Runtime) -> Arc<Shared> {
        let factory: JobFactory =
            Arc::new(|_| Err(JobError::InvalidJob("not used by these tests".into())));
        Arc::new(Shared {
            opts: WorkerOptions {
                listen: "127.0.0.1:0".parse().unwrap(),
                slots: 1,
                fingerprint: 1,
                heartbeat_interval: Duration::from_millis(100),
                heartbeat_timeout: Duration::from_secs(1),
            },
            factory,
            stats: Arc::new(Stats::default()),
            coordinator: Mutex::new((0, 0)),
            next_conn: AtomicU64::new(1),
            running: Mutex::new(None),
            teardown_gate: Mutex::new(()),
            latest: Mutex::new(None),
            deployed: watch::channel(None).0,
            open: Arc::new(|r: &str| crate::storage::open(r).map_err(|e| e.to_string())),
            handle: rt.handle().clone(),
        })
    }

    #[test]
    fn control_messages_of_other_epochs_are_dropped() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let sh = shared(&rt);
        let (tx, rx) = unbounded();
        *lock(&sh.running) = Some(Running {
            epoch: epoch(2),
            tasks: HashMap::from([((0, 0), tx)]),
            joins: vec![],
            inbound: HashMap::new(),
            aborts: vec![],
        });
        for e in [epoch(1), epoch(3)] {
            deliver_control(&sh, e, (0, 0), WireControl::Complete(5));
            assert!(rx.try_recv().is_err(), "delivered a notify of epoch {e}");
        }
        assert_eq!(sh.stats.fenced_messages.load(Ordering::Relaxed), 2);
        deliver_control(&sh, epoch(2), (0, 0), WireControl::Complete(5));
        assert!(matches!(
            rx.try_recv(),
            Ok(Control::Notify(Notification::Complete(5)))
        ));
    }

    #[test]
    fn deployments_of_older_epochs_are_refused() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let sh = shared(&rt);
        *lock(&sh.latest) = Some(epoch(4));
        let (ctx, _crx) = mpsc::unbounded_channel();
        let spec = DeploySpec {
            epoch: epoch(3),
            fingerprint: 1,
            parallelism: None,
            restore: None,
            assignment: super::super::assign::assign(&[1], 1, 1).unwrap(),
            worker: 0,
            peers: vec!["127.0.0.1:1".into()],
            task_names: vec![],
        };
        let err = deploy(&sh, spec.clone(), ctx.clone()).unwrap_err();
        assert!(err.contains("older"), "{err}");
        assert_eq!(*lock(&sh.latest), Some(epoch(4)));
        // A newer epoch is taken, and then fails on the job definition.
        let err = deploy(
            &sh,
            DeploySpec {
                epoch: epoch(5),
                fingerprint: 2,
                ..spec
            },
            ctx,
        )
        .unwrap_err();
        assert!(err.contains("different job definition"), "{err}");
        assert_eq!(*lock(&sh.latest), Some(epoch(5)));
    }

    /// A running attempt whose one task stops slowly after its cancel (as a
    /// sink finishing a transaction does); the flag is set as it exits.
    fn slow_attempt(sh: &Shared) -> Arc<std::sync::atomic::AtomicBool> {
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tx, rx) = unbounded::<Control>();
        let d = done.clone();
        let join = std::thread::spawn(move || {
            while !matches!(
                rx.recv_timeout(Duration::from_secs(10)),
                Ok(Control::Cancel) | Err(_)
            ) {}
            std::thread::sleep(Duration::from_millis(300));
            d.store(true, Ordering::SeqCst);
        });
        *lock(&sh.running) = Some(Running {
            epoch: epoch(1),
            tasks: HashMap::from([((0, 0), tx)]),
            joins: vec![join],
            inbound: HashMap::new(),
            aborts: vec![],
        });
        done
    }

    /// Connects as a coordinator of `incarnation` and returns once the worker
    /// has answered the hello.
    async fn hello(sh: Arc<Shared>, incarnation: u64) -> ToCoordinator {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let (r, w) = conn::split(s);
            let _ = serve_coordinator(sh, r, w, incarnation).await;
        });
        let (mut r, _w) = conn::split(TcpStream::connect(addr).await.unwrap());
        next_msg(&mut r, Some(Duration::from_secs(20)))
            .await
            .unwrap()
    }

    #[test]
    fn a_new_coordinator_is_answered_only_after_the_old_attempt_stopped() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let sh = shared(&rt);
        let done = slow_attempt(&sh);
        let ack = rt.block_on(hello(sh.clone(), 2));
        assert!(matches!(ack, ToCoordinator::HelloAck { .. }), "{ack:?}");
        assert!(
            done.load(Ordering::SeqCst),
            "the hello was answered while the old attempt's task still ran"
        );
        assert!(lock(&sh.running).is_none());
    }

    #[test]
    fn a_hello_during_a_teardown_waits_for_it() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let sh = shared(&rt);
        let done = slow_attempt(&sh);
        // The lost coordinator's teardown has taken the attempt and is
        // waiting for its task when the new coordinator says hello.
        let sh2 = sh.clone();
        let first = std::thread::spawn(move || teardown(&sh2));
        while lock(&sh.running).is_some() {
            std::thread::yield_now();
        }
        let ack = rt.block_on(hello(sh.clone(), 2));
        assert!(matches!(ack, ToCoordinator::HelloAck { .. }), "{ack:?}");
        assert!(
            done.load(Ordering::SeqCst),
            "the hello was answered while another teardown still waited for a task"
        );
        first.join().unwrap();
    }
}
