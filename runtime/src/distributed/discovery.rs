//! Finding the workers: a list of `host:port` entries, where a host may be a
//! DNS name that resolves to several addresses (a Kubernetes headless Service
//! returns one A record per ready pod), each of which is a worker.

use std::net::SocketAddr;

/// Splits `--workers a:1,b:2` into entries.
pub fn parse_workers(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Resolves every entry; unresolvable ones are logged and skipped (the job
/// then runs on the workers that are found). Sorted and deduplicated, so every
/// resolution of the same set gives the same order.
pub async fn resolve(entries: &[String]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for e in entries {
        match tokio::net::lookup_host(e.as_str()).await {
            Ok(addrs) => out.extend(addrs),
            Err(err) => tracing::warn!(entry = %e, error = %err, "cannot resolve a worker address"),
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists() {
        assert_eq!(
            parse_workers(" a:1, b:2,,c:3 "),
            vec!["a:1".to_string(), "b:2".into(), "c:3".into()]
        );
        assert!(parse_workers("").is_empty());
    }

    #[test]
    fn resolves_names_and_addresses() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let got = rt.block_on(resolve(&[
            "127.0.0.1:7002".into(),
            "localhost:7001".into(),
            "127.0.0.1:7002".into(),
            "no-such-host.invalid:1".into(),
        ]));
        assert!(got.contains(&"127.0.0.1:7002".parse().unwrap()));
        assert!(got.iter().any(|a| a.port() == 7001));
        assert_eq!(got.iter().filter(|a| a.port() == 7002).count(), 1);
        assert!(got.windows(2).all(|w| w[0] < w[1]));
    }
}
