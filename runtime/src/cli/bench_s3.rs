//! `runnel bench s3`: checkpoint upload throughput and restore time for keyed
//! state on an S3 server, compared in the same run with a plain upload and
//! download of the same number of bytes through the same client.
//!
//! The checkpoint side uses the runtime's own code paths: state files are
//! encoded and streamed with `format::write_state_file` into the storage's
//! object writer (what the uploader thread does), `_metadata` is committed with
//! a conditional create, and the restore is what a job does before its tasks
//! start: `checkpoint::load_snapshot` (stream, checksum and decode every state
//! file, a few files at a time), then the key groups handed to each subtask
//! (`redistribute::assign`, parallelism unchanged). It stops there: turning
//! the restored bytes into typed entries happens per state on each task
//! thread as the job registers its states, and depends on the job's types.
//! Dropping the restored state is not timed.
//!
//! The plain side writes and reads the same byte count through the same
//! client, `ObjectWriter` and reader without encoding, under the same
//! conditions: same part size and parts in flight, uploads one file after
//! another (as on the single uploader thread), downloads as many files at once
//! as the restore fetches. So the ratio is what the snapshot format costs on top
//! of the transfer itself. Each round runs both sides; odd rounds upload the
//! plain side first, and downloads rotate their order, so that an order effect
//! does not always favour one side.
//!
//! The plain download is timed twice: dropping the bytes (the transfer alone)
//! and keeping each file in its own buffer (the fresh memory that a restored
//! state needs too; on VMs whose free memory goes back to the host, faulting
//! that in is a large part of a restore).
//!
//! Without `--uri` it starts `moto_server` on a free loopback port.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::checkpoint::format::{
    Entries, FORMAT_NAME, FORMAT_VERSION, KeyGroupData, KeyedStateMeta, METADATA_FILE,
    OperatorMeta, SnapshotMetadata, SubtaskMeta, SubtaskState, TableData,
};
use crate::checkpoint::{self, format};
use crate::state::keyed::KeyedBackend;
use crate::storage::{self, CheckpointStorage};
use anyhow::{Context, bail};
use clap::Args;
use serde::Serialize;
use serde_bytes::ByteBuf;

use super::human_bytes;

#[derive(Args, Debug)]
pub struct BenchS3Args {
    /// Target directory, e.g. `s3://bucket/bench?endpoint=http://127.0.0.1:9000&path_style=true`.
    /// Without it, a moto_server is started on loopback.
    #[arg(long)]
    uri: Option<String>,
    /// Keyed state size in MiB (entry keys and values).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    size_mib: u64,
    /// Bytes per state value (keys are 16 bytes).
    #[arg(long, default_value_t = 1008, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    value_bytes: u64,
    /// State files (subtasks) the state is split into.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=128))]
    files: u32,
    /// Rounds of (upload, download) pairs; odd rounds run the plain side
    /// first. Each round reports its own ratios.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=10))]
    rounds: u32,
    /// Print machine-readable JSON.
    #[arg(long)]
    json: bool,
    /// Run the download-side steps in this process instead of one child
    /// process each (for `perf record -p`); later steps then reuse memory
    /// that earlier ones freed.
    #[arg(long)]
    in_process: bool,
    /// Internal: run one step against `--uri` and print its result as JSON.
    #[arg(long, hide = true, requires_all = ["uri", "step_dir"])]
    step: Option<Step>,
    #[arg(long, hide = true)]
    step_dir: Option<String>,
    #[arg(long, hide = true, value_delimiter = ',')]
    step_files: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Report {
    uri: String,
    state_bytes: u64,
    files: u32,
    /// Files fetched at once, by the restore and by the plain download alike.
    concurrent_downloads: u32,
    rounds: Vec<Round>,
}

#[derive(Debug, Serialize)]
struct Round {
    round: u32,
    plain_first: bool,
    file_bytes: u64,
    plain_upload_s: f64,
    plain_upload_mib_s: f64,
    checkpoint_upload_s: f64,
    checkpoint_upload_mib_s: f64,
    upload_ratio: f64,
    /// The transfer alone: each file read into one reused buffer and dropped.
    plain_download: StepResult,
    plain_download_mib_s: f64,
    /// The same download, each file read into one buffer that is kept until
    /// the end of the step, as `get_object` + `collect` would: it pays for the
    /// fresh memory that a restore's state also needs.
    kept_download: StepResult,
    kept_download_mib_s: f64,
    /// The same download written to local files (page cache): the least a
    /// restore that keeps state on local disk does.
    disk_download: StepResult,
    disk_download_mib_s: f64,
    /// `load_snapshot` and the hand-out of key groups to subtasks.
    restore: StepResult,
    restore_mib_s: f64,
    restore_ratio: f64,
    /// `kept_download.seconds / restore.seconds`.
    restore_vs_kept_ratio: f64,
    /// The restore and then each task's decoding of its entries into its
    /// typed state table: a whole job restore before the first record.
    typed_restore: StepResult,
    typed_restore_mib_s: f64,
    typed_restore_ratio: f64,
    /// Faulting in as many bytes of fresh memory as the files hold, alone
    /// (one write per 4 KiB page): the floor under a restore that holds the
    /// state in memory, on top of the transfer.
    fresh_memory_s: f64,
}

/// The download-side steps of a round. Each runs in a child process of its
/// own unless `--in-process`: a step in a process that has freed memory
/// before reuses those pages instead of faulting fresh ones in, and on VMs
/// where a fault is expensive that alone swung a restore by ±30 %. A pod
/// that restores is a fresh process too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Step {
    Restore,
    Typed,
    Plain,
    Kept,
    Disk,
    Touch,
}

