//! `s3://bucket/prefix` storage through aws-sdk-s3.
//!
//! Configuration (documented in docs/storage.md):
//! - Credentials and region come from the SDK's standard provider chains
//!   (environment, shared profile, web identity for IRSA, container and instance
//!   metadata). Without any region, `us-east-1` is used.
//! - A custom endpoint comes from `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`, or
//!   from the URI query `?endpoint=http://host:port`.
//! - Path-style addressing (needed by most S3-compatible servers) is switched on
//!   by `RUNNEL_S3_PATH_STYLE=true` or the query `?path_style=true`.
//! - `?region=...` overrides the region.
//!
//! The query stays at the end of every URI derived from the storage (see
//! `storage::join`), so a checkpoint path reported by a job reaches the same
//! server when it is used as a restore path.
//!
//! The trait is synchronous; this backend owns one small tokio runtime for the
//! process and blocks on it from the calling (uploader, master) thread. Calling
//! it from inside an async executor is refused with an error instead of
//! deadlocking or panicking.
//!
//! Retries with exponential backoff and jitter are the SDK's standard retry mode
//! (3 attempts; `AWS_MAX_ATTEMPTS`, `AWS_RETRY_MODE` adjust it). Every request
//! has connect, read and per-attempt timeouts, so a dead endpoint fails a
//! checkpoint instead of hanging it.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io::{Read, Write};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use bytes::Bytes;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

use super::{CheckpointStorage, ObjectReader, ObjectWriter};
use crate::error::StorageError;

/// Multipart part size: large enough for throughput, small enough that a few
/// parts in flight stay cheap. S3 allows at most 10 000 parts, so one object can
/// reach 80 GiB.
pub const DEFAULT_PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts uploaded concurrently per writer (memory: this many parts plus one).
const PARTS_IN_FLIGHT: usize = 4;
/// A GET body chunk must arrive within this time.
const BODY_CHUNK_TIMEOUT: Duration = Duration::from_secs(30);
/// GET body chunks buffered ahead of the reader.
const READ_AHEAD_CHUNKS: usize = 64;

/// Options that select the S3 server and addressing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct S3Options {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub path_style: bool,
}

/// A parsed `s3://bucket/prefix?options` URI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    /// Key prefix without leading or trailing `/` (may be empty).
    pub prefix: String,
    pub options: S3Options,
    /// The query as given (with `?`), kept on every URI this storage reports.
    query: String,
}

fn bad(uri: &str, why: &str) -> StorageError {
    StorageError::UnsupportedUri(format!("{uri} ({why})"))
}

fn parse_bool(uri: &str, v: &str) -> Result<bool, StorageError> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        _ => Err(bad(uri, &format!("'{v}' is not a boolean"))),
    }
}

/// Parses an `s3://` URI. `env_path_style` is `RUNNEL_S3_PATH_STYLE`, passed in
/// so the parsing stays pure and testable.
pub fn parse_uri(uri: &str, env_path_style: Option<&str>) -> Result<S3Location, StorageError> {
    let rest = uri
        .strip_prefix("s3://")
        .ok_or_else(|| bad(uri, "not an s3:// URI"))?;
    let (path, query) = match rest.find('?') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (bucket, prefix) = match path.find('/') {
        Some(i) => (&path[..i], path[i + 1..].trim_matches('/')),
        None => (path, ""),
    };
    if bucket.is_empty() {
        return Err(bad(uri, "the bucket name is missing"));
    }
    if prefix.split('/').any(|s| s == "..") {
        return Err(bad(uri, "'..' is not allowed in a key prefix"));
    }
    let mut options = S3Options {
        path_style: match env_path_style {
            Some(v) => parse_bool(uri, v)?,
            None => false,
        },
        ..Default::default()
    };
    for pair in query.trim_start_matches('?').split('&') {
        if pair.is_empty() {
            continue;
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "endpoint" => options.endpoint = Some(v.to_string()),
            "region" => options.region = Some(v.to_string()),
            "path_style" => options.path_style = parse_bool(uri, v)?,
            _ => {
                return Err(bad(
                    uri,
                    &format!("unknown option '{k}'; known: endpoint, region, path_style"),
                ));
            }
        }
    }
    Ok(S3Location {
        bucket: bucket.to_string(),
        prefix: prefix.to_string(),
        options,
        query: query.to_string(),
    })
}

