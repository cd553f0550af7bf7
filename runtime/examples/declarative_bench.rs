//! Benchmark: a keyed tumbling-window count written once declaratively (YAML,
//! CEL, dynamic records) and once with the Rust API (typed tuples), same
//! source shape, same window operator, same exactly-once file sink.
//!
//! cargo run --release -p runnel-runtime --example declarative_bench -- [RECORDS] [REPEAT] [ONLY]
//!
//! ONLY (`rust` or `declarative`) runs one variant, for profiling it alone
//! (`perf record -g`).
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

fn declarative_run(n: u64, out: &std::path::Path) -> Duration {
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
    let job = declarative::load_and_build(&yaml, &ConnectorRegistry::new()).expect("valid job");
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
    let (run_rust, run_decl) = match only.as_deref() {
        None => (true, true),
        Some("rust") => (true, false),
        Some("declarative") => (false, true),
        Some(other) => {
            eprintln!("unknown variant '{other}' (expected rust or declarative)");
            std::process::exit(2);
        }
    };
    let (mut d, mut r, mut dc, mut rc) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..repeat {
        let dir = tempfile_dir();
        if run_rust {
            let (t, c) = measure(n, || rust_run(n, &dir.join("rust")));
            r.push(t);
            rc.push(c);
        }
        if run_decl {
            let (t, c) = measure(n, || declarative_run(n, &dir.join("decl")));
            d.push(t);
            dc.push(c);
        }
        if run_rust && run_decl {
            same_output(&dir.join("rust"), &dir.join("decl"));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    if !(run_rust && run_decl) {
        let (name, v, c) = if run_rust {
            ("rust api", r, rc)
        } else {
            ("declarative", d, dc)
        };
        println!(
            "{name}: {:>12.0} records/s, {:.0} ns CPU/record (medians of {repeat})",
            median(v),
            median(c)
        );
        return;
    }
    let (rm, dm) = (median(r), median(d));
    let (rcm, dcm) = (median(rc), median(dc));
    println!(
        "records: {n}, keys: {KEYS}, window: {WINDOW_MS} ms tumbling event time, repeat: {repeat} (medians)"
    );
    println!("rust api:    {rm:>12.0} records/s  {rcm:>6.0} ns CPU/record");
    println!("declarative: {dm:>12.0} records/s  {dcm:>6.0} ns CPU/record");
    println!(
        "declarative overhead: {:.1} % (throughput), {:.1} % (CPU per record)",
        (rm / dm - 1.0) * 100.0,
        (dcm / rcm - 1.0) * 100.0
    );
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
