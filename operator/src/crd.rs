//! The `StreamJob` custom resource (`runnel.dev/v1alpha1`, short name `sj`).
//!
//! The spec is what users write; the status is the operator's write-ahead log:
//! every flow (savepoint, upgrade, suspend, restart, rollback) records the
//! step it is about to take here *before* acting, so that an operator that
//! dies at any point resumes the flow from the status and the observed world
//! (see [`crate::machine`]).

use k8s_openapi::api::core::v1::ResourceRequirements;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Annotation that requests a savepoint: `kubectl annotate sj NAME runnel.dev/savepoint=<any>`.
pub const SAVEPOINT_ANNOTATION: &str = "runnel.dev/savepoint";
/// Finalizer that takes a final savepoint before the StreamJob goes away
/// (only added when `savepoints.savepointOnDelete` is set).
pub const FINALIZER: &str = "runnel.dev/final-savepoint";

#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "runnel.dev",
    version = "v1alpha1",
    kind = "StreamJob",
    namespaced,
    shortname = "sj",
    status = "StreamJobStatus",
    printcolumn = r#"{"name":"Lifecycle","type":"string","jsonPath":".status.lifecycleState"}"#,
    printcolumn = r#"{"name":"Job","type":"string","jsonPath":".status.jobState"}"#,
    printcolumn = r#"{"name":"Parallelism","type":"integer","jsonPath":".spec.parallelism"}"#,
    printcolumn = r#"{"name":"Last Savepoint","type":"string","jsonPath":".status.lastSavepoint"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.parallelism) || !has(self.maxParallelism) || self.parallelism <= self.maxParallelism",
        "message": "parallelism must not exceed maxParallelism"
    },
    {
        "rule": "!has(self.initialSavepointPath) || self.initialSavepointPath != ''",
        "message": "initialSavepointPath must not be empty"
    }
]))]
pub struct StreamJobSpec {
    /// Runtime image (contains the `runnel` binary). Empty or unset: the
    /// operator's default (`--default-runtime-image`, the chart's
    /// `runtime.image`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Default parallelism (overrides `job.parallelism`); changing it is a
    /// rescale through the upgrade flow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub parallelism: Option<u32>,
    /// Key groups (overrides `job.maxParallelism`); fixed once state exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_parallelism: Option<u32>,
    /// The declarative job (the `runnel run` file format, docs/job-spec.md).
    /// The API server checks it against the job spec's schema; the operator
    /// then checks what a schema cannot (fields that depend on each other,
    /// step order, CEL) and reports it in status.
    // Kept as JSON rather than `runnel_spec::JobSpec`: a job that passes the
    // schema but fails `runnel_spec::from_value` must still be readable, so
    // that the operator can report it in status (`ValidationFailed`) instead
    // of failing to deserialize the whole resource.
    #[schemars(schema_with = "crate::job_schema::job_field_schema")]
    pub job: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpointing: Option<CheckpointingSpec>,
    #[serde(default)]
    pub savepoints: SavepointsSpec,
    #[serde(default)]
    pub upgrade_mode: UpgradeMode,
    #[serde(default)]
    pub state: DesiredState,
    /// Savepoint (or checkpoint) the first deployment restores from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_savepoint_path: Option<String>,
    #[serde(default)]
    pub allow_non_restored_state: bool,
    /// Change to take a savepoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savepoint_trigger_nonce: Option<i64>,
    /// Change to restart the job from its last state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_nonce: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// A Pod manifest (metadata and spec) merged into the generated runtime
    /// pod (JSON merge patch: the template's fields win, lists are replaced,
    /// except `containers[name=runtime]` which is merged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object_opt")]
    pub pod_template: Option<serde_json::Value>,
    /// Secret whose keys become the runtime's environment (S3 credentials:
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_credentials_secret: Option<String>,
    /// Secret whose keys become the runtime's environment (Kafka SASL
    /// credentials referenced by the job's `credentials`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka_credentials_secret: Option<String>,
    /// In `savepoint` mode, when the job is not running (so no savepoint can
    /// be taken), upgrade from the latest checkpoint instead of waiting.
    #[serde(default)]
    pub allow_checkpoint_fallback: bool,
    #[serde(default)]
    pub rollback: RollbackSpec,
    #[serde(default)]
    pub health: HealthSpec,
    /// Run the job distributed: one coordinator pod and this many worker
    /// pods (docs/distributed.md). Unset: one pod runs the whole job.
    /// Checkpoint storage must then be shared by the pods (`s3://`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<WorkersSpec>,
}

/// The worker pods of a distributed job (Flink's TaskManagers).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkersSpec {
    #[schemars(range(min = 1))]
    pub replicas: u32,
    /// Subtask slots per worker (`runnel worker --slots`): a job needs as
    /// many slots in total as its largest parallelism.
    #[serde(default = "default_slots")]
    #[schemars(range(min = 1))]
    pub slots: u32,
    /// Worker resources; unset: `spec.resources`, which the coordinator pod
    /// always takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