fn runtime() -> Result<&'static Runtime, StorageError> {
    static RT: OnceLock<Result<Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("runnel-s3")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| StorageError::Io {
        path: "s3".into(),
        source: std::io::Error::other(format!("cannot start the S3 I/O runtime: {e}")),
    })
}

/// Runs `f` on the S3 runtime and waits for it. Refuses to run inside an async
/// executor: blocking there could deadlock it.
fn block_on<F: Future>(path: &str, f: F) -> Result<F::Output, StorageError> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(StorageError::Io {
            path: path.to_string(),
            source: std::io::Error::other(
                "S3 storage was called from an async executor thread; call it from a \
                 dedicated thread or spawn_blocking",
            ),
        });
    }
    Ok(runtime()?.block_on(f))
}

/// One client per distinct configuration: building one resolves credentials
/// and region, which can take a while, and clients are cheap to clone.
fn client(opts: &S3Options) -> Result<Client, StorageError> {
    static CLIENTS: OnceLock<Mutex<HashMap<S3Options, Client>>> = OnceLock::new();
    let cache = CLIENTS.get_or_init(Default::default);
    let mut g = match cache.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    if let Some(c) = g.get(opts) {
        return Ok(c.clone());
    }
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(3))
        .read_timeout(Duration::from_secs(30))
        .operation_attempt_timeout(Duration::from_secs(60))
        .operation_timeout(Duration::from_secs(180))
        .build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(timeouts);
    if let Some(r) = &opts.region {
        loader = loader.region(Region::new(r.clone()));
    }
    if let Some(e) = &opts.endpoint {
        loader = loader.endpoint_url(e.clone());
    }
    let sdk = block_on("s3", loader.load())?;
    let mut b = aws_sdk_s3::config::Builder::from(&sdk)
        .force_path_style(opts.path_style)
        // The snapshot format carries its own checksums (XXH64 per file, checked
        // on restore); the SDK's extra CRC over every byte would cost CPU for
        // nothing. Operations that require one (DeleteObjects) still get it.
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
    if sdk.region().is_none() {
        b = b.region(Region::new("us-east-1"));
    }
    let c = Client::from_conf(b.build());
    g.insert(opts.clone(), c.clone());
    Ok(c)
}

fn status<E, R: HttpStatus>(e: &SdkError<E, R>) -> Option<u16> {
    e.raw_response().map(|r| r.status_code())
}

/// The HTTP status of a raw response (a trait so `status` stays generic).
trait HttpStatus {
    fn status_code(&self) -> u16;
}

impl HttpStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

fn sdk_err<E, R>(path: &str, what: &str, e: SdkError<E, R>) -> StorageError
where
    E: std::error::Error + ProvideErrorMetadata + 'static,
    R: std::fmt::Debug + HttpStatus,
{
    // A missing bucket is a configuration problem, not a missing object.
    if status(&e) == Some(404) && e.code() != Some("NoSuchBucket") {
        return StorageError::NotFound {
            path: path.to_string(),
        };
    }
    StorageError::Io {
        path: path.to_string(),
        source: std::io::Error::other(format!("S3 {what} failed: {}", DisplayErrorContext(&e))),
    }
}

fn io_err(e: StorageError) -> std::io::Error {
    match e {
        StorageError::Io { source, .. } => source,
        other => std::io::Error::other(other.to_string()),
    }
}

/// `s3://` checkpoint storage rooted at a bucket and key prefix.
pub struct S3Storage {
    client: Client,
    loc: S3Location,
    part_size: usize,
}

impl S3Storage {
    /// Opens `s3://bucket/prefix[?endpoint=..&region=..&path_style=..]`. No request
    /// is made; a wrong bucket or credentials show up on first use.
    pub fn open(uri: &str) -> Result<Self, StorageError> {
        let env = std::env::var("RUNNEL_S3_PATH_STYLE").ok();
        let loc = parse_uri(uri, env.as_deref())?;
        let client = client(&loc.options)?;
        Ok(S3Storage {
            client,
            loc,
            part_size: DEFAULT_PART_SIZE,
        })
    }