impl Step {
    const ALL: [Step; 6] = [
        Step::Restore,
        Step::Typed,
        Step::Plain,
        Step::Kept,
        Step::Disk,
        Step::Touch,
    ];

    fn describe(self) -> &'static str {
        match self {
            Step::Restore => "restore",
            Step::Typed => "restore into typed state",
            Step::Plain => "plain download",
            Step::Kept => "plain download, kept in memory",
            Step::Disk => "plain download to local disk",
            Step::Touch => "touch of fresh memory",
        }
    }
}

/// What one step measured.
#[derive(Debug, Default, Clone, Copy, Serialize, serde::Deserialize)]
struct StepResult {
    seconds: f64,
    /// CPU of the process that ran the step.
    cpu_s: f64,
    /// CPU of the local server meanwhile (0 with `--uri`).
    server_cpu_s: f64,
    /// Most resident memory the step's process gained while it ran.
    peak_rss_growth: u64,
    /// Entries restored or bytes downloaded, checked by the parent.
    count: u64,
}

/// A moto_server child, killed on drop.
struct LocalS3(Child);

impl Drop for LocalS3 {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_moto() -> anyhow::Result<(LocalS3, String)> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start moto_server (pip install \"moto[server]\"), or pass --uri")?;
    SERVER_PID.store(child.id(), Ordering::Relaxed);
    let guard = LocalS3(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    // Ready when it creates the bucket (moto does not check signatures, so a
    // bare HTTP request does).
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            write!(
                s,
                "PUT /runnel-bench HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )?;
            let mut resp = String::new();
            let _ = s.read_to_string(&mut resp);
            if resp.starts_with("HTTP/1.1 200") {
                break;
            }
        }
        if Instant::now() > deadline {
            bail!("moto_server did not answer within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok((
        guard,
        format!(
            "s3://runnel-bench/bench?endpoint=http://127.0.0.1:{port}&region=us-east-1&path_style=true"
        ),
    ))
}

/// Key groups per state file.
const KEY_GROUPS: u64 = 32;

/// Max parallelism of the bench job: enough key groups for every file's own.
fn max_parallelism(files: usize) -> u32 {
    (files as u32 * KEY_GROUPS as u32).max(128)
}

/// A stored value of exactly `value_bytes` bytes that decodes as a
/// `ValueState<ByteBuf>` entry (postcard: a varint length, then the bytes),
/// so that the typed restore can decode it as a job would.
fn value_of(i: u64, value_bytes: u64) -> Vec<u8> {
    let varint_len = |n: u64| (64 - n.max(1).leading_zeros() as u64).div_ceil(7);
    let mut payload = value_bytes.saturating_sub(1);
    while payload > 0 && varint_len(payload) + payload > value_bytes {
        payload -= 1;
    }
    let bytes: Vec<u8> = (0..payload)
        .map(|j| (i as u8).wrapping_add(j as u8))
        .collect();
    postcard::to_allocvec(&ByteBuf::from(bytes)).unwrap_or_default()
}

/// One subtask's keyed state: `entries` entries spread over key groups.
fn make_state(subtask: u32, entries: u64, value_bytes: u64) -> anyhow::Result<SubtaskState> {
    let per_group = entries.div_ceil(KEY_GROUPS);
    let mut key_groups = Vec::new();
    let mut made = 0u64;
    for kg in 0..KEY_GROUPS {
        let n = per_group.min(entries - made);
        if n == 0 {
            break;
        }
        let mut entries = Entries::new();
        for i in made..made + n {
            let mut k = [0u8; 16];
            k[..8].copy_from_slice(&i.to_le_bytes());
            k[8..12].copy_from_slice(&subtask.to_le_bytes());
            entries.push(&k, &value_of(i, value_bytes))?;
        }
        made += n;
        key_groups.push(KeyGroupData {
            key_group: (subtask as u64 * KEY_GROUPS + kg) as u32,
            tables: vec![TableData {
                name: "state".into(),
                entries,
            }],
            timers: vec![],
        });
    }
    Ok(SubtaskState {
        operator_states: vec![],
        key_groups,
        in_flight: vec![],
    })
}

fn mib_s(bytes: u64, s: f64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / s.max(1e-9)
}

/// Encodes and streams every state file one after another (as the single
/// uploader thread does), then commits `_metadata`. Returns the metadata.
fn checkpoint_upload(
    st: &dyn CheckpointStorage,
    dir: &str,
    states: &[SubtaskState],
) -> anyhow::Result<SnapshotMetadata> {
    let mut subtasks = Vec::new();
    for (i, state) in states.iter().enumerate() {
        let file = checkpoint::unique_state_file_name("bench", i as u32);
        let mut w = st.create(&storage::join(dir, &file))?;
        let d = format::write_state_file(state, &mut w)?;
        w.finish()?;
        subtasks.push(SubtaskMeta {
            index: i as u32,
            key_groups: Some(crate::keygroup::range_for_subtask(
                max_parallelism(states.len()),
                states.len() as u32,
                i as u32,
            )),
            file,
            size: d.size,
            checksum: d.checksum,
            keyed_entries: state
                .key_groups
                .iter()
                .map(|k| k.tables[0].entries.len() as u64)
                .sum(),
            operator_state_items: 0,
            in_flight_records: 0,
        });
    }
    let md = SnapshotMetadata {
        format: FORMAT_NAME.into(),
        version: FORMAT_VERSION,
        kind: "checkpoint".into(),
        checkpoint_id: 1,
        job_name: "bench-s3".into(),
        created_ms: 0,
        max_parallelism: max_parallelism(states.len()),
        operators: vec![OperatorMeta {
            uid: "bench".into(),
            parallelism: states.len() as u32,
            keyed_states: vec![KeyedStateMeta {
                name: "state".into(),
                kind: "value".into(),
                ttl: None,
            }],
            subtasks,
        }],
    };
    st.write_new(
        &storage::join(dir, METADATA_FILE),
        &serde_json::to_vec(&md)?,
    )?;
    Ok(md)
}

/// Uploads `sizes` bytes per file plainly, same files one after another.
fn plain_upload(
    st: &dyn CheckpointStorage,
    dir: &str,
    sizes: &[(String, u64)],
) -> anyhow::Result<()> {
    let chunk: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    for (file, size) in sizes {
        let mut w = st.create(&storage::join(dir, file))?;
        let mut left = *size;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            w.write_all(&chunk[..n])?;
            left -= n as u64;
        }
        w.finish()?;
    }
    Ok(())
}

