//! The JSON schema of [`JobSpec`]; the StreamJob CRD embeds it, made structural
//! for Kubernetes by the operator.

use crate::types::JobSpec;

/// The JSON schema of a job spec (draft 2020-12, as schemars generates it).
pub fn job_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(JobSpec)).unwrap_or(serde_json::Value::Null)
}

/// The same schema, pretty-printed.
pub fn job_schema_json() -> String {
    serde_json::to_string_pretty(&job_schema()).unwrap_or_default()
}
