//! Validation of custom objects against their CRD's `openAPIV3Schema` (pure).
//!
//! Checked: types (with `nullable`, `x-kubernetes-int-or-string`,
//! `x-kubernetes-preserve-unknown-fields`), `required`, `enum`, `minimum`,
//! `maximum`, `exclusiveMinimum`/`exclusiveMaximum` (booleans, OpenAPI 3.0),
//! `minLength`, `maxLength`, `pattern`, `minItems`, `maxItems`,
//! `minProperties`, `maxProperties`, the value-validation junctors `allOf`,
//! `anyOf`, `oneOf` and `not` (as a structural schema uses them: their
//! subschemas only constrain what the enclosing schema declares), and
//! `x-kubernetes-validations` CEL rules (`self` only: no `oldSelf` transition
//! rules — a rule using `oldSelf` is skipped on create and reported as
//! unsupported on update). Unknown fields are pruned, as upstream does; with
//! `fieldValidation=Strict` they are an error instead. Not checked: `format`,
//! `multipleOf`, `uniqueItems`, `x-kubernetes-list-type` uniqueness, CEL cost
//! limits; `default` is not applied. Any other keyword in a schema is
//! refused with an error naming it, rather than silently not enforced.

use serde_json::{Map, Value};

/// How unknown fields are treated (`fieldValidation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

/// A field path and a message, as a `Status` cause.
pub type FieldError = (String, String);

/// Validates (and prunes) `obj` in place; returns the errors and the
/// warnings (unknown fields under `Warn`).
pub fn validate(
    obj: &mut Value,
    schema: &Value,
    fv: FieldValidation,
    update: bool,
) -> (Vec<FieldError>, Vec<String>) {
    let mut v = Validator {
        errors: vec![],
        warnings: vec![],
        fv,
        update,
    };
    // The root's metadata is the apiserver's business, not the schema's.
    if let (Some(o), Some(props)) = (obj.as_object_mut(), schema["properties"].as_object()) {
        for (k, child) in o.iter_mut() {
            if k == "metadata" || k == "apiVersion" || k == "kind" {
                continue;
            }
            match props.get(k) {
                Some(s) => v.walk(child, s, k),
                None if schema["x-kubernetes-preserve-unknown-fields"] == Value::Bool(true) => {}
                None => v.unknown(k),
            }
        }
        if fv != FieldValidation::Strict {
            o.retain(|k, _| {
                k == "metadata" || k == "apiVersion" || k == "kind" || props.contains_key(k)
            });
        }
    }
    (v.errors, v.warnings)
}

/// Keywords this validator enforces, or knowingly leaves alone (see the
/// module comment); a schema using any other one is refused.
const KNOWN_KEYWORDS: &[&str] = &[
    "type",
    "nullable",
    "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields",
    "enum",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "required",
    "properties",
    "additionalProperties",
    "items",
    "allOf",
    "anyOf",
    "oneOf",
    "not",
    "x-kubernetes-validations",
    // Not checked or not applied (module comment):
    "description",
    "title",
    "example",
    "externalDocs",
    "format",
    "default",
    "multipleOf",
    "uniqueItems",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
];

struct Validator {
    errors: Vec<FieldError>,
    warnings: Vec<String>,
    fv: FieldValidation,
    update: bool,
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Object(_) => "\"object\"".into(),
        Value::Array(_) => "\"array\"".into(),
        other => other.to_string(),
    }
}

impl Validator {
    fn err(&mut self, path: &str, msg: String) {
        self.errors.push((path.to_string(), msg));
    }

    fn unknown(&mut self, path: &str) {
        match self.fv {
            FieldValidation::Strict => self.err(path, "field not declared in schema".into()),
            FieldValidation::Warn => self.warnings.push(format!("unknown field \"{path}\"")),
            FieldValidation::Ignore => {}
        }
    }

    fn walk(&mut self, v: &mut Value, s: &Value, path: &str) {
        if let Some(o) = s.as_object() {
            for k in o.keys().filter(|k| !KNOWN_KEYWORDS.contains(&k.as_str())) {
                self.err(
                    path,
                    format!("Internal error: the schema keyword {k:?} is not supported by runnel-kube-local"),
                );
            }
        }
        if v.is_null() {
            if s["nullable"] != Value::Bool(true) {
                self.err(
                    path,
                    format!(
                        "Invalid value: \"null\": {path} in body must be of type {}",
                        s["type"].as_str().unwrap_or("object")
                    ),
                );
            }
            return;
        }
        let int_or_string = s["x-kubernetes-int-or-string"] == Value::Bool(true);
        let want = s["type"].as_str();
        let got = type_name(v);
        let type_ok = match want {
            _ if int_or_string => got == "integer" || got == "string",
            None => true,
            Some("number") => got == "number" || got == "integer",
            Some(t) => t == got,
        };
        if !type_ok {
            self.err(
                path,
                format!(
                    "Invalid value: {}: {path} in body must be of type {}",
                    show(v),
                    want.unwrap_or("int-or-string")
                ),
            );
            return;
        }
        if let Some(e) = s["enum"].as_array()
            && !e.contains(v)
        {
            let opts: Vec<String> = e.iter().map(show).collect();
            self.err(
                path,
                format!(
                    "Unsupported value: {}: supported values: {}",
                    show(v),
                    opts.join(", ")
                ),
            );
        }
        self.bounds(v, s, path);
        match v {
            Value::Object(m) => self.object(m, s, path),
            Value::Array(items) => {
                if let Some(is) = s.get("items") {
                    for (i, item) in items.iter_mut().enumerate() {
                        self.walk(item, is, &format!("{path}[{i}]"));
                    }
                }
            }
            _ => {}
        }
        self.junctors(v, s, path);
        self.cel(v, s, path);
    }

