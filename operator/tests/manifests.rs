//! The example StreamJobs parse as StreamJobs and pass the operator's validation.

mod common;

use runnel_operator::crd::StreamJob;

#[test]
fn example_streamjobs_are_valid() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests");
    let mut n = 0;
    let mut modes = std::collections::BTreeSet::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        // The top level only: manifests/dev-stack/ holds no StreamJobs.
        if !p.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        if !text.contains("kind: StreamJob") {
            continue;
        }
        let sj: StreamJob = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{p:?}: {e}"));
        runnel_operator::machine::validate(&sj.spec).unwrap_or_else(|e| panic!("{p:?}: {e}"));
        modes.insert(format!("{:?}", sj.spec.upgrade_mode));
        n += 1;
    }
    assert!(n >= 1);
    // One example of each upgrade mode.
    assert_eq!(
        modes.into_iter().collect::<Vec<_>>(),
        ["LastState", "Savepoint", "Stateless"]
    );
}

/// The runtime accepts every example's effective job (what the operator puts
/// in the ConfigMap): `runnel run --dry-run` builds it with the runtime's
/// connectors, compiles its CEL and checks connector settings against the
/// checkpointing the StreamJob adds. Credential Secret keys are given as the
/// environment variables the operator would mount.
#[test]
fn the_runtime_accepts_every_example_job() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests");
    let runnel = common::runnel_bin();
    let tmp = tempfile::tempdir().unwrap();
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if !p.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        if !text.contains("kind: StreamJob") {
            continue;
        }
        let sj: StreamJob = serde_yaml::from_str(&text).unwrap();
        let job = runnel_operator::render::effective_job(&sj.spec);
        let file = tmp.path().join(p.file_name().unwrap());
        std::fs::write(&file, serde_yaml::to_string(&job).unwrap()).unwrap();
        let spec = runnel_spec::from_value(job, "spec.job").unwrap();
        let mut cmd = std::process::Command::new(&runnel);
        cmd.arg("run").arg(&file).arg("--dry-run");
        for r in spec.secret_refs() {
            cmd.env(r.env_var(), "from-a-secret");
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{p:?} is refused by the runtime:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        n += 1;
    }
    assert!(n >= 5, "{n} examples");
}
