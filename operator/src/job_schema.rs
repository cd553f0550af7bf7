//! The schema of a StreamJob's `spec.job`: the job spec's own schema
//! ([`runnel_spec::JobSpec`]), made structural so that the API server checks
//! a job when it is applied, before any pod runs it.
//!
//! Kubernetes only accepts a *structural* schema: no `$ref`, a `type` on
//! every node (except `x-kubernetes-preserve-unknown-fields` and
//! `x-kubernetes-int-or-string` ones), `nullable` instead of a `null` type,
//! and `allOf`/`anyOf`/`oneOf`/`not` that only add value validations to
//! fields declared outside them. kube's rewriters (the ones its
//! `CustomResource` derive applies) do most of the work: definitions
//! inlined, `nullable`, externally tagged enums hoisted out of `oneOf` (the
//! variants keep only their `required`), `additionalProperties: false`
//! dropped next to `properties`. [`make_structural`] does what they leave,
//! and [`structural_violations`] checks the result.
//!
//! Free-form values (`elements`, generator `constant`/`choice` values,
//! custom operator `config`) stay `x-kubernetes-preserve-unknown-fields`.
//! What a schema cannot say (fields that depend on each other, the order of
//! steps, names that must match, durations that must be positive, CEL that
//! must compile) stays with the operator's validation, which reports it in
//! status as before.

use kube::core::schema::{OptionalEnum, OptionalIntOrString, StructuralSchemaRewriter};
use schemars::generate::SchemaSettings;
use schemars::transform::AddNullable;
use serde_json::{Map, Value, json};

/// The logical junctors: inside them a structural schema only validates.
const JUNCTORS: [&str; 3] = ["allOf", "anyOf", "oneOf"];

/// The keywords of Kubernetes' OpenAPI v3 subset a CRD schema may use
/// (`JSONSchemaProps` without the ones CRDs forbid: `$ref`, `definitions`,
/// `patternProperties`, `dependencies`, `additionalItems`, `id`, `$schema`).
const K8S_KEYWORDS: &[&str] = &[
    "type",
    "format",
    "title",
    "description",
    "default",
    "example",
    "externalDocs",
    "nullable",
    "enum",
    "maximum",
    "exclusiveMaximum",
    "minimum",
    "exclusiveMinimum",
    "multipleOf",
    "maxLength",
    "minLength",
    "pattern",
    "maxItems",
    "minItems",
    "uniqueItems",
    "maxProperties",
    "minProperties",
    "required",
    "items",
    "properties",
    "additionalProperties",
    "allOf",
    "anyOf",
    "oneOf",
    "not",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-embedded-resource",
    "x-kubernetes-int-or-string",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
    "x-kubernetes-validations",
];

/// Keywords a node inside a junctor must not carry: they describe structure
/// or defaults, which only the structural part may.
const NOT_IN_JUNCTORS: &[&str] = &[
    "type",
    "title",
    "description",
    "default",
    "nullable",
    "additionalProperties",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-embedded-resource",
    "x-kubernetes-int-or-string",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
    "x-kubernetes-validations",
];

const TYPES: [&str; 6] = ["object", "array", "string", "integer", "number", "boolean"];

/// schemars' schema of [`runnel_spec::JobSpec`], generated the way kube's
/// `CustomResource` derive generates a CRD's: OpenAPI 3 settings, definitions
/// inlined, and kube's structural rewriters.
pub fn kube_job_schema() -> Value {
    SchemaSettings::openapi3()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .with_transform(AddNullable::default())
        .with_transform(StructuralSchemaRewriter)
        .with_transform(OptionalEnum)
        .with_transform(OptionalIntOrString)
        .into_generator()
        .into_root_schema_for::<runnel_spec::JobSpec>()
        .to_value()
}

/// The structural schema the CRD embeds for `spec.job`.
pub fn job_schema() -> Value {
    make_structural(kube_job_schema())
}

/// `#[schemars(schema_with)]` for `spec.job`.
pub(crate) fn job_field_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    // `job_schema` is always an object, so the fallback (a free-form object,
    // which the operator's own validation still guards) is never taken.
    schemars::Schema::try_from(job_schema()).unwrap_or_else(|_| {
        schemars::json_schema!({ "type": "object", "x-kubernetes-preserve-unknown-fields": true })
    })
}

/// Rewrites what kube's rewriters leave non-structural (pure):
/// - `$schema` and `title` go;
/// - `const` becomes a one-value `enum` (OpenAPI v3 has no `const`);
/// - `additionalProperties: false` goes (Kubernetes forbids it; the API
///   server prunes unknown fields, or refuses them under strict field
///   validation) and `additionalProperties: true` becomes
///   `x-kubernetes-preserve-unknown-fields`;
/// - `default` goes, and is mentioned in the description: the API server
///   would otherwise write it into every stored job, freezing the defaults of
///   the CRD's spec version into jobs that a later runtime reads (the runtime
///   applies them itself, per the job's `version`);
/// - inside `allOf`/`anyOf`/`oneOf`/`not`, what only the structural part may
///   say (`type`, `description`, `nullable`, ...) goes.
pub fn make_structural(schema: Value) -> Value {
    rewrite(schema, false)
}

