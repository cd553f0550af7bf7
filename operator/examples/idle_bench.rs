//! Benchmark: the operator's RSS and CPU while N StreamJobs reconcile idle.
//!
//! The real controller (`controller::run`, kube-runtime watchers, reconcile,
//! control-API client) runs in this process against a small in-process
//! Kubernetes API (lists and never-ending watches for StreamJobs and pods,
//! per-job pod lists, status patches, Events). Every job's pod points at one
//! real `runnel run` process, so each idle reconcile makes its real
//! control-API calls. RSS and CPU are this process's (the API stand-in is a
//! few hundred lines of routing and adds little); the runtime's are not.
//!
//! ```sh
//! cargo build -p runnel-runtime --bin runnel
//! cargo run --release -p runnel-operator --example idle_bench -- 100 90
//! ```

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use kube::client::Body;
use runnel_operator::controller::{self, Context};
use runnel_operator::crd::{
    DeploymentRecord, LifecycleState, Restore, StreamJob, StreamJobSpec, StreamJobStatus,
};
use runnel_operator::metrics::{Metrics, ResultLabel};
use serde_json::{Value, json};

type RespBody = BoxBody<Bytes, Infallible>;

fn full(v: &Value) -> RespBody {
    Full::new(Bytes::from(serde_json::to_vec(v).unwrap_or_default())).boxed()
}

fn never() -> RespBody {
    StreamBody::new(futures::stream::pending::<
        Result<http_body::Frame<Bytes>, Infallible>,
    >())
    .boxed()
}

fn spec(dir: &str) -> StreamJobSpec {
    serde_json::from_value(json!({
        "image": "runnel:bench",
        "job": {
            "version": 1, "name": "idle",
            "sources": [{ "name": "n", "generator": { "ratePerSecond": 10, "fields": { "n": { "sequence": {} } } } }],
            "sinks": [{ "name": "out", "file": { "path": format!("{dir}/out") } }]
        },
        "checkpointing": { "interval": "1s", "storage": format!("file://{dir}/chk") },
        "savepoints": { "directory": format!("file://{dir}/sp") }
    }))
    .unwrap_or_else(|e| panic!("bench spec: {e}"))
}

fn job(i: usize, spec: &StreamJobSpec) -> Value {
    let mut sj = StreamJob::new(&format!("job-{i}"), spec.clone());
    sj.metadata.namespace = Some("bench".into());
    sj.metadata.uid = Some(format!("uid-{i}"));
    sj.metadata.generation = Some(1);
    sj.metadata.resource_version = Some("1".into());
    sj.status = Some(StreamJobStatus {
        lifecycle_state: LifecycleState::Running,
        observed_generation: Some(1),
        last_reconciled_spec: serde_json::to_string(spec).ok(),
        deployment: Some(DeploymentRecord {
            deploy_id: 1,
            spec_generation: 1,
            restore: Restore::Empty,
            started_ms: 0,
            rollback: false,
            stable: true,
        }),
        ..Default::default()
    });
    serde_json::to_value(&sj).unwrap_or_default()
}

fn pod(job: &str) -> Value {
    json!({"apiVersion":"v1","kind":"Pod",
           "metadata":{"name":format!("{job}-1"),"namespace":"bench","resourceVersion":"1",
             "labels":{"runnel.dev/job":job,"runnel.dev/deploy-id":"1",
                       "app.kubernetes.io/managed-by":"runnel-operator"}},
           "status":{"phase":"Running","podIP":"127.0.0.1"}})
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion":"v1","kind":kind,"metadata":{"resourceVersion":"1"},"items":items})
}