fn default_slots() -> u32 {
    4
}

fn free_form_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

fn free_form_object_opt(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut s = free_form_object(g);
    s.insert("nullable".into(), true.into());
    s
}

/// Checkpointing knobs; each overrides the job's `checkpoint` section.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointingSpec {
    /// e.g. `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// `exactly-once` or `at-least-once`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Checkpoint storage URI (`s3://bucket/prefix` or `file:///path`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retained: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_pause: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SavepointsSpec {
    /// Directory URI; each savepoint the operator triggers goes into its own
    /// subdirectory `<directory>/<namespace>-<name>-<seq>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory: Option<String>,
    /// Take a savepoint this often (seconds); unset = never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub periodic_interval_seconds: Option<u64>,
    /// Keep at most this many completed savepoints (at least one is always kept).
    #[serde(default = "default_history_max_count")]
    #[schemars(range(min = 1))]
    pub history_max_count: u32,
    /// Dispose of savepoints older than this (seconds); unset = no age limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_max_age_seconds: Option<u64>,
    /// A savepoint that has not completed after this long has failed.
    #[serde(default = "default_savepoint_timeout")]
    pub timeout_seconds: u64,
    /// Take a final savepoint when the StreamJob is deleted (adds a finalizer).
    #[serde(default)]
    pub savepoint_on_delete: bool,
}

fn default_history_max_count() -> u32 {
    5
}
fn default_savepoint_timeout() -> u64 {
    600
}

