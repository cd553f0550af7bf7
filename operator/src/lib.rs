//! The Runnel Kubernetes operator: reconciles `StreamJob` resources.
//!
//! - [`crd`]: the resource types (and the CRD YAML generated from them);
//! - [`job_schema`]: the structural schema the CRD embeds for `spec.job`;
//! - [`machine`]: the pure reconcile decision (write-ahead status + actions);
//! - [`defaults`]: installation-wide runtime defaults (image, S3 Secret, env);
//! - [`control`]: the runtime control-API client;
//! - [`kubeio`]: the Kubernetes objects and calls;
//! - [`controller`]: observe → decide → write status → act;
//! - [`metrics`]: Prometheus metrics;
//! - [`workers`]: the worker pods a distributed job needs (pure).

pub mod control;
pub mod controller;
pub mod crd;
pub mod defaults;
pub mod job_schema;
pub mod kubeio;
pub mod machine;
pub mod metrics;
pub mod render;
pub mod workers;