    /// Sets the multipart part size (at least 5 MiB, S3's minimum).
    pub fn with_part_size(mut self, bytes: usize) -> Self {
        self.part_size = bytes.max(5 * 1024 * 1024);
        self
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn bucket(&self) -> &str {
        &self.loc.bucket
    }

    /// The object key of a storage-relative path.
    pub fn key(&self, path: &str) -> String {
        let p = path.trim_matches('/');
        match (self.loc.prefix.is_empty(), p.is_empty()) {
            (true, _) => p.to_string(),
            (false, true) => self.loc.prefix.clone(),
            (false, false) => format!("{}/{p}", self.loc.prefix),
        }
    }

    /// Key prefix that selects everything under a directory (ends with `/`, or
    /// is empty for the bucket root).
    fn dir_prefix(&self, dir: &str) -> String {
        let k = self.key(dir);
        if k.is_empty() { k } else { format!("{k}/") }
    }

    /// Lists keys under `prefix`; with `delimiter`, also the common prefixes.
    fn list_keys(
        &self,
        prefix: &str,
        delimiter: bool,
    ) -> Result<(Vec<String>, Vec<String>), StorageError> {
        let path = self.uri_of_key(prefix);
        block_on(&path, async {
            let mut keys = Vec::new();
            let mut dirs = Vec::new();
            let mut token: Option<String> = None;
            loop {
                let mut req = self
                    .client
                    .list_objects_v2()
                    .bucket(&self.loc.bucket)
                    .prefix(prefix);
                if delimiter {
                    req = req.delimiter("/");
                }
                if let Some(t) = &token {
                    req = req.continuation_token(t);
                }
                let out = req
                    .send()
                    .await
                    .map_err(|e| sdk_err(&path, "ListObjectsV2", e))?;
                keys.extend(
                    out.contents()
                        .iter()
                        .filter_map(|o| o.key().map(String::from)),
                );
                dirs.extend(
                    out.common_prefixes()
                        .iter()
                        .filter_map(|p| p.prefix().map(String::from)),
                );
                match out.next_continuation_token() {
                    Some(t) if out.is_truncated() == Some(true) => token = Some(t.to_string()),
                    _ => return Ok((keys, dirs)),
                }
            }
        })?
    }

    fn uri_of_key(&self, key: &str) -> String {
        format!("s3://{}/{key}{}", self.loc.bucket, self.loc.query)
    }

    async fn head(&self, path: &str) -> Result<Option<u64>, StorageError> {
        let uri = self.uri(path);
        match self
            .client
            .head_object()
            .bucket(&self.loc.bucket)
            .key(self.key(path))
            .send()
            .await
        {
            Ok(o) => Ok(Some(o.content_length().unwrap_or(0).max(0) as u64)),
            Err(e) => match sdk_err(&uri, "HeadObject", e) {
                StorageError::NotFound { .. } => Ok(None),
                e => Err(e),
            },
        }
    }
}

impl CheckpointStorage for S3Storage {
    fn create(&self, path: &str) -> Result<Box<dyn ObjectWriter>, StorageError> {
        Ok(Box::new(S3Writer {
            client: self.client.clone(),
            bucket: self.loc.bucket.clone(),
            key: self.key(path),
            uri: self.uri(path),
            part_size: self.part_size,
            buf: Vec::new(),
            upload_id: None,
            next_part: 1,
            in_flight: VecDeque::new(),
            parts: Vec::new(),
            written: 0,
            done: false,
        }))
    }

