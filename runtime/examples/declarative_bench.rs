//! Benchmark: a keyed tumbling-window count written once declaratively (YAML,
//! CEL, dynamic records) and once with the Rust API (typed tuples), same
//! source shape, same window operator, same exactly-once file sink.
//!
//! The declarative job runs twice: as built (the builder's typed forms apply:
//! the key field is a generated integer, the aggregate a count), and built
//! dynamic (`declarative::build_dynamic`), as a job whose types the builder
//! cannot know, e.g. one reading JSON from Kafka.
//!
//! cargo run --release -p runnel-runtime --example declarative_bench -- [RECORDS] [REPEAT] [ONLY]
//!
//! ONLY (`rust`, `declarative` or `dynamic`) runs one variant, for profiling
//! it alone (`perf record`).
//!
//! Besides records per second (wall clock), it prints the CPU time the process
//! spent per record (user + system, all threads): on a shared machine the wall
//! clock mostly measures the other processes, the CPU time much less so.

use std::time::{Duration, Instant};

// The allocator the `runnel` binary runs declarative jobs with.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use runnel_runtime::declarative::sinks::FileSink;
use runnel_runtime::declarative::{self, ConnectorRegistry, Value};
use runnel_runtime::sources::GeneratorSource;
use runnel_runtime::windows::{self, CountAggregator, WindowAssigner, WindowOptions};
use runnel_runtime::{JobConfig, StreamEnv, TimeDomain, WatermarkStrategy};

const KEYS: u64 = 1000;
const WINDOW_MS: i64 = 10_000;

fn declarative_run(n: u64, out: &std::path::Path, typed: bool) -> Duration {
    let yaml = format!(
        r#"
version: 1
name: bench-declarative
sources:
  - name: events
    generator:
      count: {n}
      keys: {KEYS}
      eventTime: {{ stepMs: 1 }}
      fields: {{ k: {{ key: {{}} }} }}
    watermark: {{}}
steps:
  - keyBy: "k"
  - name: counts
    window: {{ type: tumbling, size: {WINDOW_MS}ms, aggregates: {{ n: {{ op: count }} }} }}
sinks:
  - name: out
    file: {{ path: "{}" }}
"#,
        out.display()
    );
    let spec = runnel_spec::load_yaml(&yaml).expect("valid job");
    let job = if typed {
        declarative::build(&spec, &ConnectorRegistry::new())
    } else {
        declarative::build_dynamic(&spec, &ConnectorRegistry::new())
    }
    .expect("valid job");
    let t = Instant::now();
    job.execute().expect("job runs");
    t.elapsed()
}

fn rust_run(n: u64, out: &std::path::Path) -> Duration {
    let env = StreamEnv::new(JobConfig::new("bench-rust"));
    let wm = WatermarkStrategy::<(u64, i64)>::monotonous().with_timestamp_assigner(|v, _| v.1);
    let keyed = env
        .add_source_with_watermarks(
            "events",
            GeneratorSource::new(|i: u64| (i % KEYS, i as i64)).count(n),
            Some(wm),
        )
        .key_by(|v: &(u64, i64)| v.0);
    let w = windows::window(
        keyed,
        "counts",
        WindowOptions::new(
            WindowAssigner::Tumbling { size_ms: WINDOW_MS },
            TimeDomain::EventTime,
        ),
        CountAggregator,
    );
    drop(w.late);
    w.results
        .map(|(k, w, n)| {
            let w = w.unwrap_or(windows::TimeWindow::new(0, 0));
            declarative::value::record([
                ("key", Value::Int(k as i64)),
                ("windowStart", Value::Int(w.start)),
                ("windowEnd", Value::Int(w.end)),
                ("n", Value::Int(n as i64)),
            ])
        })
        .sink("out", FileSink::new(out.to_path_buf(), false));
    let t = Instant::now();
    env.execute().expect("job runs");
    t.elapsed()
}

/// User + system CPU time of the whole process so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct we pass.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Runs one variant: (records/s by wall clock, CPU ns per record).
fn measure(n: u64, run: impl FnOnce() -> Duration) -> (f64, f64) {
    let c0 = cpu_time();
    let wall = run();
    let cpu = cpu_time().saturating_sub(c0);
    (
        n as f64 / wall.as_secs_f64(),
        cpu.as_nanos() as f64 / n as f64,
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000_000);
    let repeat: usize = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let only = std::env::args().nth(3);
    const VARIANTS: [&str; 3] = ["rust", "declarative", "dynamic"];
    if let Some(o) = &only
        && !VARIANTS.contains(&o.as_str())
    {
        eprintln!("unknown variant '{o}' (expected rust, declarative or dynamic)");
        std::process::exit(2);
    }
    let runs: Vec<&str> = VARIANTS
        .into_iter()
        .filter(|v| only.as_deref().is_none_or(|o| o == *v))
        .collect();
    // Per variant: records/s and CPU ns per record, one entry per repeat.
    let mut results: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); runs.len()];
    for _ in 0..repeat {
        let dir = tempfile_dir();
        for (v, r) in runs.iter().zip(results.iter_mut()) {
            let out = dir.join(v);
            let (t, c) = measure(n, || match *v {
                "rust" => rust_run(n, &out),
                "declarative" => declarative_run(n, &out, true),
                _ => declarative_run(n, &out, false),
            });
            r.0.push(t);
            r.1.push(c);
        }
        for v in runs.iter().skip(1) {
            same_output(&dir.join(runs[0]), &dir.join(v));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    let medians: Vec<(f64, f64)> = results
        .into_iter()
        .map(|(t, c)| (median(t), median(c)))
        .collect();
    println!(
        "records: {n}, keys: {KEYS}, window: {WINDOW_MS} ms tumbling event time, repeat: {repeat} (medians)"
    );
    let label = |v: &str| match v {
        "rust" => "rust api:",
        "declarative" => "declarative:",
        _ => "dynamic:",
    };
    for (v, (t, c)) in runs.iter().zip(&medians) {
        println!(
            "{:<13}{t:>12.0} records/s  {c:>6.0} ns CPU/record",
            label(v)
        );
    }
    if runs.first() == Some(&"rust") {
        let (rt, rc) = medians[0];
        for (v, (t, c)) in runs.iter().zip(&medians).skip(1) {
            let what = if *v == "declarative" {
                "declarative overhead"
            } else {
                "dynamic overhead"
            };
            println!(
                "{what}: {:.1} % (throughput), {:.1} % (CPU per record)",
                (rt / t - 1.0) * 100.0,
                (c / rc - 1.0) * 100.0
            );
        }
    }
}

/// The comparison is only fair if both variants did the same work: checks
/// that they wrote the same window results (as sorted JSON lines; the file
/// names and the order across files differ) and stops the bench if not.
fn same_output(rust: &std::path::Path, decl: &std::path::Path) {
    let lines = |dir: &std::path::Path| -> Vec<String> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(dir).expect("bench output directory") {
            let path = e.expect("directory entry").path();
            let text = std::fs::read_to_string(&path).expect("bench output file");
            v.extend(text.lines().map(str::to_string));
        }
        v.sort();
        v
    };
    let (r, d) = (lines(rust), lines(decl));
    if r != d {
        eprintln!(
            "the variants wrote different results ({} and {} lines): not a fair comparison",
            r.len(),
            d.len()
        );
        std::process::exit(1);
    }
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("runnel-decl-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}
