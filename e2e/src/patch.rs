//! JSON merge patch (RFC 7386), JSON patch (RFC 6902) and strategic merge
//! patch for the built-in kinds (pure).
//!
//! Merge and JSON patch come from the `json-patch` crate. Strategic merge is
//! hand-written because no crate implements it without Go's type tags; it
//! follows the upstream rules for the fields of the kinds served here: lists
//! listed in [`merge_key`] merge by key (or as sets), every other list is
//! replaced; `$patch: replace|delete|merge`, `$retainKeys`,
//! `$deleteFromPrimitiveList/<field>` and `$setElementOrder/<field>` (order
//! only, so accepted and not applied) are understood. Anything else starting
//! with `$` is rejected.

use serde_json::{Map, Value};

use crate::error::{ApiError, ApiResult};

/// The kinds of PATCH, by Content-Type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    Json,
    Strategic,
    Apply,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Option<PatchType> {
        let ct = ct.split(';').next().unwrap_or("").trim();
        Some(match ct {
            "application/merge-patch+json" => PatchType::Merge,
            "application/json-patch+json" => PatchType::Json,
            "application/strategic-merge-patch+json" => PatchType::Strategic,
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => PatchType::Apply,
            _ => return None,
        })
    }
}

pub fn merge_patch(doc: &mut Value, patch: &Value) -> ApiResult<()> {
    if !patch.is_object() {
        return Err(ApiError::bad_request("a merge patch must be a JSON object"));
    }
    json_patch::merge(doc, patch);
    Ok(())
}

pub fn json_patch(doc: &mut Value, patch: &Value) -> ApiResult<()> {
    let p: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
    json_patch::patch(doc, &p).map_err(|e| {
        ApiError::new(
            422,
            "Invalid",
            format!("the JSON patch could not be applied: {e}"),
        )
    })
}

/// The merge key of a list field in the built-in kinds, by field name
/// (`Some("")`: a list of scalars merged as a set).
fn merge_key(field: &str, items: &[Value]) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "hostAliases" => {
            if field == "hostAliases" {
                "ip"
            } else {
                "name"
            }
        }
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "ownerReferences" => "uid",
        "conditions" => "type",
        "finalizers" => "",
        // Container ports merge by containerPort, Service ports by port.
        "ports" => {
            if items.iter().any(|i| i.get("containerPort").is_some()) {
                "containerPort"
            } else {
                "port"
            }
        }
        _ => return None,
    })
}

pub fn strategic_merge(doc: &mut Value, patch: &Value) -> ApiResult<()> {
    if !patch.is_object() {
        return Err(ApiError::bad_request(
            "a strategic merge patch must be a JSON object",
        ));
    }
    smp_map(doc, patch)
}

fn smp_map(doc: &mut Value, patch: &Value) -> ApiResult<()> {
    let Value::Object(p) = patch else {
        *doc = patch.clone();
        return Ok(());
    };
    match p.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut m = p.clone();
            m.remove("$patch");
            *doc = Value::Object(m);
            return Ok(());
        }
        Some("delete") => {
            *doc = Value::Null;
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unknown $patch directive {other:?}"
            )));
        }
    }
    if !doc.is_object() {
        *doc = Value::Object(Map::new());
    }
    let retain = p.get("$retainKeys").cloned();
    for (k, v) in p {
        if k == "$patch" || k == "$retainKeys" || k.starts_with("$setElementOrder/") {
            continue;
        }
        let d = doc
            .as_object_mut()
            .ok_or_else(|| ApiError::bad_request("not an object"))?;
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let remove = v.as_array().cloned().unwrap_or_default();
            if let Some(Value::Array(list)) = d.get_mut(field) {
                list.retain(|x| !remove.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            return Err(ApiError::bad_request(format!(
                "unsupported strategic merge directive {k:?}"
            )));
        }
        if v.is_null() {
            d.remove(k);
            continue;
        }
        match v {
            Value::Array(items) => match merge_key(k, items) {
                Some(key) => {
                    let base = d.entry(k.clone()).or_insert(Value::Array(vec![]));
                    smp_list(base, items, key)?;
                }
                None => {
                    d.insert(k.clone(), v.clone());
                }
            },
            Value::Object(_) => {
                let child = d.entry(k.clone()).or_insert(Value::Null);
                smp_map(child, v)?;
                if child.is_null() {
                    d.remove(k);
                }
            }
            _ => {
                d.insert(k.clone(), v.clone());
            }
        }
    }
    if let (Some(Value::Array(keep)), Some(d)) = (retain, doc.as_object_mut()) {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        d.retain(|k, _| keep.contains(&k.as_str()));
    }
    Ok(())
}

