//! One reconcile: observe (pods, runtime control API, disposal Jobs) →
//! [`machine::decide`] → write the status (write-ahead) → act → record the
//! trigger id of a savepoint it sent.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use runnel_api::TriggerState;
use tracing::{Instrument, info, warn};

use crate::control::ControlClient;
use crate::crd::{FINALIZER, SAVEPOINT_ANNOTATION, StreamJob, StreamJobSpec, StreamJobStatus};
use crate::defaults::RuntimeDefaults;
use crate::kubeio::{KubeError, KubeIo, ListedPod, StatusWrite};
use crate::machine::{self, Action, Input, PodPhase, RuntimeObs, TriggerObs, World};
use crate::metrics::{Metrics, ResultLabel, SavepointLabel};
use crate::render::{CONTROL_PORT, Owner};
use crate::workers;

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Kube(#[from] KubeError),
    #[error("the StreamJob has no {0}")]
    Missing(&'static str),
}

/// Shared by all reconciles.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Command (image entrypoint + args) that deletes a savepoint; the path
    /// is appended.
    pub dispose_command: Vec<String>,
    pub control_timeout: Duration,
    /// Port of the runtime pods' control API.
    pub control_port: u16,
    /// Installation-wide runtime defaults (image, S3 Secret, env).
    pub defaults: RuntimeDefaults,
}

impl Context {
    pub fn new(client: Client, metrics: Arc<Metrics>, instance: String) -> Context {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "runnel-operator".into(),
                instance: Some(instance),
            },
        );
        Context {
            client,
            recorder,
            metrics,
            dispose_command: vec!["runnel".into(), "savepoint".into(), "dispose".into()],
            control_timeout: Duration::from_secs(5),
            control_port: CONTROL_PORT as u16,
            defaults: RuntimeDefaults::default(),
        }
    }
}

