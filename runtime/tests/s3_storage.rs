//! The S3 backend against a real S3-compatible server (moto) on loopback:
//! streaming and multipart writes, conditional create, listing and deletion,
//! discovery and dispose.

mod common;

use std::io::{Read, Write};

use common::s3::Moto;
use runnel_runtime::checkpoint::format::{
    FORMAT_NAME, FORMAT_VERSION, METADATA_FILE, OperatorMeta, SnapshotMetadata, SubtaskMeta,
    SubtaskState,
};
use runnel_runtime::checkpoint::{self, format};
use runnel_runtime::error::{SnapshotError, StorageError};
use runnel_runtime::storage::{self, CheckpointStorage};

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[test]
fn small_and_multipart_objects_stream_both_ways() {
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket("stream");
    let st = storage::open(&moto.uri("stream", "jobs/a")).unwrap();

    // Small: one PutObject, visible only after finish.
    let mut w = st.create("chk-1/small").unwrap();
    w.write_all(b"hello").unwrap();
    assert!(!st.exists("chk-1/small").unwrap(), "visible before finish");
    assert_eq!(w.finish().unwrap(), 5);
    assert_eq!(st.read("chk-1/small").unwrap(), b"hello");
    assert_eq!(st.size("chk-1/small").unwrap(), 5);

    // Large: 20 MiB in odd-sized writes becomes a 3-part multipart upload.
    let data = pattern(20 * 1024 * 1024 + 123);
    let mut w = st.create("chk-1/large").unwrap();
    for piece in data.chunks(777_777) {
        w.write_all(piece).unwrap();
    }
    assert!(!st.exists("chk-1/large").unwrap(), "visible before finish");
    assert_eq!(w.finish().unwrap(), data.len() as u64);
    assert_eq!(st.size("chk-1/large").unwrap(), data.len() as u64);
    let mut r = st.open("chk-1/large").unwrap();
    let mut back = Vec::new();
    let mut buf = vec![0u8; 65_537];
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        back.extend_from_slice(&buf[..n]);
    }
    assert!(back == data, "multipart round trip differs");

    // A writer dropped mid-multipart publishes nothing.
    let mut w = st.create("chk-1/abandoned").unwrap();
    w.write_all(&data).unwrap();
    drop(w);
    assert!(!st.exists("chk-1/abandoned").unwrap());
    assert_eq!(
        st.list("chk-1").unwrap(),
        vec!["large".to_string(), "small".to_string()]
    );
}

#[test]
fn conditional_create_never_overwrites() {
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket("cond");
    let st = storage::open(&moto.uri("cond", "j")).unwrap();
    st.write_new("chk-3/_metadata", b"first").unwrap();
    let err = st.write_new("chk-3/_metadata", b"second").unwrap_err();
    assert!(matches!(err, StorageError::AlreadyExists { .. }), "{err}");
    assert_eq!(st.read("chk-3/_metadata").unwrap(), b"first");
    // Re-sending identical bytes (a retried request) is recognised as ours.
    st.write_new("chk-3/_metadata", b"first").unwrap();
}

#[test]
fn listing_deleting_and_missing_objects() {
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket("list");
    let root = moto.uri("list", "base");
    let st = storage::open(&root).unwrap();
    for p in ["chk-1/a", "chk-1/b", "chk-10/a", "chk-2/x", "top"] {
        st.write(p, p.as_bytes()).unwrap();
    }
    // A sibling prefix that shares the first characters must not be touched.
    storage::open(&moto.uri("list", "base2"))
        .unwrap()
        .write("chk-1/a", b"other job")
        .unwrap();
    assert_eq!(
        st.list("").unwrap(),
        vec!["chk-1", "chk-10", "chk-2", "top"]
    );
    assert_eq!(st.list("chk-1").unwrap(), vec!["a", "b"]);
    assert!(st.list("nope").unwrap().is_empty());
    st.delete_dir("chk-1").unwrap();
    assert_eq!(st.list("").unwrap(), vec!["chk-10", "chk-2", "top"]);
    assert_eq!(st.read("chk-10/a").unwrap(), b"chk-10/a");
    st.delete("top").unwrap();
    st.delete("top").unwrap();
    assert!(matches!(
        st.read("top").unwrap_err(),
        StorageError::NotFound { .. }
    ));
    assert!(matches!(
        st.size("top").unwrap_err(),
        StorageError::NotFound { .. }
    ));
    assert!(matches!(
        st.open("missing").err().unwrap(),
        StorageError::NotFound { .. }
    ));
    st.delete_dir("missing").unwrap();
    assert_eq!(
        storage::open(&moto.uri("list", "base2"))
            .unwrap()
            .read("chk-1/a")
            .unwrap(),
        b"other job"
    );
    // URIs keep the server options, so a derived URI reaches the same object.
    let uri = st.uri("chk-10/a");
    assert!(
        uri.starts_with("s3://list/base/chk-10/a?endpoint="),
        "{uri}"
    );
    let (parent, name) = storage::split_last(&uri);
    assert_eq!(name, "a");
    assert_eq!(
        storage::open(&parent).unwrap().read("a").unwrap(),
        b"chk-10/a"
    );
    // A bucket that does not exist is an error, not an empty listing.
    let err = storage::open(&moto.uri("no-such-bucket", "x"))
        .unwrap()
        .list("")
        .unwrap_err();
    assert!(err.to_string().contains("NoSuchBucket"), "{err}");
}

