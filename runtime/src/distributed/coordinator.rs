//! The coordinator: runs the job master (checkpoints, failures, restarts,
//! control API) over workers instead of local threads.
//!
//! It plugs into the executor as an [`AttemptDeployer`]: for each attempt it
//! connects the workers it can reach, assigns subtasks to the live ones,
//! deploys, and hands the job master one proxy per subtask. A proxy's control
//! channel (trigger, notify, finish, cancel) is relayed to its worker; the
//! workers' acks, declines and exits come back as the master's own messages.
//! Everything the master decides (barrier triggering, ack collection,
//! `_metadata`, retention, restart strategy) is therefore exactly the
//! single-process logic. A worker that disconnects or misses heartbeats fails
//! the attempt: its subtasks are reported as exited with an error, and the
//! master restarts from the latest completed checkpoint with a new epoch, on
//! the workers still alive.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Sender, unbounded};
use tokio::sync::mpsc;

use super::assign::assign;
use super::conn::{self, next_msg, send_msg, write_loop};
use super::discovery::resolve;
use super::fence::{Admit, Epoch, coordinator_admits};
use super::plan::plan;
use super::wire::{
    DeploySpec, ExchangeStats, Hello, PROTOCOL_VERSION, ToCoordinator, ToWorker, WireControl,
    WireMasterMsg, encode_msg,
};
use super::{DistributedError, JobFactory};
use crate::config::JobConfig;
use crate::error::{JobError, TaskError};
use crate::executor::deploy::{Deployed, TaskHandle};
use crate::executor::{AttemptDeployer, JobClient, MasterMsg};
use crate::graph::JobGraph;
use crate::task::Control;

/// How the coordinator finds and supervises its workers.
#[derive(Clone, Debug)]
pub struct CoordinatorOptions {
    /// `host:port` entries; a name may resolve to several addresses (a
    /// headless Service), each a worker.
    pub workers: Vec<String>,
    /// Slots per worker; by default what each worker offers (the smallest).
    pub slots: Option<u32>,
    /// `--parallelism` override, passed on to the workers' job builds.
    pub parallelism: Option<u32>,
    pub fingerprint: u64,
    pub heartbeat_interval: Duration,
    /// A worker silent this long is lost.
    pub heartbeat_timeout: Duration,
    /// How long a worker may take to deploy (restoring state included).
    pub deploy_timeout: Duration,
    /// Workers an attempt waits for (up to `worker_wait`) before it is placed
    /// on fewer. Without it, a coordinator that starts a moment before its
    /// workers (pods created together) would pack the job onto the first
    /// worker up, and a restart after a worker loss would not wait for the
    /// replacement Kubernetes is already starting, as Flink waits for slots.
    pub expected_workers: usize,
    /// How long an attempt waits for `expected_workers`.
    pub worker_wait: Duration,
}

/// Exchange statistics the workers reported with their last heartbeat.
pub type WorkerStats = Arc<Mutex<BTreeMap<String, ExchangeStats>>>;

/// Starts a distributed job: the returned client is the same as for a local
/// job (status, savepoints, stop, cancel), covering the whole job.
pub fn start_coordinator(
    graph: JobGraph,
    config: JobConfig,
    opts: CoordinatorOptions,
) -> Result<(JobClient, WorkerStats), JobError> {
    let deployer = RemoteDeployer::new(opts)
        .map_err(|e| JobError::InvalidConfig(format!("cannot start the coordinator: {e}")))?;
    let stats = deployer.shared.stats.clone();
    let client = crate::executor::start_with(graph, config, Some(Box::new(deployer)))?;
    Ok((client, stats))
}

/// Builds the job from its definition and starts it distributed.
pub fn start_coordinator_with(
    factory: &JobFactory,
    restore: Option<crate::RestoreSettings>,
    opts: CoordinatorOptions,
) -> Result<(JobClient, WorkerStats), JobError> {
    let (graph, mut config) = factory(opts.parallelism)?;
    config.restore = restore;
    start_coordinator(graph, config, opts)
}

struct Link {
    key: String,
    tx: mpsc::UnboundedSender<Bytes>,
    slots: u32,
    alive: AtomicBool,
    last_seen: Mutex<Instant>,
}

