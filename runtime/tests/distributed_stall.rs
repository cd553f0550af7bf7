//! A stalled worker: one of three workers is frozen with SIGSTOP. The
//! coordinator notices the missing heartbeats, restarts the job from the
//! latest checkpoint on the two others (the frozen one does not answer the
//! new attempt's hello and is left out), and the job finishes with exactly
//! the fault-free output, even after the frozen worker is thawed mid-run
//! with its old attempt's tasks still in memory.

mod distributed_support;

use std::time::Duration;

use distributed_support::*;
use runnel_api::JobState;

#[test]
fn a_stalled_worker_is_detected_and_the_job_recovers_without_it() {
    let tmp = tempfile::tempdir().unwrap();
    let yaml = keyed_job(30_000, 5_000, 4);
    let expected = fault_free(&yaml, tmp.path());
    let job = write_job(&yaml, tmp.path());
    let args = [
        "--slots",
        "2",
        "--heartbeat-timeout",
        "2s",
        "--heartbeat-interval",
        "200ms",
    ];
    let workers: Vec<Proc> = (0..3).map(|_| worker(&job, &args)).collect();
    let list: Vec<&str> = workers.iter().map(|w| w.addr.as_str()).collect();
    let coord = coordinator(
        &job,
        &list,
        &["--heartbeat-timeout", "2s", "--heartbeat-interval", "200ms"],
    );
    let url = coord.addr.clone();
    wait_checkpoint_after(&url, 0);
    workers[1].signal(libc::SIGSTOP);
    let s = wait_status(&url, "recovery without the stalled worker", |x| {
        x.restarts >= 1 && x.state == JobState::Running
    });
    let failure = s.last_failure.clone().unwrap_or_default();
    assert!(
        failure.contains(&format!(
            "worker {} lost: nothing received",
            workers[1].addr
        )),
        "{failure}"
    );
    wait_checkpoint_after(&url, last_checkpoint_id(&s));
    // Thaw it: its old attempt must neither disturb the new one nor publish.
    workers[1].signal(libc::SIGCONT);
    let (st, out) = coord.finish(Duration::from_secs(120));
    assert!(st.success(), "{out}");
    assert!(out.contains("job dist finished"), "{out}");
    let got = published(&tmp.path().join("out"));
    assert_eq!(got.len(), expected.len());
    assert_eq!(got, expected);
}
