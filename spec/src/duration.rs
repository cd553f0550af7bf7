//! Durations in the spec are strings such as `500ms`, `10s`, `5m` or `1h 30m`
//! (humantime syntax), which read well in YAML and survive the CRD schema.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DurationSpec(pub String);

impl DurationSpec {
    pub fn new(s: impl Into<String>) -> Self {
        DurationSpec(s.into())
    }

    /// Milliseconds, or a message saying what is wrong.
    pub fn millis(&self) -> Result<u64, String> {
        let d = humantime::parse_duration(self.0.trim()).map_err(|e| {
            format!(
                "invalid duration '{}': {e} (write e.g. 500ms, 10s, 5m)",
                self.0
            )
        })?;
        u64::try_from(d.as_millis()).map_err(|_| format!("duration '{}' is too large", self.0))
    }
}

impl JsonSchema for DurationSpec {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A duration such as 500ms, 10s, 5m or 1h 30m.",
            "pattern": "^\\s*[0-9]+\\s*[a-zA-Zµ]+(\\s*[0-9]+\\s*[a-zA-Zµ]+)*\\s*$"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_units() {
        assert_eq!(DurationSpec::new("500ms").millis(), Ok(500));
        assert_eq!(DurationSpec::new("10s").millis(), Ok(10_000));
        assert_eq!(DurationSpec::new("1m 30s").millis(), Ok(90_000));
        assert_eq!(DurationSpec::new("0s").millis(), Ok(0));
    }

    #[test]
    fn rejects_garbage_with_a_message() {
        let e = DurationSpec::new("ten seconds").millis().unwrap_err();
        assert!(e.starts_with("invalid duration 'ten seconds'"), "{e}");
        assert!(DurationSpec::new("10").millis().is_err());
    }
}
