//! Client of a runtime pod's control API (`runnel-api` messages).
//!
//! ureq (already the workspace's HTTP client, small and synchronous) runs on
//! tokio's blocking pool so the reconcile tasks never block an executor
//! thread; a hyper client would add a second HTTP stack for four calls.

use std::time::Duration;

use runnel_api::{
    CheckpointsResponse, ErrorResponse, JobStatusResponse, SavepointRequest, SavepointStatus,
    StopRequest, TriggerResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control API {url}: {source}")]
    Transport {
        url: String,
        #[source]
        source: Box<ureq::Error>,
    },
    #[error("control API {url} answered {status}: {message}")]
    Status {
        url: String,
        status: u16,
        message: String,
    },
    #[error("control API {url}: unreadable answer: {message}")]
    Body { url: String, message: String },
    #[error("control API call was cancelled")]
    Join,
}

/// One runtime's control API, e.g. `http://10.0.0.7:8081`.
#[derive(Clone, Debug)]
pub struct ControlClient {
    agent: ureq::Agent,
    base: String,
}

impl ControlClient {
    pub fn new(base_url: &str, timeout: Duration) -> ControlClient {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .into();
        ControlClient {
            agent,
            base: base_url.trim_end_matches('/').to_string(),
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `GET /v1/job`.
    pub async fn status(&self) -> Result<JobStatusResponse, ControlError> {
        self.get("/v1/job")
            .await?
            .ok_or_else(|| self.not_found("/v1/job"))
    }

    /// `GET /v1/job/checkpoints`.
    pub async fn checkpoints(&self) -> Result<CheckpointsResponse, ControlError> {
        self.get("/v1/job/checkpoints")
            .await?
            .ok_or_else(|| self.not_found("/v1/job/checkpoints"))
    }

    /// `POST /v1/job/savepoints` (or `/v1/job/stop` when `stop`).
    pub async fn trigger_savepoint(
        &self,
        target_directory: &str,
        stop: bool,
    ) -> Result<TriggerResponse, ControlError> {
        let dir = Some(target_directory.to_string());
        if stop {
            self.post(
                "/v1/job/stop",
                StopRequest {
                    target_directory: dir,
                    drain: false,
                },
            )
            .await
        } else {
            self.post(
                "/v1/job/savepoints",
                SavepointRequest {
                    target_directory: dir,
                },
            )
            .await
        }
    }

    /// `GET /v1/job/savepoints/{id}`; `None` when the runtime does not know it.
    pub async fn savepoint_status(
        &self,
        trigger_id: &str,
    ) -> Result<Option<SavepointStatus>, ControlError> {
        self.get(&format!("/v1/job/savepoints/{trigger_id}")).await
    }

    fn not_found(&self, path: &str) -> ControlError {
        ControlError::Status {
            url: format!("{}{path}", self.base),
            status: 404,
            message: "not found".into(),
        }
    }

    async fn get<T: DeserializeOwned + Send + 'static>(
        &self,
        path: &str,
    ) -> Result<Option<T>, ControlError> {
        let agent = self.agent.clone();
        let url = format!("{}{path}", self.base);
        tokio::task::spawn_blocking(move || {
            let resp = agent
                .get(&url)
                .call()
                .map_err(|e| ControlError::Transport {
                    url: url.clone(),
                    source: Box::new(e),
                })?;
            if resp.status().as_u16() == 404 {
                return Ok(None);
            }
            read(url, resp).map(Some)
        })
        .await
        .map_err(|_| ControlError::Join)?
    }

    async fn post<B: Serialize + Send + 'static, T: DeserializeOwned + Send + 'static>(
        &self,
        path: &str,
        body: B,
    ) -> Result<T, ControlError> {
        let agent = self.agent.clone();
        let url = format!("{}{path}", self.base);
        tokio::task::spawn_blocking(move || {
            let resp = agent
                .post(&url)
                .send_json(&body)
                .map_err(|e| ControlError::Transport {
                    url: url.clone(),
                    source: Box::new(e),
                })?;
            read(url, resp)
        })
        .await
        .map_err(|_| ControlError::Join)?
    }
}

fn read<T: DeserializeOwned>(
    url: String,
    mut resp: ureq::http::Response<ureq::Body>,
) -> Result<T, ControlError> {
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| ControlError::Body {
            url: url.clone(),
            message: e.to_string(),
        })?;
    if !(200..300).contains(&status) {
        let message = serde_json::from_str::<ErrorResponse>(&text)
            .map(|e| e.message)
            .unwrap_or(text);
        return Err(ControlError::Status {
            url,
            status,
            message,
        });
    }
    serde_json::from_str(&text).map_err(|e| ControlError::Body {
        url,
        message: e.to_string(),
    })
}