    /// The errors of `v` against `sub` alone. A junctor's subschema only
    /// adds value validations to what the enclosing schema declares, so
    /// fields it does not name are not unknown there; `v` is not pruned.
    fn errors_against(&self, v: &Value, sub: &Value, path: &str) -> Vec<FieldError> {
        let mut inner = Validator {
            errors: vec![],
            warnings: vec![],
            fv: FieldValidation::Ignore,
            update: self.update,
        };
        inner.walk(&mut v.clone(), sub, path);
        inner.errors
    }

    fn junctors(&mut self, v: &Value, s: &Value, path: &str) {
        let subs = |k: &str| s[k].as_array().cloned().unwrap_or_default();
        for sub in subs("allOf") {
            let errs = self.errors_against(v, &sub, path);
            self.errors.extend(errs);
        }
        let any_of = subs("anyOf");
        if !any_of.is_empty()
            && !any_of
                .iter()
                .any(|sub| self.errors_against(v, sub, path).is_empty())
        {
            self.err(
                path,
                format!(
                    "Invalid value: {}: {path} in body must validate at least one schema (anyOf)",
                    show(v)
                ),
            );
        }
        let one_of = subs("oneOf");
        if !one_of.is_empty() {
            let valid = one_of
                .iter()
                .filter(|sub| self.errors_against(v, sub, path).is_empty())
                .count();
            if valid != 1 {
                let found = match valid {
                    0 => "Found none valid".to_string(),
                    n => format!("Found {n} valid alternatives"),
                };
                self.err(
                    path,
                    format!(
                        "Invalid value: {}: {path} in body must validate one and only one schema (oneOf). {found}",
                        show(v)
                    ),
                );
            }
        }
        if let Some(not) = s.get("not")
            && self.errors_against(v, not, path).is_empty()
        {
            self.err(
                path,
                format!(
                    "Invalid value: {}: {path} in body must not validate the schema (not)",
                    show(v)
                ),
            );
        }
    }

    fn bounds(&mut self, v: &Value, s: &Value, path: &str) {
        if let Some(x) = v.as_f64() {
            if let Some(min) = s["minimum"].as_f64() {
                let excl = s["exclusiveMinimum"] == Value::Bool(true);
                if x < min || (excl && x == min) {
                    self.err(
                        path,
                        format!(
                            "Invalid value: {v}: {path} in body should be greater than {}{min}",
                            if excl { "" } else { "or equal to " }
                        ),
                    );
                }
            }
            if let Some(max) = s["maximum"].as_f64() {
                let excl = s["exclusiveMaximum"] == Value::Bool(true);
                if x > max || (excl && x == max) {
                    self.err(
                        path,
                        format!(
                            "Invalid value: {v}: {path} in body should be less than {}{max}",
                            if excl { "" } else { "or equal to " }
                        ),
                    );
                }
            }
        }
        if let Some(st) = v.as_str() {
            let n = st.chars().count() as u64;
            if let Some(min) = s["minLength"].as_u64().filter(|m| n < *m) {
                self.err(
                    path,
                    format!(
                        "Invalid value: {}: {path} in body should be at least {min} chars long",
                        show(v)
                    ),
                );
            }
            if let Some(max) = s["maxLength"].as_u64().filter(|m| n > *m) {
                self.err(path, format!("Too long: may not be more than {max} bytes"));
            }
            if let Some(p) = s["pattern"].as_str() {
                match regex::Regex::new(p) {
                    Ok(re) if !re.is_match(st) => self.err(
                        path,
                        format!(
                            "Invalid value: {}: {path} in body should match '{p}'",
                            show(v)
                        ),
                    ),
                    Ok(_) => {}
                    Err(e) => self.err(
                        path,
                        format!("Invalid value: the schema's pattern does not compile: {e}"),
                    ),
                }
            }
        }
        let len = match v {
            Value::Array(a) => Some((a.len() as u64, "minItems", "maxItems", "items")),
            Value::Object(o) => Some((
                o.len() as u64,
                "minProperties",
                "maxProperties",
                "properties",
            )),
            _ => None,
        };
        if let Some((n, mink, maxk, what)) = len {
            if let Some(min) = s[mink].as_u64().filter(|m| n < *m) {
                self.err(
                    path,
                    format!("Invalid value: {n}: {path} in body should have at least {min} {what}"),
                );
            }
            if let Some(max) = s[maxk].as_u64().filter(|m| n > *m) {
                self.err(
                    path,
                    format!("Too many: {n}: must have at most {max} {what}"),
                );
            }
        }
    }