/// Writes a complete snapshot with one state file into `dir` of `st`.
fn write_snapshot(st: &dyn CheckpointStorage, dir: &str, id: u64, kind: &str) -> SubtaskMeta {
    let state = SubtaskState::default();
    let file = checkpoint::unique_state_file_name("op", 0);
    let mut w = st.create(&storage::join(dir, &file)).unwrap();
    let d = format::write_state_file(&state, &mut w).unwrap();
    w.finish().unwrap();
    let sub = SubtaskMeta {
        index: 0,
        key_groups: None,
        file,
        size: d.size,
        checksum: d.checksum,
        keyed_entries: 0,
        operator_state_items: 0,
        in_flight_records: 0,
    };
    let md = SnapshotMetadata {
        format: FORMAT_NAME.into(),
        version: FORMAT_VERSION,
        kind: kind.into(),
        checkpoint_id: id,
        job_name: "j".into(),
        created_ms: 0,
        max_parallelism: 128,
        operators: vec![OperatorMeta {
            uid: "op".into(),
            parallelism: 1,
            keyed_states: vec![],
            subtasks: vec![sub.clone()],
        }],
    };
    st.write_new(
        &storage::join(dir, METADATA_FILE),
        &serde_json::to_vec(&md).unwrap(),
    )
    .unwrap();
    sub
}

#[test]
fn discovery_finds_the_newest_complete_checkpoint() {
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket("disc");
    let dir = moto.uri("disc", "jobs/j");
    let st = storage::open(&dir).unwrap();
    assert_eq!(checkpoint::find_latest_checkpoint(&dir).unwrap(), None);
    write_snapshot(st.as_ref(), "chk-4", 4, "checkpoint");
    let sub = write_snapshot(st.as_ref(), "chk-5", 5, "checkpoint");
    // chk-6: state files but no _metadata (a crash before the commit).
    st.write("chk-6/x.op.0.state", b"partial").unwrap();
    // chk-5 loses a state file: not complete any more.
    let found = checkpoint::find_latest_checkpoint(&dir).unwrap().unwrap();
    assert_eq!(
        (found.id, found.uri.clone()),
        (5, storage::join(&dir, "chk-5"))
    );
    assert_eq!(
        checkpoint::load_snapshot(&found.uri)
            .unwrap()
            .metadata
            .checkpoint_id,
        5
    );
    st.delete(&format!("chk-5/{}", sub.file)).unwrap();
    let found = checkpoint::find_latest_checkpoint(&dir).unwrap().unwrap();
    assert_eq!(found.id, 4);
    assert_eq!(
        checkpoint::load_latest(&dir)
            .unwrap()
            .metadata
            .checkpoint_id,
        4
    );
    // An unreachable bucket is an error, never "no checkpoint".
    let err = checkpoint::find_latest_checkpoint(&moto.uri("gone", "jobs/j")).unwrap_err();
    assert!(matches!(err, SnapshotError::Storage(_)), "{err}");
}

#[test]
fn dispose_deletes_a_savepoint_and_refuses_anything_else() {
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket("disp");
    let base = moto.uri("disp", "savepoints");
    let st = storage::open(&base).unwrap();
    write_snapshot(st.as_ref(), "savepoint-7-abc123", 7, "savepoint");
    write_snapshot(st.as_ref(), "savepoint-8-def456", 8, "savepoint");
    st.write("unrelated/data", b"keep me").unwrap();
    // Not snapshots: the parent directory, an unrelated directory, nothing.
    for not_snapshot in [
        base.clone(),
        storage::join(&base, "unrelated"),
        storage::join(&base, "nothing-here"),
    ] {
        let err = checkpoint::dispose(&not_snapshot).unwrap_err();
        assert!(matches!(err, SnapshotError::NotASnapshot { .. }), "{err}");
    }
    let d = checkpoint::dispose(&storage::join(&base, "savepoint-7-abc123")).unwrap();
    assert_eq!(
        (d.checkpoint_id, d.kind.as_str(), d.files),
        (7, "savepoint", 2)
    );
    assert_eq!(
        st.list("").unwrap(),
        vec!["savepoint-8-def456".to_string(), "unrelated".to_string()]
    );
    assert_eq!(st.read("unrelated/data").unwrap(), b"keep me");
    checkpoint::load_snapshot(&storage::join(&base, "savepoint-8-def456")).unwrap();
}

/// `runnel bench s3` (docs/benchmarks.md) runs every step, each in a child
/// process, and checks what each restored or downloaded: a bench that stops
/// working, or counts the wrong thing, fails here rather than on the next
/// measurement.
#[test]
fn bench_s3_runs_every_step_and_checks_what_it_restored() {
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket("bench");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args(["bench", "s3", "--size-mib", "2", "--value-bytes", "100"])
        .args(["--rounds", "1", "--json", "--uri"])
        .arg(moto.uri("bench", "b"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // 2 MiB of 16-byte keys and 100-byte values.
    let entries = (2u64 << 20).div_ceil(116);
    assert_eq!(r["state_bytes"], entries * 116);
    let round = &r["rounds"][0];
    let file_bytes = round["file_bytes"].as_u64().unwrap();
    assert!(file_bytes > entries * 116, "{file_bytes}");
    for step in ["restore", "typed_restore"] {
        assert_eq!(round[step]["count"], entries, "{step}");
    }
    for step in ["plain_download", "kept_download", "disk_download"] {
        assert_eq!(round[step]["count"], file_bytes, "{step}");
        assert!(round[step]["seconds"].as_f64().unwrap() > 0.0, "{step}");
    }
    // The restore holds the state, the plain download does not.
    assert!(round["restore"]["peak_rss_growth"].as_u64().unwrap() > 0);
}
