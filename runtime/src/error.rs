//! Error types. Library code returns these; only the `runnel` binary uses `anyhow`.

use std::fmt;

/// An error raised by user code (a function, source or sink). Boxed so that user
/// functions can use `?` on any error type without the engine knowing it.
#[derive(Debug)]
pub struct UserError(Box<dyn std::error::Error + Send + Sync + 'static>, bool);

impl UserError {
    pub fn msg(message: impl Into<String>) -> Self {
        UserError(message.into().into(), false)
    }

    /// An error that restarting cannot fix (e.g. a poison record under the
    /// `fail` policy): the job fails at once instead of restarting into the
    /// same error forever.
    pub fn fatal(message: impl Into<String>) -> Self {
        UserError(message.into().into(), true)
    }

    pub fn is_fatal(&self) -> bool {
        self.1
    }
}

impl fmt::Display for UserError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for UserError {
    fn from(e: E) -> Self {
        UserError(Box::new(e), false)
    }
}

/// Result type of user functions.
pub type FnResult<T = ()> = Result<T, UserError>;

/// Errors from checkpoint storage.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("unsupported storage URI '{0}': expected file:///absolute/path or s3://bucket/prefix")]
    UnsupportedUri(String),
    #[error("{path}: already exists")]
    AlreadyExists { path: String },
    #[error("{path}: not found")]
    NotFound { path: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Errors reading or mapping snapshot (checkpoint or savepoint) data.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{path}: corrupt snapshot metadata: {reason}")]
    CorruptMetadata { path: String, reason: String },
    #[error(
        "{path}: unsupported snapshot format version {found} (this runtime reads versions {supported})"
    )]
    UnsupportedVersion {
        path: String,
        found: u32,
        supported: String,
    },
    #[error("{path}: corrupt state file: {reason}")]
    CorruptStateFile { path: String, reason: String },
    #[error("{path} is not a snapshot: {reason}")]
    NotASnapshot { path: String, reason: String },
    #[error("no complete checkpoint found under {0}")]
    NoCompleteCheckpoint(String),
    #[error("{0}")]
    Incompatible(String),
    #[error("state encoding failed: {0}")]
    Encode(String),
    #[error("writing state failed: {0}")]
    Write(#[source] std::io::Error),
    #[error("{path}: reading failed: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Errors that fail a running job attempt (and trigger the restart strategy).
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("{task}: user function failed: {error}")]
    User { task: String, error: UserError },
    #[error("{task}: panicked: {message}")]
    Panic { task: String, message: String },
    #[error("{task}: {message}")]
    State { task: String, message: String },
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("injected failure: {0}")]
    Injected(String),
    #[error("checkpoint failures exceeded the tolerable limit ({tolerable}): last failure: {last}")]
    TooManyCheckpointFailures { tolerable: u32, last: String },
    /// Restored state cannot be read by this job (e.g. a TTL or type change).
    /// Restarting cannot help, so the job fails at once.
    #[error("{0}")]
    Incompatible(String),
    #[error("attempt cancelled")]
    Cancelled,
    #[error("internal error: {0}")]
    Internal(String),
}

/// Errors building or running a job.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("invalid job: {0}")]
    InvalidJob(String),
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    #[error("cannot restore: {0}")]
    Restore(#[from] SnapshotError),
    #[error("job failed and will not be restarted ({reason}): {cause}")]
    Failed { reason: String, cause: String },
    #[error("job was cancelled")]
    Cancelled,
    #[error("{0}")]
    Storage(#[from] StorageError),
    #[error("the job has already terminated")]
    Terminated,
    #[error("request rejected: {0}")]
    Rejected(String),
}