/// Runs `f` on every file, as many files at once as a restore fetches
/// ([`checkpoint::restore_concurrency`]). Each thread hands `f` its own
/// 256 KiB read buffer, reused from file to file.
fn for_each_file<T: Send>(
    files: &[String],
    f: impl Fn(&str, &mut [u8]) -> anyhow::Result<T> + Sync,
) -> anyhow::Result<Vec<T>> {
    let next = AtomicUsize::new(0);
    let threads = checkpoint::restore_concurrency(files.len());
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<Vec<T>> {
                    let mut buf = vec![0u8; 256 * 1024];
                    let mut out = Vec::new();
                    while let Some(file) = files.get(next.fetch_add(1, Ordering::Relaxed)) {
                        out.push(f(file, &mut buf)?);
                    }
                    Ok(out)
                })
            })
            .collect();
        let mut all = Vec::new();
        for w in workers {
            all.extend(
                w.join()
                    .map_err(|_| anyhow::anyhow!("a download thread panicked"))??,
            );
        }
        Ok(all)
    })
}

/// Reads `r` to its end through `buf`, handing each read to `sink`.
/// Returns the bytes read.
fn stream(
    mut r: impl Read,
    buf: &mut [u8],
    mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> anyhow::Result<u64> {
    let mut got = 0u64;
    loop {
        let n = r.read(buf)?;
        if n == 0 {
            return Ok(got);
        }
        sink(&buf[..n])?;
        got += n as u64;
    }
}

/// Downloads the files and discards the bytes, as many files at once as a
/// restore fetches. Returns the bytes read.
fn plain_download(st: &dyn CheckpointStorage, dir: &str, files: &[String]) -> anyhow::Result<u64> {
    let got = for_each_file(files, |f, buf| {
        stream(st.open(&storage::join(dir, f))?, buf, |_| Ok(()))
    })?;
    Ok(got.iter().sum())
}

/// Downloads the files like [`plain_download`], but reads each into its own
/// buffer and keeps them all: the fresh memory that a restored state needs
/// as well (what `get_object` + `collect` does).
fn download_kept(
    st: &dyn CheckpointStorage,
    dir: &str,
    files: &[String],
) -> anyhow::Result<Vec<Vec<u8>>> {
    for_each_file(files, |f, _| {
        let path = storage::join(dir, f);
        let mut buf = Vec::with_capacity(usize::try_from(st.size(&path)?)?);
        st.open(&path)?.read_to_end(&mut buf)?;
        Ok(buf)
    })
}

/// Downloads the files like [`plain_download`] into files in `local`: what a
/// restore that keeps state on local disk (as Flink's RocksDB backend does)
/// must do at least. The bytes go to the page cache, not to fresh process
/// memory. Returns the bytes written.
fn download_to_disk(
    st: &dyn CheckpointStorage,
    dir: &str,
    files: &[String],
    local: &std::path::Path,
) -> anyhow::Result<u64> {
    let got = for_each_file(files, |f, buf| {
        let mut out = std::fs::File::create(local.join(f))?;
        stream(st.open(&storage::join(dir, f))?, buf, |b| out.write_all(b))
    })?;
    Ok(got.iter().sum())
}

/// Writes one byte to every 4 KiB page of `bytes` of fresh memory: the
/// page-fault cost that any restore holding that much state in memory pays,
/// whatever it decodes. On some VMs (nested or shadow paging) this alone is a
/// large part of a download's time.
fn touch_fresh_memory(bytes: u64) -> anyhow::Result<Vec<u8>> {
    let n = usize::try_from(bytes)?;
    let mut v: Vec<u8> = Vec::with_capacity(n);
    let spare = v.spare_capacity_mut();
    for i in (0..n).step_by(4096) {
        spare[i].write(1);
    }
    Ok(std::hint::black_box(v))
}

/// What a job does with a snapshot before its tasks start: load it, then hand
/// each subtask its key groups (as `executor::deploy` does).
fn restore(uri: &str) -> anyhow::Result<Vec<crate::task::Restored>> {
    let mut snap = checkpoint::load_snapshot(uri)?;
    let op = &snap.metadata.operators[0];
    let (uid, p, metas) = (op.uid.clone(), op.parallelism, op.keyed_states.clone());
    let max_p = snap.metadata.max_parallelism;
    let old = snap
        .states
        .get_mut(&uid)
        .ok_or_else(|| anyhow::anyhow!("the snapshot has no state for {uid}"))?;
    Ok((0..p)
        .map(|s| checkpoint::redistribute::assign(old, p, &metas, p, s, max_p, true).0)
        .collect())
}

/// [`restore`], then what each task does with its share as it registers its
/// state: every key and value decoded into the typed table of a
/// `ValueState<ByteBuf>` keyed by `[u8; 16]`, one thread per subtask as the
/// task threads do. This is all of a job's restore before it processes a
/// record. Returns the backends, to be dropped untimed as the other steps'
/// results are.
fn restore_typed(uri: &str) -> anyhow::Result<Vec<KeyedBackend<[u8; 16]>>> {
    let restored = restore(uri)?;
    let p = restored.len() as u32;
    let max_p = max_parallelism(p as usize);
    std::thread::scope(|scope| {
        let tasks: Vec<_> = restored
            .into_iter()
            .enumerate()
            .map(|(s, r)| {
                scope.spawn(move || -> anyhow::Result<KeyedBackend<[u8; 16]>> {
                    let range = crate::keygroup::range_for_subtask(max_p, p, s as u32);
                    let mut backend = KeyedBackend::<[u8; 16]>::new(
                        "bench",
                        crate::clock::Clock::System,
                        max_p,
                        range,
                        r.key_groups,
                        r.keyed_metas,
                    );
                    backend
                        .register::<crate::state::keyed::Entry<ByteBuf>>("state", "value", None)
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    Ok(backend)
                })
            })
            .collect();
        tasks
            .into_iter()
            .map(|t| {
                t.join()
                    .map_err(|_| anyhow::anyhow!("a restore thread panicked"))?
            })
            .collect()
    })
}

/// CPU seconds (user + system) a process has used so far, from
/// `/proc/PID/stat`; 0 where there is no such file (not Linux, or the
/// server is remote). Coarse (clock ticks), enough to tell a saturated
/// transfer from an idle one.
fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ticks / if hz > 0 { hz as f64 } else { 100.0 }
}

