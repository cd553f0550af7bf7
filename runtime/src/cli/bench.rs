//! `runnel bench`: keyed count and sum over many keys with events generated in
//! process, with checkpointing off and on, per parallelism. By default each
//! configuration runs in its own child process (`--single`), so that peak RSS
//! and CPU time are per configuration.

use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::sources::GeneratorSource;
use crate::state::keyed::{ValueState, ValueStateDescriptor};
use crate::{
    CheckpointListener, CheckpointMode, FnResult, InitContext, JobConfig, JobState, KeyedContext,
    KeyedProcessFunction, RestartStrategy, SnapshotKind, StreamEnv, UserError,
};
use anyhow::{Context, bail};
use clap::Args;
use serde::{Deserialize, Serialize};

use super::{file_uri, human_bytes};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Number of distinct keys.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    keys: u64,
    /// Events per run (the same for every configuration).
    #[arg(long, default_value_t = 20_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    events: u64,
    /// Parallelisms to run (source parallelism = keyed parallelism = p).
    #[arg(long, value_delimiter = ',', default_value = "1,2",
          value_parser = clap::value_parser!(u32).range(1..=128))]
    parallelism: Vec<u32>,
    /// Checkpoint interval of the runs with checkpointing on.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    checkpoint_interval_ms: u64,
    /// Runs of each configuration; the run with the median throughput is
    /// reported, with the range across runs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=50))]
    repeat: u32,
    /// Print machine-readable JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// Run one configuration in this process only: "P,on" or "P,off".
    #[arg(long, value_name = "P,on|off")]
    single: Option<String>,
    /// Another `runnel` binary (e.g. a build of the previous commit) to run
    /// alternately with this one, run for run, so that a before/after ratio
    /// comes from one invocation on a noisy machine.
    #[arg(long, value_name = "RUNNEL_BINARY", conflicts_with = "single")]
    compare: Option<PathBuf>,
}

/// Measurements of one configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunResult {
    pub parallelism: u32,
    pub checkpointing: bool,
    pub keys: u64,
    pub events: u64,
    pub wall_s: f64,
    pub events_per_s: f64,
    pub cpu_s: f64,
    pub cpu_s_per_million_events: f64,
    /// events / CPU seconds: throughput per fully used core.
    pub events_per_cpu_s: f64,
    pub checkpoints: usize,
    pub checkpoint_mean_ms: Option<f64>,
    pub checkpoint_mean_bytes: Option<f64>,
    /// Keyed entries in the last checkpoint (should equal min(keys, events)).
    pub last_checkpoint_keyed_entries: Option<u64>,
    pub peak_rss_bytes: Option<u64>,
    /// From the `execute_async` call to the first record in the keyed function.
    pub first_record_ms: Option<f64>,
    /// With `--repeat`: how many runs, and the throughput range across them.
    #[serde(default)]
    pub runs: u32,
    #[serde(default)]
    pub events_per_s_min: f64,
    #[serde(default)]
    pub events_per_s_max: f64,
}

#[derive(Debug, Serialize)]
struct Overhead {
    parallelism: u32,
    events_per_s_off: f64,
    events_per_s_on: f64,
    overhead_pct: f64,
    cpu_s_per_million_off: f64,
    cpu_s_per_million_on: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    keys: u64,
    events: u64,
    checkpoint_interval_ms: u64,
    cores: usize,
    runs: Vec<RunResult>,
    overhead: Vec<Overhead>,
}

/// Updates (count, sum) per key and emits nothing.
#[derive(Clone)]
struct CountSum {
    state: Option<ValueState<(u64, u64)>>,
    first: Arc<OnceLock<Instant>>,
    seen: bool,
}

impl CheckpointListener for CountSum {}

impl KeyedProcessFunction<u64, (u64, u64), ()> for CountSum {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_, u64>) -> FnResult {
        self.state = Some(ctx.value_state(&ValueStateDescriptor::new("count-sum"))?);
        Ok(())
    }

    fn process_element(&mut self, v: (u64, u64), ctx: &mut KeyedContext<'_, u64, ()>) -> FnResult {
        if !self.seen {
            self.seen = true;
            let _ = self.first.set(Instant::now());
        }
        let state = self
            .state
            .as_ref()
            .ok_or_else(|| UserError::msg("state not initialized"))?;
        // One hash probe for the read-modify-write (value + update would be two).
        state.update_with(ctx, |cur| {
            let (count, sum) = cur.copied().unwrap_or((0, 0));
            (count + 1, sum + v.1)
        })
    }
}

