//! docs/control-api.yaml (the OpenAPI document users and clients read)
//! describes exactly what the runtime sends and accepts: every schema's
//! properties are the wire names of its Rust type, its `required` list is
//! the fields that are always present, and enums list every variant.

use std::collections::BTreeSet;

use runnel_api::*;
use serde::Serialize;
use serde_json::Value;

fn doc() -> serde_yaml::Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/control-api.yaml");
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn schema<'a>(doc: &'a serde_yaml::Value, name: &str) -> &'a serde_yaml::Value {
    let s = &doc["components"]["schemas"][name];
    assert!(!s.is_null(), "no schema {name} in control-api.yaml");
    s
}

fn strings(v: &serde_yaml::Value) -> BTreeSet<String> {
    v.as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(str::to_string))
        .collect()
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

/// `full` has every optional field set, `minimal` none of them.
fn check<T: Serialize>(doc: &serde_yaml::Value, name: &str, full: &T, minimal: &T) {
    let s = schema(doc, name);
    let props: BTreeSet<String> = s["properties"]
        .as_mapping()
        .unwrap()
        .keys()
        .filter_map(|k| k.as_str().map(str::to_string))
        .collect();
    let full = serde_json::to_value(full).unwrap();
    assert_eq!(keys(&full), props, "{name}: properties vs the wire");
    let minimal = serde_json::to_value(minimal).unwrap();
    let present: BTreeSet<String> = minimal
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, _)| k.clone())
        .collect();
    assert_eq!(
        strings(&s["required"]),
        present,
        "{name}: required vs always present"
    );
}

fn enum_values<T: Serialize>(doc: &serde_yaml::Value, name: &str, all: &[T]) {
    let wire: BTreeSet<String> = all
        .iter()
        .map(|v| {
            serde_json::to_value(v)
                .unwrap()
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(strings(&schema(doc, name)["enum"]), wire, "{name}");
}

fn info() -> CheckpointInfo {
    CheckpointInfo {
        id: 1,
        kind: SnapshotKind::Checkpoint,
        path: "file:///c/chk-1".into(),
        duration_ms: 1,
        size_bytes: 1,
        alignment_ms: 0,
        completed_ms: 1,
    }
}

#[test]
fn the_openapi_document_matches_the_wire_types() {
    let d = doc();
    enum_values(
        &d,
        "JobState",
        &[
            JobState::Created,
            JobState::Running,
            JobState::Restarting,
            JobState::Finished,
            JobState::Cancelled,
            JobState::Stopped,
            JobState::Failed,
        ],
    );
    enum_values(
        &d,
        "SnapshotKind",
        &[
            SnapshotKind::Checkpoint,
            SnapshotKind::Savepoint,
            SnapshotKind::StopSavepoint,
        ],
    );
    check(&d, "CheckpointInfo", &info(), &info());
    let ip = CheckpointInProgress {
        id: 2,
        kind: SnapshotKind::Savepoint,
        path: "p".into(),
        started_ms: 1,
        acknowledged_subtasks: 1,
        total_subtasks: 2,
    };
    check(&d, "CheckpointInProgress", &ip, &ip);
    let status = |full: bool| JobStatusResponse {
        name: "j".into(),
        state: JobState::Running,
        start_time_ms: 1,
        restarts: 0,
        attempt: 1,
        parallelism: Default::default(),
        max_parallelism: 128,
        restored_from: full.then(|| "p".into()),
        last_checkpoint: full.then(info),
        last_failure: full.then(|| "e".into()),
    };
    check(&d, "JobStatus", &status(true), &status(false));
    let cps = CheckpointsResponse {
        completed: vec![],
        in_progress: vec![],
        completed_count: 0,
        failed_count: 0,
    };
    check(&d, "Checkpoints", &cps, &cps);
    let sp = |full: bool| SavepointStatus {
        trigger_id: "t".into(),
        state: TriggerState::Completed,
        stop: false,
        checkpoint_id: full.then_some(3),
        path: full.then(|| "p".into()),
        error: full.then(|| "e".into()),
    };
    check(&d, "SavepointStatus", &sp(true), &sp(false));
    let states: BTreeSet<String> =
        strings(&schema(&d, "SavepointStatus")["properties"]["state"]["enum"]);
    let wire: BTreeSet<String> = [
        TriggerState::InProgress,
        TriggerState::Completed,
        TriggerState::Failed,
    ]
    .iter()
    .map(|s| {
        serde_json::to_value(s)
            .unwrap()
            .as_str()
            .unwrap()
            .to_string()
    })
    .collect();
    assert_eq!(states, wire);
    let tr = TriggerResponse {
        trigger_id: "t".into(),
    };
    check(&d, "TriggerResponse", &tr, &tr);
    let err = ErrorResponse {
        message: "m".into(),
    };
    check(&d, "Error", &err, &err);
    // Request bodies: every field optional (an empty body is valid).
    let sr = SavepointRequest {
        target_directory: Some("d".into()),
    };
    check(&d, "SavepointRequest", &sr, &SavepointRequest::default());
    let stop = StopRequest {
        target_directory: Some("d".into()),
        drain: true,
    };
    let s = schema(&d, "StopRequest");
    assert_eq!(
        keys(&serde_json::to_value(&stop).unwrap()),
        s["properties"]
            .as_mapping()
            .unwrap()
            .keys()
            .filter_map(|k| k.as_str().map(str::to_string))
            .collect()
    );
    assert!(s["required"].is_null(), "StopRequest has no required field");
    assert_eq!(
        serde_json::from_str::<StopRequest>("{}").unwrap(),
        StopRequest::default()
    );
}