/// The local server's pid (0: none), for the server's CPU figures.
static SERVER_PID: AtomicU32 = AtomicU32::new(0);

/// CPU seconds of the local server so far (0 if none was started).
fn server_cpu_now() -> f64 {
    match SERVER_PID.load(Ordering::Relaxed) {
        0 => 0.0,
        p => cpu_seconds(&p.to_string()),
    }
}

/// Time of `f` in seconds.
fn timed<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(f64, T)> {
    let t = Instant::now();
    let v = f()?;
    Ok((t.elapsed().as_secs_f64(), v))
}

/// Runs `f` as one step: its time, CPU and resident memory growth; `count`
/// is taken after the clock stops and the result is dropped after that too,
/// untimed, as a job keeps its state.
fn measure<T>(
    f: impl FnOnce() -> anyhow::Result<T>,
    count: impl FnOnce(&T) -> u64,
) -> anyhow::Result<StepResult> {
    let (cpu0, server0, rss0) = (cpu_seconds("self"), server_cpu_now(), rss_bytes());
    let peak = AtomicU64::new(rss0);
    let done = std::sync::atomic::AtomicBool::new(false);
    let t = Instant::now();
    // Resident memory sampled every 2 ms while the step runs: what a pod's
    // memory limit would see of it.
    let v = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_bytes(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        let v = f();
        done.store(true, Ordering::Relaxed);
        v
    })?;
    let seconds = t.elapsed().as_secs_f64();
    let (cpu1, server1) = (cpu_seconds("self"), server_cpu_now());
    peak.fetch_max(rss_bytes(), Ordering::Relaxed);
    let r = StepResult {
        seconds,
        cpu_s: cpu1 - cpu0,
        server_cpu_s: server1 - server0,
        peak_rss_growth: peak.load(Ordering::Relaxed).saturating_sub(rss0),
        count: count(&v),
    };
    drop(v);
    Ok(r)
}

