//! The Kubernetes calls of one StreamJob's reconcile. Every write is
//! idempotent (create tolerates 409, delete tolerates 404, status and the
//! Service use server-side apply), which is what lets the reconcile repeat
//! any step after a crash.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::crd::{Restore, StreamJob, StreamJobSpec, StreamJobStatus};
use crate::defaults::RuntimeDefaults;
use crate::machine::{DisposalObs, DisposalState, PodObs, PodPhase};
use crate::render::{self, Owner};
use crate::workers;

pub const FIELD_MANAGER: &str = "runnel-operator";

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: Box<kube::Error>,
    },
}

fn api_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> KubeError {
    let what = what.into();
    move |e| KubeError::Api {
        what,
        source: Box::new(e),
    }
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// What became of a status write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StatusWrite {
    /// Written; the StreamJob's new resource version.
    Written { resource_version: Option<String> },
    /// The StreamJob changed since the version the status was decided from.
    Stale,
}

/// A runtime pod as listed, with its IP for the control API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedPod {
    pub obs: PodObs,
    pub ip: Option<String>,
    /// Worker pods it coordinates (0: a one-pod job).
    pub workers: u32,
}

/// The calls for one StreamJob.
#[derive(Clone)]
pub struct KubeIo {
    client: Client,
    owner: Owner,
    defaults: RuntimeDefaults,
}

impl KubeIo {
    pub fn new(client: Client, owner: Owner) -> KubeIo {
        KubeIo {
            client,
            owner,
            defaults: RuntimeDefaults::default(),
        }
    }