/// User plus system CPU time of this process, in seconds.
fn cpu_seconds() -> anyhow::Result<f64> {
    // SAFETY: getrusage only writes into the zero-initialized struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer to a rusage struct.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    if rc != 0 {
        bail!("getrusage failed: {}", std::io::Error::last_os_error());
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(tv(ru.ru_utime) + tv(ru.ru_stime))
}

/// Peak resident set size of this process (VmHWM), if the platform reports it.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn parse_single(s: &str) -> anyhow::Result<(u32, bool)> {
    let (p, mode) = s
        .split_once(',')
        .with_context(|| format!("--single expects P,on or P,off, got '{s}'"))?;
    let p: u32 = p
        .trim()
        .parse()
        .with_context(|| format!("--single: bad parallelism '{p}'"))?;
    if !(1..=128).contains(&p) {
        bail!("--single: parallelism must be between 1 and 128, got {p}");
    }
    let on = match mode.trim() {
        "on" => true,
        "off" => false,
        m => bail!("--single: expected 'on' or 'off' after the comma, got '{m}'"),
    };
    Ok((p, on))
}

/// Runs one configuration in this process.
fn run_single(
    p: u32,
    checkpointing: bool,
    keys: u64,
    events: u64,
    interval_ms: u64,
) -> anyhow::Result<RunResult> {
    let ckpt_dir: PathBuf =
        std::env::temp_dir().join(format!("runnel-bench-{}-p{p}", std::process::id()));
    let mut config = JobConfig::new(format!(
        "runnel-bench-p{p}-{}",
        if checkpointing { "on" } else { "off" }
    ));
    config.parallelism = p;
    config.restart = RestartStrategy::None;
    if checkpointing {
        std::fs::create_dir_all(&ckpt_dir)
            .with_context(|| format!("cannot create {}", ckpt_dir.display()))?;
        config.checkpoint.interval_ms = Some(interval_ms);
        config.checkpoint.mode = CheckpointMode::ExactlyOnce;
        config.checkpoint.retained = 1000;
        config.checkpoint.storage = Some(file_uri(&ckpt_dir)?);
    }
    let first: Arc<OnceLock<Instant>> = Arc::default();
    let env = StreamEnv::new(config);
    env.add_source(
        "generator",
        GeneratorSource::new(move |i: u64| (i.wrapping_mul(2_654_435_761) % keys, i % 100 + 1))
            .count(events),
    )
    .key_by(|e: &(u64, u64)| e.0)
    .process(
        "count-sum",
        CountSum {
            state: None,
            first: first.clone(),
            seen: false,
        },
    );

    let cpu0 = cpu_seconds()?;
    let t0 = Instant::now();
    let client = env
        .execute_async()
        .context("cannot start the benchmark job")?;
    let status = loop {
        let st = client.status();
        if matches!(
            st.state,
            JobState::Finished | JobState::Cancelled | JobState::Stopped | JobState::Failed
        ) {
            break st;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    client.wait().context("the benchmark job failed")?;
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds()? - cpu0;
    let peak = peak_rss_bytes();

    let chk: Vec<_> = status
        .completed
        .iter()
        .filter(|c| c.kind == SnapshotKind::Checkpoint)
        .collect();
    let mean = |f: &dyn Fn(&&crate::CompletedCheckpoint) -> f64| {
        (!chk.is_empty()).then(|| chk.iter().map(f).sum::<f64>() / chk.len() as f64)
    };
    let last_keyed = chk.last().and_then(|c| {
        crate::checkpoint::read_metadata(&c.path).ok().map(|md| {
            md.operators
                .iter()
                .flat_map(|o| o.subtasks.iter())
                .map(|s| s.keyed_entries)
                .sum()
        })
    });
    let result = RunResult {
        parallelism: p,
        checkpointing,
        keys,
        events,
        wall_s: wall,
        events_per_s: events as f64 / wall,
        cpu_s: cpu,
        cpu_s_per_million_events: cpu / (events as f64 / 1e6),
        events_per_cpu_s: events as f64 / cpu.max(1e-9),
        checkpoints: chk.len(),
        checkpoint_mean_ms: mean(&|c| c.duration_ms as f64),
        checkpoint_mean_bytes: mean(&|c| c.size_bytes as f64),
        last_checkpoint_keyed_entries: last_keyed,
        peak_rss_bytes: peak,
        first_record_ms: first
            .get()
            .map(|t| t.saturating_duration_since(t0).as_secs_f64() * 1e3),
        runs: 1,
        events_per_s_min: events as f64 / wall,
        events_per_s_max: events as f64 / wall,
    };
    if checkpointing && let Err(e) = std::fs::remove_dir_all(&ckpt_dir) {
        tracing::warn!(dir = %ckpt_dir.display(), error = %e, "could not remove the checkpoint directory");
    }
    Ok(result)
}

/// Runs one configuration in a child process of `exe` and parses its JSON.
fn run_child(
    exe: &std::path::Path,
    p: u32,
    checkpointing: bool,
    args: &BenchArgs,
) -> anyhow::Result<RunResult> {
    let single = format!("{p},{}", if checkpointing { "on" } else { "off" });
    let out = Command::new(exe)
        .args(["bench", "--json", "--single", &single])
        .args(["--keys", &args.keys.to_string()])
        .args(["--events", &args.events.to_string()])
        .args([
            "--checkpoint-interval-ms",
            &args.checkpoint_interval_ms.to_string(),
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", exe.display()))?;
    if !out.status.success() {
        bail!("benchmark run {single} failed ({})", out.status);
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("cannot parse the output of benchmark run {single}"))
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if let Some(s) = &args.single {
        let (p, on) = parse_single(s)?;
        let r = run_single(p, on, args.keys, args.events, args.checkpoint_interval_ms)?;
        if args.json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            print_tables(&[r], &[]);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut parallelisms = args.parallelism.clone();
    parallelisms.dedup();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let exe = std::env::current_exe().context("cannot find the runnel executable")?;
    let mut runs = Vec::new();
    let mut base_runs = Vec::new();
    for &p in &parallelisms {
        for on in [false, true] {
            if !args.json {
                eprintln!(
                    "running p={p}, checkpointing {} ({} events, {} keys)...",
                    if on { "on" } else { "off" },
                    args.events,
                    args.keys
                );
            }
            let mut reps = Vec::new();
            let mut base_reps = Vec::new();
            for _ in 0..args.repeat {
                reps.push(run_child(&exe, p, on, &args)?);
                if let Some(other) = &args.compare {
                    base_reps.push(run_child(other, p, on, &args)?);
                }
            }
            runs.push(median_of(reps, args.repeat)?);
            if args.compare.is_some() {
                base_runs.push(median_of(base_reps, args.repeat)?);
            }
        }
    }
    let overhead = overheads(&parallelisms, &runs);
    if args.compare.is_some() {
        let base_overhead = overheads(&parallelisms, &base_runs);
        if args.json {
            let report = serde_json::json!({
                "this": Report {
                    keys: args.keys,
                    events: args.events,
                    checkpoint_interval_ms: args.checkpoint_interval_ms,
                    cores,
                    runs,
                    overhead,
                },
                "baseline": Report {
                    keys: args.keys,
                    events: args.events,
                    checkpoint_interval_ms: args.checkpoint_interval_ms,
                    cores,
                    runs: base_runs,
                    overhead: base_overhead,
                },
            });
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            println!(
                "keyed count+sum: {} keys, {} events per run, heap state, checkpoint interval {} ms, \
                 {cores} cores, median of {} run(s) per configuration, runs of the two binaries \
                 alternating\n",
                args.keys, args.events, args.checkpoint_interval_ms, args.repeat
            );
            println!("this binary:\n");
            print_tables(&runs, &overhead);
            println!(
                "\nbaseline ({}):\n",
                args.compare
                    .as_deref()
                    .map_or_else(String::new, |p| p.display().to_string())
            );
            print_tables(&base_runs, &base_overhead);
            println!();
            print_ratios(&runs, &base_runs);
        }
        return Ok(ExitCode::SUCCESS);
    }
    if args.json {
        let report = Report {
            keys: args.keys,
            events: args.events,
            checkpoint_interval_ms: args.checkpoint_interval_ms,
            cores,
            runs,
            overhead,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "keyed count+sum: {} keys, {} events per run, heap state, checkpoint interval {} ms, \
             {cores} cores, median of {} run(s) per configuration\n",
            args.keys, args.events, args.checkpoint_interval_ms, args.repeat
        );
        print_tables(&runs, &overhead);
    }
    Ok(ExitCode::SUCCESS)
}

/// The run with the median throughput, annotated with the range across runs.
fn median_of(mut reps: Vec<RunResult>, repeat: u32) -> anyhow::Result<RunResult> {
    reps.sort_by(|a, b| a.events_per_s.total_cmp(&b.events_per_s));
    let (min, max) = match (reps.first(), reps.last()) {
        (Some(a), Some(b)) => (a.events_per_s, b.events_per_s),
        _ => bail!("no benchmark run completed"),
    };
    let mut median = reps.swap_remove(reps.len() / 2);
    median.runs = repeat;
    median.events_per_s_min = min;
    median.events_per_s_max = max;
    Ok(median)
}

fn overheads(parallelisms: &[u32], runs: &[RunResult]) -> Vec<Overhead> {
    parallelisms
        .iter()
        .filter_map(|&p| {
            let off = runs
                .iter()
                .find(|r| r.parallelism == p && !r.checkpointing)?;
            let on = runs
                .iter()
                .find(|r| r.parallelism == p && r.checkpointing)?;
            Some(Overhead {
                parallelism: p,
                events_per_s_off: off.events_per_s,
                events_per_s_on: on.events_per_s,
                overhead_pct: (off.events_per_s - on.events_per_s) / off.events_per_s * 100.0,
                cpu_s_per_million_off: off.cpu_s_per_million_events,
                cpu_s_per_million_on: on.cpu_s_per_million_events,
            })
        })
        .collect()
}

/// This binary against the baseline, configuration by configuration.
fn print_ratios(runs: &[RunResult], base: &[RunResult]) {
    println!(
        "| p | checkpoints | events/s this / baseline | events/s per core this / baseline \
         | mean ckpt ms this / baseline |"
    );
    println!("|---|---|---:|---:|---:|");
    for r in runs {
        let Some(b) = base
            .iter()
            .find(|b| b.parallelism == r.parallelism && b.checkpointing == r.checkpointing)
        else {
            continue;
        };
        let ckpt = match (r.checkpoint_mean_ms, b.checkpoint_mean_ms) {
            (Some(x), Some(y)) => format!("{x:.1} / {y:.1}"),
            _ => "-".to_string(),
        };
        println!(
            "| {} | {} | {:.3}x | {:.3}x | {} |",
            r.parallelism,
            if r.checkpointing { "on" } else { "off" },
            r.events_per_s / b.events_per_s,
            r.events_per_cpu_s / b.events_per_cpu_s,
            ckpt,
        );
    }
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "-".to_string(), f)
}

fn print_tables(runs: &[RunResult], overhead: &[Overhead]) {
    println!(
        "| p | checkpoints | wall s | events/s | events/s range (runs) | CPU s | CPU s / M events | events/s per core \
         | completed | mean ckpt ms | mean ckpt size | keys in last ckpt | peak RSS | first record ms |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in runs {
        println!(
            "| {} | {} | {:.2} | {:.0} | {:.0}-{:.0} ({}) | {:.2} | {:.3} | {:.0} | {} | {} | {} | {} | {} | {} |",
            r.parallelism,
            if r.checkpointing { "on" } else { "off" },
            r.wall_s,
            r.events_per_s,
            r.events_per_s_min,
            r.events_per_s_max,
            r.runs,
            r.cpu_s,
            r.cpu_s_per_million_events,
            r.events_per_cpu_s,
            r.checkpoints,
            opt(r.checkpoint_mean_ms, |v| format!("{v:.1}")),
            opt(r.checkpoint_mean_bytes, |v| human_bytes(v as u64)),
            r.last_checkpoint_keyed_entries
                .map_or_else(|| "-".to_string(), |n| n.to_string()),
            opt(r.peak_rss_bytes.map(|b| b as f64), |v| human_bytes(
                v as u64
            )),
            opt(r.first_record_ms, |v| format!("{v:.1}")),
        );
    }
    if overhead.is_empty() {
        return;
    }
    let base = overhead.first().map(|o| o.events_per_s_off);
    println!();
    println!(
        "| p | events/s off | events/s on | checkpoint overhead | CPU s/M off | CPU s/M on \
         | CPU on/off | speed-up vs p={} (off) |",
        overhead.first().map_or(1, |o| o.parallelism)
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for o in overhead {
        println!(
            "| {} | {:.0} | {:.0} | {:.1} % | {:.3} | {:.3} | {:.2}x | {} |",
            o.parallelism,
            o.events_per_s_off,
            o.events_per_s_on,
            o.overhead_pct,
            o.cpu_s_per_million_off,
            o.cpu_s_per_million_on,
            o.cpu_s_per_million_on / o.cpu_s_per_million_off,
            opt(base, |b| format!("{:.2}x", o.events_per_s_off / b)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::parse_single;

    #[test]
    fn single_configurations_parse_and_bad_ones_are_rejected() {
        assert_eq!(parse_single("1,on").unwrap(), (1, true));
        assert_eq!(parse_single("2, off").unwrap(), (2, false));
        for bad in ["", "1", "0,on", "x,on", "1,maybe", "200,off"] {
            assert!(parse_single(bad).is_err(), "{bad}");
        }
    }
}