/// Runs one step here.
fn run_step(
    st: &dyn CheckpointStorage,
    step: Step,
    dir: &str,
    files: &[String],
) -> anyhow::Result<StepResult> {
    match step {
        Step::Restore => measure(
            || restore(&st.uri(dir)),
            |r| {
                r.iter()
                    .flat_map(|r| r.key_groups.iter())
                    .map(|k| k.tables[0].entries.len() as u64)
                    .sum()
            },
        ),
        Step::Typed => measure(
            || restore_typed(&st.uri(dir)),
            |b| b.iter().map(|b| b.entries("state") as u64).sum(),
        ),
        Step::Plain => measure(|| plain_download(st, dir, files), |n| *n),
        Step::Kept => measure(
            || download_kept(st, dir, files),
            |k| k.iter().map(|b| b.len() as u64).sum(),
        ),
        Step::Disk => {
            let local =
                std::env::temp_dir().join(format!("runnel-bench-s3-{:08x}", rand::random::<u32>()));
            std::fs::create_dir_all(&local)?;
            let r = measure(|| download_to_disk(st, dir, files, &local), |n| *n);
            std::fs::remove_dir_all(&local)?;
            r
        }
        Step::Touch => {
            let mut bytes = 0;
            for f in files {
                bytes += st.size(&storage::join(dir, f))?;
            }
            measure(|| touch_fresh_memory(bytes), |_| 0)
        }
    }
}

