//! Helpers shared by the tests that run real `runnel` processes.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use runnel_operator::crd::{Restore, StreamJobSpec};
use runnel_operator::render;

pub mod harness;

/// The `runnel` binary of this workspace; built if missing.
pub fn runnel_bin() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let bin = target.join("debug").join("runnel");
    if !bin.exists() {
        let st = Command::new(env!("CARGO"))
            .args(["build", "-p", "runnel-runtime", "--bin", "runnel"])
            .current_dir(&root)
            .status()
            .expect("cargo runs");
        assert!(st.success(), "building the runnel binary failed");
    }
    assert!(bin.exists(), "{} missing after the build", bin.display());
    bin
}

pub struct Runtime {
    pub child: Child,
    pub url: String,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes the ConfigMap's job file and starts `runnel` with the pod's args
/// (control address moved to a free loopback port).
pub fn start(dir: &str, spec: &StreamJobSpec, restore: &Restore, n: u32) -> Runtime {
    let owner = render::Owner {
        name: "t".into(),
        namespace: "ns".into(),
        uid: "u".into(),
    };
    let cm = render::configmap(&owner, 1, spec);
    let job_file = format!("{dir}/job-{n}.yaml");
    std::fs::write(&job_file, &cm.data.unwrap()["job.yaml"]).unwrap();
    let mut args = render::runtime_args(&owner, 1, spec, restore);
    args[1] = job_file;
    let i = args.iter().position(|a| a == "--control-addr").unwrap();
    args[i + 1] = "127.0.0.1:0".into();
    let mut child = Command::new(runnel_bin())
        .args(&args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("runnel starts");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let url = line
        .trim()
        .strip_prefix("control API: ")
        .unwrap_or_else(|| panic!("unexpected first line: {line}"))
        .to_string();
    Runtime { child, url }
}

/// Starts `runnel` with a pod's exact arguments and its ConfigMap's job file
/// (the control address moved to a free loopback port).
pub fn start_args(dir: &str, job_yaml: &str, pod_args: &[String], n: u32) -> Runtime {
    let job_file = format!("{dir}/pod-job-{n}.yaml");
    std::fs::write(&job_file, job_yaml).unwrap();
    let mut args = pod_args.to_vec();
    args[1] = job_file;
    let i = args.iter().position(|a| a == "--control-addr").unwrap();
    args[i + 1] = "127.0.0.1:0".into();
    spawn(&args)
}

fn spawn(args: &[String]) -> Runtime {
    let mut child = Command::new(runnel_bin())
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("runnel starts");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let url = line
        .trim()
        .strip_prefix("control API: ")
        .unwrap_or_else(|| panic!("unexpected first line: {line}"))
        .to_string();
    Runtime { child, url }
}

impl Runtime {
    pub fn port(&self) -> u16 {
        self.url.rsplit(':').next().unwrap().parse().unwrap()
    }
}
