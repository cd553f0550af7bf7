//! The Kubernetes objects of a deployment, built from the spec (pure).
//!
//! One bare Pod per deployment (restartPolicy `Never`) runs
//! `runnel run /etc/runnel/job.yaml` — coordinator and workers in one
//! process — with the job in a ConfigMap of the same deployment id, and one
//! Service for the control API and metrics. A bare pod (not a Deployment or
//! StatefulSet) because only the operator may restart a job: a workload
//! controller would restart a stopped-with-savepoint or failed runtime with
//! its original arguments, i.e. from the wrong state. See `docs/operator.md`.
//!
//! With `spec.workers`, that pod runs `runnel coordinator` instead, and the
//! deployment adds worker pods (`runnel worker`, restartPolicy `Always`: a
//! worker holds no job state of its own, it gets everything from the
//! coordinator, so restarting it in place is always right) found through
//! their per-pod DNS names under a headless Service.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec as K8sJobSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvFromSource, EnvVar,
    EnvVarSource, HTTPGetAction, Pod, PodSpec, PodTemplateSpec, Probe, SecretEnvSource,
    SecretKeySelector, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

use crate::crd::{Restore, StreamJobSpec, WorkersSpec};

pub const CONTROL_PORT: i32 = 8081;
pub const LABEL_JOB: &str = "runnel.dev/job";
pub const LABEL_DEPLOY_ID: &str = "runnel.dev/deploy-id";
pub const LABEL_SPEC_GENERATION: &str = "runnel.dev/spec-generation";
pub const LABEL_DISPOSE_FOR: &str = "runnel.dev/dispose-for";
/// Worker pods carry this label instead of [`LABEL_JOB`], so that the
/// control Service and the operator's view of the job's runtime pods (one per
/// deployment) stay exactly what they are for a one-pod job.
pub const LABEL_WORKER_OF: &str = "runnel.dev/worker-of";
/// On a coordinator pod: its `spec.workers` (JSON), from which a lost worker
/// pod is rendered again.
pub const ANNOTATION_WORKERS: &str = "runnel.dev/workers";
pub const LABEL_WORKER_INDEX: &str = "runnel.dev/worker-index";
pub const WORKER_PORT: i32 = 7070;
pub const ANNOTATION_RESTORE: &str = "runnel.dev/restore";
pub const ANNOTATION_SAVEPOINT_PATH: &str = "runnel.dev/savepoint-path";
pub const JOB_FILE_DIR: &str = "/etc/runnel";
/// A stopped runtime keeps its control API up until the operator has read
/// the savepoint result, for at most this long.
pub const LINGER: &str = "24h";

/// Identity of the owning StreamJob.
#[derive(Clone, Debug)]
pub struct Owner {
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

impl Owner {
    fn reference(&self) -> OwnerReference {
        OwnerReference {
            api_version: "runnel.dev/v1alpha1".into(),
            kind: "StreamJob".into(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    fn meta(&self, name: String, labels: BTreeMap<String, String>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(labels),
            owner_references: Some(vec![self.reference()]),
            ..Default::default()
        }
    }

    fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/name".into(), "runnel".into()),
            (
                "app.kubernetes.io/managed-by".into(),
                "runnel-operator".into(),
            ),
            (LABEL_JOB.into(), self.name.clone()),
        ])
    }
}

pub fn pod_name(job: &str, deploy_id: u64) -> String {
    format!("{job}-{deploy_id}")
}

pub fn configmap_name(job: &str, deploy_id: u64) -> String {
    format!("{job}-job-{deploy_id}")
}

pub fn service_name(job: &str) -> String {
    format!("{job}-control")
}

/// The headless Service that gives worker pods their DNS names.
pub fn workers_service_name(job: &str) -> String {
    format!("{job}-workers")
}

pub fn worker_pod_name(job: &str, deploy_id: u64, index: u32) -> String {
    format!("{job}-{deploy_id}-worker-{index}")
}

/// A worker's hostname under the headless Service: short (a DNS label) and
/// unique per deployment, so an old deployment's workers that are still
/// terminating never answer to the new one's names.
fn worker_hostname(deploy_id: u64, index: u32) -> String {
    format!("d{deploy_id}-w{index}")
}

