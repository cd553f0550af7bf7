//! `runnel demo`: an end-to-end run of a checkpointed keyed job that fails once,
//! recovers from its latest checkpoint, and checks that the results are
//! exactly-once.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::checkpoint::{self, format::SnapshotMetadata};
use crate::sources::GeneratorSource;
use crate::state::keyed::{ValueState, ValueStateDescriptor};
use crate::{
    CheckpointListener, CheckpointMode, FnResult, InitContext, JobClient, JobConfig, JobState,
    JobStatus, KeyedContext, KeyedProcessFunction, RestartStrategy, SinkContext, SinkFunction,
    StreamEnv, UserError,
};
use anyhow::Context;
use clap::Args;

use super::{file_uri, human_bytes};

const SOURCE: &str = "generator";
const COUNT_SUM: &str = "count-sum";
const SINK: &str = "latest-per-key";
const SOURCE_PARALLELISM: u32 = 2;
/// The job is rate-limited to run for about this long.
const TARGET_SECONDS: f64 = 5.0;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Working directory; checkpoints go to DIR/checkpoints [default: a fresh
    /// runnel-demo-<pid> directory under the system temp dir]
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    keys: u64,
    /// Number of events the (bounded) source generates.
    #[arg(long, default_value_t = 200_000)]
    events: u64,
}

/// An event: (key, amount, global index).
type Event = (u64, u64, u64);
/// What the keyed function emits: (key, count, sum).
type Update = (u64, u64, u64);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Keeps (count, sum) per key and emits it on every update. Fails once, at the
/// event whose global index is `fail_at`.
#[derive(Clone)]
struct CountSum {
    state: Option<ValueState<(u64, u64)>>,
    fail_at: u64,
    failed: Arc<AtomicBool>,
}

impl CheckpointListener for CountSum {}

impl KeyedProcessFunction<u64, Event, Update> for CountSum {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_, u64>) -> FnResult {
        self.state = Some(ctx.value_state(&ValueStateDescriptor::new("count-sum"))?);
        Ok(())
    }

    fn process_element(&mut self, e: Event, ctx: &mut KeyedContext<'_, u64, Update>) -> FnResult {
        let (key, amount, index) = e;
        if index == self.fail_at && !self.failed.swap(true, Ordering::SeqCst) {
            return Err(UserError::msg(format!(
                "injected failure while processing event {index}"
            )));
        }
        let state = self
            .state
            .as_ref()
            .ok_or_else(|| UserError::msg("state not initialized"))?;
        let (count, sum) = state.value(ctx)?.unwrap_or((0, 0));
        let next = (count + 1, sum + amount);
        state.update(ctx, next)?;
        ctx.collect((key, next.0, next.1));
        Ok(())
    }
}

/// Keeps the latest (count, sum) per key in a map shared with the caller.
#[derive(Clone)]
struct LatestPerKey {
    latest: Arc<Mutex<HashMap<u64, (u64, u64)>>>,
}

impl CheckpointListener for LatestPerKey {}

impl SinkFunction<Update> for LatestPerKey {
    fn invoke(&mut self, (key, count, sum): Update, _ctx: &SinkContext) -> FnResult {
        lock(&self.latest).insert(key, (count, sum));
        Ok(())
    }
}

