//! Field ownership (`metadata.managedFields`) and server-side apply (pure).
//!
//! A simplification of upstream's structured-merge-diff, stated in
//! `docs/e2e.md`: every list is atomic (one field, owned as a whole; upstream
//! merges lists marked `listType: map|set` by key), and a map is owned
//! through its leaves. Within that model the rules are upstream's: an apply
//! owns exactly the fields it sets; a field it set before and omits now is
//! removed unless another manager owns it; setting a field another manager
//! owns to a different value is a 409 conflict unless `force`, which takes
//! the field over; an update (PUT, merge/JSON/strategic patch) takes over the
//! fields it changes; removed fields are owned by nobody.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

pub type Path = Vec<String>;

/// Metadata the server owns: never part of a manager's field set.
const SYSTEM_META: &[&str] = &[
    "name",
    "namespace",
    "generateName",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

fn is_system(p: &[String]) -> bool {
    match p {
        [first, ..] if first == "apiVersion" || first == "kind" => true,
        [m, f, ..] if m == "metadata" => SYSTEM_META.contains(&f.as_str()),
        _ => false,
    }
}

/// Every leaf of `v` (a scalar, a list, or an empty map), system metadata excluded.
pub fn leaves(v: &Value) -> BTreeSet<Path> {
    fn walk(v: &Value, p: &mut Path, out: &mut BTreeSet<Path>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, c) in m {
                    p.push(k.clone());
                    if !is_system(p) {
                        walk(c, p, out);
                    }
                    p.pop();
                }
            }
            _ if !p.is_empty() => {
                out.insert(p.clone());
            }
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    walk(v, &mut vec![], &mut out);
    out
}

pub fn get<'a>(v: &'a Value, p: &[String]) -> Option<&'a Value> {
    p.iter().try_fold(v, |cur, k| cur.as_object()?.get(k))
}

/// Removes the field at `p` and any map left empty above it.
fn remove(v: &mut Value, p: &[String]) {
    let Some((last, parents)) = p.split_last() else {
        return;
    };
    if let Some(parent) = get_mut(v, parents).and_then(Value::as_object_mut) {
        parent.remove(last);
        if parent.is_empty() && parents.len() > 1 {
            remove(v, parents);
        }
    }
}

fn get_mut<'a>(v: &'a mut Value, p: &[String]) -> Option<&'a mut Value> {
    p.iter()
        .try_fold(v, |cur, k| cur.as_object_mut()?.get_mut(k))
}

/// Objects merge recursively; anything else replaces; null means "not set".
fn deep_merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    continue;
                }
                match b.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => {
                        deep_merge(existing, v)
                    }
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, p) => *b = p.clone(),
    }
}

fn overlaps(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// One `managedFields` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub time: String,
    pub subresource: Option<String>,
    pub fields: BTreeSet<Path>,
}

impl Entry {
    fn same_owner(&self, manager: &str, operation: &str, sub: Option<&str>) -> bool {
        self.manager == manager && self.operation == operation && self.subresource.as_deref() == sub
    }
}

fn to_fields_v1(set: &BTreeSet<Path>) -> Value {
    let mut root = Value::Object(Map::new());
    for p in set {
        let mut cur = &mut root;
        for k in p {
            cur = cur
                .as_object_mut()
                .map(|m| m.entry(format!("f:{k}")).or_insert_with(|| json!({})))
                .expect("built only of objects");
        }
    }
    root
}

fn from_fields_v1(v: &Value) -> BTreeSet<Path> {
    fn walk(v: &Value, p: &mut Path, out: &mut BTreeSet<Path>) {
        let children: Vec<(&String, &Value)> = v
            .as_object()
            .map(|m| m.iter().filter(|(k, _)| k.starts_with("f:")).collect())
            .unwrap_or_default();
        if children.is_empty() {
            if !p.is_empty() {
                out.insert(p.clone());
            }
            return;
        }
        for (k, c) in children {
            p.push(k[2..].to_string());
            walk(c, p, out);
            p.pop();
        }
    }
    let mut out = BTreeSet::new();
    walk(v, &mut vec![], &mut out);
    out
}

pub fn read_entries(obj: &Value) -> Vec<Entry> {
    obj["metadata"]["managedFields"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| Entry {
                    manager: e["manager"].as_str().unwrap_or("").into(),
                    operation: e["operation"].as_str().unwrap_or("Update").into(),
                    api_version: e["apiVersion"].as_str().unwrap_or("").into(),
                    time: e["time"].as_str().unwrap_or("").into(),
                    subresource: e["subresource"].as_str().map(String::from),
                    fields: from_fields_v1(&e["fieldsV1"]),
                })
                .collect()
        })
        .unwrap_or_default()
}

pub fn write_entries(obj: &mut Value, entries: &[Entry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut j = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": to_fields_v1(&e.fields),
            });
            if let Some(s) = &e.subresource {
                j["subresource"] = json!(s);
            }
            j
        })
        .collect();
    if !list.is_empty() && !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    if let Some(m) = obj["metadata"].as_object_mut() {
        if list.is_empty() {
            m.remove("managedFields");
        } else {
            m.insert("managedFields".into(), Value::Array(list));
        }
    }
}

