//! `runnel inspect`: prints a checkpoint or savepoint and verifies its state
//! files.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::checkpoint::format::SnapshotMetadata;
use crate::checkpoint::summary::{SnapshotSummary, summarize};
use crate::checkpoint::{self, format::METADATA_FILE};
use anyhow::{Context, bail};
use clap::Args;

use super::{file_uri, human_bytes};

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// A checkpoint (`.../chk-N`) or savepoint directory: a file:// URI or a path.
    path: String,
    /// Print the snapshot's metadata as JSON.
    #[arg(long)]
    json: bool,
}

/// Turns the argument into a snapshot URI, with a clear error if it does not
/// point at a snapshot.
fn resolve(arg: &str) -> anyhow::Result<String> {
    if arg.is_empty() {
        bail!("the snapshot path is empty");
    }
    let path: PathBuf = match arg.strip_prefix("file://") {
        Some(rest) if rest.starts_with('/') => PathBuf::from(rest),
        Some(_) => bail!("'{arg}' is not a valid file:// URI (expected file:///absolute/path)"),
        // Object stores (s3://) are resolved by the storage layer itself.
        None if arg.contains("://") => return Ok(arg.trim_end_matches('/').to_string()),
        None => PathBuf::from(arg),
    };
    let path = path
        .canonicalize()
        .with_context(|| format!("cannot open snapshot '{arg}'"))?;
    // Accept the `_metadata` file itself.
    let dir = if path.is_file() && path.file_name().is_some_and(|n| n == METADATA_FILE) {
        path.parent().map(Path::to_path_buf).unwrap_or(path)
    } else {
        path
    };
    if !dir.is_dir() {
        bail!(
            "'{arg}' is not a snapshot directory (expected a chk-N or savepoint directory \
             containing {METADATA_FILE})"
        );
    }
    if !dir.join(METADATA_FILE).exists() {
        let uri = file_uri(&dir)?;
        let found = checkpoint::list_checkpoints(&uri).unwrap_or_default();
        if let Some((_, newest)) = found.first() {
            bail!(
                "'{arg}' has no {METADATA_FILE}: it looks like a checkpoint directory holding {} \
                 checkpoint(s); inspect one of them, e.g. `runnel inspect {newest}`",
                found.len()
            );
        }
        bail!(
            "'{arg}' has no {METADATA_FILE}: not a snapshot, or an incomplete one (its metadata \
             is written last)"
        );
    }
    file_uri(&dir)
}

