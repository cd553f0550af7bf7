//! Every example job in `examples/jobs/` loads, passes the runtime's
//! validation and runs to completion (they are bounded), through the library
//! and through `runnel run` as a user runs it. Output paths under /tmp are
//! redirected to a temporary directory.

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

/// `runnel run FILE` on every example, as the files' own comments tell users
/// to: exit 0, and the CountWindowAverage example prints the seed's averages.
#[test]
fn runnel_run_runs_every_example_job() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/jobs");
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    names.sort();
    let tmp = tempfile::tempdir().unwrap();
    for path in names {
        let yaml = std::fs::read_to_string(&path)
            .unwrap()
            .replace("/tmp/", &format!("{}/", tmp.path().display()));
        let file = tmp.path().join(path.file_name().unwrap());
        std::fs::write(&file, yaml).unwrap();
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_runnel"))
            .arg("run")
            .arg(&file)
            .args(["--control-addr", "127.0.0.1:0"])
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "{}: exit {:?}\n{stdout}\n{}",
            path.display(),
            o.status.code(),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(stdout.contains("finished"), "{}: {stdout}", path.display());
        if path.ends_with("count-window-average.yaml") {
            let avgs: Vec<f64> = stdout
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter_map(|v| v["avg"].as_f64())
                .collect();
            assert_eq!(avgs, vec![4.0, 5.5], "{stdout}");
        }
    }
}