/// Runs one step in a child process of this binary (see [`Step`]); the
/// server's CPU is measured here, around the child.
fn step_in_child(uri: &str, step: Step, dir: &str, files: &[String]) -> anyhow::Result<StepResult> {
    let server0 = server_cpu_now();
    let out = Command::new(std::env::current_exe()?)
        .args(["bench", "s3", "--uri", uri, "--step-dir", dir, "--step"])
        // The name clap parses it from, not a second copy of it.
        .arg(
            clap::ValueEnum::to_possible_value(&step)
                .map(|v| v.get_name().to_string())
                .unwrap_or_default(),
        )
        .arg("--step-files")
        .arg(files.join(","))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("cannot start a bench step in a child process")?;
    let server1 = server_cpu_now();
    if !out.status.success() {
        bail!("the {} step failed ({})", step.describe(), out.status);
    }
    let mut r: StepResult = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("the {} step printed no result", step.describe()))?;
    r.server_cpu_s = server1 - server0;
    Ok(r)
}

/// Resident set size of this process (`/proc/self/statm`), 0 where unknown.
fn rss_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

fn one_round(
    st: &dyn CheckpointStorage,
    uri: &str,
    in_process: bool,
    states: &[SubtaskState],
    total_entries: u64,
    round: u32,
) -> anyhow::Result<Round> {
    let run_id = format!("{:08x}", rand::random::<u32>());
    let (dir, plain_dir) = (format!("chk-{run_id}"), format!("plain-{run_id}"));
    // Odd rounds run the plain transfers first, so that whatever the order
    // costs (a server that slows as it fills, a warm cache) shows up on both
    // sides across rounds instead of always on one.
    let plain_first = round % 2 == 1;
    let mut md = None;
    let (mut checkpoint_upload_s, mut plain_upload_s) = (0.0, 0.0);
    for step in 0..2 {
        if (step == 0) != plain_first {
            eprintln!("round {round}: checkpoint upload...");
            let (s, m) = timed(|| checkpoint_upload(st, &dir, states))?;
            checkpoint_upload_s = s;
            md = Some(m);
        } else {
            // The plain side needs the checkpoint's file sizes; uploading
            // plain first, it uses the sizes the encoding will produce.
            let sizes: Vec<(String, u64)> = match &md {
                Some(m) => m.operators[0]
                    .subtasks
                    .iter()
                    .map(|s| (s.file.clone(), s.size))
                    .collect(),
                None => states
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        let size = format::write_state_file(s, &mut std::io::sink())?.size;
                        Ok((format!("plain.{i}"), size))
                    })
                    .collect::<anyhow::Result<_>>()?,
            };
            eprintln!("round {round}: plain upload...");
            plain_upload_s = timed(|| plain_upload(st, &plain_dir, &sizes))?.0;
        }
    }
    let md = md.ok_or_else(|| anyhow::anyhow!("no checkpoint was written"))?;
    let file_bytes: u64 = md.operators[0].subtasks.iter().map(|s| s.size).sum();
    let plain_files: Vec<String> = st.list(&plain_dir)?;
    let ckpt_files: Vec<String> = md.operators[0]
        .subtasks
        .iter()
        .map(|s| s.file.clone())
        .collect();
    let mut results: [StepResult; 6] = Default::default();
    // Downloads in a rotating order, so that no step always runs first.
    let mut order = Step::ALL;
    order.rotate_left(round as usize % Step::ALL.len());
    for step in order {
        eprintln!("round {round}: {}...", step.describe());
        let (d, f) = match step {
            Step::Restore | Step::Typed => (&dir, &ckpt_files),
            _ => (&plain_dir, &plain_files),
        };
        let r = if in_process {
            run_step(st, step, d, f)?
        } else {
            step_in_child(uri, step, d, f)?
        };
        let want = match step {
            Step::Restore | Step::Typed => total_entries,
            Step::Touch => 0,
            _ => file_bytes,
        };
        if r.count != want {
            bail!(
                "{}: got {} (entries or bytes), expected {want}",
                step.describe(),
                r.count
            );
        }
        results[step as usize] = r;
    }
    let [restore, typed, plain, kept, disk, touch] = results;
    st.delete_dir(&dir)?;
    st.delete_dir(&plain_dir)?;
    Ok(Round {
        round,
        plain_first,
        file_bytes,
        plain_upload_s,
        plain_upload_mib_s: mib_s(file_bytes, plain_upload_s),
        checkpoint_upload_s,
        checkpoint_upload_mib_s: mib_s(file_bytes, checkpoint_upload_s),
        upload_ratio: plain_upload_s / checkpoint_upload_s,
        plain_download_mib_s: mib_s(file_bytes, plain.seconds),
        kept_download_mib_s: mib_s(file_bytes, kept.seconds),
        restore_mib_s: mib_s(file_bytes, restore.seconds),
        restore_ratio: plain.seconds / restore.seconds,
        restore_vs_kept_ratio: kept.seconds / restore.seconds,
        disk_download_mib_s: mib_s(file_bytes, disk.seconds),
        typed_restore_mib_s: mib_s(file_bytes, typed.seconds),
        typed_restore_ratio: plain.seconds / typed.seconds,
        fresh_memory_s: touch.seconds,
        plain_download: plain,
        kept_download: kept,
        disk_download: disk,
        restore,
        typed_restore: typed,
    })
}