impl Link {
    fn send(&self, m: &ToWorker) {
        if let Ok(b) = encode_msg(m) {
            let _ = self.tx.send(b);
        }
    }
}

struct Member {
    tasks: u32,
    exited: u32,
}

#[derive(Default)]
struct AttemptState {
    epoch: Option<Epoch>,
    master_attempt: u64,
    master: Option<Sender<MasterMsg>>,
    members: HashMap<String, Member>,
    replies: Option<Sender<(String, Result<u32, String>)>>,
}

struct Shared {
    state: Mutex<AttemptState>,
    /// Where `SyncAck`s go while the relay waits for them.
    sync: Mutex<Option<Sender<(String, u64)>>>,
    stats: WorkerStats,
    fenced: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

struct RemoteDeployer {
    rt: tokio::runtime::Runtime,
    opts: CoordinatorOptions,
    incarnation: u64,
    shared: Arc<Shared>,
    links: HashMap<String, Arc<Link>>,
}

impl RemoteDeployer {
    fn new(opts: CoordinatorOptions) -> Result<Self, DistributedError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("coordinator-io")
            .enable_all()
            .build()
            .map_err(|e| DistributedError::Io(e.to_string()))?;
        // The start time orders coordinator incarnations: a restarted
        // coordinator takes the workers over from the one it replaces.
        let incarnation = crate::clock::system_now_ms().max(1) as u64;
        Ok(RemoteDeployer {
            rt,
            opts,
            incarnation,
            shared: Arc::new(Shared {
                state: Mutex::new(AttemptState::default()),
                sync: Mutex::new(None),
                stats: Arc::default(),
                fenced: AtomicU64::new(0),
            }),
            links: HashMap::new(),
        })
    }

    /// `connect_workers`, retried until `expected_workers` are live or
    /// `worker_wait` has passed; then the attempt takes what it has.
    fn connect_expected_workers(&mut self) -> Vec<Arc<Link>> {
        let deadline = Instant::now() + self.opts.worker_wait;
        loop {
            let live = self.connect_workers();
            if !keep_waiting(
                live.len(),
                self.opts.expected_workers,
                Instant::now(),
                deadline,
            ) {
                if live.len() < self.opts.expected_workers {
                    tracing::warn!(
                        live = live.len(),
                        expected = self.opts.expected_workers,
                        "placing the attempt on fewer workers than expected"
                    );
                }
                return live;
            }
            std::thread::sleep(WORKER_RETRY);
        }
    }

    /// Connects every configured worker that is not connected yet; a worker
    /// that does not answer its hello in time (stopped, partitioned) is left out.
    fn connect_workers(&mut self) -> Vec<Arc<Link>> {
        self.links.retain(|_, l| l.alive.load(Ordering::SeqCst));
        let addrs: Vec<SocketAddr> = self.rt.block_on(resolve(&self.opts.workers));
        let mut pending = Vec::new();
        for a in addrs {
            let key = a.to_string();
            if self.links.contains_key(&key) {
                continue;
            }
            let shared = self.shared.clone();
            let opts = self.opts.clone();
            let incarnation = self.incarnation;
            pending.push(self.rt.spawn(async move {
                let r = connect_link(key.clone(), incarnation, opts, shared).await;
                (key, r)
            }));
        }
        for p in pending {
            match self.rt.block_on(p) {
                Ok((key, Ok(link))) => {
                    self.links.insert(key, link);
                }
                Ok((key, Err(e))) => {
                    tracing::warn!(worker = %key, error = %e, "worker unavailable")
                }
                Err(e) => tracing::warn!(error = %e, "connecting a worker panicked"),
            }
        }
        let mut live: Vec<Arc<Link>> = self
            .links
            .values()
            .filter(|l| l.alive.load(Ordering::SeqCst))
            .cloned()
            .collect();
        live.sort_by(|a, b| a.key.cmp(&b.key));
        live
    }
}

/// Pause between connection rounds while waiting for expected workers.
const WORKER_RETRY: Duration = Duration::from_millis(250);

fn keep_waiting(live: usize, expected: usize, now: Instant, deadline: Instant) -> bool {
    live < expected && now < deadline
}