    fn write_new(&self, path: &str, data: &[u8]) -> Result<(), StorageError> {
        let uri = self.uri(path);
        let key = self.key(path);
        block_on(&uri, async {
            let put = self
                .client
                .put_object()
                .bucket(&self.loc.bucket)
                .key(&key)
                .if_none_match("*")
                .body(ByteStream::from(data.to_vec()))
                .send()
                .await;
            match put {
                Ok(_) => Ok(()),
                Err(e) => match status(&e) {
                    // 412: it exists. 409: a concurrent conditional write won.
                    Some(412) | Some(409) => {
                        // A retried request whose first attempt succeeded also
                        // lands here: the object is then exactly ours.
                        let existing = self
                            .client
                            .get_object()
                            .bucket(&self.loc.bucket)
                            .key(&key)
                            .send()
                            .await;
                        if let Ok(o) = existing
                            && let Ok(body) = o.body.collect().await
                            && body.into_bytes().as_ref() == data
                        {
                            return Ok(());
                        }
                        Err(StorageError::AlreadyExists { path: uri.clone() })
                    }
                    _ => Err(sdk_err(&uri, "PutObject (If-None-Match)", e)),
                },
            }
        })?
    }

    fn open(&self, path: &str) -> Result<ObjectReader, StorageError> {
        let uri = self.uri(path);
        let key = self.key(path);
        let rt = runtime()?;
        let out = block_on(&uri, async {
            self.client
                .get_object()
                .bucket(&self.loc.bucket)
                .key(&key)
                .send()
                .await
                .map_err(|e| sdk_err(&uri, "GetObject", e))
        })??;
        // The body is pumped by a task so that network transfer overlaps with
        // decoding on the reading thread; the channel bounds what is buffered.
        let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD_CHUNKS);
        let mut body = out.body;
        let task_uri = uri.clone();
        rt.spawn(async move {
            loop {
                let next = tokio::time::timeout(BODY_CHUNK_TIMEOUT, body.try_next()).await;
                let item = match next {
                    Ok(Ok(Some(b))) => Ok(b),
                    Ok(Ok(None)) => return,
                    Ok(Err(e)) => Err(std::io::Error::other(format!(
                        "{task_uri}: reading the S3 object failed: {}",
                        DisplayErrorContext(&e)
                    ))),
                    Err(_) => Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "{task_uri}: no data from S3 for {} s",
                            BODY_CHUNK_TIMEOUT.as_secs()
                        ),
                    )),
                };
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Box::new(S3Reader {
            rx,
            chunk: Bytes::new(),
            done: false,
        }))
    }

    fn exists(&self, path: &str) -> Result<bool, StorageError> {
        Ok(block_on(&self.uri(path), self.head(path))??.is_some())
    }

    fn size(&self, path: &str) -> Result<u64, StorageError> {
        let uri = self.uri(path);
        block_on(&uri, self.head(path))??.ok_or(StorageError::NotFound { path: uri })
    }

    fn list(&self, dir: &str) -> Result<Vec<String>, StorageError> {
        let prefix = self.dir_prefix(dir);
        let (keys, dirs) = self.list_keys(&prefix, true)?;
        let mut out: Vec<String> = keys
            .iter()
            .chain(dirs.iter())
            .filter_map(|k| k.strip_prefix(&prefix))
            .map(|n| n.trim_end_matches('/').to_string())
            .filter(|n| !n.is_empty() && !n.starts_with('.'))
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    fn delete(&self, path: &str) -> Result<(), StorageError> {
        let uri = self.uri(path);
        block_on(&uri, async {
            self.client
                .delete_object()
                .bucket(&self.loc.bucket)
                .key(self.key(path))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| sdk_err(&uri, "DeleteObject", e))
        })?
    }

    fn delete_dir(&self, dir: &str) -> Result<(), StorageError> {
        let prefix = self.dir_prefix(dir);
        let uri = self.uri(dir);
        if prefix.is_empty() {
            // Never wipe a whole bucket by accident.
            return Err(StorageError::Io {
                path: uri,
                source: std::io::Error::other("refusing to delete a whole bucket"),
            });
        }
        let (keys, _) = self.list_keys(&prefix, false)?;
        for batch in keys.chunks(1000) {
            let ids = batch
                .iter()
                .map(|k| ObjectIdentifier::builder().key(k).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| StorageError::Io {
                    path: uri.clone(),
                    source: std::io::Error::other(e.to_string()),
                })?;
            let delete = Delete::builder()
                .set_objects(Some(ids))
                .quiet(true)
                .build()
                .map_err(|e| StorageError::Io {
                    path: uri.clone(),
                    source: std::io::Error::other(e.to_string()),
                })?;
            let out = block_on(&uri, async {
                self.client
                    .delete_objects()
                    .bucket(&self.loc.bucket)
                    .delete(delete)
                    .send()
                    .await
                    .map_err(|e| sdk_err(&uri, "DeleteObjects", e))
            })??;
            if let Some(err) = out.errors().first() {
                return Err(StorageError::Io {
                    path: uri.clone(),
                    source: std::io::Error::other(format!(
                        "S3 could not delete {} object(s), e.g. {}: {}",
                        out.errors().len(),
                        err.key().unwrap_or("?"),
                        err.message().unwrap_or("no message")
                    )),
                });
            }
        }
        Ok(())
    }

    fn uri(&self, path: &str) -> String {
        self.uri_of_key(&self.key(path))
    }
}