/// Who writes, for the bookkeeping.
pub struct Writer<'a> {
    pub manager: &'a str,
    pub subresource: Option<&'a str>,
    pub api_version: &'a str,
    pub time: &'a str,
}

/// Records an update (any write but apply) from `old` to `new`: the writer
/// takes over the fields it changed; removed fields lose their owners.
pub fn record_update(old: Option<&Value>, new: &mut Value, w: &Writer<'_>) {
    let mut entries = old.map(read_entries).unwrap_or_default();
    let before = old.map(leaves).unwrap_or_default();
    let after = leaves(new);
    let changed: BTreeSet<Path> = after
        .iter()
        .filter(|p| old.and_then(|o| get(o, p)) != get(new, p))
        .cloned()
        .collect();
    let removed: BTreeSet<Path> = before.difference(&after).cloned().collect();
    for e in entries.iter_mut() {
        let own = e.same_owner(w.manager, "Update", w.subresource);
        e.fields.retain(|p| {
            !removed.iter().any(|r| p.starts_with(r))
                && (own || !changed.iter().any(|c| overlaps(c, p)))
        });
    }
    if !changed.is_empty() {
        match entries
            .iter_mut()
            .find(|e| e.same_owner(w.manager, "Update", w.subresource))
        {
            Some(e) => {
                e.fields.extend(changed);
                e.time = w.time.into();
            }
            None => entries.push(Entry {
                manager: w.manager.into(),
                operation: "Update".into(),
                api_version: w.api_version.into(),
                time: w.time.into(),
                subresource: w.subresource.map(String::from),
                fields: changed,
            }),
        }
    }
    write_entries(new, &entries);
}

/// A field another manager owns with a different value.
#[derive(Clone, Debug, PartialEq)]
pub struct Conflict {
    pub manager: String,
    pub path: String,
}

