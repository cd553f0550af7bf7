//! Declarative steps that run on processing time: processing-time windows,
//! `dedup` forgetting a key after its TTL, and a window's `stateTtl`. They
//! run on the real clock over rate-limited generators; what they assert
//! holds for any timing (bounds are taken from the measured run time), and
//! each would fail if the time-driven behaviour were missing.

use std::time::Instant;

use runnel_runtime::declarative::{self, ConnectorRegistry, read_published};
use serde_json::Value;

/// Runs a job whose file sink writes to `{out}`; the published records and
/// the run's wall time in milliseconds.
fn run(yaml: &str) -> (Vec<Value>, u128) {
    let dir = tempfile::tempdir().unwrap();
    let yaml = yaml.replace("{out}", &dir.path().join("out").display().to_string());
    let job = declarative::load_and_build(&yaml, &ConnectorRegistry::new())
        .unwrap_or_else(|e| panic!("{}", runnel_spec::format_errors(&e)));
    let t0 = Instant::now();
    job.execute().unwrap();
    let ms = t0.elapsed().as_millis();
    (read_published(&dir.path().join("out")).unwrap(), ms)
}

#[test]
fn processing_time_windows_fire_while_the_job_runs_aligned_to_their_size() {
    let (out, ms) = run(r#"
version: 1
name: ptime
parallelism: 1
sources:
  - name: numbers
    generator:
      count: 1500
      ratePerSecond: 1000
      keys: 3
      fields:
        k: { key: { prefix: "k" } }
steps:
  - keyBy: "k"
  - name: per-200ms
    window:
      type: tumbling
      size: 200ms
      time: processing
      aggregates:
        n: { op: count }
sinks:
  - name: out
    file: { path: "{out}" }
"#);
    // 1.5 s of input in 200 ms windows: many windows per key, each aligned
    // to the epoch and exactly 200 ms long, none counted twice.
    let mut starts: Vec<(String, i64)> = vec![];
    for w in &out {
        let (s, e) = (
            w["windowStart"].as_i64().unwrap(),
            w["windowEnd"].as_i64().unwrap(),
        );
        assert_eq!(e - s, 200, "{w}");
        assert_eq!(s % 200, 0, "{w}");
        starts.push((w["key"].as_str().unwrap().to_string(), s));
    }
    let n = starts.len();
    starts.sort();
    starts.dedup();
    assert_eq!(starts.len(), n, "a window fired twice: {out:?}");
    let per_key = starts.iter().filter(|(k, _)| k == "k0").count();
    assert!(
        per_key >= 4,
        "processing-time windows fire as time passes ({per_key} for k0 in {ms} ms): {out:?}"
    );
    let total: i64 = out.iter().map(|w| w["n"].as_i64().unwrap()).sum();
    assert!(
        (1000..=1500).contains(&total),
        "{total} of 1500 in fired windows"
    );
    // Window ends are wall-clock times within the run.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    for (_, s) in &starts {
        assert!(
            *s <= now && *s >= now - ms as i64 - 1_000,
            "{s} vs now {now}"
        );
    }
}

#[test]
fn dedup_forgets_a_key_after_its_ttl() {
    let (out, ms) = run(r#"
version: 1
name: dedup-ttl
parallelism: 1
sources:
  - name: events
    generator:
      count: 150
      ratePerSecond: 100
      keys: 1
      fields:
        k: { key: {} }
        n: { sequence: {} }
steps:
  - dedup: { key: "k", ttl: 300ms }
sinks:
  - name: out
    file: { path: "{out}" }
"#);
    // One key for 1.5 s: without expiry only the first record passes; with a
    // 300 ms TTL one passes per TTL period at most.
    let mut ns: Vec<i64> = out.iter().map(|r| r["n"].as_i64().unwrap()).collect();
    ns.sort_unstable();
    assert_eq!(ns[0], 0, "the first record passes");
    assert!(
        ns.len() >= 3,
        "the key was forgotten after 300 ms: {ns:?} in {ms} ms"
    );
    assert!(
        ns.len() as u128 <= ms / 300 + 1,
        "at most one per TTL period: {ns:?} in {ms} ms"
    );
    // A record passes only once its predecessor's TTL is over: at 100 per
    // second that is at least ~30 records later.
    for w in ns.windows(2) {
        assert!(w[1] - w[0] >= 20, "{ns:?}");
    }
}

#[test]
fn a_window_state_ttl_drops_a_partial_window_that_waited_too_long() {
    // Count windows of 2 per key; key k1 gets one record every ~400 ms (one
    // in 40 at 100/s), so with a 150 ms state TTL its half-full window has
    // always expired when the next one comes, and it never fires. Key k0
    // gets the other 39 in 40, far inside the TTL, and fires normally.
    let (out, ms) = run(r#"
version: 1
name: window-ttl
parallelism: 1
sources:
  - name: events
    generator:
      count: 400
      ratePerSecond: 100
      fields:
        n: { sequence: {} }
steps:
  - map: { fields: { n: "n", k: "n % 40 == 39 ? 'k1' : 'k0'" } }
  - keyBy: "k"
  - name: pairs
    window:
      type: count
      count: 2
      stateTtl: { ttl: 150ms }
      aggregates:
        c: { op: count }
sinks:
  - name: out
    file: { path: "{out}" }
"#);
    let fired = |k: &str| out.iter().filter(|w| w["key"] == k).count();
    assert!(ms >= 3_500, "rate-limited input takes ~4 s, took {ms} ms");
    assert_eq!(fired("k1"), 0, "k1's lone records expired: {out:?}");
    assert!(fired("k0") >= 150, "k0 fires as usual: {out:?}");
}