/// The Kubernetes Event for one of the machine's events. The note is cut at
/// 1,000 characters: the API refuses longer ones, and a refused Event would be
/// lost, not shortened.
pub fn event_for(warning: bool, reason: &str, message: &str) -> Event {
    Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.to_string(),
        note: Some(message.chars().take(1000).collect()),
        action: "Reconcile".into(),
        secondary: None,
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Asks the current deployment's runtime; `None` when it does not answer.
async fn observe_runtime(
    ctx: &Context,
    status: &StreamJobStatus,
    pods: &[ListedPod],
) -> (Option<RuntimeObs>, Option<TriggerObs>) {
    let Some(dep) = &status.deployment else {
        return (None, None);
    };
    let Some(ip) = pods
        .iter()
        .find(|p| p.obs.deploy_id == dep.deploy_id)
        .and_then(|p| p.ip.clone())
    else {
        return (None, None);
    };
    let c = ControlClient::new(
        &format!("http://{ip}:{}", ctx.control_port),
        ctx.control_timeout,
    );
    // Checkpoints first: they show a completed savepoint without marking the
    // trigger result read (which would let a stopped runtime exit).
    let runtime = match (c.checkpoints().await, c.status().await) {
        (Ok(cp), Ok(st)) => Some(RuntimeObs {
            deploy_id: dep.deploy_id,
            state: st.state,
            restarts: st.restarts,
            completed: cp.completed,
            in_progress: cp.in_progress,
            restored_from: st.restored_from,
        }),
        (Err(e), _) | (_, Err(e)) => {
            tracing::debug!(error = %e, "runtime not answering");
            None
        }
    };
    let trigger = match status
        .savepoint_in_progress
        .as_ref()
        .filter(|sp| sp.deploy_id == dep.deploy_id)
        .and_then(|sp| sp.trigger_id.clone())
    {
        Some(id) if runtime.is_some() => match c.savepoint_status(&id).await {
            Ok(None) => Some(TriggerObs::Unknown),
            Ok(Some(s)) => Some(match s.state {
                TriggerState::InProgress => TriggerObs::InProgress,
                TriggerState::Completed => TriggerObs::Completed(s.path.unwrap_or_default()),
                TriggerState::Failed => TriggerObs::Failed(s.error.unwrap_or_default()),
            }),
            Err(_) => None,
        },
        _ => None,
    };
    (runtime, trigger)
}

/// The reconcile of one StreamJob.
pub async fn reconcile(obj: Arc<StreamJob>, ctx: Arc<Context>) -> Result<Requeue, ReconcileError> {
    let started = Instant::now();
    let span = tracing::info_span!(
        "reconcile",
        namespace = obj.namespace().unwrap_or_default(),
        name = obj.name_any()
    );
    let result = reconcile_inner(&obj, &ctx).instrument(span).await;
    ctx.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    ctx.metrics
        .reconciles
        .get_or_create(&ResultLabel {
            result: if result.is_ok() { "ok" } else { "error" }.into(),
        })
        .inc();
    result
}

async fn reconcile_inner(obj: &StreamJob, ctx: &Context) -> Result<Requeue, ReconcileError> {
    let name = obj.name_any();
    let namespace = obj
        .namespace()
        .ok_or(ReconcileError::Missing("namespace"))?;
    let uid = obj.uid().ok_or(ReconcileError::Missing("uid"))?;
    let key = format!("{namespace}-{name}");
    let deleting = obj.meta().deletion_timestamp.is_some();
    let has_finalizer = obj.finalizers().iter().any(|f| f == FINALIZER);
    if deleting && !has_finalizer {
        ctx.metrics.set_lifecycle(&key, None);
        return Ok(Requeue::await_change());
    }
    let io = KubeIo::new(
        ctx.client.clone(),
        Owner {
            name: name.clone(),
            namespace: namespace.clone(),
            uid,
        },
    )
    .with_defaults(ctx.defaults.clone());
    let spec = ctx.defaults.resolve(&obj.spec);
    let status = obj.status.clone().unwrap_or_default();
    let pods = io.list_pods().await?;
    let disposals = io.list_disposals().await?;
    let (runtime, trigger) = observe_runtime(ctx, &status, &pods).await;
    let world = World {
        pods: pods.iter().map(|p| p.obs.clone()).collect(),
        runtime,
        trigger,
        disposals,
    };
    let now = now_ms();
    let decision = machine::decide(&Input {
        key: &key,
        generation: obj.metadata.generation.unwrap_or(0),
        spec: &spec,
        savepoint_annotation: obj
            .annotations()
            .get(SAVEPOINT_ANNOTATION)
            .map(String::as_str),
        deleting,
        has_finalizer,
        status: &status,
        world: &world,
        now_ms: now,
    });

    // Write-ahead: the status records what is about to be done, and only if
    // the object it was decided from is still current; otherwise nothing is
    // done and the next round decides from the newer object.
    let mut written = decision.status.clone();
    let mut version = obj.metadata.resource_version.clone();
    if written != status {
        match io.write_status(&written, version.as_deref()).await? {
            StatusWrite::Written { resource_version } => version = resource_version,
            StatusWrite::Stale => {
                info!("the StreamJob changed since this view of it; deciding again");
                return Ok(Requeue::requeue(Duration::from_millis(200)));
            }
        }
    }
    if written.lifecycle_state != status.lifecycle_state {
        info!(from = ?status.lifecycle_state, to = ?written.lifecycle_state, "lifecycle");
    }
    record_savepoint_metrics(ctx, &status, &written, now);

    let reference = obj.object_ref(&());
    for action in &decision.actions {
        match action {
            Action::Event {
                warning,
                reason,
                message,
            } => {
                info!(reason = %reason, message = %message, "event");
                let ev = event_for(*warning, reason, message);
                if let Err(e) = ctx.recorder.publish(&ev, &reference).await {
                    warn!(error = %e, "could not publish an Event");
                }
            }
            Action::Deploy {
                deploy_id,
                spec_generation,
                spec,
                restore,
            } => {
                info!(deploy_id, spec_generation, ?restore, "deploy");
                io.deploy(*deploy_id, *spec_generation, spec, restore)
                    .await?;
            }
            Action::DeletePods { keep } => {
                info!(?keep, "delete runtime pods");
                io.delete_pods(&pods, *keep).await?;
            }
            Action::TriggerSavepoint {
                target_directory,
                stop,
            } => {
                let Some(ip) = written
                    .deployment
                    .as_ref()
                    .and_then(|d| pods.iter().find(|p| p.obs.deploy_id == d.deploy_id))
                    .and_then(|p| p.ip.clone())
                else {
                    continue;
                };
                let c = ControlClient::new(
                    &format!("http://{ip}:{}", ctx.control_port),
                    ctx.control_timeout,
                );
                match c.trigger_savepoint(target_directory, *stop).await {
                    Ok(t) => {
                        info!(target = %target_directory, stop, trigger = %t.trigger_id, "savepoint triggered");
                        if let Some(sp) = written.savepoint_in_progress.as_mut()
                            && sp.target_directory == *target_directory
                        {
                            sp.trigger_id = Some(t.trigger_id);
                            // A conflict here is like a crash right after the
                            // trigger: the next round finds the savepoint
                            // through the runtime and its target directory.
                            match io.write_status(&written, version.as_deref()).await? {
                                StatusWrite::Written { resource_version } => {
                                    version = resource_version
                                }
                                StatusWrite::Stale => {
                                    info!("trigger id not recorded: the StreamJob changed")
                                }
                            }
                        }
                    }
                    // Not started; the next round sees no trace and retries
                    // (or times the savepoint out).
                    Err(e) => warn!(error = %e, "savepoint trigger failed"),
                }
            }
            Action::RemoveSavepointAnnotation => io.remove_savepoint_annotation().await?,
            Action::Dispose { path } => {
                io.start_disposal(&spec, path, &ctx.dispose_command).await?
            }
            Action::ForgetDisposal { path } => io.forget_disposal(path).await?,
            Action::AddFinalizer => {
                let mut f = obj.finalizers().to_vec();
                f.push(FINALIZER.into());
                io.set_finalizers(f).await?;
            }
            Action::RemoveFinalizer => {
                let f = obj
                    .finalizers()
                    .iter()
                    .filter(|f| *f != FINALIZER)
                    .cloned()
                    .collect();
                io.set_finalizers(f).await?;
            }
        }
    }
    sync_workers(&io, &spec, &pods, &decision.actions).await?;
    ctx.metrics
        .set_lifecycle(&key, Some(written.lifecycle_state));
    let busy = written.operation.is_some()
        || written.savepoint_in_progress.is_some()
        || written.deployment.as_ref().is_some_and(|d| !d.stable);
    // Savepoint progress and runtime state are not Kubernetes events, so a
    // job in flux is polled quickly; an idle one rarely.
    Ok(Requeue::requeue(if busy {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(30)
    }))
}

/// Keeps the worker pods of distributed deployments: replaces lost ones and
/// removes those whose coordinator is gone (see [`workers::plan`]), from the
/// pods listed at the start of this round and what its actions changed.
async fn sync_workers(
    io: &KubeIo,
    spec: &StreamJobSpec,
    pods: &[ListedPod],
    actions: &[Action],
) -> Result<(), KubeError> {
    let mut coordinators: Vec<workers::Coordinator> = pods
        .iter()
        .map(|p| workers::Coordinator {
            deploy_id: p.obs.deploy_id,
            phase: p.obs.phase,
            replicas: p.workers,
        })
        .collect();
    for a in actions {
        match a {
            Action::DeletePods { keep } => coordinators
                .iter_mut()
                .filter(|c| Some(c.deploy_id) != *keep)
                .for_each(|c| c.phase = PodPhase::Terminating),
            Action::Deploy {
                deploy_id, spec, ..
            } => coordinators.push(workers::Coordinator {
                deploy_id: *deploy_id,
                phase: PodPhase::Pending,
                replicas: spec.workers.as_ref().map_or(0, |w| w.replicas),
            }),
            _ => {}
        }
    }
    // A one-pod job that never had workers costs no extra call.
    if spec.workers.is_none() && coordinators.iter().all(|c| c.replicas == 0) {
        return Ok(());
    }
    let plan = workers::plan(&coordinators, &io.list_workers().await?);
    for name in &plan.delete {
        info!(pod = %name, "delete a worker pod");
        io.delete_worker(name).await?;
    }
    let mut missing: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    for (id, i) in plan.create {
        missing.entry(id).or_default().push(i);
    }
    for (id, indices) in missing {
        info!(deploy_id = id, ?indices, "create missing worker pods");
        io.create_workers(id, &indices).await?;
    }
    Ok(())
}

fn record_savepoint_metrics(ctx: &Context, old: &StreamJobStatus, new: &StreamJobStatus, now: i64) {
    let Some(sp) = &old.savepoint_in_progress else {
        return;
    };
    if new.savepoint_in_progress.as_ref() == Some(sp) {
        return;
    }
    let completed = new.savepoint_history.len() > old.savepoint_history.len();
    ctx.metrics
        .savepoints
        .get_or_create(&SavepointLabel {
            trigger: format!("{:?}", sp.trigger),
            result: if completed { "completed" } else { "failed" }.into(),
        })
        .inc();
    if completed {
        ctx.metrics
            .savepoint_duration
            .observe((now - sp.started_ms).max(0) as f64 / 1000.0);
    }
}

fn error_policy(_obj: Arc<StreamJob>, err: &ReconcileError, _ctx: Arc<Context>) -> Requeue {
    warn!(error = %err, "reconcile failed");
    Requeue::requeue(Duration::from_secs(5))
}

/// Runs the controller for `namespace` (`None`: all namespaces) until the
/// stream ends.
pub async fn run(ctx: Arc<Context>, namespace: Option<String>) {
    let client = ctx.client.clone();
    let (jobs, pods): (Api<StreamJob>, Api<Pod>) = match &namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    Controller::new(jobs, watcher::Config::default())
        .owns(
            pods,
            watcher::Config::default().labels("app.kubernetes.io/managed-by=runnel-operator"),
        )
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "controller");
            }
        })
        .await;
}
