//! The example StreamJobs parse as StreamJobs and pass the operator's validation.

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
