//! Every example job in `examples/jobs/` loads, passes the runtime's
//! validation and runs to completion (they are bounded). Output paths under
//! /tmp are redirected to a temporary directory.

use runnel_runtime::declarative::{self, ConnectorRegistry};

#[test]
fn every_example_job_runs() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/jobs");
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    names.sort();
    assert!(names.len() >= 4, "{names:?}");
    let tmp = tempfile::tempdir().unwrap();
    for path in names {
        let yaml = std::fs::read_to_string(&path)
            .unwrap()
            .replace("/tmp/", &format!("{}/", tmp.path().display()));
        let job = declarative::load_and_build(&yaml, &ConnectorRegistry::new())
            .unwrap_or_else(|e| panic!("{}: {}", path.display(), runnel_spec::format_errors(&e)));
        job.execute()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    // The file-sink example published its output exactly once.
    let lines = declarative::read_published(&tmp.path().join("runnel-orders/out")).unwrap();
    assert_eq!(lines.len(), 2000, "1000 distinct orders x 2 lines");
    let late = declarative::read_published(&tmp.path().join("runnel-sessions/late")).unwrap();
    assert_eq!(late, vec![serde_json::json!({"ts": 1200, "user": "a"})]);
}
