//! Rescaling a distributed job through savepoints: 2 workers at parallelism
//! 4, then 3 workers at parallelism 6, then 1 worker at parallelism 2, each
//! step a stop-with-savepoint and a restore. The keyed count windows carry
//! partial windows across every step, so the output equals the fault-free
//! run's only if every key's state moved intact.

mod distributed_support;

use std::path::Path;
use std::time::Duration;

use distributed_support::*;

/// Lets the job checkpoint once, then stops it with a savepoint; returns the
/// savepoint path.
fn stop_with_savepoint(coord: Proc, dir: &Path) -> String {
    let url = coord.addr.clone();
    wait_checkpoint_after(&url, 0);
    let sp = format!("--savepoint=file://{}", dir.display());
    ok(&run_cli(&["stop", &url, &sp]));
    let (st, out) = coord.finish(Duration::from_secs(60));
    assert!(st.success(), "{out}");
    out.lines()
        .find_map(|l| l.strip_prefix("job dist stopped with savepoint "))
        .unwrap_or_else(|| panic!("no savepoint in {out:?}"))
        .trim()
        .to_string()
}

#[test]
fn rescale_two_to_three_to_one_workers_through_savepoints() {
    let tmp = tempfile::tempdir().unwrap();
    let yaml = keyed_job(30_000, 4_000, 4);
    let expected = fault_free(&yaml, tmp.path());
    let job = write_job(&yaml, tmp.path());
    let sp_dir = tmp.path().join("savepoints");
    let args = ["--slots", "2"];
    let mut workers: Vec<Proc> = (0..3).map(|_| worker(&job, &args)).collect();
    let addrs: Vec<String> = workers.iter().map(|w| w.addr.clone()).collect();

    let c1 = coordinator(&job, &[&addrs[0], &addrs[1]], &[]);
    let s1 = status(&c1.addr);
    assert_eq!(s1.parallelism["sums"], 4);
    let sp1 = stop_with_savepoint(c1, &sp_dir);

    let c2 = coordinator(
        &job,
        &[&addrs[0], &addrs[1], &addrs[2]],
        &["--parallelism", "6", "--from-savepoint", &sp1],
    );
    let s2 = wait_status(&c2.addr, "the restored attempt", |s| {
        s.restored_from.is_some()
    });
    assert_eq!(s2.parallelism["sums"], 6);
    assert_eq!(s2.restored_from.as_deref(), Some(sp1.as_str()));
    let sp2 = stop_with_savepoint(c2, &sp_dir);

    let c3 = coordinator(
        &job,
        &[&addrs[2]],
        &["--parallelism", "2", "--from-savepoint", &sp2],
    );
    let s3 = wait_status(&c3.addr, "the restored attempt", |s| {
        s.restored_from.is_some()
    });
    assert_eq!(s3.parallelism["sums"], 2);
    assert_eq!(s3.restored_from.as_deref(), Some(sp2.as_str()));
    let (st, out) = c3.finish(Duration::from_secs(120));
    assert!(st.success(), "{out}");
    assert!(out.contains("job dist finished"), "{out}");

    let got = published(&tmp.path().join("out"));
    assert_eq!(got.len(), expected.len());
    assert_eq!(got, expected);
    for w in &mut workers {
        w.kill();
    }
}