impl Default for SavepointsSpec {
    fn default() -> Self {
        SavepointsSpec {
            directory: None,
            periodic_interval_seconds: None,
            history_max_count: default_history_max_count(),
            history_max_age_seconds: None,
            timeout_seconds: default_savepoint_timeout(),
            savepoint_on_delete: false,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum UpgradeMode {
    /// Redeploy with empty state (or from `initialSavepointPath`).
    Stateless,
    /// Stop with a savepoint, redeploy from it.
    #[default]
    Savepoint,
    /// Redeploy from the newest complete checkpoint in storage.
    LastState,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DesiredState {
    #[default]
    Running,
    Suspended,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RollbackSpec {
    /// Roll back to `lastStableSpec` when an upgraded job is not running
    /// within `timeoutSeconds`.
    #[serde(default)]
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthSpec {
    /// More runtime restarts than this within `restartWindowSeconds` is unhealthy.
    #[serde(default = "default_max_restarts")]
    pub max_restarts: u32,
    #[serde(default = "default_restart_window")]
    pub restart_window_seconds: u64,
    /// No completed checkpoint for this long (while running) is unhealthy;
    /// unset = not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_progress_timeout_seconds: Option<u64>,
    /// More operator restarts than this within the window: give up (`Failed`)
    /// until the spec or `restartNonce` changes.
    #[serde(default = "default_max_restarts")]
    pub max_operator_restarts: u32,
}

fn default_max_restarts() -> u32 {
    3
}
fn default_restart_window() -> u64 {
    600
}

impl Default for HealthSpec {
    fn default() -> Self {
        HealthSpec {
            max_restarts: default_max_restarts(),
            restart_window_seconds: default_restart_window(),
            checkpoint_progress_timeout_seconds: None,
            max_operator_restarts: default_max_restarts(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum LifecycleState {
    #[default]
    Created,
    Deploying,
    Running,
    Upgrading,
    Suspended,
    RollingBack,
    RolledBack,
    Failed,
}

/// Why a savepoint was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SavepointTrigger {
    Annotation,
    Nonce,
    Periodic,
    Upgrade,
    Suspend,
    Delete,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SavepointRecordState {
    Completed,
    /// Its files are being deleted; the entry goes once they are.
    Disposing,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SavepointRecord {
    pub path: String,
    /// Completion time, milliseconds since the Unix epoch.
    pub time_ms: i64,
    pub trigger: SavepointTrigger,
    pub state: SavepointRecordState,
}

/// A savepoint the operator has decided to take (written before the trigger
/// is sent). `targetDirectory` is unique per savepoint: it is how a restarted
/// operator recognises the snapshot in the runtime's checkpoint list even if
/// it never learned the trigger id, so it never triggers twice.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SavepointInProgress {
    pub trigger: SavepointTrigger,
    pub target_directory: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_id: Option<String>,
    /// Stop with savepoint (upgrade, suspend, delete).
    pub stop: bool,
    pub started_ms: i64,
    /// The deployment whose runtime takes it.
    pub deploy_id: u64,
}

/// A savepoint that may have completed without the operator reading it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UnconfirmedSavepoint {
    pub trigger: SavepointTrigger,
    /// Unique per savepoint (`<directory>/<namespace>-<name>-<seq>`).
    pub target_directory: String,
    pub started_ms: i64,
}

/// Where a deployment restores from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind", content = "path")]
pub enum Restore {
    Empty,
    Savepoint(String),
    LatestCheckpoint,
}

/// Hand-written because the derived schema of an adjacently tagged enum is a
/// `oneOf` that Kubernetes' structural-schema rules reject; on the wire it is
/// one flat object.
impl JsonSchema for Restore {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Restore".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "object",
            "required": ["kind"],
            "properties": {
                "kind": { "type": "string", "enum": ["empty", "savepoint", "latestCheckpoint"] },
                "path": { "type": "string", "description": "Savepoint URI (kind savepoint)." }
            }
        })
    }
}

/// The deployment the operator made (or is making): recorded before the pod
/// is created, so a restarted operator knows what should be running.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentRecord {
    /// Grows by one with every deployment; part of the pod's name.
    pub deploy_id: u64,
    /// `metadata.generation` of the spec deployed (also on the pod).
    pub spec_generation: i64,
    pub restore: Restore,
    pub started_ms: i64,
    /// The deployment is a rollback to `lastStableSpec`.
    #[serde(default)]
    pub rollback: bool,
    /// Became RUNNING at least once.
    #[serde(default)]
    pub stable: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum OperationKind {
    /// First deployment, or resume after a suspend.
    Deploy,
    Upgrade,
    Suspend,
    Restart,
    Rollback,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum OperationPhase {
    /// Stop with savepoint under way (`savepointInProgress`).
    Savepointing,
    /// Old pod being deleted.
    TearingDown,
    /// New pod being created.
    Deploying,
}

/// An upgrade/suspend/restart/rollback in flight.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    pub kind: OperationKind,
    pub phase: OperationPhase,
    /// Generation being deployed (for a rollback: the one rolled back from).
    pub target_generation: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<Restore>,
    pub started_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointRef {
    pub id: u64,
    pub path: String,
    pub completed_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready`, `Progressing` or `Degraded`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    #[serde(default)]
    pub message: String,
    /// Milliseconds since the Unix epoch.
    pub last_transition_ms: i64,
}

/// Runtime-restart health window.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthWindow {
    pub start_ms: i64,
    pub restarts_at_start: u32,
    pub deploy_id: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamJobStatus {
    #[serde(default)]
    pub lifecycle_state: LifecycleState,
    /// The job's state as the runtime reports it (`RUNNING`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The StreamJob spec (JSON) of the current deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reconciled_spec: Option<String>,
    /// The last spec (JSON) that ran successfully; rollbacks go back to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_stable_spec: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_stable_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<DeploymentRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
    #[serde(default)]
    pub savepoint_history: Vec<SavepointRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savepoint_in_progress: Option<SavepointInProgress>,
    /// A savepoint whose outcome could not be read (its pod went away, the
    /// runtime forgot the trigger, or it timed out). The runtime records a
    /// savepoint in the checkpoint directory before it completes, so a later
    /// deployment restoring from the latest state may restore from it: then
    /// it is adopted into the history (and disposed of like any other).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unconfirmed_savepoint: Option<UnconfirmedSavepoint>,
    /// Path of the newest completed savepoint (printer column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_savepoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checkpoint: Option<CheckpointRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Counter for unique savepoint directories.
    #[serde(default)]
    pub savepoint_seq: u64,
    /// The highest deployment id ever used. `deployment` is cleared on
    /// suspend, and pods are gone by then, so without this a resumed job
    /// would reuse deployment 1: its pod and ConfigMap names could collide
    /// with a still-terminating old pod, and logs and Events would be
    /// ambiguous across the job's life.
    #[serde(default)]
    pub deploy_seq: u64,
    /// Savepoints that failed in a row. The next trigger waits
    /// `10 s * 2^(n-1)` (at most 5 min) after the last failure, so an
    /// unreachable store or a broken job is not hammered with triggers.
    #[serde(default)]
    pub savepoint_failures: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_savepoint_failure_ms: Option<i64>,
    /// `runnel.dev/savepoint` annotation value already served (the
    /// annotation is being removed); the same value never triggers twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_savepoint_annotation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_savepoint_nonce: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_restart_nonce: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_periodic_savepoint_ms: Option<i64>,
    /// Generation whose upgrade was rolled back: not retried until the spec changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back_generation: Option<i64>,
    /// Generation rejected by validation (the error is in `error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_window: Option<HealthWindow>,
    /// Times (ms) of the operator's health restarts within the window.
    #[serde(default)]
    pub operator_restarts_ms: Vec<i64>,
    /// While suspended: where resuming restores from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_restore: Option<Restore>,
    /// Too many health restarts: the operator stopped restarting until the
    /// spec or `restartNonce` changes.
    #[serde(default)]
    pub given_up: bool,
}

/// The CRD as YAML (what `runnel-operator crd` prints and
/// `crds/streamjobs.runnel.dev.yaml` holds).
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    serde_yaml::to_string(&StreamJob::crd())
}
