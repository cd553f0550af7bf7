//! Subcommands of the `runnel` binary and small helpers they share.

pub mod bench;
pub mod bench_distributed;
#[cfg(feature = "kafka")]
pub mod bench_kafka;
pub mod bench_s3;
pub mod client;
pub mod demo;
pub mod distributed;
pub mod inspect;
pub mod jobctl;
pub mod launch;
pub mod run;

use std::path::Path;

/// Formats a byte count for people: `512 B`, `12.3 KiB`, `4.0 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

/// `file://` URI of an absolute path.
pub fn file_uri(path: &Path) -> anyhow::Result<String> {
    let s = path
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("path {} is not valid UTF-8", path.display()))?;
    anyhow::ensure!(
        path.is_absolute(),
        "path {} is not absolute",
        path.display()
    );
    Ok(format!("file://{s}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes_picks_a_readable_unit() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(12_595), "12.3 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024), "5.0 MiB");
    }

    #[test]
    fn file_uri_requires_absolute_utf8_paths() {
        assert_eq!(file_uri(Path::new("/tmp/x")).unwrap(), "file:///tmp/x");
        assert!(file_uri(Path::new("rel/x")).is_err());
    }
}