fn rewrite(schema: Value, in_junctor: bool) -> Value {
    let Value::Object(mut o) = schema else {
        return schema;
    };
    o.remove("$schema");
    o.remove("title");
    if let Some(c) = o.remove("const") {
        o.insert("enum".into(), json!([c]));
    }
    match o.get("additionalProperties") {
        Some(Value::Bool(false)) => {
            o.remove("additionalProperties");
        }
        Some(Value::Bool(true)) => {
            o.remove("additionalProperties");
            o.insert("x-kubernetes-preserve-unknown-fields".into(), true.into());
        }
        _ => {}
    }
    if let Some(d) = o.remove("default")
        && !d.is_null()
    {
        let note = format!("Default: `{d}`.");
        let text = match o.get("description").and_then(Value::as_str) {
            Some(desc) => format!("{desc}\n\n{note}"),
            None => note,
        };
        o.insert("description".into(), text.into());
    }
    if in_junctor {
        for k in NOT_IN_JUNCTORS {
            o.remove(*k);
        }
    }
    let mut out = Map::new();
    for (k, v) in o {
        let v = match k.as_str() {
            "properties" => match v {
                Value::Object(props) => Value::Object(
                    props
                        .into_iter()
                        .map(|(name, s)| (name, rewrite(s, in_junctor)))
                        .collect(),
                ),
                other => other,
            },
            "items" | "additionalProperties" => rewrite(v, in_junctor),
            "not" => rewrite(v, true),
            j if JUNCTORS.contains(&j) => match v {
                Value::Array(subs) => {
                    Value::Array(subs.into_iter().map(|s| rewrite(s, true)).collect())
                }
                other => other,
            },
            _ => v,
        };
        out.insert(k, v);
    }
    Value::Object(out)
}

/// Every way `schema` breaks Kubernetes' structural-schema rules, each with
/// the path of the offending node (pure; empty when it is structural).
pub fn structural_violations(schema: &Value) -> Vec<String> {
    let mut v = vec![];
    check(schema, "", false, &mut v);
    v
}