    fn object(&mut self, m: &mut Map<String, Value>, s: &Value, path: &str) {
        if let Some(req) = s["required"].as_array() {
            for r in req.iter().filter_map(Value::as_str) {
                if !m.contains_key(r) {
                    self.err(&format!("{path}.{r}"), "Required value".into());
                }
            }
        }
        let preserve = s["x-kubernetes-preserve-unknown-fields"] == Value::Bool(true);
        let props = s["properties"].as_object();
        let additional = s.get("additionalProperties");
        let mut prune = vec![];
        for (k, child) in m.iter_mut() {
            let cp = format!("{path}.{k}");
            match (props.and_then(|p| p.get(k)), additional) {
                (Some(cs), _) => self.walk(child, cs, &cp),
                (None, Some(a)) if a.is_object() => self.walk(child, a, &cp),
                (None, Some(Value::Bool(true))) => {}
                (None, _) if preserve => {}
                (None, _) => {
                    self.unknown(&cp);
                    prune.push(k.clone());
                }
            }
        }
        if self.fv != FieldValidation::Strict {
            for k in prune {
                m.remove(&k);
            }
        }
    }

    fn cel(&mut self, v: &Value, s: &Value, path: &str) {
        let Some(rules) = s["x-kubernetes-validations"].as_array() else {
            return;
        };
        for r in rules {
            let rule = r["rule"].as_str().unwrap_or("");
            if rule.contains("oldSelf") {
                if self.update {
                    self.err(path, format!("Internal error: transition rule {rule:?} is not supported by runnel-kube-local"));
                }
                continue;
            }
            let program = match cel::Program::compile(rule) {
                Ok(p) => p,
                Err(e) => {
                    self.err(path, format!("Internal error: rule compile error: {e}"));
                    continue;
                }
            };
            let mut ctx = cel::Context::default();
            ctx.add_variable_from_value("self", to_cel(v));
            match program.execute(&ctx) {
                Ok(cel::Value::Bool(true)) => {}
                Ok(cel::Value::Bool(false)) => {
                    let msg = r["message"]
                        .as_str()
                        .map(String::from)
                        .unwrap_or_else(|| format!("failed rule: {rule}"));
                    let field = match r["fieldPath"].as_str() {
                        Some(f) => format!("{path}{f}"),
                        None => path.to_string(),
                    };
                    self.err(&field, format!("Invalid value: {}: {msg}", show(v)));
                }
                Ok(other) => self.err(
                    path,
                    format!(
                        "Invalid value: {}: rule {rule:?} gave {other:?}, not a bool",
                        show(v)
                    ),
                ),
                Err(e) => self.err(
                    path,
                    format!("Invalid value: {}: rule {rule:?} failed: {e}", show(v)),
                ),
            }
        }
    }
}