/// Sum of `i % 100 + 1` for `i` in `0..events`, in closed form.
fn expected_sum(events: u64) -> u128 {
    let (full, rest) = ((events / 100) as u128, (events % 100) as u128);
    full * 5050 + rest * (rest + 1) / 2
}

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let dir = match args.dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("runnel-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the demo directory {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))?;
    let checkpoints = file_uri(&dir.join("checkpoints"))?;
    let events = args.events;
    let keys = args.keys;
    let fail_at = events / 2;

    println!("== Runnel demo: exactly-once keyed state across a failure ==");
    println!(
        "A generator source (parallelism {SOURCE_PARALLELISM}) emits {events} events \
         (key = i % {keys}, amount = i % 100 + 1), rate-limited to take about {TARGET_SECONDS:.0} s."
    );
    println!(
        "The stream is keyed by key; the keyed function '{COUNT_SUM}' keeps (count, sum) per key \
         in a ValueState and emits every update to a sink that keeps the latest value per key."
    );
    println!(
        "Checkpoints: every 300 ms, exactly-once, 2 retained, to {checkpoints}; restart \
         strategy: fixed delay (3 attempts, 200 ms)."
    );
    println!(
        "One failure is injected when event {fail_at} is processed. The job restores its \
         latest checkpoint, replays from the source offsets stored in it, and at the end \
         the per-key results are checked against values computed independently."
    );
    println!();

    let mut config = JobConfig::new("runnel-demo");
    config.parallelism = SOURCE_PARALLELISM;
    config.checkpoint.interval_ms = Some(300);
    config.checkpoint.mode = CheckpointMode::ExactlyOnce;
    config.checkpoint.retained = 2;
    config.checkpoint.storage = Some(checkpoints.clone());
    config.restart = RestartStrategy::FixedDelay {
        attempts: 3,
        delay_ms: 200,
    };

    let latest: Arc<Mutex<HashMap<u64, (u64, u64)>>> = Arc::default();
    let failed = Arc::new(AtomicBool::new(false));
    let env = StreamEnv::new(config);
    let mut source = GeneratorSource::new(move |i: u64| (i % keys, i % 100 + 1, i)).count(events);
    if events > 0 {
        let per_subtask = events as f64 / SOURCE_PARALLELISM as f64 / TARGET_SECONDS;
        source = source.rate(per_subtask.max(1.0));
    }
    env.add_source(SOURCE, source)
        .set_parallelism(SOURCE_PARALLELISM)
        .key_by(|e: &Event| e.0)
        .process(
            COUNT_SUM,
            CountSum {
                state: None,
                fail_at,
                failed: failed.clone(),
            },
        )
        .sink(
            SINK,
            LatestPerKey {
                latest: latest.clone(),
            },
        );

    let started = Instant::now();
    let client = env.execute_async().context("cannot start the demo job")?;
    let last = watch(&client, started, fail_at);
    let outcome = client.wait();
    println!();
    if let Err(e) = outcome {
        println!("job FAILED: {e}");
        println!("exactly-once check: FAILED (the job did not finish)");
        return Ok(ExitCode::FAILURE);
    }
    println!(
        "job finished in {:.1} s after {} restart(s); {} attempt(s)",
        started.elapsed().as_secs_f64(),
        last.restarts,
        last.attempt
    );
    if !failed.load(Ordering::SeqCst) && events > 0 {
        println!("note: the failure was not injected (event {fail_at} was never processed)");
    }

    let latest = lock(&latest).clone();
    let count: u128 = latest.values().map(|(c, _)| *c as u128).sum();
    let sum: u128 = latest.values().map(|(_, s)| *s as u128).sum();
    let want_count = events as u128;
    let want_sum = expected_sum(events);
    let want_keys = keys.min(events) as usize;
    if let Some(c) = last.completed.last() {
        println!(
            "latest checkpoint: {} (inspect it with `runnel inspect {}`)",
            c.path, c.path
        );
    }
    if count == want_count && sum == want_sum && latest.len() == want_keys {
        println!(
            "exactly-once check: OK (count {count} == {want_count}, sum {sum} == {want_sum}, \
             {} keys)",
            latest.len()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "exactly-once check: FAILED (count {count} vs expected {want_count}, sum {sum} vs \
             expected {want_sum}, {} keys vs expected {want_keys})",
            latest.len()
        );
        Ok(ExitCode::FAILURE)
    }
}

fn is_terminal(s: JobState) -> bool {
    matches!(
        s,
        JobState::Finished | JobState::Cancelled | JobState::Stopped | JobState::Failed
    )
}

