//! Server-side `Table` output for `kubectl get` (pure): a CRD's
//! additionalPrinterColumns, a few columns for built-in kinds.

use serde_json::{Value, json};

use crate::meta::{human_age, name_of};
use crate::resources::ResourceType;

/// Evaluates the JSONPath subset printer columns use: `.a.b`, `.a[0].b`,
/// `.a[?(@.type=="Ready")].status`.
pub fn json_path<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = v;
    let mut rest = path.trim().trim_start_matches('{').trim_end_matches('}');
    rest = rest.strip_prefix('.').unwrap_or(rest);
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            let inner = &r[..end];
            rest = &r[end + 1..];
            if let Some(f) = inner.strip_prefix("?(@.").and_then(|x| x.strip_suffix(')')) {
                let (field, want) = f.split_once("==")?;
                let want = want.trim().trim_matches('"').trim_matches('\'');
                cur = cur
                    .as_array()?
                    .iter()
                    .find(|i| i[field.trim()].as_str() == Some(want))?;
            } else {
                cur = cur.get(inner.parse::<usize>().ok()?)?;
            }
        } else {
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            cur = cur.get(&rest[..end])?;
            rest = &rest[end..];
        }
        rest = rest.strip_prefix('.').unwrap_or(rest);
    }
    Some(cur)
}

fn cell(v: Option<&Value>, type_: &str) -> Value {
    match (v, type_) {
        (None | Some(Value::Null), _) => json!("<none>"),
        (Some(Value::String(s)), "date") => json!(human_age(s)),
        (Some(Value::String(s)), _) => json!(s),
        (Some(Value::Array(a)), _) => json!(
            a.iter()
                .map(|x| x
                    .as_str()
                    .map(String::from)
                    .unwrap_or_else(|| x.to_string()))
                .collect::<Vec<_>>()
                .join(",")
        ),
        (Some(other), _) => other.clone(),
    }
}

fn column(name: &str, type_: &str, priority: i64, description: &str) -> Value {
    let mut c = json!({ "name": name, "type": type_, "format": "", "description": description, "priority": priority });
    if name == "Name" {
        c["format"] = json!("name");
    }
    c
}