fn to_cel(v: &Value) -> cel::Value {
    use std::sync::Arc;
    match v {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => cel::Value::Int(i),
            (None, Some(u)) => cel::Value::UInt(u),
            _ => cel::Value::Float(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(a) => cel::Value::List(Arc::new(a.iter().map(to_cel).collect())),
        Value::Object(o) => {
            let h: std::collections::HashMap<String, cel::Value> =
                o.iter().map(|(k, v)| (k.clone(), to_cel(v))).collect();
            h.into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        let crd: Value =
            serde_yaml::from_str(include_str!("../../crds/streamjobs.runnel.dev.yaml")).unwrap();
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
    }

    fn job() -> Value {
        json!({
            "apiVersion": "runnel.dev/v1alpha1", "kind": "StreamJob",
            "metadata": { "name": "a" },
            "spec": { "image": "runnel:dev", "job": {
                "version": 1, "name": "a",
                "sources": [{ "name": "s", "elements": [1, { "any": ["thing"] }] }],
                "sinks": [{ "name": "out", "stdout": {} }]
            } }
        })
    }

    #[test]
    fn a_valid_streamjob_passes() {
        let mut j = job();
        let (e, w) = validate(&mut j, &schema(), FieldValidation::Strict, false);
        assert!(e.is_empty(), "{e:?}");
        assert!(w.is_empty());
        assert_eq!(j, job(), "nothing pruned, free-form elements kept");
    }

    #[test]
    fn spec_job_is_checked_against_the_job_schema() {
        let mut j = job();
        j["spec"]["job"]["steps"] = json!([{ "filter": "true", "reduce": "x" }]);
        let (e, _) = validate(&mut j, &schema(), FieldValidation::Strict, false);
        assert_eq!(
            e,
            vec![(
                "spec.job.steps[0].reduce".to_string(),
                "field not declared in schema".to_string()
            )]
        );
    }

    #[test]
    fn cel_rules_give_their_message() {
        let mut j = job();
        j["spec"]["parallelism"] = json!(8);
        j["spec"]["maxParallelism"] = json!(4);
        let (e, _) = validate(&mut j, &schema(), FieldValidation::Strict, false);
        assert_eq!(
            e,
            vec![(
                "spec".to_string(),
                "Invalid value: \"object\": parallelism must not exceed maxParallelism".to_string()
            )]
        );
    }

    #[test]
    fn types_required_enums_and_unknown_fields() {
        let mut j = job();
        j["spec"]["parallelism"] = json!("two");
        j["spec"]["upgradeMode"] = json!("sideways");
        j["spec"]["bogus"] = json!(1);
        // `job` is required (`image` is not: the operator has a default).
        j["spec"].as_object_mut().unwrap().remove("job");
        let (e, _) = validate(&mut j.clone(), &schema(), FieldValidation::Strict, false);
        let fields: Vec<&str> = e.iter().map(|(f, _)| f.as_str()).collect();
        assert!(fields.contains(&"spec.job"), "{e:?}");
        assert!(fields.contains(&"spec.parallelism"), "{e:?}");
        assert!(fields.contains(&"spec.upgradeMode"), "{e:?}");
        assert!(fields.contains(&"spec.bogus"), "{e:?}");
        let (e, w) = validate(&mut j, &schema(), FieldValidation::Warn, false);
        assert!(!e.iter().any(|(f, _)| f == "spec.bogus"));
        assert_eq!(w, vec!["unknown field \"spec.bogus\"".to_string()]);
        assert!(j["spec"].get("bogus").is_none(), "pruned");
    }

    fn one_kind() -> Value {
        json!({
            "type": "object",
            "properties": {
                "o": {
                    "type": "object",
                    "properties": { "a": { "type": "string" }, "b": { "type": "string" } },
                    "oneOf": [{ "required": ["a"] }, { "required": ["b"] }],
                    "anyOf": [{ "properties": { "a": { "minLength": 2 } } }, { "required": ["b"] }],
                    "not": { "properties": { "a": { "enum": ["xx"] } }, "required": ["a"] }
                }
            }
        })
    }

    fn check(o: Value) -> Vec<FieldError> {
        validate(
            &mut json!({ "o": o }),
            &one_kind(),
            FieldValidation::Strict,
            false,
        )
        .0
    }

    #[test]
    fn junctors_constrain_the_declared_fields() {
        assert_eq!(check(json!({ "a": "ab" })), vec![]);
        assert_eq!(check(json!({ "b": "x" })), vec![]);
        let msg = |m: &str| vec![("o".to_string(), m.to_string())];
        assert_eq!(
            check(json!({})),
            msg(
                "Invalid value: \"object\": o in body must validate one and only one schema (oneOf). Found none valid"
            )
        );
        assert_eq!(
            check(json!({ "a": "ab", "b": "x" })),
            msg(
                "Invalid value: \"object\": o in body must validate one and only one schema (oneOf). Found 2 valid alternatives"
            )
        );
        assert_eq!(
            check(json!({ "a": "a" })),
            msg("Invalid value: \"object\": o in body must validate at least one schema (anyOf)")
        );
        assert_eq!(
            check(json!({ "a": "xx" })),
            msg("Invalid value: \"object\": o in body must not validate the schema (not)")
        );
        let all = json!({ "type": "object", "properties": { "o": {
            "type": "integer", "allOf": [{ "minimum": 2 }, { "maximum": 3 }] } } });
        let (e, _) = validate(&mut json!({ "o": 5 }), &all, FieldValidation::Strict, false);
        assert_eq!(
            e,
            msg("Invalid value: 5: o in body should be less than or equal to 3")
        );
    }

    #[test]
    fn an_unsupported_keyword_is_an_error_not_ignored() {
        let s = json!({ "type": "object", "properties": { "o": {
            "type": "object", "patternProperties": { "^x": { "type": "string" } } } } });
        let (e, _) = validate(&mut json!({ "o": {} }), &s, FieldValidation::Strict, false);
        assert_eq!(
            e,
            vec![(
                "o".to_string(),
                "Internal error: the schema keyword \"patternProperties\" is not supported by runnel-kube-local".to_string()
            )]
        );
    }
}