/// Polls the job status every 100 ms and prints what happens, until the job ends.
fn watch(client: &JobClient, started: Instant, fail_at: u64) -> JobStatus {
    let mut last_ckpt = 0u64;
    let mut restarts = 0u32;
    let mut attempts_seen = 0usize;
    loop {
        let st = client.status();
        let t = started.elapsed().as_secs_f64();
        for c in &st.completed {
            if c.id <= last_ckpt {
                continue;
            }
            println!(
                "[{t:5.1}s] checkpoint {} completed ({}, {} ms)",
                c.id,
                human_bytes(c.size_bytes),
                c.duration_ms
            );
            last_ckpt = c.id;
        }
        if st.restarts > restarts {
            restarts = st.restarts;
            println!(
                "[{t:5.1}s] failure injected at event {fail_at}; restarting ({})",
                st.last_failure.as_deref().unwrap_or("no cause recorded")
            );
        }
        while attempts_seen < st.restored_from.len() {
            if attempts_seen > 0 {
                match &st.restored_from[attempts_seen] {
                    Some(uri) => println!("[{t:5.1}s] {}", describe_restore(uri)),
                    None => println!(
                        "[{t:5.1}s] restarted from scratch (no checkpoint had completed yet)"
                    ),
                }
            }
            attempts_seen += 1;
        }
        if is_terminal(st.state) {
            return st;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// "restored from URI: source offsets ..., N keys of keyed state".
fn describe_restore(uri: &str) -> String {
    let md = match checkpoint::read_metadata(uri) {
        Ok(md) => md,
        Err(e) => return format!("restored from {uri} (cannot read its metadata: {e})"),
    };
    let keyed: u64 = md
        .operators
        .iter()
        .filter(|o| !o.keyed_states.is_empty())
        .flat_map(|o| o.subtasks.iter())
        .map(|s| s.keyed_entries)
        .sum();
    let mut out = format!(
        "restored from {uri} (checkpoint {}): source offsets {}, {keyed} keys of keyed state",
        md.checkpoint_id,
        source_offsets(uri, &md)
    );
    for op in md.operators.iter().filter(|o| {
        o.subtasks
            .iter()
            .any(|s| s.keyed_entries > 0 || s.operator_state_items > 0)
    }) {
        let subs: Vec<String> = op
            .subtasks
            .iter()
            .map(|s| {
                format!(
                    "#{}: {} keyed entries, {} operator state items",
                    s.index, s.keyed_entries, s.operator_state_items
                )
            })
            .collect();
        out.push_str(&format!(
            "\n         operator '{}': {}",
            op.uid,
            subs.join("; ")
        ));
    }
    out
}

/// The generator's positions, decoded from its operator state: per subtask, the
/// next global event index it will emit.
fn source_offsets(uri: &str, md: &SnapshotMetadata) -> String {
    let fallback = || {
        md.operators
            .iter()
            .find(|o| o.uid == SOURCE)
            .map(|o| {
                let items: u64 = o.subtasks.iter().map(|s| s.operator_state_items).sum();
                format!("({items} operator state items)")
            })
            .unwrap_or_else(|| "(none recorded)".into())
    };
    let Ok(snap) = checkpoint::load_snapshot(uri) else {
        return fallback();
    };
    let Some(states) = snap.states.get(SOURCE) else {
        return fallback();
    };
    let mut parts = Vec::new();
    for (index, st) in states {
        for list in st.operator_states.iter().filter(|l| l.name == "position") {
            for item in &list.items {
                // Position = (parallelism, subtask, next local index).
                match postcard::from_bytes::<(u32, u32, u64)>(item) {
                    Ok((p, s, next)) if s == *index => parts.push(format!(
                        "subtask {s} at event {}",
                        next * p as u64 + s as u64
                    )),
                    Ok(_) => {}
                    Err(_) => return fallback(),
                }
            }
        }
    }
    if parts.is_empty() {
        return fallback();
    }
    parts.sort();
    format!("[{}]", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::expected_sum;

    #[test]
    fn expected_sum_matches_a_loop() {
        for n in [0u64, 1, 99, 100, 101, 250, 12_345] {
            let by_loop: u128 = (0..n).map(|i| (i % 100 + 1) as u128).sum();
            assert_eq!(expected_sum(n), by_loop, "n = {n}");
        }
    }
}