/// `--workers` of a deployment's coordinator: each worker pod's DNS name
/// (`hostname.subdomain.namespace.svc.cluster.local`), which resolves
/// while that pod exists, including a replacement of the same name.
pub fn worker_addresses(owner: &Owner, deploy_id: u64, replicas: u32) -> String {
    (0..replicas)
        .map(|i| {
            format!(
                "{}.{}.{}.svc.cluster.local:{WORKER_PORT}",
                worker_hostname(deploy_id, i),
                workers_service_name(&owner.name),
                owner.namespace
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Name of the Job that disposes of `path` (stable, so starting it is idempotent).
pub fn dispose_job_name(job: &str, path: &str) -> String {
    let h = xxhash(path.as_bytes());
    format!("{job}-dispose-{h:016x}")
}

/// FNV-1a: a stable 64-bit name hash without another dependency.
fn xxhash(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `spec.job` with the StreamJob-level overrides (max parallelism,
/// checkpointing) applied: what the runtime runs and what is validated.
pub fn effective_job(spec: &StreamJobSpec) -> Value {
    let mut job = spec.job.clone();
    let Value::Object(map) = &mut job else {
        return job;
    };
    if let Some(m) = spec.max_parallelism {
        map.insert("maxParallelism".into(), m.into());
    }
    if let Some(p) = spec.parallelism {
        map.insert("parallelism".into(), p.into());
    }
    if let Some(c) = &spec.checkpointing {
        let entry = map
            .entry("checkpoint")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Value::Object(cp) = entry {
            let mut set = |k: &str, v: Option<Value>| {
                if let Some(v) = v {
                    cp.insert(k.into(), v);
                }
            };
            set("interval", c.interval.clone().map(Value::from));
            set("mode", c.mode.clone().map(Value::from));
            set("storage", c.storage.clone().map(Value::from));
            set("retained", c.retained.map(Value::from));
            set("timeout", c.timeout.clone().map(Value::from));
            set("minPause", c.min_pause.clone().map(Value::from));
        }
    }
    job
}

pub fn configmap(owner: &Owner, deploy_id: u64, spec: &StreamJobSpec) -> ConfigMap {
    let yaml = serde_yaml::to_string(&effective_job(spec)).unwrap_or_default();
    ConfigMap {
        metadata: owner.meta(configmap_name(&owner.name, deploy_id), owner.labels()),
        data: Some(BTreeMap::from([("job.yaml".to_string(), yaml)])),
        ..Default::default()
    }
}

const COORDINATOR_POD_KEY: &str = "coordinator-pod.json";

/// Keeps the coordinator pod as rendered in the deployment's ConfigMap, the
/// template a lost worker pod is rendered from again.
pub fn keep_coordinator_pod(cm: &mut ConfigMap, pod: &Pod) {
    if let Ok(json) = serde_json::to_string(pod) {
        cm.data
            .get_or_insert_with(Default::default)
            .insert(COORDINATOR_POD_KEY.into(), json);
    }
}

pub fn kept_coordinator_pod(cm: &ConfigMap) -> Option<Pod> {
    serde_json::from_str(cm.data.as_ref()?.get(COORDINATOR_POD_KEY)?).ok()
}

/// The `runnel run` (or, with workers, `runnel coordinator`) arguments of a
/// deployment.
pub fn runtime_args(
    owner: &Owner,
    deploy_id: u64,
    spec: &StreamJobSpec,
    restore: &Restore,
) -> Vec<String> {
    let mut a: Vec<String> = match &spec.workers {
        None => vec!["run".into(), format!("{JOB_FILE_DIR}/job.yaml")],
        Some(w) => vec![
            "coordinator".into(),
            format!("{JOB_FILE_DIR}/job.yaml"),
            "--workers".into(),
            worker_addresses(owner, deploy_id, w.replicas),
            "--expect-workers".into(),
            w.replicas.to_string(),
            "--slots".into(),
            w.slots.to_string(),
        ],
    };
    a.extend([
        "--control-addr".into(),
        format!("0.0.0.0:{CONTROL_PORT}"),
        "--linger".into(),
        LINGER.into(),
    ]);
    match restore {
        Restore::Empty => {}
        Restore::Savepoint(p) => {
            a.push("--from-savepoint".into());
            a.push(p.clone());
        }
        Restore::LatestCheckpoint => a.push("--from-latest-checkpoint".into()),
    }
    if spec.allow_non_restored_state {
        a.push("--allow-non-restored-state".into());
    }
    if let Some(p) = spec.parallelism {
        a.push("--parallelism".into());
        a.push(p.to_string());
    }
    if let Some(d) = &spec.savepoints.directory {
        a.push("--savepoint-dir".into());
        a.push(d.clone());
    }
    a
}

fn env_from(spec: &StreamJobSpec) -> Option<Vec<EnvFromSource>> {
    let v: Vec<EnvFromSource> = [&spec.s3_credentials_secret, &spec.kafka_credentials_secret]
        .into_iter()
        .flatten()
        .map(|name| EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name: name.clone(),
                optional: Some(false),
            }),
            ..Default::default()
        })
        .collect();
    (!v.is_empty()).then_some(v)
}

/// The Secret keys the job's connectors name (`credentials` in `spec.job`),
/// each as the environment variable the runtime reads it from. An optional
/// `false` reference makes a missing Secret a visible pod error
/// (CreateContainerConfigError) rather than a job that fails to authenticate.
fn secret_env(spec: &StreamJobSpec) -> Option<Vec<EnvVar>> {
    let job = runnel_spec::from_value(spec.job.clone(), "spec.job").ok()?;
    let v: Vec<EnvVar> = job
        .secret_refs()
        .into_iter()
        .map(|r| EnvVar {
            name: r.env_var(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: r.name.clone(),
                    key: r.key.clone(),
                    optional: Some(false),
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    (!v.is_empty()).then_some(v)
}

pub fn pod(
    owner: &Owner,
    deploy_id: u64,
    spec_generation: i64,
    spec: &StreamJobSpec,
    restore: &Restore,
) -> Pod {
    let mut labels = owner.labels();
    labels.insert(LABEL_DEPLOY_ID.into(), deploy_id.to_string());
    labels.insert(LABEL_SPEC_GENERATION.into(), spec_generation.to_string());
    let mut meta = owner.meta(pod_name(&owner.name, deploy_id), labels);
    let mut annotations = BTreeMap::from([(
        ANNOTATION_RESTORE.to_string(),
        serde_json::to_string(restore).unwrap_or_default(),
    )]);
    if let Some(w) = &spec.workers {
        annotations.insert(
            ANNOTATION_WORKERS.to_string(),
            serde_json::to_string(w).unwrap_or_default(),
        );
    }
    meta.annotations = Some(annotations);
    let container = Container {
        name: "runtime".into(),
        image: Some(spec.image.clone()),
        image_pull_policy: spec.image_pull_policy.clone(),
        command: Some(vec!["runnel".into()]),
        args: Some(runtime_args(owner, deploy_id, spec, restore)),
        ports: Some(vec![ContainerPort {
            name: Some("control".into()),
            container_port: CONTROL_PORT,
            ..Default::default()
        }]),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/readyz".into()),
                port: IntOrString::Int(CONTROL_PORT),
                ..Default::default()
            }),
            period_seconds: Some(5),
            ..Default::default()
        }),
        env_from: env_from(spec),
        env: secret_env(spec),
        resources: spec.resources.clone(),
        volume_mounts: Some(vec![VolumeMount {
            name: "job".into(),
            mount_path: JOB_FILE_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        }]),
        ..Default::default()
    };
    let pod = Pod {
        metadata: meta,
        spec: Some(PodSpec {
            containers: vec![container],
            restart_policy: Some("Never".into()),
            service_account_name: spec.service_account_name.clone(),
            volumes: Some(vec![Volume {
                name: "job".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: configmap_name(&owner.name, deploy_id),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    };
    match &spec.pod_template {
        Some(t) => merge_pod_template(pod, t),
        None => pod,
    }
}

/// Merges `template` into `pod`: JSON merge patch (RFC 7386) semantics,
/// except that `spec.containers` and `spec.initContainers` entries are
/// merged by name rather than replacing the list, so a template can add a
/// sidecar or set the runtime container's env without restating it.
/// Hand-written: the merge-by-name rule is Kubernetes' strategic merge,
/// which no small crate implements for typed objects.
pub fn merge_pod_template(pod: Pod, template: &Value) -> Pod {
    let Ok(mut base) = serde_json::to_value(&pod) else {
        return pod;
    };
    merge(&mut base, template, "");
    // The operator's identity fields win over the template.
    base["metadata"]["name"] = serde_json::to_value(&pod.metadata.name).unwrap_or(Value::Null);
    base["metadata"]["ownerReferences"] =
        serde_json::to_value(&pod.metadata.owner_references).unwrap_or(Value::Null);
    if let Some(l) = &pod.metadata.labels {
        for (k, v) in l {
            base["metadata"]["labels"][k] = Value::from(v.clone());
        }
    }
    serde_json::from_value(base).unwrap_or(pod)
}

/// Lists that Kubernetes' strategic merge patch merges by a key instead of
/// replacing, so a template can add an env var or a volume without dropping
/// the operator's own (the job file volume, credential env vars).
fn merge_key(path: &str) -> Option<&'static str> {
    match path {
        "/spec/containers" | "/spec/initContainers" | "/spec/volumes" => Some("name"),
        "/container/env" | "/container/ports" => Some("name"),
        "/container/volumeMounts" => Some("mountPath"),
        _ => None,
    }
}

fn merge(base: &mut Value, patch: &Value, path: &str) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                let child = format!("{path}/{k}");
                if v.is_null() {
                    b.remove(k);
                } else if let Some(key) = merge_key(&child) {
                    let nested = if child.ends_with("ontainers") {
                        "/container"
                    } else {
                        ""
                    };
                    merge_by_key(
                        b.entry(k.clone()).or_insert(Value::Array(vec![])),
                        v,
                        key,
                        nested,
                    );
                } else {
                    merge(b.entry(k.clone()).or_insert(Value::Null), v, &child);
                }
            }
        }
        (b, p) => *b = p.clone(),
    }
}

fn merge_by_key(base: &mut Value, patch: &Value, key: &str, nested: &str) {
    let (Value::Array(b), Value::Array(p)) = (&mut *base, patch) else {
        *base = patch.clone();
        return;
    };
    for item in p {
        let id = item.get(key);
        match b.iter_mut().find(|x| x.get(key) == id && id.is_some()) {
            Some(existing) => merge(existing, item, nested),
            None => b.push(item.clone()),
        }
    }
}

pub fn service(owner: &Owner) -> Service {
    let mut selector = BTreeMap::new();
    selector.insert(LABEL_JOB.to_string(), owner.name.clone());
    Service {
        metadata: owner.meta(service_name(&owner.name), owner.labels()),
        spec: Some(ServiceSpec {
            selector: Some(selector),
            ports: Some(vec![ServicePort {
                name: Some("control".into()),
                port: CONTROL_PORT,
                target_port: Some(IntOrString::Int(CONTROL_PORT)),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

/// The headless Service under which worker pods get their DNS names. It
/// publishes pods that are not ready yet: a worker is reachable as soon as it
/// listens, and the coordinator, not the Service, decides whether it is live.
pub fn workers_service(owner: &Owner) -> Service {
    let selector = BTreeMap::from([(LABEL_WORKER_OF.to_string(), owner.name.clone())]);
    Service {
        metadata: owner.meta(workers_service_name(&owner.name), owner.labels()),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector),
            ports: Some(vec![ServicePort {
                name: Some("exchange".into()),
                port: WORKER_PORT,
                target_port: Some(IntOrString::Int(WORKER_PORT)),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

/// Worker `index` of the deployment whose coordinator pod is `coordinator`
/// (as created, or as read back from the API). It is derived from that pod so
/// that it runs the same image, job file, environment, credentials and pod
/// template; only what makes it a worker differs. `None` if the pod is not a
/// coordinator.
pub fn worker_pod(coordinator: &Pod, owner: &Owner, index: u32) -> Option<Pod> {
    let workers: WorkersSpec = serde_json::from_str(
        coordinator
            .metadata
            .annotations
            .as_ref()?
            .get(ANNOTATION_WORKERS)?,
    )
    .ok()?;
    let deploy_id: u64 = coordinator
        .metadata
        .labels
        .as_ref()?
        .get(LABEL_DEPLOY_ID)?
        .parse()
        .ok()?;
    let mut labels: BTreeMap<String, String> = coordinator
        .metadata
        .labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k != LABEL_JOB)
        .collect();
    labels.insert(LABEL_WORKER_OF.into(), owner.name.clone());
    labels.insert(LABEL_WORKER_INDEX.into(), index.to_string());
    let meta = owner.meta(worker_pod_name(&owner.name, deploy_id, index), labels);
    let mut spec = coordinator.spec.clone()?;
    spec.restart_policy = Some("Always".into());
    spec.hostname = Some(worker_hostname(deploy_id, index));
    spec.subdomain = Some(workers_service_name(&owner.name));
    let c = spec.containers.iter_mut().find(|c| c.name == "runtime")?;
    c.args = Some(vec![
        "worker".into(),
        format!("{JOB_FILE_DIR}/job.yaml"),
        "--listen".into(),
        format!("0.0.0.0:{WORKER_PORT}"),
        "--slots".into(),
        workers.slots.to_string(),
    ]);
    c.ports = Some(vec![ContainerPort {
        name: Some("exchange".into()),
        container_port: WORKER_PORT,
        ..Default::default()
    }]);
    // A worker serves no HTTP; the coordinator's heartbeats are its health check.
    c.readiness_probe = None;
    c.liveness_probe = None;
    if workers.resources.is_some() {
        c.resources = workers.resources.clone();
    }
    Some(Pod {
        metadata: meta,
        spec: Some(spec),
        status: None,
    })
}

/// The worker count a coordinator pod was created with (0 for a one-pod job).
pub fn worker_replicas(pod: &Pod) -> u32 {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_WORKERS))
        .and_then(|w| serde_json::from_str::<WorkersSpec>(w).ok())
        .map_or(0, |w| w.replicas)
}

/// A Job that deletes a savepoint's files with the runtime image
/// (`runnel savepoint dispose PATH`), with the job's storage credentials.
pub fn dispose_job(owner: &Owner, spec: &StreamJobSpec, path: &str, command: &[String]) -> Job {
    let mut labels = owner.labels();
    labels.insert(LABEL_DISPOSE_FOR.into(), owner.name.clone());
    let mut meta = owner.meta(dispose_job_name(&owner.name, path), labels.clone());
    meta.annotations = Some(BTreeMap::from([(
        ANNOTATION_SAVEPOINT_PATH.to_string(),
        path.to_string(),
    )]));
    let mut args: Vec<String> = command.iter().skip(1).cloned().collect();
    args.push(path.to_string());
    Job {
        metadata: meta,
        spec: Some(K8sJobSpec {
            backoff_limit: Some(3),
            ttl_seconds_after_finished: Some(3600),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    service_account_name: spec.service_account_name.clone(),
                    containers: vec![Container {
                        name: "dispose".into(),
                        image: Some(spec.image.clone()),
                        image_pull_policy: spec.image_pull_policy.clone(),
                        command: command.first().map(|c| vec![c.clone()]),
                        args: Some(args),
                        env_from: env_from(spec),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> StreamJobSpec {
        serde_json::from_value(serde_json::json!({
            "image": "runnel:1",
            "parallelism": 3,
            "maxParallelism": 64,
            "job": { "version": 1, "name": "j", "sources": [], "sinks": [] },
            "checkpointing": { "interval": "5s", "storage": "s3://b/chk" },
            "savepoints": { "directory": "s3://b/sp" },
            "s3CredentialsSecret": "s3",
            "podTemplate": {
                "metadata": { "labels": { "team": "a", "runnel.dev/job": "evil" } },
                "spec": {
                    "nodeSelector": { "disk": "ssd" },
                    "containers": [
                        { "name": "runtime", "env": [{ "name": "RUST_LOG", "value": "debug" }] },
                        { "name": "sidecar", "image": "busybox" }
                    ]
                }
            }
        }))
        .unwrap()
    }

    fn owner() -> Owner {
        Owner {
            name: "demo".into(),
            namespace: "ns".into(),
            uid: "u-1".into(),
        }
    }

    #[test]
    fn pod_runs_the_job_from_the_restore_point_with_template_merged() {
        let s = spec();
        let p = pod(
            &owner(),
            4,
            7,
            &s,
            &Restore::Savepoint("s3://b/sp/x".into()),
        );
        assert_eq!(p.metadata.name.as_deref(), Some("demo-4"));
        let l = p.metadata.labels.as_ref().unwrap();
        assert_eq!(l[LABEL_DEPLOY_ID], "4");
        assert_eq!(l[LABEL_SPEC_GENERATION], "7");
        assert_eq!(
            l[LABEL_JOB], "demo",
            "the template cannot steal identity labels"
        );
        assert_eq!(l["team"], "a");
        assert_eq!(p.metadata.owner_references.as_ref().unwrap()[0].uid, "u-1");
        let ps = p.spec.as_ref().unwrap();
        assert_eq!(ps.restart_policy.as_deref(), Some("Never"));
        assert_eq!(ps.node_selector.as_ref().unwrap()["disk"], "ssd");
        assert_eq!(ps.containers.len(), 2);
        let c = &ps.containers[0];
        assert_eq!(c.image.as_deref(), Some("runnel:1"));
        assert_eq!(c.env.as_ref().unwrap()[0].name, "RUST_LOG");
        assert_eq!(
            c.args.as_ref().unwrap(),
            &[
                "run",
                "/etc/runnel/job.yaml",
                "--control-addr",
                "0.0.0.0:8081",
                "--linger",
                "24h",
                "--from-savepoint",
                "s3://b/sp/x",
                "--parallelism",
                "3",
                "--savepoint-dir",
                "s3://b/sp"
            ]
        );
        assert_eq!(
            c.env_from.as_ref().unwrap()[0]
                .secret_ref
                .as_ref()
                .unwrap()
                .name,
            "s3"
        );
    }

    #[test]
    fn job_credentials_become_secret_env_vars_next_to_the_templates_env() {
        let mut s = spec();
        s.job = serde_json::json!({
            "version": 1, "name": "j",
            "sources": [{ "name": "in", "kafka": {
                "bootstrapServers": "k:9092", "topics": ["a"], "groupId": "g",
                "credentials": { "securityProtocol": "sasl_ssl", "saslMechanism": "PLAIN",
                    "username": { "name": "kafka-creds", "key": "user" },
                    "password": { "name": "kafka-creds", "key": "password" } } } }],
            "sinks": [{ "name": "out", "kafka": {
                "bootstrapServers": "k:9092", "topic": "b",
                "credentials": { "securityProtocol": "sasl_ssl",
                    "username": { "name": "kafka-creds", "key": "user" } } } }]
        });
        let p = pod(&owner(), 1, 1, &s, &Restore::Empty);
        let c = &p.spec.as_ref().unwrap().containers[0];
        let env: Vec<(String, Option<(String, String)>)> = c
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| {
                let r = e
                    .value_from
                    .as_ref()
                    .and_then(|v| v.secret_key_ref.as_ref());
                (e.name.clone(), r.map(|r| (r.name.clone(), r.key.clone())))
            })
            .collect();
        let kv = |n: &str, k: &str| {
            (
                n.to_string(),
                Some(("kafka-creds".to_string(), k.to_string())),
            )
        };
        assert_eq!(
            env,
            vec![
                kv("RUNNEL_SECRET_KAFKA_CREDS_PASSWORD", "password"),
                kv("RUNNEL_SECRET_KAFKA_CREDS_USER", "user"),
                ("RUST_LOG".to_string(), None),
            ],
            "each Secret key once, and the template's env added, not replacing"
        );
    }

    #[test]
    fn configmap_holds_the_effective_job() {
        let cm = configmap(&owner(), 2, &spec());
        let yaml = &cm.data.as_ref().unwrap()["job.yaml"];
        let v: Value = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(v["maxParallelism"], 64);
        assert_eq!(v["parallelism"], 3);
        assert_eq!(v["checkpoint"]["interval"], "5s");
        assert_eq!(v["checkpoint"]["storage"], "s3://b/chk");
        assert_eq!(cm.metadata.name.as_deref(), Some("demo-job-2"));
    }

    #[test]
    fn restore_flags() {
        let s = spec();
        assert!(
            runtime_args(&owner(), 1, &s, &Restore::LatestCheckpoint)
                .contains(&"--from-latest-checkpoint".to_string())
        );
        let e = runtime_args(&owner(), 1, &s, &Restore::Empty);
        assert!(!e.iter().any(|a| a.starts_with("--from")));
        assert_eq!(e[0], "run");
    }

    fn distributed() -> StreamJobSpec {
        let mut s = spec();
        s.workers = Some(WorkersSpec {
            replicas: 2,
            slots: 3,
            resources: None,
        });
        s
    }

    #[test]
    fn a_distributed_deployment_runs_a_coordinator_that_expects_its_workers() {
        let s = distributed();
        let a = runtime_args(&owner(), 7, &s, &Restore::LatestCheckpoint);
        let at = |flag: &str| a[a.iter().position(|x| x == flag).unwrap() + 1].clone();
        assert_eq!(a[0], "coordinator");
        assert_eq!(a[1], "/etc/runnel/job.yaml");
        assert_eq!(
            at("--workers"),
            "d7-w0.demo-workers.ns.svc.cluster.local:7070,\
             d7-w1.demo-workers.ns.svc.cluster.local:7070"
        );
        assert_eq!(at("--expect-workers"), "2");
        assert_eq!(at("--slots"), "3");
        assert_eq!(at("--control-addr"), "0.0.0.0:8081");
        assert!(a.contains(&"--from-latest-checkpoint".to_string()));
    }

    #[test]
    fn worker_pods_are_derived_from_their_coordinator_pod() {
        let mut s = distributed();
        s.pod_template = Some(serde_json::json!({
            "spec": { "containers": [{ "name": "runtime", "env": [{ "name": "X", "value": "1" }] }] }
        }));
        let coord = pod(&owner(), 7, 3, &s, &Restore::Empty);
        assert_eq!(worker_replicas(&coord), 2);
        let w = worker_pod(&coord, &owner(), 1).unwrap();
        assert_eq!(w.metadata.name.as_deref(), Some("demo-7-worker-1"));
        let labels = w.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[LABEL_WORKER_OF], "demo");
        assert_eq!(labels[LABEL_DEPLOY_ID], "7");
        assert_eq!(labels[LABEL_WORKER_INDEX], "1");
        assert!(
            !labels.contains_key(LABEL_JOB),
            "the control Service and the deployment list must not see workers"
        );
        let ps = w.spec.as_ref().unwrap();
        assert_eq!(ps.restart_policy.as_deref(), Some("Always"));
        assert_eq!(ps.hostname.as_deref(), Some("d7-w1"));
        assert_eq!(ps.subdomain.as_deref(), Some("demo-workers"));
        let c = &ps.containers[0];
        assert_eq!(
            c.args.as_deref().unwrap(),
            [
                "worker",
                "/etc/runnel/job.yaml",
                "--listen",
                "0.0.0.0:7070",
                "--slots",
                "3"
            ]
        );
        assert!(c.readiness_probe.is_none());
        // Same job file volume, image and template env as the coordinator.
        let cc = &coord.spec.as_ref().unwrap().containers[0];
        assert_eq!(c.image, cc.image);
        assert_eq!(c.volume_mounts, cc.volume_mounts);
        assert_eq!(ps.volumes, coord.spec.as_ref().unwrap().volumes);
        assert!(c.env.as_ref().unwrap().iter().any(|e| e.name == "X"));
        // A one-pod job's pod has no workers.
        let single = pod(&owner(), 7, 3, &spec(), &Restore::Empty);
        assert_eq!(worker_replicas(&single), 0);
        assert!(worker_pod(&single, &owner(), 0).is_none());
        // The ConfigMap keeps the coordinator pod to render lost workers from.
        let mut cm = configmap(&owner(), 7, &s);
        keep_coordinator_pod(&mut cm, &coord);
        assert_eq!(kept_coordinator_pod(&cm), Some(coord));
    }

    #[test]
    fn the_workers_service_is_headless_and_selects_only_workers() {
        let svc = workers_service(&owner());
        let sp = svc.spec.unwrap();
        assert_eq!(svc.metadata.name.as_deref(), Some("demo-workers"));
        assert_eq!(sp.cluster_ip.as_deref(), Some("None"));
        assert_eq!(sp.publish_not_ready_addresses, Some(true));
        assert_eq!(
            sp.selector.unwrap(),
            BTreeMap::from([(LABEL_WORKER_OF.to_string(), "demo".to_string())])
        );
    }

    #[test]
    fn dispose_job_is_named_by_path() {
        let cmd = vec!["runnel".to_string(), "savepoint".into(), "dispose".into()];
        let a = dispose_job(&owner(), &spec(), "s3://b/sp/1", &cmd);
        let b = dispose_job(&owner(), &spec(), "s3://b/sp/1", &cmd);
        let c = dispose_job(&owner(), &spec(), "s3://b/sp/2", &cmd);
        assert_eq!(a.metadata.name, b.metadata.name);
        assert_ne!(a.metadata.name, c.metadata.name);
        let ct = &a.spec.unwrap().template.spec.unwrap().containers[0];
        assert_eq!(
            ct.args.as_ref().unwrap(),
            &["savepoint", "dispose", "s3://b/sp/1"]
        );
    }
}