async fn connect_link(
    key: String,
    incarnation: u64,
    opts: CoordinatorOptions,
    shared: Arc<Shared>,
) -> Result<Arc<Link>, String> {
    let stream = tokio::time::timeout(opts.heartbeat_timeout, tokio::net::TcpStream::connect(&key))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("cannot connect: {e}"))?;
    let (mut r, mut w) = conn::split(stream);
    send_msg(
        &mut w,
        &Hello::Coordinator {
            version: PROTOCOL_VERSION,
            incarnation,
        },
    )
    .await?;
    let slots = match next_msg::<ToCoordinator>(&mut r, Some(opts.heartbeat_timeout)).await? {
        ToCoordinator::HelloAck { version, slots, .. } if version == PROTOCOL_VERSION => slots,
        ToCoordinator::Refused { reason } => return Err(format!("refused: {reason}")),
        other => return Err(format!("unexpected hello answer {other:?}")),
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let link = Arc::new(Link {
        key: key.clone(),
        tx,
        slots,
        alive: AtomicBool::new(true),
        last_seen: Mutex::new(Instant::now()),
    });
    let writer = tokio::spawn(write_loop(w, rx));
    let beat = {
        let link = link.clone();
        tokio::spawn(async move {
            loop {
                link.send(&ToWorker::Heartbeat);
                tokio::time::sleep(opts.heartbeat_interval).await;
            }
        })
    };
    let l2 = link.clone();
    tokio::spawn(async move {
        let reason = loop {
            match next_msg::<ToCoordinator>(&mut r, Some(opts.heartbeat_timeout)).await {
                Ok(m) => {
                    *lock(&l2.last_seen) = Instant::now();
                    on_message(&shared, &l2, m);
                }
                Err(e) => break e,
            }
        };
        beat.abort();
        writer.abort();
        lost(&shared, &l2, &reason);
    });
    tracing::info!(worker = %key, slots, "worker connected");
    Ok(link)
}

fn on_message(shared: &Shared, link: &Link, m: ToCoordinator) {
    match m {
        ToCoordinator::Heartbeat { stats } => {
            lock(&shared.stats).insert(link.key.clone(), stats);
        }
        ToCoordinator::Deployed { epoch, tasks } => {
            let st = lock(&shared.state);
            if st.epoch == Some(epoch)
                && let Some(r) = &st.replies
            {
                let _ = r.send((link.key.clone(), Ok(tasks)));
            }
        }
        ToCoordinator::DeployFailed { epoch, error } => {
            let st = lock(&shared.state);
            if st.epoch == Some(epoch)
                && let Some(r) = &st.replies
            {
                let _ = r.send((link.key.clone(), Err(error)));
            }
        }
        ToCoordinator::Task { epoch, msg } => {
            let mut st = lock(&shared.state);
            let member = st.members.contains_key(&link.key);
            if coordinator_admits(st.epoch, epoch, member) == Admit::Drop {
                shared.fenced.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(worker = %link.key, %epoch, "dropping a message of another attempt");
                return;
            }
            let attempt = st.master_attempt;
            let m = match msg {
                WireMasterMsg::Ack {
                    checkpoint_id,
                    task,
                    ops,
                    alignment_ms,
                } => MasterMsg::Ack {
                    attempt,
                    checkpoint_id,
                    task,
                    ops: ops.into_iter().map(|o| o.into_acked()).collect(),
                    alignment_ms,
                },
                WireMasterMsg::Decline {
                    checkpoint_id,
                    reason,
                } => MasterMsg::Decline {
                    attempt,
                    checkpoint_id,
                    reason,
                },
                WireMasterMsg::SourceFinished => MasterMsg::SourceFinished { attempt },
                WireMasterMsg::TaskExited { result } => {
                    if let Some(mb) = st.members.get_mut(&link.key) {
                        mb.exited += 1;
                    }
                    MasterMsg::TaskExited {
                        attempt,
                        result: result.map_err(|e| e.into_task_error(&link.key)),
                    }
                }
            };
            if let Some(master) = &st.master {
                let _ = master.send(m);
            }
        }
        ToCoordinator::SyncAck { seq } => {
            if let Some(tx) = lock(&shared.sync).as_ref() {
                let _ = tx.send((link.key.clone(), seq));
            }
        }
        ToCoordinator::HelloAck { .. } | ToCoordinator::Refused { .. } => {}
    }
}

