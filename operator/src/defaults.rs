//! Installation-wide defaults for runtime pods, set by whoever installs the
//! operator (the Helm chart's `runtime.*` values): the runtime image, the S3
//! credentials Secret, and environment (S3 endpoint, region, path style).
//!
//! Why in the operator and not in each StreamJob: one cluster usually has one
//! runtime image and one object store, and a StreamJob should not have to
//! repeat them. A StreamJob's own setting always wins.

use std::borrow::Cow;

use k8s_openapi::api::core::v1::{Container, EnvVar};

use crate::crd::StreamJobSpec;

/// Defaults applied to every StreamJob this operator reconciles.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RuntimeDefaults {
    /// Image for StreamJobs whose `spec.image` is empty or unset.
    pub image: Option<String>,
    /// `s3CredentialsSecret` for StreamJobs that set none (a Secret of that
    /// name must exist in the StreamJob's namespace).
    pub s3_credentials_secret: Option<String>,
    /// Environment added to the runtime and disposal containers; a variable
    /// of the same name set by the StreamJob's `podTemplate` wins.
    pub env: Vec<EnvVar>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DefaultsError {
    #[error("runtime env '{0}': expected NAME=VALUE")]
    NotAnAssignment(String),
    #[error("runtime env '{0}': the name is not a valid environment variable name")]
    BadName(String),
}

/// Parses `NAME=VALUE` (the value may contain `=` and be empty).
pub fn parse_env(s: &str) -> Result<EnvVar, DefaultsError> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| DefaultsError::NotAnAssignment(s.to_string()))?;
    // Kubernetes' rule (C_IDENTIFIER-like, plus `-` and `.`): no empty name,
    // no leading digit.
    let valid = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !valid {
        return Err(DefaultsError::BadName(s.to_string()));
    }
    Ok(EnvVar {
        name: name.to_string(),
        value: Some(value.to_string()),
        value_from: None,
    })
}

impl RuntimeDefaults {
    /// The spec with the image and S3 Secret filled in where it has none.
    /// Applied before the reconcile decides, so the deployed spec (and its
    /// change detection) includes the defaults.
    pub fn resolve<'a>(&self, spec: &'a StreamJobSpec) -> Cow<'a, StreamJobSpec> {
        let image = self.image.as_ref().filter(|_| spec.image.trim().is_empty());
        let secret = self
            .s3_credentials_secret
            .as_ref()
            .filter(|_| spec.s3_credentials_secret.is_none());
        if image.is_none() && secret.is_none() {
            return Cow::Borrowed(spec);
        }
        let mut s = spec.clone();
        if let Some(i) = image {
            s.image = i.clone();
        }
        if let Some(n) = secret {
            s.s3_credentials_secret = Some(n.clone());
        }
        Cow::Owned(s)
    }

    /// Adds the default environment to `c`, keeping variables it already has.
    pub fn apply_env(&self, c: &mut Container) {
        if self.env.is_empty() {
            return;
        }
        let env = c.env.get_or_insert_with(Vec::new);
        for d in &self.env {
            if !env.iter().any(|e| e.name == d.name) {
                env.push(d.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(image: &str, secret: Option<&str>) -> StreamJobSpec {
        let mut v = serde_json::json!({ "image": image, "job": {} });
        if let Some(s) = secret {
            v["s3CredentialsSecret"] = s.into();
        }
        serde_json::from_value(v).unwrap()
    }

    fn defaults() -> RuntimeDefaults {
        RuntimeDefaults {
            image: Some("runnel:1.0".into()),
            s3_credentials_secret: Some("runnel-s3".into()),
            env: vec![parse_env("AWS_REGION=eu-west-1").unwrap()],
        }
    }

    #[test]
    fn fills_only_what_the_spec_leaves_out() {
        let d = defaults();
        let bare = spec("", None);
        let r = d.resolve(&bare);
        assert_eq!(r.image, "runnel:1.0");
        assert_eq!(r.s3_credentials_secret.as_deref(), Some("runnel-s3"));
        let own = spec("mine:2", Some("own-s3"));
        let r = d.resolve(&own);
        assert!(matches!(r, Cow::Borrowed(_)));
        assert_eq!(r.image, "mine:2");
        assert_eq!(r.s3_credentials_secret.as_deref(), Some("own-s3"));
    }

    #[test]
    fn an_image_left_out_of_the_yaml_is_empty_and_gets_the_default() {
        let s: StreamJobSpec = serde_json::from_value(serde_json::json!({ "job": {} })).unwrap();
        assert_eq!(s.image, "");
        assert_eq!(defaults().resolve(&s).image, "runnel:1.0");
        assert_eq!(RuntimeDefaults::default().resolve(&s).image, "");
    }

    #[test]
    fn env_defaults_never_override_the_pod_template() {
        let d = RuntimeDefaults {
            env: vec![
                parse_env("AWS_REGION=eu-west-1").unwrap(),
                parse_env("RUNNEL_S3_PATH_STYLE=true").unwrap(),
            ],
            ..Default::default()
        };
        let mut c = Container {
            env: Some(vec![EnvVar {
                name: "AWS_REGION".into(),
                value: Some("us-east-2".into()),
                value_from: None,
            }]),
            ..Default::default()
        };
        d.apply_env(&mut c);
        let env: Vec<(String, String)> = c
            .env
            .unwrap()
            .into_iter()
            .map(|e| (e.name, e.value.unwrap()))
            .collect();
        assert_eq!(
            env,
            vec![
                ("AWS_REGION".to_string(), "us-east-2".to_string()),
                ("RUNNEL_S3_PATH_STYLE".to_string(), "true".to_string()),
            ]
        );
    }

    #[test]
    fn parse_env_accepts_assignments_and_rejects_the_rest() {
        let e = parse_env("AWS_ENDPOINT_URL=http://minio:9000/?a=b").unwrap();
        assert_eq!(e.name, "AWS_ENDPOINT_URL");
        assert_eq!(e.value.as_deref(), Some("http://minio:9000/?a=b"));
        assert_eq!(parse_env("EMPTY=").unwrap().value.as_deref(), Some(""));
        assert_eq!(
            parse_env("NOVALUE"),
            Err(DefaultsError::NotAnAssignment("NOVALUE".into()))
        );
        assert_eq!(parse_env("=x"), Err(DefaultsError::BadName("=x".into())));
        assert_eq!(
            parse_env("1A=x"),
            Err(DefaultsError::BadName("1A=x".into()))
        );
        assert_eq!(
            parse_env("A B=x"),
            Err(DefaultsError::BadName("A B=x".into()))
        );
    }
}
