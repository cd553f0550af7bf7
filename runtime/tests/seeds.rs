//! The seed examples (Flink state documentation) as tests.

mod common;

use std::collections::BTreeSet;

use common::*;
use runnel_runtime::seeds::{BufferingSink, CountWindowAverage, CounterSource, tuple};
use runnel_runtime::sinks::CollectSink;
use runnel_runtime::sources::FromElements;
use runnel_runtime::{JobConfig, JobOutcome, StreamEnv};

#[test]
fn count_window_average_prints_the_seed_output() {
    let env = StreamEnv::new(JobConfig::new("cwa"));
    let (sink, out) = CollectSink::new();
    env.add_source(
        "elements",
        FromElements::new(vec![(1u64, 3u64), (1, 5), (1, 7), (1, 4), (1, 2), (1, 1)]),
    )
    .key_by(|t: &(u64, u64)| t.0)
    .process("count-window-average", CountWindowAverage::default())
    .sink("collect", sink);
    assert_eq!(env.execute().unwrap(), JobOutcome::Finished);
    let lines: Vec<String> = lock(&out).iter().map(tuple).collect();
    assert_eq!(lines, vec!["(2,8)", "(2,11)", "(2,3)"]);
}

#[test]
fn count_window_average_example_binary_prints_exactly_the_seed_lines() {
    // `cargo test` builds the examples next to the test binaries
    // (target/<profile>/examples); running that binary avoids a `cargo run`
    // that may rebuild the crate with other features.
    let built = std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.parent()?.parent()?.join("examples/count_window_average")))
        .filter(|p| p.exists());
    let out = match built {
        Some(bin) => std::process::Command::new(bin).output().unwrap(),
        None => std::process::Command::new(env!("CARGO"))
            .args([
                "run",
                "-q",
                "-p",
                "runnel-runtime",
                "--example",
                "count_window_average",
            ])
            .output()
            .unwrap(),
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "(2,8)\n(2,11)\n(2,3)\n"
    );
}

#[test]
fn buffering_sink_gets_its_buffered_elements_back_after_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config("buffering", dir.path(), 5);
    cfg.checkpoint.retained = 10_000;
    // Fail right after a checkpoint in which the sink had buffered elements.
    let (faults, failed_after) = fail_once_after_checkpoint(dir.path(), |md| {
        md.operators.iter().any(|o| {
            o.uid == "buffering-sink" && o.subtasks.iter().any(|s| s.operator_state_items > 0)
        })
    });
    cfg.faults = faults;
    let env = StreamEnv::new(cfg);
    let sink = BufferingSink::new(3);
    let (flushed, restored) = (sink.flushed.clone(), sink.restored.clone());
    // A multiple of the threshold, so everything gets flushed; rate-limited so
    // the job spans a few hundred checkpoints and one of them catches a
    // non-empty buffer (each does with probability 2/3).
    let n = 6_000u64;
    env.add_source(
        "counter",
        runnel_runtime::sources::GeneratorSource::new(|i| i)
            .count(n)
            .rate(6_000.0),
    )
    .map(|v: u64| v.to_string())
    .sink("buffering-sink", sink);
    assert_eq!(env.execute().unwrap(), JobOutcome::Finished);
    let cp = lock(&failed_after).expect("a checkpoint with buffered elements was taken");
    // What was restored is exactly what the checkpoint holds.
    let snap =
        runnel_runtime::checkpoint::load_snapshot(&file_uri(&dir.path().join(format!("chk-{cp}"))))
            .unwrap();
    let restored = lock(&restored).clone();
    assert_eq!(restored.len(), 1, "restored exactly once");
    assert!(!restored[0].is_empty(), "the buffered elements came back");
    let st = &snap.states["buffering-sink"][0].1;
    let items: Vec<String> = st.operator_states[0]
        .items
        .iter()
        .map(|b| postcard::from_bytes(b).unwrap())
        .collect();
    assert_eq!(restored[0], items);
    // Nothing lost: every element was flushed (replays may flush some twice,
    // as the seed's sink is not transactional).
    let all: BTreeSet<u64> = lock(&flushed)
        .iter()
        .flatten()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(all, (0..n).collect());
}

#[test]
fn counter_source_resumes_from_its_checkpointed_offset() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config("counter", dir.path(), 5);
    cfg.checkpoint.retained = 10_000;
    let (faults, failed_after) = fail_once_after_checkpoint(dir.path(), |md| {
        md.operators.iter().any(|o| o.uid == "counter")
    });
    cfg.faults = faults;
    let env = StreamEnv::new(cfg);
    let src = CounterSource::new(200_000);
    let resumed = src.resumed_from.clone();
    let (sink, out) = CollectSink::new();
    env.add_source("counter", src).sink("collect", sink);
    assert_eq!(env.execute().unwrap(), JobOutcome::Finished);
    let cp = lock(&failed_after).expect("failure injected");
    let snap =
        runnel_runtime::checkpoint::load_snapshot(&file_uri(&dir.path().join(format!("chk-{cp}"))))
            .unwrap();
    let offset: u64 =
        postcard::from_bytes(&snap.states["counter"][0].1.operator_states[0].items[0]).unwrap();
    assert_eq!(
        *lock(&resumed),
        vec![offset],
        "resumed from the checkpointed offset"
    );
    assert!(offset > 0);
    let out = lock(&out);
    let distinct: BTreeSet<u64> = out.iter().copied().collect();
    assert_eq!(distinct, (0..200_000).collect());
}
