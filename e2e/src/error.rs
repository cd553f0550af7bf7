//! API errors, rendered as Kubernetes `Status` objects.

use serde_json::{Value, json};

/// An error answered with a `Status` body and its HTTP code.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    /// `details` of the Status (name, group, kind, causes), if any.
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    pub fn with_details(mut self, details: Value) -> ApiError {
        self.details = Some(details);
        self
    }

    pub fn not_found(resource: &str, name: &str) -> ApiError {
        ApiError::new(404, "NotFound", format!("{resource} \"{name}\" not found"))
            .with_details(json!({ "name": name, "kind": resource }))
    }

    pub fn already_exists(resource: &str, name: &str) -> ApiError {
        ApiError::new(
            409,
            "AlreadyExists",
            format!("{resource} \"{name}\" already exists"),
        )
        .with_details(json!({ "name": name, "kind": resource }))
    }

    pub fn conflict(resource: &str, name: &str, why: &str) -> ApiError {
        ApiError::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {resource} \"{name}\": {why}"),
        )
        .with_details(json!({ "name": name, "kind": resource }))
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    /// 422 with one cause per field error, like the apiserver's validation:
    /// the message names the qualified kind (`StreamJob.runnel.dev`), the
    /// details carry kind and group apart, which is what kubectl prints
    /// (`The StreamJob "x" is invalid: ...`).
    pub fn invalid(kind: &str, group: &str, name: &str, causes: &[(String, String)]) -> ApiError {
        let kind_group = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        let list: Vec<String> = causes.iter().map(|(f, m)| format!("{f}: {m}")).collect();
        let msg = if list.len() == 1 {
            format!("{kind_group} \"{name}\" is invalid: {}", list[0])
        } else {
            format!("{kind_group} \"{name}\" is invalid: [{}]", list.join(", "))
        };
        ApiError::new(422, "Invalid", msg).with_details(json!({
            "name": name,
            "group": group,
            "kind": kind,
            "causes": causes.iter().map(|(f, m)| json!({
                "reason": "FieldValueInvalid", "message": m, "field": f
            })).collect::<Vec<_>>(),
        }))
    }

    pub fn method_not_allowed(message: impl Into<String>) -> ApiError {
        ApiError::new(405, "MethodNotAllowed", message)
    }

    pub fn not_implemented(message: impl Into<String>) -> ApiError {
        ApiError::new(501, "NotImplemented", message)
    }

    pub fn gone(message: impl Into<String>) -> ApiError {
        ApiError::new(410, "Expired", message)
    }

    pub fn status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
