//! Fencing of a live stale worker against a real broker. The worker that
//! hosts the exactly-once Kafka sink freezes itself (SIGSTOP) inside a commit
//! transaction, after that transaction's records reached the broker and
//! before `commit_transaction`. The coordinator detects it by its missing
//! heartbeats and restarts the job from the latest checkpoint on the other
//! workers, and the new attempt recovers the frozen transaction's output.
//! Only then is the frozen worker thawed, with its old attempt still in
//! memory and the commit as its next step. That commit must fail, fenced by
//! the new attempt's producer, and the output that `read_committed` readers
//! see at the end must equal the fault-free output, record for record.
#![cfg(feature = "kafka")]

mod common;
#[path = "distributed_support/kafka.rs"]
mod distributed_kafka;
mod distributed_support;

use std::path::Path;
use std::time::{Duration, Instant};

use common::broker::broker_or_skip;
use common::example;
use distributed_kafka::{committed, kafka_job};
use distributed_support::*;
use runnel_api::JobState;

/// The process state letter from `/proc/PID/stat` ('T' = stopped).
fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state follows the command name, which is in parentheses.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn a_worker_frozen_inside_a_commit_transaction_is_fenced_when_it_thaws() {
    let Some(b) =
        broker_or_skip("a_worker_frozen_inside_a_commit_transaction_is_fenced_when_it_thaws")
    else {
        return;
    };
    b.create_topic("stale-out", 3);
    let tmp = tempfile::tempdir().unwrap();
    let expected = fault_free(&keyed_job(40_000, 2_000, 4), tmp.path());
    assert_eq!(expected.len(), 4_000);
    let job = write_job(&kafka_job(&b, "stale-out", "15s"), tmp.path());
    let flag = tmp.path().join("stopped.pid");
    let flag_s = flag.display().to_string();
    // Every worker may be the sink's host; the first to reach the commit of
    // checkpoint 3 or later freezes, the others (and later attempts) do not.
    let envs = [
        ("STOP_AT", "sink-before-commit:3"),
        ("STOP_FLAG", flag_s.as_str()),
    ];
    let bin = example("kafka_fault_runnel");
    let args = [
        "--slots",
        "2",
        "--heartbeat-timeout",
        "2s",
        "--heartbeat-interval",
        "200ms",
    ];
    let logs: Vec<_> = (0..3)
        .map(|i| tmp.path().join(format!("worker-{i}.log")))
        .collect();
    let mut workers: Vec<Proc> = logs
        .iter()
        .map(|log| worker_with(&bin, &job, &args, &envs, log))
        .collect();
    let addrs: Vec<String> = workers.iter().map(|w| w.addr.clone()).collect();
    let list: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let coord = coordinator(
        &job,
        &list,
        &["--heartbeat-timeout", "2s", "--heartbeat-interval", "200ms"],
    );
    let url = coord.addr.clone();

    // The freeze: which worker, and that it really is stopped mid-commit.
    let mut frozen_pid = 0;
    wait_for(
        "a worker to freeze in its commit",
        Duration::from_secs(60),
        || {
            frozen_pid = read(&flag).trim().parse().unwrap_or(0);
            frozen_pid != 0 && proc_state(frozen_pid) == Some('T')
        },
    );
    let i = workers
        .iter()
        .position(|w| w.pid() == frozen_pid)
        .expect("the frozen process is one of the workers");
    assert!(
        read(&logs[i]).contains("STOPPING in the commit transaction of checkpoint"),
        "{}",
        read(&logs[i])
    );
    let before = status(&url);

    // Detected, and the job runs on without it. A checkpoint of the new
    // attempt completes only after its sink subtask initialized, and that
    // ended the frozen transaction (same transactional id, new producer
    // epoch) and recovered its epochs.
    let s = wait_status(&url, "recovery without the frozen worker", |x| {
        x.restarts > before.restarts && x.state == JobState::Running
    });
    let failure = s.last_failure.clone().unwrap_or_default();
    assert!(
        failure.contains(&format!("worker {} lost: nothing received", addrs[i])),
        "{failure}"
    );
    wait_checkpoint_after(&url, last_checkpoint_id(&s));

    // Thaw it: its next step is the commit of a transaction whose producer
    // epoch is no longer the current one.
    workers[i].signal(libc::SIGCONT);
    // Apache Kafka refuses it with PRODUCER_FENCED at once; nisshi drops the
    // connection instead, so librdkafka retries until the commit's timeout
    // (the transaction timeout, 15 s here) and fails then (pinned by
    // `kafka_broker_conformance::a_fenced_producer_cannot_commit`).
    let deadline = Instant::now() + Duration::from_secs(60);
    let after_resume = loop {
        let log = read(&logs[i]);
        let after = log
            .split_once("RESUMED in the commit transaction")
            .map(|(_, a)| a.to_string());
        if let Some(a) = &after
            && a.lines()
                .any(|l| l.contains("a task failed") && l.contains("commit transaction"))
        {
            break a.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the thawed worker's commit did not fail; its log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        !after_resume.contains("COMMITTED the transaction"),
        "{after_resume}"
    );

    let (st, out) = coord.finish(Duration::from_secs(120));
    assert!(st.success(), "coordinator: {out}");
    assert!(out.contains("job dist finished"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got = committed(&b, "stale-out");
    while got.len() < expected.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        got = committed(&b, "stale-out");
    }
    assert_eq!(got.len(), expected.len(), "record count");
    assert_eq!(got, expected);
    for w in &mut workers {
        w.kill();
    }
}