/// A worker is gone: its subtasks of the current attempt count as failed,
/// which makes the master restart the job without it.
fn lost(shared: &Shared, link: &Link, reason: &str) {
    if !link.alive.swap(false, Ordering::SeqCst) {
        return;
    }
    tracing::warn!(worker = %link.key, %reason, "worker lost");
    let mut st = lock(&shared.state);
    if let Some(r) = &st.replies {
        let _ = r.send((link.key.clone(), Err(format!("worker lost: {reason}"))));
    }
    let attempt = st.master_attempt;
    let master = st.master.clone();
    if let Some(m) = st.members.remove(&link.key)
        && let Some(master) = master
    {
        for _ in m.exited..m.tasks {
            let _ = master.send(MasterMsg::TaskExited {
                attempt,
                result: Err(TaskError::Internal(format!(
                    "worker {} lost: {reason}",
                    link.key
                ))),
            });
        }
    }
}

impl AttemptDeployer for RemoteDeployer {
    fn deploy(
        &mut self,
        graph: &JobGraph,
        config: &JobConfig,
        attempt: u64,
        restore: Option<&str>,
        master: &Sender<MasterMsg>,
    ) -> Result<Deployed, TaskError> {
        let epoch = Epoch {
            incarnation: self.incarnation,
            attempt,
        };
        let live = self.connect_expected_workers();
        if live.is_empty() {
            return Err(TaskError::Internal("no worker is reachable".into()));
        }
        let tasks = plan(graph, config);
        let par: Vec<u32> = tasks.iter().map(|t| t.parallelism).collect();
        let slots = self
            .opts
            .slots
            .unwrap_or_else(|| live.iter().map(|l| l.slots).min().unwrap_or(1));
        let assignment = assign(&par, live.len() as u32, slots)
            .map_err(|e| TaskError::Internal(format!("cannot place the job: {e}")))?;
        let (rtx, rrx) = unbounded();
        {
            let mut st = lock(&self.shared.state);
            st.epoch = Some(epoch);
            st.master_attempt = attempt;
            st.master = Some(master.clone());
            st.replies = Some(rtx);
            st.members = live
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    let n = assignment.subtasks_of(i as u32).len() as u32;
                    (
                        l.key.clone(),
                        Member {
                            tasks: n,
                            exited: 0,
                        },
                    )
                })
                .collect();
        }
        let peers: Vec<String> = live.iter().map(|l| l.key.clone()).collect();
        tracing::info!(%epoch, workers = ?peers, load = ?assignment.load(), "deploying");
        for (i, l) in live.iter().enumerate() {
            l.send(&ToWorker::Deploy(Box::new(DeploySpec {
                epoch,
                fingerprint: self.opts.fingerprint,
                parallelism: self.opts.parallelism,
                restore: restore.map(str::to_string),
                assignment: assignment.clone(),
                worker: i as u32,
                peers: peers.clone(),
                task_names: tasks.iter().map(|t| t.name.clone()).collect(),
            })));
        }
        let deadline = Instant::now() + self.opts.deploy_timeout;
        let mut done = 0;
        let mut failure = None;
        while done < live.len() {
            match rrx.recv_deadline(deadline) {
                Ok((_, Ok(_))) => done += 1,
                Ok((key, Err(e))) => {
                    failure = Some(format!("worker {key}: {e}"));
                    break;
                }
                Err(_) => {
                    failure = Some("workers did not deploy in time".into());
                    break;
                }
            }
        }
        lock(&self.shared.state).replies = None;
        if let Some(f) = failure {
            // Cancel what did deploy; the master restarts the attempt.
            for (i, l) in live.iter().enumerate() {
                for (t, s) in assignment.subtasks_of(i as u32) {
                    l.send(&ToWorker::Control {
                        epoch,
                        task: (t, s),
                        control: WireControl::Cancel,
                    });
                }
            }
            lock(&self.shared.state).members.clear();
            return Err(TaskError::Internal(format!("deploy failed: {f}")));
        }
        let mut handles = Vec::new();
        let mut proxies = Vec::new();
        let mut source_subtasks = 0;
        for (ti, t) in tasks.iter().enumerate() {
            for s in 0..t.parallelism {
                let link = live[assignment.worker_of(ti, s) as usize].clone();
                let (ctx, crx) = unbounded::<Control>();
                proxies.push(((ti, s), link, crx));
                if t.is_source {
                    source_subtasks += 1;
                }
                handles.push(TaskHandle {
                    name: t.subtask_name(s),
                    control: ctx,
                    is_source: t.is_source,
                    join: None,
                });
            }
        }
        let shared = self.shared.clone();
        let timeout = self.opts.heartbeat_timeout;
        std::thread::Builder::new()
            .name("control-relay".into())
            .spawn(move || relay(proxies, epoch, live, shared, timeout))
            .map_err(|e| TaskError::Internal(format!("cannot start the control relay: {e}")))?;
        let parallelism = graph
            .nodes
            .iter()
            .map(|n| (n.uid.clone(), n.parallelism.unwrap_or(config.parallelism)))
            .collect();
        Ok(Deployed {
            tasks: handles,
            remote: Vec::new(),
            source_subtasks,
            parallelism,
        })
    }
}

