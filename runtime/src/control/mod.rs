//! The per-job HTTP control API (status, checkpoints, savepoints, stop,
//! cancel), Prometheus metrics and health probes. The operator and the CLI
//! drive a job through it; `docs/control-api.yaml` describes it as OpenAPI.
//!
//! The server runs on its own small tokio runtime in a dedicated thread, so it
//! never competes with task threads and the engine stays free of async. Every
//! handler only sends a message to the job master or reads shared status, so
//! nothing blocks the executor.

mod convert;
mod triggers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use runnel_api::{
    CheckpointsResponse, ErrorResponse, JobState, SavepointRequest, StopRequest, TriggerResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use crate::executor::JobHandle;
use crate::metrics::CONTENT_TYPE;
pub use convert::{checkpoint_info, status_response};
pub use triggers::Triggers;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot bind the control API to {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot start the control API: {0}")]
    Start(std::io::Error),
}

#[derive(Clone, Debug)]
pub struct ControlOptions {
    /// Where to listen; port 0 picks a free port (see [`ControlServer::addr`]).
    pub addr: SocketAddr,
    /// Savepoint directory used when a request names none.
    pub default_savepoint_dir: Option<String>,
}

struct AppState {
    job: JobHandle,
    triggers: Triggers,
    default_dir: Option<String>,
}

/// A running control server; dropping it shuts the server down.
pub struct ControlServer {
    addr: SocketAddr,
    state: Arc<AppState>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ControlServer {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL of the job, e.g. `http://127.0.0.1:8081`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits until every finished savepoint request has been read by a client
    /// at least once, or `timeout` passes. A process that ends right after a
    /// stop-with-savepoint calls this so that whoever asked learns the path.
    pub fn wait_until_results_read(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if !self.state.triggers.has_unread_results() {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts serving `job` on `opts.addr`.
pub fn serve(job: JobHandle, opts: ControlOptions) -> Result<ControlServer, ControlError> {
    let std_listener =
        std::net::TcpListener::bind(opts.addr).map_err(|source| ControlError::Bind {
            addr: opts.addr.to_string(),
            source,
        })?;
    std_listener
        .set_nonblocking(true)
        .map_err(ControlError::Start)?;
    let addr = std_listener.local_addr().map_err(ControlError::Start)?;
    let state = Arc::new(AppState {
        job,
        triggers: Triggers::default(),
        default_dir: opts.default_savepoint_dir,
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("control-api")
        .enable_io()
        .enable_time()
        .build()
        .map_err(ControlError::Start)?;
    let (tx, rx) = oneshot::channel::<()>();
    let app = router(state.clone());
    let listener = {
        let _g = rt.enter();
        tokio::net::TcpListener::from_std(std_listener).map_err(ControlError::Start)?
    };
    let thread = std::thread::Builder::new()
        .name("control-api".into())
        .spawn(move || {
            rt.block_on(async move {
                let r = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = rx.await;
                    })
                    .await;
                if let Err(e) = r {
                    tracing::error!(error = %e, "control API server failed");
                }
            });
        })
        .map_err(ControlError::Start)?;
    tracing::info!(%addr, "control API listening");
    Ok(ControlServer {
        addr,
        state,
        shutdown: Some(tx),
        thread: Some(thread),
    })
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/job", get(get_status))
        .route("/v1/job/checkpoints", get(get_checkpoints))
        .route("/v1/job/savepoints", post(post_savepoint))
        .route("/v1/job/savepoints/{trigger_id}", get(get_savepoint))
        .route("/v1/job/stop", post(post_stop))
        .route("/v1/job/cancel", post(post_cancel))
        .route("/metrics", get(get_metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .with_state(state)
}

type Shared = State<Arc<AppState>>;

fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the response: {e}"),
        ),
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    ApiError::new(status, message).into_response()
}

/// An error answer: an HTTP status with a JSON `{"message": ...}` body.
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorResponse {
            message: self.message,
        };
        let bytes = serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec());
        (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            bytes,
        )
            .into_response()
    }
}

/// An empty body means "all defaults"; anything else must be valid JSON.
fn parse_body<T: DeserializeOwned + Default>(body: &Bytes) -> Result<T, ApiError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid request body: {e}"),
        )
    })
}

