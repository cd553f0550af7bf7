//! Rescaling: a savepoint taken at parallelism 2 restores at 3 and at 1. Every
//! key's state is intact, and operator list state is redistributed by mode.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use runnel_runtime::sources::GeneratorSource;
use runnel_runtime::state::{OperatorListState, OperatorListStateDescriptor};
use runnel_runtime::{
    CheckpointListener, FnResult, InitContext, JobError, JobOutcome, ProcessContext,
    ProcessFunction, RestoreSettings, SnapshotContext, StreamEnv,
};

type Seen = Arc<Mutex<Vec<(u32, Vec<u32>, Vec<u32>)>>>;

/// Holds operator list state in both modes and reports what it restored.
#[derive(Clone)]
struct ListHolder {
    even: Option<OperatorListState<u32>>,
    union: Option<OperatorListState<u32>>,
    seen: Seen,
}

impl CheckpointListener for ListHolder {}

impl ProcessFunction<(u64, u64), (u64, u64)> for ListHolder {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> FnResult {
        let s = ctx.subtask_index();
        let even = ctx.list_state(&OperatorListStateDescriptor::even_split("even"))?;
        let union = ctx.list_state(&OperatorListStateDescriptor::union("union"))?;
        if ctx.is_restored() {
            let e = even.get(ctx.operator_state())?.to_vec();
            let u = union.get(ctx.operator_state())?.to_vec();
            lock(&self.seen).push((s, e, u));
        } else {
            even.update(ctx.operator_state(), (0..5).map(|j| s * 100 + j).collect())?;
            union.update(ctx.operator_state(), vec![s])?;
        }
        self.even = Some(even);
        self.union = Some(union);
        Ok(())
    }
    fn process_element(
        &mut self,
        v: (u64, u64),
        ctx: &mut ProcessContext<'_, (u64, u64)>,
    ) -> FnResult {
        ctx.collect(v);
        Ok(())
    }
    fn snapshot_state(&mut self, _ctx: &mut SnapshotContext<'_>) -> FnResult {
        Ok(())
    }
}

const N: u64 = 60_000;
const KEYS: u64 = 1_000;

fn job(
    dir: &std::path::Path,
    parallelism: u32,
    restore: Option<RestoreSettings>,
    rate: Option<f64>,
) -> (StreamEnv, LatestSink, Seen) {
    let mut cfg = config("rescale", dir, 50);
    cfg.parallelism = parallelism;
    cfg.restore = restore;
    let env = StreamEnv::new(cfg);
    let generator = GeneratorSource::new(|i| i).count(N);
    let generator = match rate {
        Some(r) => generator.rate(r),
        None => generator,
    };
    let sink = LatestSink::default();
    let seen: Seen = Arc::default();
    env.add_source("numbers", generator)
        .set_parallelism(2)
        .key_by(|v: &u64| v % KEYS)
        .process("count", CountPerKey::default())
        .process(
            "lists",
            ListHolder {
                even: None,
                union: None,
                seen: seen.clone(),
            },
        )
        .sink("latest", sink.clone());
    (env, sink, seen)
}

fn expected() -> HashMap<u64, u64> {
    let mut m = HashMap::new();
    for i in 0..N {
        *m.entry(i % KEYS).or_insert(0) += 1;
    }
    m
}

fn take_savepoint(dir: &std::path::Path) -> String {
    let (env, _sink, _) = job(&dir.join("a"), 2, None, Some(5_000.0));
    let client = env.execute_async().unwrap();
    while client.status().completed.is_empty() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let sp = match client.stop_with_savepoint(&file_uri(&dir.join("savepoints")), false) {
        Ok(sp) => sp,
        Err(e) => panic!("{e}: {:?}", client.status()),
    };
    assert_eq!(client.wait().unwrap(), JobOutcome::Stopped(sp.clone()));
    sp.path
}

#[test]
fn savepoint_at_2_restores_at_3_and_at_1_with_every_key_intact() {
    let dir = tempfile::tempdir().unwrap();
    let sp = take_savepoint(dir.path());
    let md = runnel_runtime::checkpoint::read_metadata(&sp).unwrap();
    assert_eq!(md.kind, "savepoint");
    let count_op = md.operators.iter().find(|o| o.uid == "count").unwrap();
    assert_eq!(count_op.parallelism, 2);

    for p in [3u32, 1] {
        let (env, sink, seen) = job(
            &dir.path().join(format!("p{p}")),
            p,
            Some(RestoreSettings {
                path: sp.clone(),
                latest: false,
                allow_non_restored_state: false,
            }),
            None,
        );
        assert_eq!(env.execute().unwrap(), JobOutcome::Finished);
        // Counts continue from the savepoint: any key whose state was lost
        // would end below its true count.
        assert_eq!(*lock(&sink.latest), expected(), "parallelism {p}");
        let mut seen = lock(&seen).clone();
        seen.sort();
        assert_eq!(seen.len(), p as usize);
        let all_even: Vec<u32> = vec![0, 1, 2, 3, 4, 100, 101, 102, 103, 104];
        let mut got_even = Vec::new();
        for (s, even, union) in &seen {
            assert_eq!(union, &vec![0, 1], "union: subtask {s} gets every item");
            got_even.extend(even.clone());
        }
        assert_eq!(
            got_even, all_even,
            "even split: every item exactly once, in order"
        );
        let sizes: Vec<usize> = seen.iter().map(|(_, e, _)| e.len()).collect();
        let expect: Vec<usize> = if p == 3 { vec![3, 3, 4] } else { vec![10] };
        assert_eq!(sizes, expect);
    }
}

#[test]
fn removed_operator_needs_allow_non_restored_state() {
    let dir = tempfile::tempdir().unwrap();
    let sp = take_savepoint(dir.path());
    let build = |allow: bool| {
        let mut cfg = config("smaller", &dir.path().join(format!("b{allow}")), 50);
        cfg.restore = Some(RestoreSettings {
            path: sp.clone(),
            latest: false,
            allow_non_restored_state: allow,
        });
        let env = StreamEnv::new(cfg);
        let sink = LatestSink::default();
        env.add_source("numbers", GeneratorSource::new(|i| i).count(N))
            .set_parallelism(2)
            .key_by(|v: &u64| v % KEYS)
            .process("count", CountPerKey::default())
            .sink("latest", sink.clone());
        (env, sink)
    };
    let (env, _) = build(false);
    let err = env.execute().unwrap_err();
    assert!(matches!(err, JobError::Restore(_)), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("operators the job no longer has: lists"),
        "{msg}"
    );
    assert!(msg.contains("allow_non_restored_state"), "{msg}");
    let (env, sink) = build(true);
    assert_eq!(env.execute().unwrap(), JobOutcome::Finished);
    assert_eq!(*lock(&sink.latest), expected());
}

#[test]
fn changing_max_parallelism_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sp = take_savepoint(dir.path());
    let mut cfg = config("maxp", &dir.path().join("m"), 50);
    cfg.max_parallelism = 256;
    cfg.restore = Some(RestoreSettings {
        path: sp,
        latest: false,
        allow_non_restored_state: true,
    });
    let env = StreamEnv::new(cfg);
    env.add_source("numbers", GeneratorSource::new(|i| i).count(N))
        .key_by(|v: &u64| v % KEYS)
        .process("count", CountPerKey::default())
        .sink("latest", LatestSink::default());
    let err = env.execute().unwrap_err().to_string();
    assert!(
        err.contains("max parallelism 128 but the job has 256"),
        "{err}"
    );
}
