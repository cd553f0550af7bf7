//! Exactly-once Kafka output across process failures of a distributed job:
//! the same check as the Kafka chaos test, with the job spread over worker
//! processes. The coordinator and three workers run as separate processes on
//! loopback against a real broker; two workers are killed (SIGKILL), then the
//! coordinator, and a new coordinator resumes from the latest checkpoint.
//! What `read_committed` readers see in the output topic must equal the
//! output of a fault-free single-process run of the same job, record for
//! record: nothing lost, nothing twice.
#![cfg(feature = "kafka")]

mod common;
#[path = "distributed_support/kafka.rs"]
mod distributed_kafka;
mod distributed_support;

use std::time::{Duration, Instant};

use common::broker::broker_or_skip;
use distributed_kafka::{committed, kafka_job};
use distributed_support::*;
use runnel_api::JobState;

#[test]
fn worker_kills_and_a_coordinator_kill_keep_kafka_output_exactly_once() {
    let Some(b) =
        broker_or_skip("worker_kills_and_a_coordinator_kill_keep_kafka_output_exactly_once")
    else {
        return;
    };
    b.create_topic("dist-out", 3);
    let tmp = tempfile::tempdir().unwrap();
    let expected = fault_free(&keyed_job(40_000, 2_000, 4), tmp.path());
    assert_eq!(expected.len(), 4_000);
    let job = write_job(&kafka_job(&b, "dist-out", "60s"), tmp.path());
    let args = ["--slots", "2", "--heartbeat-timeout", "2s"];
    let mut workers: Vec<Proc> = (0..4).map(|_| worker(&job, &args)).collect();
    let addrs: Vec<String> = workers.iter().map(|w| w.addr.clone()).collect();
    let list: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let coord = coordinator(&job, &list, &["--heartbeat-timeout", "2s"]);
    let url = coord.addr.clone();

    // Output is being committed before the first kill, so the kills land
    // between commits of a running sink, not before its first one.
    wait_checkpoint_after(&url, 1);
    workers[1].kill();
    let s = wait_status(&url, "a restart after the first kill", |x| {
        x.restarts >= 1 && x.state == JobState::Running
    });
    let s2 = wait_checkpoint_after(&url, last_checkpoint_id(&s));
    workers[2].kill();
    let s3 = wait_status(&url, "a restart after the second kill", |x| {
        x.restarts > s2.restarts && x.state == JobState::Running
    });
    let s4 = wait_checkpoint_after(&url, last_checkpoint_id(&s3));
    assert!(s4.restored_from.is_some(), "{s4:?}");
    // Still running: the coordinator kill below lands mid-job.
    let before = status(&url);
    assert_eq!(before.state, JobState::Running, "{before:?}");
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
    // The final checkpoint's transaction is committed before the job ends;
    // allow the broker a moment to show it to a fresh reader.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got = committed(&b, "dist-out");
    while got.len() < expected.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        got = committed(&b, "dist-out");
    }
    assert_eq!(got.len(), expected.len(), "record count");
    assert_eq!(got, expected);
    for w in &mut workers {
        w.kill();
    }
}