pub fn run(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let uri = resolve(&args.path)?;
    let md = checkpoint::read_metadata(&uri).with_context(|| format!("cannot read {uri}"))?;
    let loaded = checkpoint::load_snapshot(&uri);
    let summary = loaded.as_ref().ok().map(summarize);
    let verified = loaded.map(|_| ());
    if args.json {
        // The metadata as written, plus what only the state files tell.
        let mut v = serde_json::to_value(&md)?;
        if let (Some(obj), Some(sum)) = (v.as_object_mut(), &summary) {
            obj.insert("summary".into(), serde_json::to_value(sum)?);
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_human(&uri, &md, summary.as_ref());
        match &verified {
            Ok(()) => {
                let files: usize = md.operators.iter().map(|o| o.subtasks.len()).sum();
                println!("state files: verified ({files} files, sizes and checksums match)");
            }
            Err(e) => println!("state files: verification FAILED: {e}"),
        }
    }
    match verified {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => Err(anyhow::Error::new(e).context(format!("snapshot {uri} is corrupt"))),
    }
}

fn print_human(uri: &str, md: &SnapshotMetadata, summary: Option<&SnapshotSummary>) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let total: u64 = md
        .operators
        .iter()
        .flat_map(|o| o.subtasks.iter())
        .map(|s| s.size)
        .sum();
    println!("snapshot:        {uri}");
    println!("format:          {} v{}", md.format, md.version);
    println!("kind:            {}", md.kind);
    println!("id:              {}", md.checkpoint_id);
    println!("job:             {}", md.job_name);
    println!(
        "created:         {} ms since the epoch ({:.1} s ago)",
        md.created_ms,
        (now - md.created_ms) as f64 / 1e3
    );
    println!("max parallelism: {}", md.max_parallelism);
    println!(
        "operators:       {} ({} of state files)",
        md.operators.len(),
        human_bytes(total)
    );
    for op in &md.operators {
        println!();
        println!("operator '{}' (parallelism {})", op.uid, op.parallelism);
        if op.keyed_states.is_empty() {
            println!("  keyed state:   none");
        }
        for ks in &op.keyed_states {
            let ttl = match &ks.ttl {
                None => "no ttl".to_string(),
                Some(t) => format!(
                    "ttl {} ms (update {}, visibility {})",
                    t.ttl_ms, t.update_type, t.visibility
                ),
            };
            let size = summary
                .and_then(|s| s.state_sizes.get(&op.uid))
                .and_then(|o| o.keyed.get(&ks.name))
                .map(|z| format!(", {} entries, {}", z.entries, human_bytes(z.bytes)))
                .unwrap_or_default();
            println!("  keyed state:   '{}' ({}, {ttl}{size})", ks.name, ks.kind);
        }
        if let Some(o) = summary.and_then(|s| s.state_sizes.get(&op.uid)) {
            for (name, z) in &o.operator {
                println!(
                    "  operator state: '{name}' ({} items, {})",
                    z.entries,
                    human_bytes(z.bytes)
                );
            }
            if o.timers > 0 {
                println!("  timers:        {}", o.timers);
            }
        }
        if let Some(s) = summary {
            let offsets: Vec<String> = s
                .kafka_offsets
                .iter()
                .filter(|k| k.operator == op.uid)
                .map(|k| format!("{}-{}: {}", k.topic, k.partition, k.offset))
                .collect();
            if !offsets.is_empty() {
                println!("  kafka offsets: {{{}}} (next to read)", offsets.join(", "));
            }
            for p in s
                .kafka_pending_output
                .iter()
                .filter(|p| p.operator == op.uid)
            {
                println!(
                    "  kafka output:  subtask {} holds {} uncommitted epoch(s), {} records \
                     (committed on restore)",
                    p.subtask, p.epochs, p.records
                );
            }
        }
        for s in &op.subtasks {
            let kg = s
                .key_groups
                .map_or_else(|| "-".to_string(), |r| format!("{}..={}", r.start, r.end));
            println!(
                "  subtask {}: key groups {kg}, file {}, {} ({} B), {} keyed entries, \
                 {} operator state items, {} in-flight records",
                s.index,
                s.file,
                human_bytes(s.size),
                s.size,
                s.keyed_entries,
                s.operator_state_items,
                s.in_flight_records
            );
        }
    }
    println!();
}

#[derive(Args, Debug)]
pub struct DisposeArgs {
    /// The savepoint directory: a URI or a local path.
    path: String,
    /// Also delete a checkpoint (normally the runtime's to manage).
    #[arg(long)]
    force: bool,
}

/// Deletes a savepoint. Only a directory with readable snapshot metadata is
/// deleted, so a typo cannot remove an unrelated tree.
pub fn dispose(args: DisposeArgs) -> anyhow::Result<ExitCode> {
    let uri = resolve(&args.path)?;
    let md = checkpoint::read_metadata(&uri).with_context(|| format!("cannot read {uri}"))?;
    if md.kind != "savepoint" && !args.force {
        bail!(
            "{uri} is a {} (id {}), not a savepoint; checkpoints are managed by the job \
             (use --force to delete it anyway)",
            md.kind,
            md.checkpoint_id
        );
    }
    let d = checkpoint::dispose(&uri).with_context(|| format!("cannot dispose {uri}"))?;
    println!(
        "disposed {} ({} {}, {} files)",
        d.uri, d.kind, d.checkpoint_id, d.files
    );
    Ok(ExitCode::SUCCESS)
}
