//! The Runnel declarative job spec: the types (serde + schemars) that a
//! `runnel run JOB.yaml` file and a StreamJob's `spec.job` are written in, and
//! their validation. No engine dependencies: the Kubernetes operator embeds
//! the generated schema in the StreamJob CRD.
//!
//! ```
//! let job = runnel_spec::load_yaml(r#"
//! version: 1
//! name: demo
//! sources:
//!   - name: numbers
//!     generator: { count: 10, fields: { n: { sequence: {} } } }
//! steps:
//!   - filter: "n % 2 == 0"
//! sinks:
//!   - name: out
//!     stdout: {}
//! "#).unwrap();
//! assert_eq!(job.steps.len(), 1);
//! ```

pub mod duration;
pub mod error;
pub mod load;
pub mod schema;
pub mod types;
pub mod validate;
pub mod version;

pub use duration::DurationSpec;
pub use error::{Path, SpecError, format_errors};
pub use load::{from_value, load_yaml};
pub use schema::{job_schema, job_schema_json};
pub use types::*;
pub use validate::{StepKind, validate};
pub use version::{MIN_SUPPORTED_VERSION, SPEC_VERSION};