fn check(node: &Value, path: &str, in_junctor: bool, out: &mut Vec<String>) {
    let at = if path.is_empty() { "<root>" } else { path };
    let Some(o) = node.as_object() else {
        out.push(format!("{at}: a schema must be an object, not {node}"));
        return;
    };
    for k in o.keys() {
        if !K8S_KEYWORDS.contains(&k.as_str()) {
            out.push(format!("{at}: {k:?} is not allowed in a CRD schema"));
        } else if in_junctor && NOT_IN_JUNCTORS.contains(&k.as_str()) {
            out.push(format!(
                "{at}: {k:?} is not allowed inside allOf/anyOf/oneOf/not"
            ));
        }
    }
    let flag = |k: &str| o.get(k) == Some(&Value::Bool(true));
    if !in_junctor {
        match o.get("type") {
            Some(Value::String(t)) if TYPES.contains(&t.as_str()) => {}
            Some(t) => out.push(format!(
                "{at}: type {t} is not one of {TYPES:?} (use nullable for null)"
            )),
            None if flag("x-kubernetes-preserve-unknown-fields")
                || flag("x-kubernetes-int-or-string") => {}
            None => out.push(format!("{at}: no type")),
        }
    }
    if o.contains_key("properties") && o.contains_key("additionalProperties") {
        out.push(format!(
            "{at}: properties and additionalProperties are mutually exclusive"
        ));
    }
    if o.get("additionalProperties") == Some(&Value::Bool(false)) {
        out.push(format!("{at}: additionalProperties must not be false"));
    }
    if o.get("uniqueItems") == Some(&Value::Bool(true)) {
        out.push(format!("{at}: uniqueItems must not be true"));
    }
    for k in ["exclusiveMinimum", "exclusiveMaximum"] {
        if o.get(k).is_some_and(|v| !v.is_boolean()) {
            out.push(format!("{at}: {k} must be a boolean in OpenAPI v3"));
        }
    }
    let declared = o.get("properties").and_then(Value::as_object);
    let mut subs: Vec<(String, &Value)> = vec![];
    for j in JUNCTORS {
        if let Some(list) = o.get(j) {
            match list.as_array() {
                Some(a) => subs.extend(
                    a.iter()
                        .enumerate()
                        .map(|(i, s)| (format!("{path}.{j}[{i}]"), s)),
                ),
                None => out.push(format!("{at}: {j} must be a list")),
            }
        }
    }
    if let Some(n) = o.get("not") {
        subs.push((format!("{path}.not"), n));
    }
    for (sp, s) in &subs {
        // A junctor may only constrain fields the structural part declares.
        for name in s
            .get("properties")
            .and_then(Value::as_object)
            .into_iter()
            .flat_map(|p| p.keys())
        {
            if !declared.is_some_and(|d| d.contains_key(name)) {
                out.push(format!(
                    "{sp}: property {name:?} is not declared outside the junctor"
                ));
            }
        }
        if s.get("items").is_some() && o.get("items").is_none() {
            out.push(format!("{sp}: items are not declared outside the junctor"));
        }
        check(s, sp, true, out);
    }
    for (name, s) in declared.into_iter().flatten() {
        check(s, &format!("{path}.properties.{name}"), in_junctor, out);
    }
    for k in ["items", "additionalProperties"] {
        if let Some(s) = o.get(k).filter(|s| s.is_object()) {
            check(s, &format!("{path}.{k}"), in_junctor, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_what_kube_leaves() {
        let before = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "J",
            "type": "object",
            "properties": {
                "mode": { "type": "string", "const": "x", "default": "x" },
                "keys": { "type": "integer", "description": "Keys.", "default": 100 },
                "config": { "x-kubernetes-preserve-unknown-fields": true, "default": null },
                "labels": { "type": "object", "additionalProperties": true },
                "empty": { "type": "object", "additionalProperties": false },
                "kind": {
                    "type": "object",
                    "properties": { "a": { "type": "object" }, "b": { "type": "object" } },
                    "oneOf": [
                        { "type": "object", "description": "A.", "required": ["a"] },
                        { "required": ["b"], "nullable": true }
                    ],
                    "not": { "type": "object", "required": ["a", "b"] }
                }
            }
        });
        let after = make_structural(before);
        assert_eq!(
            after,
            json!({
                "type": "object",
                "properties": {
                    "mode": { "type": "string", "enum": ["x"], "description": "Default: `\"x\"`." },
                    "keys": { "type": "integer", "description": "Keys.\n\nDefault: `100`." },
                    "config": { "x-kubernetes-preserve-unknown-fields": true },
                    "labels": { "type": "object", "x-kubernetes-preserve-unknown-fields": true },
                    "empty": { "type": "object" },
                    "kind": {
                        "type": "object",
                        "properties": { "a": { "type": "object" }, "b": { "type": "object" } },
                        "oneOf": [{ "required": ["a"] }, { "required": ["b"] }],
                        "not": { "required": ["a", "b"] }
                    }
                }
            })
        );
        assert_eq!(structural_violations(&after), Vec::<String>::new());
    }

    #[test]
    fn names_every_violation_with_its_path() {
        let bad = json!({
            "type": "object",
            "properties": {
                "r": { "$ref": "#/$defs/R" },
                "n": { "type": ["string", "null"] },
                "untyped": { "description": "no type" },
                "any": { "x-kubernetes-preserve-unknown-fields": true },
                "both": { "type": "object", "properties": {}, "additionalProperties": { "type": "string" } },
                "closed": { "type": "object", "additionalProperties": false },
                "list": { "type": "array", "items": { "enum": [1] } },
                "u": {
                    "type": "object",
                    "properties": { "a": { "type": "string" } },
                    "anyOf": [
                        { "properties": { "a": { "type": "string" } } },
                        { "properties": { "b": { "minLength": 1 } }, "default": {} }
                    ]
                }
            }
        });
        assert_eq!(
            structural_violations(&bad),
            vec![
                ".properties.both: properties and additionalProperties are mutually exclusive",
                ".properties.closed: additionalProperties must not be false",
                ".properties.list.items: no type",
                ".properties.n: type [\"string\",\"null\"] is not one of [\"object\", \"array\", \"string\", \"integer\", \"number\", \"boolean\"] (use nullable for null)",
                ".properties.r: \"$ref\" is not allowed in a CRD schema",
                ".properties.r: no type",
                ".properties.u.anyOf[0].properties.a: \"type\" is not allowed inside allOf/anyOf/oneOf/not",
                ".properties.u.anyOf[1]: property \"b\" is not declared outside the junctor",
                ".properties.u.anyOf[1]: \"default\" is not allowed inside allOf/anyOf/oneOf/not",
                ".properties.untyped: no type",
            ]
        );
    }

    #[test]
    fn the_job_schema_is_structural_and_keeps_free_form_values() {
        let s = job_schema();
        assert_eq!(structural_violations(&s), Vec::<String>::new());
        // The generated kube schema still carries defaults; the CRD's does not.
        assert!(kube_job_schema().to_string().contains("\"default\""));
        assert!(!s.to_string().contains("\"default\""));
        let free = |v: &Value| v["x-kubernetes-preserve-unknown-fields"] == json!(true);
        let source = &s["properties"]["sources"]["items"]["properties"];
        assert!(free(&source["elements"]["items"]));
        let gen_field = &source["generator"]["properties"]["fields"]["additionalProperties"];
        assert!(free(
            &gen_field["properties"]["constant"]["properties"]["value"]
        ));
        let step = &s["properties"]["steps"]["items"]["properties"];
        assert!(free(&step["operator"]["properties"]["config"]));
        // Nothing else is free-form: unknown fields are refused everywhere else.
        let n = s
            .to_string()
            .matches("x-kubernetes-preserve-unknown-fields")
            .count();
        assert_eq!(
            n, 4,
            "elements, choice values, constant value, operator config"
        );
    }
}
