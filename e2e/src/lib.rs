//! Runnel's end-to-end test infrastructure.
//!
//! [`server`] is a local Kubernetes control plane: an HTTP server that speaks
//! the subset of the Kubernetes API that `runnel-operator` (kube-rs),
//! `kubectl` and the scenarios use, over an in-memory [`store`] with real
//! resourceVersion semantics. [`podrunner`] plays the kubelet for pods of the
//! runtime image (each pod a local `runnel` process on its own loopback
//! address) and [`jobs`] plays the Job controller. It exists because no
//! kube-apiserver can run on this project's machines; everything it does not
//! support is rejected with a Kubernetes `Status` error, never faked.
//! See `docs/e2e.md`.

pub mod error;
pub mod jobs;
pub mod kubeconfig;
pub mod managed;
pub mod meta;
pub mod patch;
pub mod podrunner;
pub mod resources;
pub mod schema;
pub mod selectors;
pub mod server;
pub mod store;
pub mod table;
