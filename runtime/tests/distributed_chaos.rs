//! Exactly-once across process failures of a distributed job: the coordinator
//! and three workers run as separate processes on loopback; two workers are
//! killed (SIGKILL) and then the coordinator too, and a new coordinator
//! resumes from the latest checkpoint. The committed output of the
//! exactly-once file sink equals the output of a fault-free single-process
//! run of the same job.

mod distributed_support;

use std::time::Duration;

use distributed_support::*;
use runnel_api::JobState;

#[test]
fn worker_kills_and_a_coordinator_kill_keep_the_output_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let yaml = keyed_job(40_000, 5_000, 4);
    let expected = fault_free(&yaml, tmp.path());
    assert_eq!(expected.len(), 4_000);
    let job = write_job(&yaml, tmp.path());
    let args = ["--slots", "2", "--heartbeat-timeout", "2s"];
    let mut workers: Vec<Proc> = (0..4).map(|_| worker(&job, &args)).collect();
    let addrs: Vec<String> = workers.iter().map(|w| w.addr.clone()).collect();
    let list: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let coord_args = ["--heartbeat-timeout", "2s"];
    let coord = coordinator(&job, &list, &coord_args);
    let url = coord.addr.clone();

    // A worker dies after a checkpoint: the job restarts on the others.
    wait_checkpoint_after(&url, 0);
    let killed = workers[1].addr.clone();
    workers[1].kill();
    let s = wait_status(&url, "a restart after the first kill", |x| {
        x.restarts >= 1 && x.state == JobState::Running
    });
    // The root cause names the dead worker: lost by the coordinator, or a
    // channel to it broken on a peer, whichever was reported first.
    assert!(
        s.last_failure.as_deref().unwrap_or("").contains(&killed),
        "{s:?}"
    );
    let s2 = wait_checkpoint_after(&url, last_checkpoint_id(&s));
    // A second worker dies.
    workers[2].kill();
    let s3 = wait_status(&url, "a restart after the second kill", |x| {
        x.restarts > s2.restarts && x.state == JobState::Running
    });
    let s4 = wait_checkpoint_after(&url, last_checkpoint_id(&s3));
    assert!(s4.restored_from.is_some(), "{s4:?}");
    // The coordinator dies mid-job, not after the input ran out.
    let s4 = status(&url);
    assert_eq!(s4.state, JobState::Running, "{s4:?}");
    assert!(
        published(&tmp.path().join("out")).len() < expected.len(),
        "the job had already published everything"
    );

    // The coordinator dies; its successor resumes from the latest checkpoint.
    let mut coord = coord;
    coord.kill();
    let coord2 = coordinator(
        &job,
        &list,
        &["--heartbeat-timeout", "2s", "--from-latest-checkpoint"],
    );
    let s5 = wait_status(&coord2.addr, "the new coordinator running", |x| {
        x.state == JobState::Running || x.state == JobState::Finished
    });
    assert!(
        s5.restored_from
            .as_deref()
            .unwrap_or("")
            .contains("/chk/chk-"),
        "{s5:?}"
    );
    let (st, out) = coord2.finish(Duration::from_secs(120));
    assert!(st.success(), "coordinator: {out}");
    assert!(out.contains("job dist finished"), "{out}");
    let got = published(&tmp.path().join("out"));
    assert_eq!(got.len(), expected.len(), "record count");
    assert_eq!(got, expected);
    for w in &mut workers {
        w.kill();
    }
}