fn smp_list(base: &mut Value, items: &[Value], key: &str) -> ApiResult<()> {
    if !base.is_array() {
        *base = Value::Array(vec![]);
    }
    let Value::Array(b) = base else {
        return Ok(());
    };
    if items
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        *b = items
            .iter()
            .filter(|i| i.get("$patch").is_none())
            .cloned()
            .collect();
        return Ok(());
    }
    for item in items {
        if key.is_empty() {
            if !b.contains(item) {
                b.push(item.clone());
            }
            continue;
        }
        let Some(kv) = item.get(key) else {
            return Err(ApiError::bad_request(format!(
                "map: {item} does not contain declared merge key: {key}"
            )));
        };
        let pos = b.iter().position(|x| x.get(key) == Some(kv));
        if item.get("$patch").and_then(Value::as_str) == Some("delete") {
            if let Some(i) = pos {
                b.remove(i);
            }
            continue;
        }
        match pos {
            Some(i) => smp_map(&mut b[i], item)?,
            None => {
                let mut fresh = Value::Object(Map::new());
                smp_map(&mut fresh, item)?;
                b.push(fresh);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn content_types() {
        assert_eq!(
            PatchType::from_content_type("application/merge-patch+json"),
            Some(PatchType::Merge)
        );
        assert_eq!(
            PatchType::from_content_type("application/apply-patch+yaml; charset=utf-8"),
            Some(PatchType::Apply)
        );
        assert_eq!(PatchType::from_content_type("application/json"), None);
    }

    #[test]
    fn merge_and_json_patch() {
        let mut d =
            json!({ "metadata": { "annotations": { "a": "1", "b": "2" } }, "spec": { "x": 1 } });
        merge_patch(
            &mut d,
            &json!({ "metadata": { "annotations": { "a": null } }, "spec": { "y": 2 } }),
        )
        .unwrap();
        assert_eq!(
            d,
            json!({ "metadata": { "annotations": { "b": "2" } }, "spec": { "x": 1, "y": 2 } })
        );
        json_patch(&mut d, &json!([{ "op": "replace", "path": "/spec/x", "value": 5 }, { "op": "remove", "path": "/spec/y" }])).unwrap();
        assert_eq!(d["spec"], json!({ "x": 5 }));
        let e = json_patch(
            &mut d,
            &json!([{ "op": "test", "path": "/spec/x", "value": 6 }]),
        )
        .unwrap_err();
        assert_eq!(e.code, 422);
        assert!(merge_patch(&mut d, &json!([1])).is_err());
    }

    #[test]
    fn strategic_merges_containers_by_name_and_sets() {
        let mut d = json!({
            "metadata": { "finalizers": ["a"] },
            "spec": { "containers": [
                { "name": "runtime", "image": "runnel:1", "env": [{ "name": "A", "value": "1" }], "args": ["x"] },
                { "name": "side", "image": "busybox" }
            ] }
        });
        strategic_merge(
            &mut d,
            &json!({
                "$setElementOrder/containers": [{ "name": "runtime" }],
                "metadata": { "finalizers": ["b"] },
                "spec": { "containers": [
                    { "name": "runtime", "env": [{ "name": "B", "value": "2" }], "args": ["y"] },
                    { "name": "side", "$patch": "delete" }
                ] }
            }),
        )
        .unwrap();
        assert_eq!(d["metadata"]["finalizers"], json!(["a", "b"]));
        let c = &d["spec"]["containers"];
        assert_eq!(c.as_array().unwrap().len(), 1);
        assert_eq!(c[0]["image"], "runnel:1");
        assert_eq!(c[0]["args"], json!(["y"]), "plain lists are replaced");
        assert_eq!(
            c[0]["env"],
            json!([{ "name": "A", "value": "1" }, { "name": "B", "value": "2" }])
        );
        strategic_merge(
            &mut d,
            &json!({ "$deleteFromPrimitiveList/finalizers": ["a"], "metadata": {} }),
        )
        .unwrap();
        // The directive sits at the level of the list's parent.
        strategic_merge(
            &mut d,
            &json!({ "metadata": { "$deleteFromPrimitiveList/finalizers": ["a"] } }),
        )
        .unwrap();
        assert_eq!(d["metadata"]["finalizers"], json!(["b"]));
        strategic_merge(&mut d, &json!({ "spec": { "$patch": "replace", "z": 1 } })).unwrap();
        assert_eq!(d["spec"], json!({ "z": 1 }));
        assert!(strategic_merge(&mut d, &json!({ "spec": { "$bogus": 1 } })).is_err());
        assert!(
            strategic_merge(
                &mut d,
                &json!({ "spec": { "containers": [{ "image": "x" }] } })
            )
            .is_err()
        );
    }

    #[test]
    fn strategic_null_and_retain_keys() {
        let mut d =
            json!({ "spec": { "renewTime": "t", "holderIdentity": "a", "x": { "p": 1, "q": 2 } } });
        strategic_merge(&mut d, &json!({ "spec": { "renewTime": null, "holderIdentity": null, "x": { "$retainKeys": ["q"], "q": 3 } } })).unwrap();
        assert_eq!(d, json!({ "spec": { "x": { "q": 3 } } }));
    }
}
