//! A blocking client of a job's control API, for the CLI.

use std::time::{Duration, Instant};

use runnel_api::{
    CheckpointsResponse, ErrorResponse, JobStatusResponse, SavepointRequest, SavepointStatus,
    StopRequest, TriggerResponse, TriggerState,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Exit codes, documented in `docs/cli.md`.
pub mod exit {
    /// The command failed (a savepoint failed, a job ended unexpectedly, ...).
    pub const FAILURE: u8 = 1;
    // 2 is a usage error, reported by clap itself.
    /// The job cannot serve the request in its current state (HTTP 409).
    pub const CONFLICT: u8 = 3;
    /// The job's control API could not be reached.
    pub const UNREACHABLE: u8 = 4;
    /// The request was malformed or named something that does not exist (4xx).
    pub const REJECTED: u8 = 5;
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the job at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("the job refused the request (HTTP {status}): {message}")]
    Api { status: u16, message: String },
    #[error("unexpected answer from {url}: {message}")]
    Protocol { url: String, message: String },
    #[error("gave up after {0:?} waiting for the savepoint")]
    Timeout(Duration),
}

impl ClientError {
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Unreachable { .. } => exit::UNREACHABLE,
            ClientError::Api { status: 409, .. } => exit::CONFLICT,
            ClientError::Api { status, .. } if (400..500).contains(status) => exit::REJECTED,
            _ => exit::FAILURE,
        }
    }
}

pub struct ControlClient {
    base: String,
    agent: ureq::Agent,
}

impl ControlClient {
    /// `job_url` is the job's control address, e.g. `http://127.0.0.1:8081`.
    pub fn new(job_url: &str) -> Result<Self, ClientError> {
        let base = job_url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ClientError::Protocol {
                url: job_url.to_string(),
                message: "a job URL starts with http:// (e.g. http://127.0.0.1:8081)".into(),
            });
        }
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        Ok(ControlClient { base, agent })
    }

    fn decode<T: DeserializeOwned>(
        &self,
        url: &str,
        r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<T, ClientError> {
        let mut resp = r.map_err(|e| ClientError::Unreachable {
            url: url.to_string(),
            message: e.to_string(),
        })?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| ClientError::Protocol {
                url: url.to_string(),
                message: e.to_string(),
            })?;
        if !(200..300).contains(&status) {
            let message = serde_json::from_str::<ErrorResponse>(&body)
                .map(|e| e.message)
                .unwrap_or(body);
            return Err(ClientError::Api { status, message });
        }
        serde_json::from_str(&body).map_err(|e| ClientError::Protocol {
            url: url.to_string(),
            message: format!("{e}: {body}"),
        })
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let r = self.agent.get(&url).call();
        self.decode(&url, r)
    }

    fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let json = serde_json::to_string(body).map_err(|e| ClientError::Protocol {
            url: url.clone(),
            message: e.to_string(),
        })?;
        let r = self
            .agent
            .post(&url)
            .header("content-type", "application/json")
            .send(json);
        self.decode(&url, r)
    }

    pub fn status(&self) -> Result<JobStatusResponse, ClientError> {
        self.get("/v1/job")
    }

    pub fn checkpoints(&self) -> Result<CheckpointsResponse, ClientError> {
        self.get("/v1/job/checkpoints")
    }

    pub fn trigger_savepoint(&self, dir: Option<String>) -> Result<String, ClientError> {
        let r: TriggerResponse = self.post(
            "/v1/job/savepoints",
            &SavepointRequest {
                target_directory: dir,
            },
        )?;
        Ok(r.trigger_id)
    }

    pub fn stop(&self, dir: Option<String>, drain: bool) -> Result<String, ClientError> {
        let r: TriggerResponse = self.post(
            "/v1/job/stop",
            &StopRequest {
                target_directory: dir,
                drain,
            },
        )?;
        Ok(r.trigger_id)
    }

    pub fn cancel(&self) -> Result<(), ClientError> {
        let _: serde_json::Value = self.post("/v1/job/cancel", &serde_json::json!({}))?;
        Ok(())
    }

    pub fn savepoint_status(&self, trigger: &str) -> Result<SavepointStatus, ClientError> {
        self.get(&format!("/v1/job/savepoints/{trigger}"))
    }

    /// Polls a trigger until it is no longer in progress.
    pub fn wait_savepoint(
        &self,
        trigger: &str,
        timeout: Duration,
    ) -> Result<SavepointStatus, ClientError> {
        let deadline = Instant::now() + timeout;
        let mut delay = Duration::from_millis(20);
        loop {
            let s = self.savepoint_status(trigger)?;
            if s.state != TriggerState::InProgress {
                return Ok(s);
            }
            if Instant::now() >= deadline {
                return Err(ClientError::Timeout(timeout));
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(500));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_answer() {
        let e = |status| ClientError::Api {
            status,
            message: String::new(),
        };
        assert_eq!(e(409).exit_code(), exit::CONFLICT);
        assert_eq!(e(404).exit_code(), exit::REJECTED);
        assert_eq!(e(500).exit_code(), exit::FAILURE);
        let u = ClientError::Unreachable {
            url: String::new(),
            message: String::new(),
        };
        assert_eq!(u.exit_code(), exit::UNREACHABLE);
    }

    #[test]
    fn job_urls_must_be_http() {
        assert!(ControlClient::new("localhost:8081").is_err());
        assert!(ControlClient::new("http://localhost:8081/").is_ok());
    }
}