fn builtin_columns(rt: &ResourceType, o: &Value) -> Vec<(Value, Value)> {
    let age = (
        column("Age", "string", 0, "creation time"),
        cell(o["metadata"].get("creationTimestamp"), "date"),
    );
    match (rt.group.as_str(), rt.plural.as_str()) {
        ("", "pods") => {
            let cs = o["status"]["containerStatuses"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let total = o["spec"]["containers"]
                .as_array()
                .map(Vec::len)
                .unwrap_or(0);
            let ready = cs.iter().filter(|c| c["ready"] == true).count();
            let restarts: i64 = cs
                .iter()
                .map(|c| c["restartCount"].as_i64().unwrap_or(0))
                .sum();
            let mut status = o["status"]["phase"]
                .as_str()
                .unwrap_or("Pending")
                .to_string();
            if let Some(r) = cs.iter().find_map(|c| {
                c["state"]["waiting"]["reason"]
                    .as_str()
                    .or(c["state"]["terminated"]["reason"].as_str())
            }) {
                status = r.to_string();
            }
            if o["metadata"]["deletionTimestamp"].is_string() {
                status = "Terminating".into();
            }
            vec![
                (
                    column("Ready", "string", 0, ""),
                    json!(format!("{ready}/{total}")),
                ),
                (column("Status", "string", 0, ""), json!(status)),
                (
                    column("Restarts", "string", 0, ""),
                    json!(restarts.to_string()),
                ),
                age,
                (
                    column("IP", "string", 1, ""),
                    cell(o["status"].get("podIP"), "string"),
                ),
            ]
        }
        ("", "namespaces") => vec![
            (
                column("Status", "string", 0, ""),
                cell(o["status"].get("phase"), "string"),
            ),
            age,
        ],
        ("batch", "jobs") => vec![
            (
                column("Status", "string", 0, ""),
                json!(if o["status"]["succeeded"].as_i64().unwrap_or(0) > 0 {
                    "Complete"
                } else if o["status"]["failed"].as_i64().unwrap_or(0) > 0
                    && o["status"]["active"].as_i64().unwrap_or(0) == 0
                {
                    "Failed"
                } else {
                    "Running"
                }),
            ),
            (
                column("Completions", "string", 0, ""),
                json!(format!(
                    "{}/1",
                    o["status"]["succeeded"].as_i64().unwrap_or(0)
                )),
            ),
            age,
        ],
        ("", "configmaps") | ("", "secrets") => vec![
            (
                column("Data", "string", 0, ""),
                json!(o["data"].as_object().map(|m| m.len()).unwrap_or(0)),
            ),
            age,
        ],
        ("", "services") => vec![
            (
                column("Type", "string", 0, ""),
                cell(o["spec"].get("type"), "string"),
            ),
            (
                column("Ports", "string", 0, ""),
                json!(
                    o["spec"]["ports"]
                        .as_array()
                        .map(|ps| ps
                            .iter()
                            .map(|p| format!(
                                "{}/{}",
                                p["port"],
                                p["protocol"].as_str().unwrap_or("TCP")
                            ))
                            .collect::<Vec<_>>()
                            .join(","))
                        .unwrap_or_default()
                ),
            ),
            age,
        ],
        ("", "events") | ("events.k8s.io", "events") => vec![
            (
                column("Type", "string", 0, ""),
                cell(o.get("type"), "string"),
            ),
            (
                column("Reason", "string", 0, ""),
                cell(o.get("reason"), "string"),
            ),
            (
                column("Message", "string", 0, ""),
                cell(o.get("message").or(o.get("note")), "string"),
            ),
            age,
        ],
        _ => vec![age],
    }
}

/// A `meta.k8s.io/v1` Table of `items`; `include`: `None`, `Metadata`
/// (default) or `Object`, as the `includeObject` parameter asks.
pub fn table(rt: &ResourceType, items: &[Value], rv: u64, include: &str) -> Value {
    let mut defs = vec![column("Name", "string", 0, "name of the object")];
    let mut rows = vec![];
    let custom = rt.custom.as_ref().map(|c| c.columns.clone());
    for (i, o) in items.iter().enumerate() {
        let mut cells = vec![json!(name_of(o))];
        let cols: Vec<(Value, Value)> = match &custom {
            Some(cs) if !cs.is_empty() => cs
                .iter()
                .map(|c| {
                    (
                        column(
                            &c.name,
                            if c.type_ == "date" {
                                "string"
                            } else {
                                &c.type_
                            },
                            c.priority,
                            &c.description,
                        ),
                        cell(json_path(o, &c.json_path), &c.type_),
                    )
                })
                .collect(),
            _ => builtin_columns(rt, o),
        };
        for (def, v) in cols {
            if i == 0 {
                defs.push(def);
            }
            cells.push(v);
        }
        let object = match include {
            "None" => Value::Null,
            "Object" => o.clone(),
            _ => {
                json!({ "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"] })
            }
        };
        rows.push(json!({ "cells": cells, "object": object }));
    }
    if items.is_empty() {
        match &custom {
            Some(cs) if !cs.is_empty() => defs.extend(
                cs.iter()
                    .map(|c| column(&c.name, "string", c.priority, &c.description)),
            ),
            _ => defs.extend(builtin_columns(rt, &json!({})).into_iter().map(|(d, _)| d)),
        }
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": { "resourceVersion": rv.to_string() },
        "columnDefinitions": defs,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_paths() {
        let v = json!({ "status": { "lifecycleState": "Running", "conditions": [{ "type": "Ready", "status": "True" }] }, "spec": { "p": [5, 6] } });
        assert_eq!(
            json_path(&v, ".status.lifecycleState"),
            Some(&json!("Running"))
        );
        assert_eq!(
            json_path(&v, ".status.conditions[?(@.type==\"Ready\")].status"),
            Some(&json!("True"))
        );
        assert_eq!(json_path(&v, ".spec.p[1]"), Some(&json!(6)));
        assert_eq!(json_path(&v, ".status.missing"), None);
    }
}