pub fn run(args: BenchS3Args) -> anyhow::Result<ExitCode> {
    if let (Some(step), Some(uri), Some(dir)) = (args.step, &args.uri, &args.step_dir) {
        let st = storage::open(uri)?;
        let r = run_step(st.as_ref(), step, dir, &args.step_files)?;
        println!("{}", serde_json::to_string(&r)?);
        return Ok(ExitCode::SUCCESS);
    }
    let (_server, uri) = match &args.uri {
        Some(u) => (None, u.clone()),
        None => {
            if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
                // SAFETY: no other thread exists yet (no S3 client, no job).
                unsafe {
                    std::env::set_var("AWS_ACCESS_KEY_ID", "runnel-bench");
                    std::env::set_var("AWS_SECRET_ACCESS_KEY", "runnel-bench");
                }
            }
            let (s, u) = start_moto()?;
            (Some(s), u)
        }
    };
    let st = storage::open(&uri)?;
    let entry_bytes = 16 + args.value_bytes;
    let total_entries = (args.size_mib * 1024 * 1024).div_ceil(entry_bytes);
    let per_file = total_entries.div_ceil(args.files as u64);
    eprintln!(
        "building {} of keyed state ({total_entries} entries in {} files)...",
        human_bytes(total_entries * entry_bytes),
        args.files
    );
    let states: Vec<SubtaskState> = (0..args.files)
        .map(|s| {
            let n = per_file.min(total_entries.saturating_sub(per_file * s as u64));
            make_state(s, n, args.value_bytes)
        })
        .collect::<anyhow::Result<_>>()?;
    let rounds = (0..args.rounds)
        .map(|r| {
            one_round(
                st.as_ref(),
                &uri,
                args.in_process,
                &states,
                total_entries,
                r,
            )
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let r = Report {
        uri: storage::split_last(&uri).0,
        state_bytes: total_entries * entry_bytes,
        files: args.files,
        concurrent_downloads: checkpoint::restore_concurrency(args.files as usize) as u32,
        rounds,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "keyed state: {} in {} files ({} on storage), {} files downloaded at once",
        human_bytes(r.state_bytes),
        r.files,
        human_bytes(r.rounds.first().map_or(0, |x| x.file_bytes)),
        r.concurrent_downloads
    );
    for x in &r.rounds {
        println!(
            "round {} ({} first)       seconds     MiB/s   vs plain",
            x.round,
            if x.plain_first { "plain" } else { "checkpoint" }
        );
        println!(
            "  plain upload         {:9.2} {:9.1}",
            x.plain_upload_s, x.plain_upload_mib_s
        );
        println!(
            "  checkpoint upload    {:9.2} {:9.1}   {:6.1} %",
            x.checkpoint_upload_s,
            x.checkpoint_upload_mib_s,
            100.0 * x.upload_ratio
        );
        let line = |name: &str, r: &StepResult, mib_s: f64, ratio: Option<f64>| {
            println!(
                "  {name:<21}{:8.2} {:9.1}   {:>8}   cpu {:.2} s, server {:.2} s, memory +{}",
                r.seconds,
                mib_s,
                ratio.map_or(String::new(), |x| format!("{:.1} %", 100.0 * x)),
                r.cpu_s,
                r.server_cpu_s,
                human_bytes(r.peak_rss_growth)
            )
        };
        line(
            "plain download",
            &x.plain_download,
            x.plain_download_mib_s,
            None,
        );
        line(
            "download, kept",
            &x.kept_download,
            x.kept_download_mib_s,
            Some(x.plain_download.seconds / x.kept_download.seconds),
        );
        line(
            "download to disk",
            &x.disk_download,
            x.disk_download_mib_s,
            Some(x.plain_download.seconds / x.disk_download.seconds),
        );
        line(
            "restore",
            &x.restore,
            x.restore_mib_s,
            Some(x.restore_ratio),
        );
        line(
            "restore, typed",
            &x.typed_restore,
            x.typed_restore_mib_s,
            Some(x.typed_restore_ratio),
        );
        println!(
            "  fresh memory touched {:8.2}   (one write per 4 KiB page, as many bytes; restore is {:.1} % of kept)",
            x.fresh_memory_s,
            100.0 * x.restore_vs_kept_ratio
        );
    }
    Ok(ExitCode::SUCCESS)
}