type Proxy = (
    (usize, u32),
    Arc<Link>,
    crossbeam_channel::Receiver<Control>,
);

/// Relays the master's control messages to the workers of one attempt, until
/// the master drops the proxies.
///
/// One ordering matters across workers: the notification that the final
/// checkpoint completed must reach every task before any source ends its
/// stream (a sink that sees the end first would exit without committing).
/// In one process, channel order guarantees it; here the end of a stream
/// travels over a data connection that may overtake the notification on the
/// coordinator's connection. So before `FinishSources` goes out, the relay
/// forwards everything the master sent before it and waits until every
/// worker has confirmed (`Sync`) that it delivered those messages.
fn relay(
    mut proxies: Vec<Proxy>,
    epoch: Epoch,
    members: Vec<Arc<Link>>,
    shared: Arc<Shared>,
    timeout: Duration,
) {
    let forward = |p: &Proxy, c: &Control| {
        p.1.send(&ToWorker::Control {
            epoch,
            task: p.0,
            control: WireControl::from_control(c),
        });
    };
    let mut seq = 0u64;
    while !proxies.is_empty() {
        let mut sel = crossbeam_channel::Select::new();
        for p in &proxies {
            sel.recv(&p.2);
        }
        let op = sel.select();
        let i = op.index();
        let Ok(c) = op.recv(&proxies[i].2) else {
            proxies.swap_remove(i);
            continue;
        };
        if !matches!(c, Control::FinishSources) {
            forward(&proxies[i], &c);
            continue;
        }
        // Everything the master sent before this is queued by now: forward it.
        let mut finish = vec![i];
        for (j, p) in proxies.iter().enumerate() {
            while let Ok(c) = p.2.try_recv() {
                if matches!(c, Control::FinishSources) {
                    finish.push(j);
                } else {
                    forward(p, &c);
                }
            }
        }
        seq += 1;
        let (tx, rx) = unbounded();
        *lock(&shared.sync) = Some(tx);
        for l in &members {
            l.send(&ToWorker::Sync { seq });
        }
        let deadline = Instant::now() + timeout;
        let mut acked = std::collections::HashSet::new();
        while members
            .iter()
            .any(|l| l.alive.load(Ordering::SeqCst) && !acked.contains(&l.key))
        {
            match rx.recv_deadline(deadline) {
                Ok((key, s)) if s == seq => {
                    acked.insert(key);
                }
                Ok(_) => {}
                Err(_) => {
                    tracing::warn!("workers did not confirm delivery in time; finishing anyway");
                    break;
                }
            }
        }
        *lock(&shared.sync) = None;
        for j in finish {
            forward(&proxies[j], &Control::FinishSources);
        }
    }
}

