//! A real S3-compatible server for tests: `moto_server` (`pip install
//! "moto[server]"`) started on a free loopback port, stopped and restarted on
//! the same port by the test.
//!
//! Buckets are created and readiness is checked with plain HTTP requests: moto
//! does not check signatures, and a few lines of `TcpStream` keep the harness
//! independent of the S3 client under test (and of its connection pool).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

/// Credentials moto accepts (any); set once for the whole test process so the
/// SDK's standard provider chain finds them in the environment.
fn set_test_credentials() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: done once, before any S3 client exists, by the first test that
        // starts the server; the other tests in the binary wait on the Once.
        unsafe {
            std::env::set_var("AWS_ACCESS_KEY_ID", "runnel-test");
            std::env::set_var("AWS_SECRET_ACCESS_KEY", "runnel-test-secret");
            std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
        }
    });
}

pub struct Moto {
    pub port: u16,
    child: Option<Child>,
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().unwrap().port()
}

/// Sends one HTTP/1.1 request and returns the status code.
fn http(port: u16, method: &str, path: &str) -> std::io::Result<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let head = String::from_utf8_lossy(&resp[..resp.len().min(64)]).to_string();
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad HTTP response: {head:?}")))
}

impl Moto {
    /// Starts moto, or returns None (after a loud message) when it is not
    /// installed and `CI` is unset. Under `CI`, a missing server fails the test.
    pub fn start() -> Option<Moto> {
        set_test_credentials();
        let mut m = Moto {
            port: free_port(),
            child: None,
        };
        match m.spawn() {
            Ok(()) => Some(m),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if std::env::var_os("CI").is_some() {
                    panic!("moto_server is not installed (pip install \"moto[server]\"): {e}");
                }
                eprintln!(
                    "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
                     SKIPPING: moto_server is not installed (pip install \"moto[server]\").\n\
                     This S3 test did NOT run. Under CI=1 this is a failure.\n\
                     !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
                );
                None
            }
            Err(e) => panic!("cannot start moto_server: {e}"),
        }
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(200) = http(self.port, "GET", "/") {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                return Err(std::io::Error::other(format!("moto_server exited: {st}")));
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `s3://bucket/prefix` with the endpoint, region and path style in the query.
    pub fn uri(&self, bucket: &str, prefix: &str) -> String {
        let prefix = prefix.trim_matches('/');
        let path = if prefix.is_empty() {
            bucket.to_string()
        } else {
            format!("{bucket}/{prefix}")
        };
        format!(
            "s3://{path}?endpoint={}&region=us-east-1&path_style=true",
            self.endpoint()
        )
    }

    pub fn create_bucket(&self, name: &str) {
        let code = http(self.port, "PUT", &format!("/{name}")).expect("create bucket");
        assert_eq!(code, 200, "creating bucket {name}");
    }

    /// Kills the server (an S3 outage). Its data is gone: moto keeps it in memory.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn().expect("restart moto_server");
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Copies every object under `from` (a directory URI) to `to`, through the
/// storage API (GET and PUT): how a user moves a savepoint to another bucket.
pub fn copy_tree(from: &str, to: &str) -> usize {
    let src = runnel_runtime::storage::open(from).unwrap();
    let dst = runnel_runtime::storage::open(to).unwrap();
    let mut n = 0;
    for name in src.list("").unwrap() {
        let mut r = src.open(&name).unwrap();
        let mut w = dst.create(&name).unwrap();
        std::io::copy(&mut r, &mut w).unwrap();
        w.finish().unwrap();
        n += 1;
    }
    n
}