/// Server-side apply of `applied` onto `live` (`None`: creation). `scope`
/// keeps only the fields the endpoint may change (status for `/status`).
pub fn apply(
    live: Option<&Value>,
    applied: &Value,
    w: &Writer<'_>,
    force: bool,
    scope: &dyn Fn(&[String]) -> bool,
) -> Result<Value, Vec<Conflict>> {
    let mut entries = live.map(read_entries).unwrap_or_default();
    let applied_set: BTreeSet<Path> = leaves(applied).into_iter().filter(|p| scope(p)).collect();
    let mut conflicts = vec![];
    if let Some(live) = live {
        for p in &applied_set {
            // Owning an (empty) map means owning its existence, which never
            // conflicts with the owners of its entries.
            let value = get(applied, p);
            if get(live, p).is_none_or(|v| Some(v) == value)
                || value.is_some_and(|v| v.as_object().is_some_and(|m| m.is_empty()))
            {
                continue;
            }
            for e in entries
                .iter_mut()
                .filter(|e| !e.same_owner(w.manager, "Apply", w.subresource))
            {
                if e.fields.iter().any(|q| overlaps(p, q)) {
                    if force {
                        e.fields.retain(|q| !overlaps(p, q));
                    } else {
                        conflicts.push(Conflict {
                            manager: e.manager.clone(),
                            path: format!(".{}", p.join(".")),
                        });
                    }
                }
            }
        }
    }
    if !conflicts.is_empty() {
        return Err(conflicts);
    }
    let mut result = live.cloned().unwrap_or_else(|| json!({}));
    let previous = entries
        .iter()
        .find(|e| e.same_owner(w.manager, "Apply", w.subresource))
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    for p in previous.difference(&applied_set) {
        let shared = entries
            .iter()
            .filter(|e| !e.same_owner(w.manager, "Apply", w.subresource))
            .any(|e| e.fields.iter().any(|q| overlaps(p, q)));
        if !shared {
            remove(&mut result, p);
        }
    }
    // Only the fields in scope are merged.
    let mut scoped = json!({});
    for p in &applied_set {
        if let Some(v) = get(applied, p) {
            let mut cur = &mut scoped;
            for k in &p[..p.len() - 1] {
                cur = cur
                    .as_object_mut()
                    .map(|m| m.entry(k.clone()).or_insert_with(|| json!({})))
                    .expect("built only of objects");
            }
            if let Some(m) = cur.as_object_mut() {
                m.insert(p[p.len() - 1].clone(), v.clone());
            }
        }
    }
    deep_merge(&mut result, &scoped);
    let after = leaves(&result);
    for e in entries.iter_mut() {
        e.fields
            .retain(|p| after.contains(p) || after.iter().any(|a| a.starts_with(p)));
    }
    match entries
        .iter_mut()
        .find(|e| e.same_owner(w.manager, "Apply", w.subresource))
    {
        Some(e) => {
            e.fields = applied_set;
            e.time = w.time.into();
        }
        None => entries.push(Entry {
            manager: w.manager.into(),
            operation: "Apply".into(),
            api_version: w.api_version.into(),
            time: w.time.into(),
            subresource: w.subresource.map(String::from),
            fields: applied_set,
        }),
    }
    write_entries(&mut result, &entries);
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w<'a>(m: &'a str, sub: Option<&'a str>) -> Writer<'a> {
        Writer {
            manager: m,
            subresource: sub,
            api_version: "v1",
            time: "t",
        }
    }

    fn all(_: &[String]) -> bool {
        true
    }

    #[test]
    fn fields_v1_round_trip() {
        let v = json!({ "metadata": { "name": "x", "labels": { "a": "1" } }, "spec": { "l": [1], "m": { "k": true } } });
        let set = leaves(&v);
        assert_eq!(set.len(), 3, "{set:?}");
        assert_eq!(from_fields_v1(&to_fields_v1(&set)), set);
        assert_eq!(to_fields_v1(&set)["f:spec"]["f:m"]["f:k"], json!({}));
    }

    #[test]
    fn apply_removes_what_it_no_longer_sets() {
        let live = json!({ "metadata": { "name": "x" } });
        let a1 = json!({ "status": { "a": 1, "b": { "c": 2 } } });
        let o = apply(Some(&live), &a1, &w("op", Some("status")), true, &all).unwrap();
        assert_eq!(o["status"], json!({ "a": 1, "b": { "c": 2 } }));
        let a2 = json!({ "status": { "a": 3 } });
        let o = apply(Some(&o), &a2, &w("op", Some("status")), true, &all).unwrap();
        assert_eq!(o["status"], json!({ "a": 3 }), "b left the applied config");
        assert_eq!(o["metadata"]["managedFields"][0]["manager"], "op");
        assert_eq!(o["metadata"]["managedFields"][0]["subresource"], "status");
    }

    #[test]
    fn conflicts_unless_forced_and_shared_fields_stay() {
        let live = json!({ "metadata": { "name": "l" } });
        let a = json!({ "spec": { "holder": "a", "renew": 1 } });
        let o = apply(Some(&live), &a, &w("a", None), false, &all).unwrap();
        // b sets the same value: shared, no conflict.
        let o = apply(
            Some(&o),
            &json!({ "spec": { "renew": 1 } }),
            &w("b", None),
            false,
            &all,
        )
        .unwrap();
        // b changes a's field: conflict.
        let e = apply(
            Some(&o),
            &json!({ "spec": { "holder": "b" } }),
            &w("b", None),
            false,
            &all,
        )
        .unwrap_err();
        assert_eq!(
            e,
            vec![Conflict {
                manager: "a".into(),
                path: ".spec.holder".into()
            }]
        );
        let o2 = apply(
            Some(&o),
            &json!({ "spec": { "holder": "b" } }),
            &w("b", None),
            true,
            &all,
        )
        .unwrap();
        assert_eq!(o2["spec"]["holder"], "b");
        // a drops renew, but b still owns it: it stays.
        let o3 = apply(
            Some(&o),
            &json!({ "spec": { "holder": "a" } }),
            &w("a", None),
            false,
            &all,
        )
        .unwrap();
        assert_eq!(o3["spec"]["renew"], 1);
    }

    #[test]
    fn updates_take_over_and_removals_free_fields() {
        let o = apply(
            None,
            &json!({ "metadata": { "name": "l" }, "spec": { "holder": "a" } }),
            &w("a", None),
            false,
            &all,
        )
        .unwrap();
        // Another writer removes the field with a patch (an update).
        let mut n = o.clone();
        n["spec"].as_object_mut().unwrap().remove("holder");
        record_update(Some(&o), &mut n, &w("b", None));
        // Now a third applier can set it without conflict.
        let o = apply(
            Some(&n),
            &json!({ "spec": { "holder": "c" } }),
            &w("c", None),
            false,
            &all,
        )
        .unwrap();
        assert_eq!(o["spec"]["holder"], "c");
        // An update of c's field moves ownership to the updater: c's apply conflicts.
        let mut n = o.clone();
        n["spec"]["holder"] = json!("d");
        record_update(Some(&o), &mut n, &w("d", None));
        let e = apply(
            Some(&n),
            &json!({ "spec": { "holder": "c" } }),
            &w("c", None),
            false,
            &all,
        )
        .unwrap_err();
        assert_eq!(e[0].manager, "d");
    }

    #[test]
    fn scope_limits_the_applied_fields() {
        let live = json!({ "metadata": { "name": "x" }, "spec": { "a": 1 } });
        let only_status = |p: &[String]| p.first().is_some_and(|f| f == "status");
        let o = apply(
            Some(&live),
            &json!({ "spec": { "a": 2 }, "status": { "s": 1 } }),
            &w("m", Some("status")),
            true,
            &only_status,
        )
        .unwrap();
        assert_eq!(o["spec"]["a"], 1);
        assert_eq!(o["status"]["s"], 1);
    }
}