/// The wire name of a state (`RUNNING`), for messages.
fn state_name(state: JobState) -> String {
    serde_json::to_value(state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{state:?}"))
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such endpoint")
}

async fn get_status(State(s): Shared) -> Response {
    json(StatusCode::OK, &status_response(&s.job.status()))
}

async fn get_checkpoints(State(s): Shared) -> Response {
    let st = s.job.status();
    let resp = CheckpointsResponse {
        completed: st.completed.iter().map(checkpoint_info).collect(),
        in_progress: st
            .in_progress
            .iter()
            .map(convert::in_progress_info)
            .collect(),
        completed_count: st.completed_checkpoints,
        failed_count: st.failed_checkpoints,
    };
    json(StatusCode::OK, &resp)
}

/// 409 unless the job is running and no stop is under way.
fn check_can_snapshot(s: &AppState) -> Result<(), ApiError> {
    let state = s.job.status().state;
    if state != JobState::Running {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("the job is {}, not RUNNING", state_name(state)),
        ));
    }
    if s.triggers.stop_in_progress() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "a stop-with-savepoint is in progress",
        ));
    }
    Ok(())
}

fn target_dir(s: &AppState, requested: Option<String>) -> Result<String, ApiError> {
    requested
        .filter(|d| !d.trim().is_empty())
        .or_else(|| s.default_dir.clone())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "no targetDirectory given and the job has no default savepoint directory",
            )
        })
}

async fn post_savepoint(State(s): Shared, body: Bytes) -> Result<Response, ApiError> {
    let req: SavepointRequest = parse_body(&body)?;
    check_can_snapshot(&s)?;
    let dir = target_dir(&s, req.target_directory)?;
    let rx = s
        .job
        .trigger_savepoint_async(&dir)
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, e.to_string()))?;
    let id = s.triggers.add(rx, false);
    Ok(json(
        StatusCode::ACCEPTED,
        &TriggerResponse { trigger_id: id },
    ))
}

async fn get_savepoint(State(s): Shared, Path(id): Path<String>) -> Response {
    match s.triggers.poll(&id) {
        Some(st) => json(StatusCode::OK, &st),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no savepoint trigger '{id}'"),
        ),
    }
}

async fn post_stop(State(s): Shared, body: Bytes) -> Result<Response, ApiError> {
    let req: StopRequest = parse_body(&body)?;
    check_can_snapshot(&s)?;
    let dir = target_dir(&s, req.target_directory)?;
    let rx = s
        .job
        .stop_with_savepoint_async(&dir, req.drain)
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, e.to_string()))?;
    let id = s.triggers.add(rx, true);
    Ok(json(
        StatusCode::ACCEPTED,
        &TriggerResponse { trigger_id: id },
    ))
}

async fn post_cancel(State(s): Shared) -> Response {
    let state = s.job.status().state;
    if state.is_terminal() {
        return error(
            StatusCode::CONFLICT,
            format!("the job has already ended ({})", state_name(state)),
        );
    }
    match s.job.cancel() {
        Ok(()) => (
            StatusCode::ACCEPTED,
            [(header::CONTENT_TYPE, "application/json")],
            "{}",
        )
            .into_response(),
        Err(e) => error(StatusCode::CONFLICT, e.to_string()),
    }
}

async fn get_metrics(State(s): Shared) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        s.job.metrics().encode(),
    )
        .into_response()
}

/// Liveness: the process and its control plane answer.
async fn healthz() -> Response {
    (StatusCode::OK, "ok").into_response()
}

/// Readiness: the job is running (deployed and processing).
async fn readyz(State(s): Shared) -> Response {
    let state = s.job.status().state;
    if state == JobState::Running {
        (StatusCode::OK, "ready").into_response()
    } else {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the job is {}", state_name(state)),
        )
    }
}
