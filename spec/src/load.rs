//! Parsing: YAML text to a validated [`JobSpec`], with every error and its path.
//!
//! serde stops at the first error, so the document is read into a JSON tree
//! first and then deserialized piece by piece (the top level, each source,
//! step and sink separately): one bad step does not hide the errors of the
//! next. Semantic validation runs only on a fully typed spec.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{Path, SpecError};
use crate::types::JobSpec;
use crate::validate::{check_version, validate};

/// The path prefix of the job inside a StreamJob resource.
pub const STREAM_JOB_PREFIX: &str = "spec.job";

/// Parses and validates a job file: a bare job spec, or a StreamJob resource
/// (`kind: StreamJob`) whose `spec.job` is the job (errors then carry the
/// `spec.job.` prefix).
pub fn load_yaml(text: &str) -> Result<JobSpec, Vec<SpecError>> {
    let doc: Value = serde_yaml::from_str(text)
        .map_err(|e| vec![SpecError::new("", format!("not valid YAML: {e}"))])?;
    let (job, prefix) = if doc.get("kind").and_then(Value::as_str) == Some("StreamJob") {
        match doc.get("spec").and_then(|s| s.get("job")) {
            Some(j) => (j.clone(), STREAM_JOB_PREFIX),
            None => {
                return Err(vec![SpecError::new(
                    STREAM_JOB_PREFIX,
                    "a StreamJob needs spec.job",
                )]);
            }
        }
    } else {
        (doc, "")
    };
    from_value(job, prefix)
}

/// Parses and validates a job given as a JSON value (for example the
/// `spec.job` of a StreamJob the operator already holds); `prefix` starts
/// every error path.
pub fn from_value(job: Value, prefix: &str) -> Result<JobSpec, Vec<SpecError>> {
    let root = Path::root(prefix);
    let Value::Object(map) = &job else {
        return Err(vec![root.err("must be a mapping (the job spec)")]);
    };
    // The version decides how the rest is read: check it before anything else.
    match map.get("version") {
        None => {
            return Err(vec![
                root.field("version")
                    .err("required (the spec version, e.g. 1)"),
            ]);
        }
        Some(v) => match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(n) => check_version(n, &root.field("version")).map_err(|e| vec![e])?,
            None => {
                return Err(vec![
                    root.field("version").err("must be a positive integer"),
                ]);
            }
        },
    }
    let spec = typed(job, &root)?;
    let errors = validate(&spec, prefix);
    if errors.is_empty() {
        Ok(spec)
    } else {
        Err(errors)
    }
}

fn typed(job: Value, root: &Path) -> Result<JobSpec, Vec<SpecError>> {
    match deserialize::<JobSpec>(job.clone(), root) {
        Ok(spec) => Ok(spec),
        Err(first) => {
            // Collect errors per element so that all of them are reported.
            let mut errors = Vec::new();
            let mut top = job.clone();
            if let Value::Object(m) = &mut top {
                for list in ["sources", "steps", "sinks"] {
                    if let Some(Value::Array(items)) = m.get(list) {
                        let p = root.field(list);
                        for (i, item) in items.iter().enumerate() {
                            let r = match list {
                                "sources" => deserialize::<crate::types::SourceSpec>(
                                    item.clone(),
                                    &p.index(i),
                                )
                                .map(|_| ()),
                                "steps" => {
                                    deserialize::<crate::types::StepSpec>(item.clone(), &p.index(i))
                                        .map(|_| ())
                                }
                                _ => {
                                    deserialize::<crate::types::SinkSpec>(item.clone(), &p.index(i))
                                        .map(|_| ())
                                }
                            };
                            if let Err(e) = r {
                                errors.push(e);
                            }
                        }
                        m.insert(list.to_string(), Value::Array(Vec::new()));
                    }
                }
            }
            if let Err(e) = deserialize::<JobSpec>(top, root) {
                errors.insert(0, e);
            }
            if errors.is_empty() {
                errors.push(first);
            }
            Err(errors)
        }
    }
}

fn deserialize<T: DeserializeOwned>(v: Value, root: &Path) -> Result<T, SpecError> {
    serde_path_to_error::deserialize::<_, T>(v).map_err(|e| {
        let mut p = root.clone();
        for seg in e.path().iter() {
            p = match seg {
                serde_path_to_error::Segment::Seq { index } => p.index(*index),
                serde_path_to_error::Segment::Map { key } => p.field(key),
                serde_path_to_error::Segment::Enum { variant } => p.field(variant),
                serde_path_to_error::Segment::Unknown => p.field("?"),
            };
        }
        p.err(clean_message(&e.into_inner().to_string()))
    })
}

/// serde's messages mention Rust types; keep them but drop the noise of
/// `at line N column M`, which refers to the JSON tree, not the YAML file.
fn clean_message(m: &str) -> String {
    match m.find(" at line ") {
        Some(i) => m[..i].to_string(),
        None => m.to_string(),
    }
}