/// Streams an object up: small objects with one PutObject, large ones as a
/// multipart upload whose parts go up concurrently while the caller keeps
/// writing. Dropped without `finish`, it aborts the multipart upload so no
/// parts linger (and are billed) in the bucket.
struct S3Writer {
    client: Client,
    bucket: String,
    key: String,
    uri: String,
    part_size: usize,
    buf: Vec<u8>,
    upload_id: Option<String>,
    next_part: i32,
    in_flight: VecDeque<JoinHandle<Result<CompletedPart, StorageError>>>,
    parts: Vec<CompletedPart>,
    written: u64,
    done: bool,
}

impl S3Writer {
    fn start_part(&mut self) -> Result<(), StorageError> {
        if self.upload_id.is_none() {
            let out = block_on(&self.uri, async {
                self.client
                    .create_multipart_upload()
                    .bucket(&self.bucket)
                    .key(&self.key)
                    .send()
                    .await
                    .map_err(|e| sdk_err(&self.uri, "CreateMultipartUpload", e))
            })??;
            let id = out.upload_id().ok_or_else(|| StorageError::Io {
                path: self.uri.clone(),
                source: std::io::Error::other("CreateMultipartUpload returned no upload id"),
            })?;
            self.upload_id = Some(id.to_string());
        }
        while self.in_flight.len() >= PARTS_IN_FLIGHT {
            self.wait_oldest()?;
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(self.part_size));
        let n = self.next_part;
        self.next_part += 1;
        let (client, bucket, key, uri) = (
            self.client.clone(),
            self.bucket.clone(),
            self.key.clone(),
            self.uri.clone(),
        );
        let upload_id = self.upload_id.clone().unwrap_or_default();
        let task = runtime()?.spawn(async move {
            let out = client
                .upload_part()
                .bucket(bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(n)
                .body(ByteStream::from(data))
                .send()
                .await
                .map_err(|e| sdk_err(&uri, "UploadPart", e))?;
            Ok(CompletedPart::builder()
                .part_number(n)
                .set_e_tag(out.e_tag().map(String::from))
                .build())
        });
        self.in_flight.push_back(task);
        Ok(())
    }

    fn wait_oldest(&mut self) -> Result<(), StorageError> {
        let Some(t) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let part = block_on(&self.uri, t)?.map_err(|e| StorageError::Io {
            path: self.uri.clone(),
            source: std::io::Error::other(format!("part upload task failed: {e}")),
        })??;
        self.parts.push(part);
        Ok(())
    }

    fn abort(&mut self) {
        for t in self.in_flight.drain(..) {
            t.abort();
        }
        if let Some(id) = self.upload_id.take() {
            let req = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(&self.key)
                .upload_id(id);
            let res = block_on(&self.uri, req.send());
            if !matches!(res, Ok(Ok(_))) {
                tracing::warn!(object = %self.uri, "could not abort a multipart upload; a bucket lifecycle rule for incomplete uploads cleans it up");
            }
        }
    }

    fn finish_inner(&mut self) -> Result<u64, StorageError> {
        if self.upload_id.is_none() {
            let data = std::mem::take(&mut self.buf);
            block_on(&self.uri, async {
                self.client
                    .put_object()
                    .bucket(&self.bucket)
                    .key(&self.key)
                    .body(ByteStream::from(data))
                    .send()
                    .await
                    .map_err(|e| sdk_err(&self.uri, "PutObject", e))
            })??;
            return Ok(self.written);
        }
        if !self.buf.is_empty() {
            self.start_part()?;
        }
        while !self.in_flight.is_empty() {
            self.wait_oldest()?;
        }
        let mut parts = std::mem::take(&mut self.parts);
        parts.sort_by_key(|p| p.part_number());
        let upload_id = self.upload_id.clone().unwrap_or_default();
        block_on(&self.uri, async {
            let done = self
                .client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(&self.key)
                .upload_id(upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await;
            match done {
                Ok(_) => Ok(()),
                // Some S3-compatible servers (moto 5) answer 200 with a body the
                // SDK cannot parse. The upload is complete if the object is there
                // with every byte we sent.
                Err(e) if status(&e) == Some(200) => {
                    let head = self
                        .client
                        .head_object()
                        .bucket(&self.bucket)
                        .key(&self.key)
                        .send()
                        .await;
                    match head {
                        Ok(h) if h.content_length() == Some(self.written as i64) => Ok(()),
                        _ => Err(sdk_err(&self.uri, "CompleteMultipartUpload", e)),
                    }
                }
                Err(e) => Err(sdk_err(&self.uri, "CompleteMultipartUpload", e)),
            }
        })??;
        self.upload_id = None;
        Ok(self.written)
    }
}

impl Write for S3Writer {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.done {
            return Err(std::io::Error::other("writer already finished"));
        }
        if self.buf.capacity() == 0 {
            self.buf.reserve_exact(self.part_size);
        }
        let room = self.part_size - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        self.written += n as u64;
        if self.buf.len() == self.part_size {
            self.start_part().map_err(io_err)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl ObjectWriter for S3Writer {
    fn finish(mut self: Box<Self>) -> Result<u64, StorageError> {
        let r = self.finish_inner();
        if r.is_err() {
            self.abort();
        }
        self.done = true;
        r
    }
}

impl Drop for S3Writer {
    fn drop(&mut self) {
        if !self.done {
            self.abort();
        }
    }
}

/// Reads the chunks that the body task pumps.
struct S3Reader {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
    chunk: Bytes,
    done: bool,
}

impl Read for S3Reader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            if self.done || buf.is_empty() {
                return Ok(0);
            }
            if tokio::runtime::Handle::try_current().is_ok() {
                return Err(std::io::Error::other(
                    "S3 object read from an async executor thread",
                ));
            }
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.chunk = b,
                Some(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                None => {
                    self.done = true;
                    return Ok(0);
                }
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        let _ = self.chunk.split_to(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_parsing() {
        let l = parse_uri("s3://bkt/jobs/j1/", None).unwrap();
        assert_eq!((l.bucket.as_str(), l.prefix.as_str()), ("bkt", "jobs/j1"));
        assert_eq!(l.options, S3Options::default());
        let l = parse_uri(
            "s3://bkt?endpoint=http://127.0.0.1:9000&region=eu-west-1&path_style=true",
            None,
        )
        .unwrap();
        assert_eq!(l.prefix, "");
        assert_eq!(
            l.options,
            S3Options {
                endpoint: Some("http://127.0.0.1:9000".into()),
                region: Some("eu-west-1".into()),
                path_style: true,
            }
        );
        assert!(parse_uri("s3://b/p", Some("1")).unwrap().options.path_style);
        assert!(
            !parse_uri("s3://b/p?path_style=false", Some("true"))
                .unwrap()
                .options
                .path_style,
            "the URI wins over the environment"
        );
        for bad_uri in [
            "s3:///p",
            "s3://",
            "s3://b/p?colour=red",
            "s3://b/p?path_style=maybe",
            "s3://b/../x",
            "file:///x",
        ] {
            let e = parse_uri(bad_uri, None).unwrap_err();
            assert!(
                matches!(e, StorageError::UnsupportedUri(_)),
                "{bad_uri}: {e}"
            );
        }
        assert!(parse_uri("s3://b", Some("perhaps")).is_err());
    }
}
