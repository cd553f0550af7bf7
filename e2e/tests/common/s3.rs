//! A real S3-compatible server for the scenarios: `moto_server` (`pip install
//! "moto[server]"`) on a free loopback port. Copied in small from
//! `runtime/tests/common/s3.rs`; plain HTTP keeps the harness free of an S3
//! client (moto does not check signatures).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Moto {
    pub port: u16,
    child: Child,
}

fn http(port: u16, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad HTTP response: {text:?}")))?;
    Ok((code, text))
}

impl Moto {
    /// Starts moto, or returns None (after a loud message) when it is not
    /// installed and `CI` is unset. Under `CI`, a missing server fails.
    pub fn start() -> Option<Moto> {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = match Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if std::env::var_os("CI").is_some() {
                    panic!("moto_server is not installed (pip install \"moto[server]\"): {e}");
                }
                eprintln!(
                    "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\nSKIPPING: moto_server is not installed (pip install \"moto[server]\").\nThis scenario did NOT run. Under CI=1 this is a failure.\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
                );
                return None;
            }
            Err(e) => panic!("cannot start moto_server: {e}"),
        };
        let mut m = Moto { port, child };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((200, _)) = http(port, "GET", "/") {
                return Some(m);
            }
            if let Ok(Some(st)) = m.child.try_wait() {
                panic!("moto_server exited: {st}");
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `s3://bucket/prefix` with the endpoint, region and path style in the query.
    pub fn uri(&self, bucket: &str, prefix: &str) -> String {
        format!(
            "s3://{bucket}/{prefix}?endpoint=http://127.0.0.1:{}&region=us-east-1&path_style=true",
            self.port
        )
    }

    pub fn create_bucket(&self, name: &str) {
        let (code, _) = http(self.port, "PUT", &format!("/{name}")).expect("create bucket");
        assert_eq!(code, 200, "creating bucket {name}");
    }

    /// Object keys under `prefix` (ListObjectsV2, first 1000).
    pub fn list(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let (code, body) = http(
            self.port,
            "GET",
            &format!("/{bucket}?list-type=2&prefix={prefix}"),
        )
        .expect("list");
        assert_eq!(code, 200, "{body}");
        body.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next().map(String::from))
            .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
