//! A custom Rust operator registered by name, configured from the spec, keyed
//! and stateful; bad configuration is reported with the step's path.

#[path = "../examples/custom_operator.rs"]
#[allow(dead_code)]
mod custom_operator;

use runnel_runtime::declarative::{self, read_published};
use serde_json::json;

#[test]
fn a_registered_operator_runs_with_its_config() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        r#"
version: 1
name: totals
sources:
  - name: sales
    elements:
      - {{ shop: "a", amount: 5 }}
      - {{ shop: "b", amount: 7 }}
      - {{ shop: "a", amount: 10 }}
steps:
  - keyBy: "shop"
  - name: totals
    operator: {{ name: running-total, config: {{ field: amount, into: sum }} }}
sinks:
  - name: out
    file: {{ path: "{}" }}
"#,
        dir.path().display()
    );
    let job = declarative::load_and_build(&yaml, &custom_operator::registry()).unwrap();
    job.execute().unwrap();
    let mut out = read_published(dir.path()).unwrap();
    out.sort_by_key(|v| v.to_string());
    assert_eq!(
        out,
        vec![
            json!({"amount": 10, "shop": "a", "sum": 15}),
            json!({"amount": 5, "shop": "a", "sum": 5}),
            json!({"amount": 7, "shop": "b", "sum": 7}),
        ]
    );
}

#[test]
fn bad_operator_config_is_reported_with_its_path() {
    let yaml = r#"
version: 1
name: totals
sources:
  - name: sales
    elements: [{ shop: "a", amount: 5 }]
steps:
  - operator: { name: running-total, config: { into: x } }
sinks:
  - name: out
    stdout: {}
"#;
    let e = match declarative::load_and_build(yaml, &custom_operator::registry()) {
        Ok(_) => panic!("must be refused"),
        Err(e) => e,
    };
    assert_eq!(e.len(), 1);
    assert_eq!(
        e[0].to_string(),
        "steps[0].operator.config: config.field (string) is required"
    );
}

/// The example custom runtime binary (`examples/custom_runnel.rs`), built
/// next to `runnel` by `cargo test`.
fn custom_runnel() -> std::path::PathBuf {
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_runnel"));
    let p = exe
        .parent()
        .expect("target dir")
        .join("examples")
        .join("custom_runnel");
    assert!(
        p.exists(),
        "example custom_runnel is not built: cargo build -p runnel-runtime --examples ({})",
        p.display()
    );
    p
}

/// Runs `custom_runnel ARGS` to completion and returns its stdout.
fn custom(args: &[&str]) -> String {
    let o = std::process::Command::new(custom_runnel())
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "custom_runnel {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// Starts `custom_runnel run ...` as the operator's pod does and returns it
/// with its control URL (the first line on stdout).
fn start_custom(args: &[&str]) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(custom_runnel())
        .arg("run")
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let url = line
        .trim()
        .strip_prefix("control API: ")
        .unwrap_or_else(|| panic!("unexpected first line: {line}"))
        .to_string();
    // Keep draining stdout so the job never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    (child, url)
}

fn wait_status(url: &str, what: &str, f: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let s: serde_json::Value =
            serde_json::from_str(&custom(&["status", "--json", url])).unwrap();
        if f(&s) {
            return s;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: {s}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A custom runtime binary takes the commands and flags the operator's pods
/// and disposal Jobs use: `run` with the control API, `--parallelism`,
/// `--savepoint-dir`, `--linger`, `--from-latest-checkpoint`; `stop`;
/// `savepoint dispose`. The user operator's keyed state survives the stop and
/// the restore, and the exactly-once output holds every record once.
#[test]
fn a_custom_runtime_binary_takes_the_operators_pod_commands() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().display().to_string();
    let job = tmp.path().join("job.yaml");
    std::fs::write(
        &job,
        format!(
            r#"
version: 1
name: custom
checkpoint: {{ interval: 200ms, storage: "file://{dir}/chk" }}
sources:
  - name: sales
    parallelism: 1
    generator: {{ ratePerSecond: 2000, keys: 5, fields: {{ shop: {{ key: {{ prefix: "s" }} }}, amount: {{ sequence: {{ start: 1 }} }} }} }}
steps:
  - keyBy: "shop"
  - name: totals
    operator: {{ name: running-total, config: {{ field: amount, into: sum }} }}
sinks:
  - name: out
    file: {{ path: "{dir}/out" }}
"#
        ),
    )
    .unwrap();
    let job = job.to_str().unwrap();
    let sp_dir = format!("file://{dir}/sp");
    let pod = |restore: &[&'static str]| {
        let mut a = vec![
            job.to_string(),
            "--control-addr".into(),
            "127.0.0.1:0".into(),
            "--linger".into(),
            "30s".into(),
            "--parallelism".into(),
            "2".into(),
            "--savepoint-dir".into(),
            sp_dir.clone(),
        ];
        a.extend(restore.iter().map(|s| s.to_string()));
        a
    };
    let args = pod(&[]);
    let (mut child, url) = start_custom(&args.iter().map(String::as_str).collect::<Vec<_>>());
    wait_status(&url, "a checkpoint", |s| !s["lastCheckpoint"].is_null());
    let sp1 = custom(&["stop", &url]);
    assert!(sp1.starts_with(&format!("{sp_dir}/savepoint-")), "{sp1}");
    assert!(child.wait().unwrap().success());

    let args = pod(&["--from-latest-checkpoint"]);
    let (mut child, url) = start_custom(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let s = wait_status(&url, "running from the savepoint", |s| {
        s["state"] == "RUNNING"
    });
    assert_eq!(s["restoredFrom"], serde_json::json!(sp1));
    wait_status(&url, "a checkpoint after the restore", |s| {
        s["lastCheckpoint"]["id"].as_u64().is_some_and(|id| {
            id > sp1
                .rsplit("savepoint-")
                .next()
                .and_then(|x| x.split('-').next())
                .and_then(|x| x.parse::<u64>().ok())
                .unwrap_or(u64::MAX)
        })
    });
    let sp2 = custom(&["stop", &url]);
    assert!(child.wait().unwrap().success());

    // Every amount once, and per shop the totals run on across the restore:
    // sorted by total, each is the previous plus the record's amount.
    let out = read_published(&tmp.path().join("out")).unwrap();
    let mut amounts: Vec<i64> = out.iter().map(|v| v["amount"].as_i64().unwrap()).collect();
    amounts.sort_unstable();
    let n = amounts.len() as i64;
    assert_eq!(
        amounts,
        (1..=n).collect::<Vec<_>>(),
        "lost or duplicated records"
    );
    let mut by_shop: std::collections::BTreeMap<String, Vec<(i64, i64)>> = Default::default();
    for v in &out {
        by_shop
            .entry(v["shop"].as_str().unwrap().to_string())
            .or_default()
            .push((v["sum"].as_i64().unwrap(), v["amount"].as_i64().unwrap()));
    }
    assert_eq!(by_shop.len(), 5);
    for (shop, mut rows) in by_shop {
        rows.sort_unstable();
        let mut total = 0;
        for (sum, amount) in rows {
            total += amount;
            assert_eq!(sum, total, "shop {shop}: the running total restarted");
        }
    }

    // The disposal Job's command.
    let disposed = custom(&["savepoint", "dispose", &sp2]);
    assert!(disposed.starts_with("disposed"), "{disposed}");
    assert!(runnel_runtime::checkpoint::read_metadata(&sp2).is_err());
}