    /// Adds the installation's default environment to the runtime and
    /// disposal containers it creates.
    pub fn with_defaults(mut self, defaults: RuntimeDefaults) -> KubeIo {
        self.defaults = defaults;
        self
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.owner.namespace)
    }

    fn selector(&self) -> ListParams {
        ListParams::default().labels(&format!("{}={}", render::LABEL_JOB, self.owner.name))
    }

    pub async fn list_pods(&self) -> Result<Vec<ListedPod>, KubeError> {
        let pods = self
            .api::<Pod>()
            .list(&self.selector())
            .await
            .map_err(api_err("list pods"))?;
        Ok(pods
            .items
            .into_iter()
            .filter_map(|p| {
                let id = p
                    .metadata
                    .labels
                    .as_ref()?
                    .get(render::LABEL_DEPLOY_ID)?
                    .parse::<u64>()
                    .ok()?;
                let status = p.status.as_ref();
                let phase = if p.metadata.deletion_timestamp.is_some() {
                    PodPhase::Terminating
                } else {
                    match status.and_then(|s| s.phase.as_deref()) {
                        Some("Running") => PodPhase::Running,
                        Some("Succeeded") => PodPhase::Succeeded,
                        Some("Failed") => PodPhase::Failed,
                        _ => PodPhase::Pending,
                    }
                };
                Some(ListedPod {
                    obs: PodObs {
                        deploy_id: id,
                        phase,
                    },
                    ip: status.and_then(|s| s.pod_ip.clone()),
                    workers: render::worker_replicas(&p),
                })
            })
            .collect())
    }

    async fn create_tolerant<K>(&self, obj: &K, what: &str) -> Result<(), KubeError>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + Serialize
            + std::fmt::Debug,
        <K as kube::Resource>::DynamicType: Default,
    {
        match self.api::<K>().create(&PostParams::default(), obj).await {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, 409) => Ok(()),
            Err(e) => Err(api_err(what)(e)),
        }
    }

    async fn delete_tolerant<K>(&self, name: &str, what: &str) -> Result<(), KubeError>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
        <K as kube::Resource>::DynamicType: Default,
    {
        match self
            .api::<K>()
            .delete(name, &DeleteParams::background())
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, 404) => Ok(()),
            Err(e) => Err(api_err(what)(e)),
        }
    }

    /// ConfigMap, Service and pod of a deployment (each created unless present).
    pub async fn deploy(
        &self,
        deploy_id: u64,
        spec_generation: i64,
        spec: &StreamJobSpec,
        restore: &Restore,
    ) -> Result<(), KubeError> {
        let mut pod = render::pod(&self.owner, deploy_id, spec_generation, spec, restore);
        if let Some(ps) = pod.spec.as_mut() {
            ps.containers
                .iter_mut()
                .filter(|c| c.name == "runtime")
                .for_each(|c| self.defaults.apply_env(c));
        }
        let mut cm = render::configmap(&self.owner, deploy_id, spec);
        if spec.workers.is_some() {
            render::keep_coordinator_pod(&mut cm, &pod);
        }
        self.create_tolerant(&cm, "create the job ConfigMap")
            .await?;
        let svc = render::service(&self.owner);
        self.api::<Service>()
            .patch(
                &render::service_name(&self.owner.name),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&svc),
            )
            .await
            .map_err(api_err("apply the control Service"))?;
        if let Some(w) = &spec.workers {
            let svc = render::workers_service(&self.owner);
            self.api::<Service>()
                .patch(
                    &render::workers_service_name(&self.owner.name),
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&svc),
                )
                .await
                .map_err(api_err("apply the workers Service"))?;
            // Workers first: the coordinator waits for them, they do not
            // wait for it.
            for i in 0..w.replicas {
                if let Some(worker) = render::worker_pod(&pod, &self.owner, i) {
                    self.create_tolerant(&worker, "create a worker pod").await?;
                }
            }
        }
        self.create_tolerant(&pod, "create the runtime pod").await
    }

    /// The worker pods of this job (all deployments).
    pub async fn list_workers(&self) -> Result<Vec<workers::Worker>, KubeError> {
        let lp = ListParams::default().labels(&format!(
            "{}={}",
            render::LABEL_WORKER_OF,
            self.owner.name
        ));
        let pods = self
            .api::<Pod>()
            .list(&lp)
            .await
            .map_err(api_err("list worker pods"))?;
        Ok(pods
            .items
            .into_iter()
            .filter_map(|p| {
                let labels = p.metadata.labels.as_ref()?;
                Some(workers::Worker {
                    deploy_id: labels.get(render::LABEL_DEPLOY_ID)?.parse().ok()?,
                    index: labels.get(render::LABEL_WORKER_INDEX)?.parse().ok()?,
                    name: p.metadata.name.clone()?,
                })
            })
            .collect())
    }

    /// Creates worker pods of deployment `deploy_id` again, derived from its
    /// coordinator pod as rendered (kept in the deployment's ConfigMap: the
    /// pod read back from the API carries what the scheduler and admission
    /// added, such as its node and token volume, which a new pod must not).
    pub async fn create_workers(&self, deploy_id: u64, indices: &[u32]) -> Result<(), KubeError> {
        let cm = self
            .api::<ConfigMap>()
            .get_opt(&render::configmap_name(&self.owner.name, deploy_id))
            .await
            .map_err(api_err("read a job ConfigMap"))?;
        // Gone since the coordinator was listed: its workers are not needed.
        let Some(coordinator) = cm.as_ref().and_then(render::kept_coordinator_pod) else {
            tracing::warn!(deploy_id, "no coordinator pod to derive worker pods from");
            return Ok(());
        };
        for &i in indices {
            if let Some(worker) = render::worker_pod(&coordinator, &self.owner, i) {
                self.create_tolerant(&worker, "create a worker pod").await?;
            }
        }
        Ok(())
    }

    pub async fn delete_worker(&self, name: &str) -> Result<(), KubeError> {
        self.delete_tolerant::<Pod>(name, "delete a worker pod")
            .await
    }

    /// Deletes every runtime pod except `keep`, and its ConfigMap.
    pub async fn delete_pods(
        &self,
        pods: &[ListedPod],
        keep: Option<u64>,
    ) -> Result<(), KubeError> {
        for p in pods.iter().filter(|p| Some(p.obs.deploy_id) != keep) {
            let id = p.obs.deploy_id;
            self.delete_tolerant::<Pod>(
                &render::pod_name(&self.owner.name, id),
                "delete a runtime pod",
            )
            .await?;
            self.delete_tolerant::<ConfigMap>(
                &render::configmap_name(&self.owner.name, id),
                "delete a job ConfigMap",
            )
            .await?;
        }
        Ok(())
    }

    /// Writes the whole status (server-side apply: fields left out are removed).
    ///
    /// With `resource_version`, the write only lands if the StreamJob is still
    /// at that version: the status is decided from a cached object, and a
    /// decision made from a stale one (say, before this operator's own last
    /// write reached the cache) must not be written or acted on: it could
    /// trigger a savepoint twice or redeploy what is already deployed.
    pub async fn write_status(
        &self,
        status: &StreamJobStatus,
        resource_version: Option<&str>,
    ) -> Result<StatusWrite, KubeError> {
        let mut body = serde_json::json!({
            "apiVersion": "runnel.dev/v1alpha1",
            "kind": "StreamJob",
            "status": status,
        });
        if let Some(rv) = resource_version {
            body["metadata"] = serde_json::json!({ "resourceVersion": rv });
        }
        match self
            .api::<StreamJob>()
            .patch_status(
                &self.owner.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
        {
            Ok(obj) => Ok(StatusWrite::Written {
                resource_version: obj.metadata.resource_version,
            }),
            Err(e) if is_status(&e, 409) => Ok(StatusWrite::Stale),
            Err(e) => Err(api_err("write the StreamJob status")(e)),
        }
    }

    pub async fn remove_savepoint_annotation(&self) -> Result<(), KubeError> {
        let body = serde_json::json!({
            "metadata": { "annotations": { crate::crd::SAVEPOINT_ANNOTATION: null } }
        });
        self.api::<StreamJob>()
            .patch(
                &self.owner.name,
                &PatchParams::default(),
                &Patch::Merge(&body),
            )
            .await
            .map_err(api_err("remove the savepoint annotation"))?;
        Ok(())
    }

    /// Sets the finalizer list (computed from the object's current one).
    pub async fn set_finalizers(&self, finalizers: Vec<String>) -> Result<(), KubeError> {
        let body = serde_json::json!({ "metadata": { "finalizers": finalizers } });
        match self
            .api::<StreamJob>()
            .patch(
                &self.owner.name,
                &PatchParams::default(),
                &Patch::Merge(&body),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, 404) => Ok(()),
            Err(e) => Err(api_err("update finalizers")(e)),
        }
    }

    pub async fn start_disposal(
        &self,
        spec: &StreamJobSpec,
        path: &str,
        command: &[String],
    ) -> Result<(), KubeError> {
        let mut job = render::dispose_job(&self.owner, spec, path, command);
        if let Some(ps) = job.spec.as_mut().and_then(|j| j.template.spec.as_mut()) {
            ps.containers
                .iter_mut()
                .for_each(|c| self.defaults.apply_env(c));
        }
        self.create_tolerant(&job, "create a savepoint disposal Job")
            .await
    }

    pub async fn forget_disposal(&self, path: &str) -> Result<(), KubeError> {
        self.delete_tolerant::<Job>(
            &render::dispose_job_name(&self.owner.name, path),
            "delete a disposal Job",
        )
        .await
    }

    pub async fn list_disposals(&self) -> Result<Vec<DisposalObs>, KubeError> {
        let lp = ListParams::default().labels(&format!(
            "{}={}",
            render::LABEL_DISPOSE_FOR,
            self.owner.name
        ));
        let jobs = self
            .api::<Job>()
            .list(&lp)
            .await
            .map_err(api_err("list disposal Jobs"))?;
        Ok(jobs
            .items
            .into_iter()
            .filter_map(|j| {
                let path = j
                    .metadata
                    .annotations
                    .as_ref()?
                    .get(render::ANNOTATION_SAVEPOINT_PATH)?
                    .clone();
                let st = j.status.unwrap_or_default();
                let failed = st
                    .conditions
                    .unwrap_or_default()
                    .into_iter()
                    .find(|c| c.type_ == "Failed" && c.status == "True");
                let state = if st.succeeded.unwrap_or(0) > 0 {
                    DisposalState::Succeeded
                } else if let Some(c) = failed {
                    DisposalState::Failed(c.message.unwrap_or_else(|| "the Job failed".into()))
                } else {
                    DisposalState::Running
                };
                Some(DisposalObs { path, state })
            })
            .collect())
    }
}