/// The API stand-in.
fn api(jobs: Arc<Vec<Value>>) -> kube::Client {
    let svc = tower::service_fn(move |req: Request<Body>| {
        let jobs = jobs.clone();
        async move {
            let path = req.uri().path().to_string();
            let query = req.uri().query().unwrap_or("").to_string();
            let watch = query.contains("watch=true");
            let body = match (req.method().as_str(), path.as_str()) {
                (_, _) if watch => never(),
                ("GET", "/apis/runnel.dev/v1alpha1/streamjobs") => {
                    full(&list("StreamJobList", jobs.to_vec()))
                }
                ("GET", "/api/v1/pods") => full(&list(
                    "PodList",
                    (0..jobs.len()).map(|i| pod(&format!("job-{i}"))).collect(),
                )),
                ("GET", "/api/v1/namespaces/bench/pods") => {
                    let job = query
                        .split('&')
                        .find_map(|kv| kv.strip_prefix("labelSelector=runnel.dev%2Fjob%3D"))
                        .unwrap_or("");
                    full(&list("PodList", vec![pod(job)]))
                }
                ("GET", "/apis/batch/v1/namespaces/bench/jobs") => full(&list("JobList", vec![])),
                ("PATCH", p) if p.starts_with("/apis/runnel.dev/") => {
                    let name = p.split('/').nth(7).unwrap_or("");
                    let i: usize = name.trim_start_matches("job-").parse().unwrap_or(0);
                    full(&jobs[i.min(jobs.len() - 1)])
                }
                ("POST", p) if p.contains("/events") => {
                    let b = req.into_body().collect_bytes().await.unwrap_or_default();
                    Full::new(b).boxed()
                }
                _ => {
                    full(&json!({"kind":"Status","apiVersion":"v1","status":"Failure","code":404}))
                }
            };
            Ok::<_, Infallible>(
                Response::builder()
                    .status(200)
                    .body(body)
                    .unwrap_or_default(),
            )
        }
    });
    kube::Client::new(svc, "bench")
}

fn proc_stats() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rss_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (rss_kib / 1024.0, ticks / 100.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100);
    let secs: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(90);
    let dir = std::env::temp_dir().join(format!("runnel-idle-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_default();
    let d = dir.to_string_lossy().to_string();
    let spec = spec(&d);
    let job_file = dir.join("job.yaml");
    std::fs::write(
        &job_file,
        serde_yaml::to_string(&spec.job).unwrap_or_default(),
    )
    .unwrap_or_default();
    let bin = std::env::var("RUNNEL_BIN").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../target/debug/runnel").to_string()
    });
    let mut child = Command::new(&bin)
        .args([
            "run",
            &job_file.to_string_lossy(),
            "--control-addr",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start {bin}: {e} (cargo build -p runnel-runtime --bin runnel)")
        });
    let mut line = String::new();
    // Keep the pipe open for the runtime's lifetime (it prints on exit).
    let mut out = child.stdout.take().map(BufReader::new);
    if let Some(o) = out.as_mut() {
        o.read_line(&mut line).unwrap_or_default();
    }
    let port: u16 = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);

    let jobs = Arc::new((0..n).map(|i| job(i, &spec)).collect::<Vec<_>>());
    let client = api(jobs);
    let metrics = Arc::new(Metrics::new());
    let mut ctx = Context::new(client, metrics.clone(), "bench".into());
    ctx.control_port = port;
    let ctx = Arc::new(ctx);
    tokio::spawn(controller::run(ctx, None));

    let reconciles = |m: &Metrics| {
        // One statement per lookup: get_or_create's read guard lives to the
        // end of the statement, and a second (inserting) lookup in the same
        // statement would deadlock on the family's lock.
        let ok = m
            .reconciles
            .get_or_create(&ResultLabel {
                result: "ok".into(),
            })
            .get();
        let err = m
            .reconciles
            .get_or_create(&ResultLabel {
                result: "error".into(),
            })
            .get();
        ok + err
    };
    eprintln!("runtime control port {port}; warming up");
    tokio::time::sleep(Duration::from_secs(10)).await; // first round for every job
    eprintln!("measuring for {secs} s");
    let (rss0, cpu0) = proc_stats();
    let r0 = reconciles(&metrics);
    let t0 = Instant::now();
    let mut peak = rss0;
    while t0.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        peak = peak.max(proc_stats().0);
    }
    let (rss1, cpu1) = proc_stats();
    let wall = t0.elapsed().as_secs_f64();
    let r1 = reconciles(&metrics);
    let errors = metrics
        .reconciles
        .get_or_create(&ResultLabel {
            result: "error".into(),
        })
        .get();
    println!("jobs                     {n}");
    println!("window                   {wall:.0} s");
    println!("reconciles in warm-up    {r0}");
    println!(
        "reconciles in window     {} ({errors} errors in total)",
        r1 - r0
    );
    println!("RSS start / end / peak   {rss0:.1} / {rss1:.1} / {peak:.1} MiB");
    println!(
        "CPU                      {:.2} s = {:.2} % of one core",
        cpu1 - cpu0,
        (cpu1 - cpu0) / wall * 100.0
    );
    let _ = child.kill();
    let _ = child.wait();
    drop(out);
    let _ = std::fs::remove_dir_all(&dir);
}