impl Drop for RemoteDeployer {
    fn drop(&mut self) {
        // The job ended: tell the workers to let go of its last attempt.
        let epoch = lock(&self.shared.state).epoch;
        if let Some(epoch) = epoch {
            for l in self.links.values() {
                l.send(&ToWorker::Release { epoch });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distributed::wire::WireTaskError;

    #[test]
    fn an_attempt_waits_for_expected_workers_only_until_the_deadline() {
        let now = Instant::now();
        let later = now + Duration::from_secs(1);
        assert!(keep_waiting(1, 2, now, later));
        assert!(!keep_waiting(2, 2, now, later), "all expected are live");
        assert!(!keep_waiting(3, 2, now, later));
        assert!(!keep_waiting(1, 2, later, later), "the wait is over");
        assert!(!keep_waiting(0, 0, now, later), "nothing expected");
    }

    fn setup(epoch: Epoch) -> (Shared, Arc<Link>, crossbeam_channel::Receiver<MasterMsg>) {
        let (mtx, mrx) = unbounded();
        let (tx, _rx) = mpsc::unbounded_channel();
        let link = Arc::new(Link {
            key: "w0".into(),
            tx,
            slots: 2,
            alive: AtomicBool::new(true),
            last_seen: Mutex::new(Instant::now()),
        });
        let mut members = HashMap::new();
        members.insert(
            "w0".to_string(),
            Member {
                tasks: 3,
                exited: 0,
            },
        );
        let shared = Shared {
            state: Mutex::new(AttemptState {
                epoch: Some(epoch),
                master_attempt: 7,
                master: Some(mtx),
                members,
                replies: None,
            }),
            sync: Mutex::new(None),
            stats: Arc::default(),
            fenced: AtomicU64::new(0),
        };
        (shared, link, mrx)
    }

    fn ack(epoch: Epoch) -> ToCoordinator {
        ToCoordinator::Task {
            epoch,
            msg: WireMasterMsg::Ack {
                checkpoint_id: 4,
                task: (1, 0),
                ops: vec![],
                alignment_ms: 0,
            },
        }
    }

    #[test]
    fn acks_of_an_older_epoch_never_reach_the_master() {
        let cur = Epoch {
            incarnation: 5,
            attempt: 2,
        };
        let old = Epoch {
            incarnation: 5,
            attempt: 1,
        };
        let (shared, link, mrx) = setup(cur);
        on_message(&shared, &link, ack(old));
        assert!(mrx.try_recv().is_err());
        assert_eq!(shared.fenced.load(Ordering::Relaxed), 1);
        on_message(&shared, &link, ack(cur));
        match mrx.try_recv().unwrap() {
            MasterMsg::Ack {
                attempt,
                checkpoint_id,
                task,
                ..
            } => assert_eq!((attempt, checkpoint_id, task), (7, 4, (1, 0))),
            _ => panic!("expected an ack"),
        }
        // A worker that is not part of the attempt is fenced even with the
        // right epoch (it was lost and removed).
        lock(&shared.state).members.clear();
        on_message(&shared, &link, ack(cur));
        assert!(mrx.try_recv().is_err());
        assert_eq!(shared.fenced.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_lost_worker_fails_its_remaining_subtasks_once() {
        let cur = Epoch {
            incarnation: 5,
            attempt: 2,
        };
        let (shared, link, mrx) = setup(cur);
        on_message(
            &shared,
            &link,
            ToCoordinator::Task {
                epoch: cur,
                msg: WireMasterMsg::TaskExited {
                    result: Err(WireTaskError::Cancelled),
                },
            },
        );
        assert!(matches!(
            mrx.try_recv().unwrap(),
            MasterMsg::TaskExited {
                attempt: 7,
                result: Err(TaskError::Cancelled)
            }
        ));
        lost(&shared, &link, "nothing received");
        lost(&shared, &link, "again");
        let mut n = 0;
        while let Ok(m) = mrx.try_recv() {
            match m {
                MasterMsg::TaskExited {
                    attempt: 7,
                    result: Err(TaskError::Internal(msg)),
                } => assert!(msg.contains("worker w0 lost: nothing received"), "{msg}"),
                _ => panic!("unexpected message"),
            }
            n += 1;
        }
        assert_eq!(n, 2, "3 subtasks, 1 already exited");
        assert!(!link.alive.load(Ordering::SeqCst));
        // Whatever it sends afterwards is dropped.
        on_message(&shared, &link, ack(cur));
        assert!(mrx.try_recv().is_err());
    }
}
