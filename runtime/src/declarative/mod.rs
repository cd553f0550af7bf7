//! Declarative jobs: a [`runnel_spec::JobSpec`] (YAML) built into a dataflow.
//!
//! ```no_run
//! use runnel_runtime::declarative::{self, ConnectorRegistry};
//!
//! let yaml = std::fs::read_to_string("job.yaml").unwrap();
//! let spec = runnel_spec::load_yaml(&yaml).map_err(|e| runnel_spec::format_errors(&e)).unwrap();
//! let job = declarative::build(&spec, &ConnectorRegistry::new()).unwrap();
//! job.execute().unwrap();
//! ```

pub mod aggregates;
pub mod builder;
pub mod expr;
pub mod generator;
pub mod record;
pub mod registry;
pub mod sinks;
pub mod typed;
pub mod value;

pub use builder::{BuiltJob, build, build_at, build_dynamic, validate};
pub use expr::Expr;
pub use record::Record;
pub use registry::{
    ConnectorRegistry, CustomOperator, KafkaConnector, OperatorContext, OperatorInput,
};
pub use sinks::read_published;
pub use value::Value;

/// Loads a job file (bare spec or StreamJob) and builds it: the whole path
/// from YAML text to a runnable job, with every error and its path.
pub fn load_and_build(
    yaml: &str,
    registry: &ConnectorRegistry,
) -> Result<BuiltJob, Vec<runnel_spec::SpecError>> {
    let spec = runnel_spec::load_yaml(yaml)?;
    build_at(&spec, registry, error_root(yaml))
}

/// Where error paths start: `spec.job` in a StreamJob manifest, else the job.
pub fn error_root(yaml: &str) -> &'static str {
    if is_stream_job_document(yaml) {
        runnel_spec::load::STREAM_JOB_PREFIX
    } else {
        ""
    }
}

/// Whether the document is a StreamJob (its paths start with `spec.job`).
fn is_stream_job_document(yaml: &str) -> bool {
    yaml.lines()
        .any(|l| l.trim_start() == l && l.trim_end() == "kind: StreamJob")
}
