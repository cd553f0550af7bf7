//! Encode and decode throughput of the state file format alone, without any
//! storage: what `runnel bench s3` adds on top of the transfer. Meant for
//! profiling (`perf record -g`), e.g.
//!
//! cargo build --release -p runnel-runtime --no-default-features --example state_codec_bench
//! ./target/release/examples/state_codec_bench 256

use std::time::Instant;

use runnel_runtime::checkpoint::format::{
    Entries, KeyGroupData, SubtaskState, TableData, read_state_file, write_state_file,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mib: u64 = match std::env::args().nth(1) {
        Some(s) => s.parse()?,
        None => 256,
    };
    let entries = mib * 1024 * 1024 / 1024;
    let mut key_groups = Vec::new();
    for kg in 0..32u32 {
        let mut table = Entries::new();
        for i in 0..entries / 32 {
            let mut k = [0u8; 16];
            k[..8].copy_from_slice(&i.to_le_bytes());
            table.push(&k, &[i as u8; 1008])?;
        }
        key_groups.push(KeyGroupData {
            key_group: kg,
            tables: vec![TableData {
                name: "state".into(),
                entries: table,
            }],
            timers: vec![],
        });
    }
    let state = SubtaskState {
        key_groups,
        ..Default::default()
    };
    let mut file = Vec::new();
    let t = Instant::now();
    let digest = write_state_file(&state, &mut file)?;
    let enc = t.elapsed().as_secs_f64();
    drop(state);
    let mb = file.len() as f64 / (1024.0 * 1024.0);
    // Best of a few: the machine is shared, and the first run also pays for
    // fresh pages.
    let mut dec = f64::MAX;
    let mut back = SubtaskState::default();
    for _ in 0..5 {
        drop(back);
        let t = Instant::now();
        let mut r = &file[..];
        back = read_state_file("bench", &mut r, digest.size, Some(&digest.checksum))?;
        dec = dec.min(t.elapsed().as_secs_f64());
    }
    let n: usize = back
        .key_groups
        .iter()
        .map(|k| k.tables[0].entries.len())
        .sum();
    println!(
        "{n} entries, {mb:.0} MiB: encode {enc:.3} s ({:.0} MiB/s), decode {dec:.3} s ({:.0} MiB/s)",
        mb / enc,
        mb / dec
    );
    Ok(())
}
