//! The example StreamJobs parse as StreamJobs and pass the operator's validation.

use runnel_operator::crd::StreamJob;

#[test]
fn example_streamjobs_are_valid() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests");
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let text = std::fs::read_to_string(&p).unwrap();
        if !text.contains("kind: StreamJob") {
            continue;
        }
        let sj: StreamJob = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{p:?}: {e}"));
        runnel_operator::machine::validate(&sj.spec).unwrap_or_else(|e| panic!("{p:?}: {e}"));
        n += 1;
    }
    assert!(n >= 1);
}
