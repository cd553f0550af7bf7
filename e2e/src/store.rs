//! The object store: objects by (storage, namespace, name), one global
//! monotonically increasing resourceVersion, a bounded log of changes for
//! watches (older versions are answered with 410 Gone), and what the
//! apiserver and the garbage collector do on each write: defaults,
//! admission, CRD registration and validation, the status subresource,
//! field ownership, finalizers, graceful pod deletion, ownerReference
//! garbage collection and namespace termination.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::error::{ApiError, ApiResult};
use crate::managed::{self, Writer};
use crate::meta::{self, name_of, uid_of};
use crate::patch::{self, PatchType};
use crate::resources::{self, Registry, ResourceType};
use crate::schema::{self, FieldValidation};

pub const FOREGROUND: &str = "foregroundDeletion";
pub const ORPHAN: &str = "orphan";
const CRD_CLEANUP: &str = "customresourcecleanup.apiextensions.k8s.io";
const CRD_STORAGE: &str = "customresourcedefinitions";

/// What happened to an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Added => "ADDED",
            ChangeKind::Modified => "MODIFIED",
            ChangeKind::Deleted => "DELETED",
        }
    }
}

/// One entry of the change log (and of every watch).
#[derive(Clone, Debug)]
pub struct Change {
    pub rv: u64,
    pub storage: String,
    pub namespace: String,
    pub kind: ChangeKind,
    pub object: Value,
    /// The object before the change (for selector transitions in watches).
    pub prev: Option<Value>,
}

/// Where a watch starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchFrom {
    /// The current state as synthetic ADDED events, then changes.
    Current,
    /// Changes after this resourceVersion.
    After(u64),
}

/// A watch's start: the replayed changes, the live receiver, and the
/// resourceVersion they join at.
pub type Subscription = (Vec<Arc<Change>>, broadcast::Receiver<Arc<Change>>, u64);

/// Options of a write, from the query string.
#[derive(Clone, Debug)]
pub struct WriteOpts {
    pub manager: String,
    pub dry_run: bool,
    pub field_validation: FieldValidation,
    pub force: bool,
}

impl Default for WriteOpts {
    fn default() -> Self {
        WriteOpts {
            manager: "unknown".into(),
            dry_run: false,
            field_validation: FieldValidation::Strict,
            force: false,
        }
    }
}

/// Options of a delete (query string and `DeleteOptions` body).
#[derive(Clone, Debug, Default)]
pub struct DeleteOpts {
    pub propagation: Option<String>,
    pub grace_seconds: Option<i64>,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
    pub dry_run: bool,
}

type Key = (String, String, String);

struct Inner {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    log: VecDeque<Arc<Change>>,
    window: usize,
    /// Highest resourceVersion dropped from the log.
    compacted: u64,
    registry: Registry,
    tx: broadcast::Sender<Arc<Change>>,
}

/// The store, shared by the HTTP handlers, the pod runner and the Job
/// controller.
pub struct Store {
    inner: Mutex<Inner>,
    image_pattern: regex::Regex,
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn has_generation(rt: &ResourceType) -> bool {
    rt.custom.is_some() || (rt.group == "batch" && rt.plural == "jobs")
}

/// The object without the parts the server maintains, to detect no-op writes.
fn comparable(o: &Value) -> Value {
    let mut c = o.clone();
    if let Some(m) = c["metadata"].as_object_mut() {
        m.remove("resourceVersion");
        m.remove("managedFields");
    }
    c
}

/// Everything but metadata and status: what `generation` counts changes of.
fn spec_part(o: &Value) -> Value {
    let mut c = o.clone();
    if let Some(m) = c.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    c
}

fn pod_needs_kubelet(o: &Value) -> bool {
    o["kind"] == "Pod"
        && o["spec"]["nodeName"].is_string()
        && matches!(o["status"]["phase"].as_str(), Some("Pending" | "Running"))
}

impl Store {
    /// `window`: how many changes are kept for watches; `image_pattern`:
    /// the images the pod runner can run (pods with others are refused).
    pub fn new(window: usize, image_pattern: regex::Regex) -> Arc<Store> {
        let (tx, _) = broadcast::channel(4096);
        let store = Arc::new(Store {
            inner: Mutex::new(Inner {
                rv: 1,
                objects: BTreeMap::new(),
                log: VecDeque::new(),
                window: window.max(1),
                compacted: 0,
                registry: Registry::default(),
                tx,
            }),
            image_pattern,
        });
        let ns = store.registry().lookup("", "v1", "namespaces");
        if let Ok(ns) = ns {
            for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
                let obj = json!({ "metadata": { "name": name } });
                let opts = WriteOpts {
                    manager: "runnel-kube-local".into(),
                    ..Default::default()
                };
                if let Err(e) = store.create(&ns, "", obj, &opts) {
                    tracing::error!(error = %e, "cannot create namespace {name}");
                }
            }
        }
        store
    }

    pub fn registry(&self) -> Registry {
        lock(&self.inner).registry.clone()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        lock(&self.inner).tx.subscribe()
    }

    pub fn current_rv(&self) -> u64 {
        lock(&self.inner).rv
    }

    pub fn get(&self, rt: &ResourceType, ns: &str, name: &str) -> ApiResult<Value> {
        let g = lock(&self.inner);
        g.objects
            .get(&(rt.storage.clone(), ns.to_string(), name.to_string()))
            .cloned()
            .ok_or_else(|| ApiError::not_found(&rt.qualified(), name))
    }

    /// Objects of `rt` (in `ns`, or everywhere) that pass `pred`, and the
    /// resourceVersion of the list.
    pub fn list(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        pred: &dyn Fn(&Value) -> bool,
    ) -> (Vec<Value>, u64) {
        let g = lock(&self.inner);
        let items = g
            .objects
            .iter()
            .filter(|((s, n, _), _)| *s == rt.storage && ns.is_none_or(|x| x == n))
            .map(|(_, o)| o)
            .filter(|o| pred(o))
            .cloned()
            .collect();
        (items, g.rv)
    }

    /// Subscribes to the changes of `storage` from `from`; the replayed part
    /// and the live receiver join without gap or overlap.
    pub fn watch(&self, storage: &str, from: WatchFrom) -> ApiResult<Subscription> {
        let g = lock(&self.inner);
        let rx = g.tx.subscribe();
        let replay = match from {
            WatchFrom::Current => g
                .objects
                .iter()
                .filter(|((s, _, _), _)| s == storage)
                .map(|((s, n, _), o)| {
                    Arc::new(Change {
                        rv: o["metadata"]["resourceVersion"]
                            .as_str()
                            .and_then(|r| r.parse().ok())
                            .unwrap_or(g.rv),
                        storage: s.clone(),
                        namespace: n.clone(),
                        kind: ChangeKind::Added,
                        object: o.clone(),
                        prev: None,
                    })
                })
                .collect(),
            WatchFrom::After(rv) => {
                if rv < g.compacted {
                    return Err(ApiError::gone(format!(
                        "too old resource version: {rv} ({})",
                        g.compacted + 1
                    )));
                }
                g.log
                    .iter()
                    .filter(|c| c.rv > rv && c.storage == storage)
                    .cloned()
                    .collect()
            }
        };
        Ok((replay, rx, g.rv))
    }

    /// Whether a list at `rv` can still be served exactly.
    pub fn check_exact_rv(&self, rv: u64) -> ApiResult<()> {
        let g = lock(&self.inner);
        if rv == g.rv {
            Ok(())
        } else {
            Err(ApiError::gone(format!(
                "resourceVersion {rv} is not the current one ({}): runnel-kube-local keeps no old versions of lists",
                g.rv
            )))
        }
    }

    pub fn create(
        &self,
        rt: &ResourceType,
        ns: &str,
        obj: Value,
        opts: &WriteOpts,
    ) -> ApiResult<(Value, Vec<String>)> {
        let mut g = lock(&self.inner);
        let out = self.create_locked(&mut g, rt, ns, obj, opts, None)?;
        if !opts.dry_run {
            g.collect_garbage();
        }
        Ok(out)
    }

    fn create_locked(
        &self,
        g: &mut Inner,
        rt: &ResourceType,
        ns: &str,
        mut obj: Value,
        opts: &WriteOpts,
        url_name: Option<&str>,
    ) -> ApiResult<(Value, Vec<String>)> {
        if !obj.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        check_type(rt, &obj)?;
        obj["apiVersion"] = json!(rt.api_version());
        obj["kind"] = json!(rt.kind);
        if !obj["metadata"].is_object() {
            obj["metadata"] = json!({});
        }
        let mut name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        if name.is_empty() {
            if let Some(gn) = obj["metadata"]["generateName"].as_str() {
                name = format!("{gn}{}", meta::random_suffix());
            } else if let Some(u) = url_name {
                name = u.to_string();
            }
        }
        if let Some(u) = url_name
            && u != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({name}) does not match the name on the URL ({u})"
            )));
        }
        if name.is_empty() {
            return Err(ApiError::invalid(
                &rt.kind,
                &rt.group,
                "",
                &[(
                    "metadata.name".into(),
                    "Required value: name or generateName is required".into(),
                )],
            ));
        }
        if !meta::is_dns_subdomain(&name) {
            return Err(ApiError::invalid(
                &rt.kind,
                &rt.group,
                &name,
                &[(
                    "metadata.name".into(),
                    format!(
                        "Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
                    ),
                )],
            ));
        }
        if rt.namespaced {
            if let Some(bns) = obj["metadata"]["namespace"].as_str()
                && !bns.is_empty()
                && bns != ns
            {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            match g
                .objects
                .get(&("namespaces".into(), String::new(), ns.to_string()))
            {
                None => return Err(ApiError::not_found("namespaces", ns)),
                Some(n) if n["metadata"]["deletionTimestamp"].is_string() => {
                    return Err(ApiError::new(
                        403,
                        "Forbidden",
                        format!(
                            "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                            rt.qualified()
                        ),
                    ));
                }
                Some(_) => {}
            }
            obj["metadata"]["namespace"] = json!(ns);
        } else if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("namespace");
        }
        let key = (
            rt.storage.clone(),
            if rt.namespaced {
                ns.to_string()
            } else {
                String::new()
            },
            name.clone(),
        );
        if g.objects.contains_key(&key) {
            return Err(ApiError::already_exists(&rt.qualified(), &name));
        }
        if let Some(m) = obj["metadata"].as_object_mut() {
            for k in [
                "uid",
                "resourceVersion",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "selfLink",
            ] {
                m.remove(k);
            }
            m.insert("name".into(), json!(name));
            m.insert("uid".into(), json!(meta::new_uid()));
            m.insert("creationTimestamp".into(), json!(meta::now_rfc3339()));
            if has_generation(rt) {
                m.insert("generation".into(), json!(1));
            }
        }
        if rt.status_subresource
            && rt.custom.is_some()
            && let Some(o) = obj.as_object_mut()
        {
            o.remove("status");
        }
        let mut warnings = vec![];
        self.defaults_and_admission(g, rt, &mut obj, &name)?;
        if let Some(schema) = rt.custom.as_ref().and_then(|c| c.schema.as_ref()) {
            let (errors, w) = schema::validate(&mut obj, schema, opts.field_validation, false);
            if !errors.is_empty() {
                return Err(ApiError::invalid(&rt.kind, &rt.group, &name, &errors));
            }
            warnings = w;
        }
        if obj["metadata"].get("managedFields").is_none() {
            let now = meta::now_rfc3339();
            let w = Writer {
                manager: &opts.manager,
                subresource: None,
                api_version: &rt.api_version(),
                time: &now,
            };
            managed::record_update(None, &mut obj, &w);
        }
        if rt.storage == CRD_STORAGE {
            let types = resources::from_crd(&obj).map_err(|e| {
                ApiError::invalid(
                    &rt.kind,
                    &rt.group,
                    &name,
                    &[("spec".into(), format!("Invalid value: {e}"))],
                )
            })?;
            established(&mut obj);
            if !opts.dry_run {
                g.registry.set_crd(&name, types);
            }
        }
        if opts.dry_run {
            return Ok((obj, warnings));
        }
        let out = g.commit(key, Some(obj), ChangeKind::Added);
        Ok((out, warnings))
    }

    fn defaults_and_admission(
        &self,
        g: &Inner,
        rt: &ResourceType,
        obj: &mut Value,
        name: &str,
    ) -> ApiResult<()> {
        match (rt.group.as_str(), rt.plural.as_str()) {
            ("", "pods") => {
                self.admit_pod_spec(&obj["spec"], &rt.qualified(), name)?;
                let spec = &mut obj["spec"];
                if spec["restartPolicy"].is_null() {
                    spec["restartPolicy"] = json!("Always");
                }
                if spec["terminationGracePeriodSeconds"].is_null() {
                    spec["terminationGracePeriodSeconds"] = json!(30);
                }
                if let Some(s) = spec.as_object_mut() {
                    s.remove("nodeName");
                }
                obj["status"] = json!({ "phase": "Pending", "qosClass": "BestEffort" });
            }
            ("batch", "jobs") => {
                let spec = &obj["spec"];
                for (f, ok) in [
                    (
                        "parallelism",
                        spec["parallelism"].as_i64().is_none_or(|p| p == 1),
                    ),
                    (
                        "completions",
                        spec["completions"].as_i64().is_none_or(|p| p == 1),
                    ),
                    (
                        "completionMode",
                        spec["completionMode"]
                            .as_str()
                            .is_none_or(|m| m == "NonIndexed"),
                    ),
                    ("suspend", spec["suspend"].as_bool() != Some(true)),
                    ("podFailurePolicy", spec["podFailurePolicy"].is_null()),
                    ("successPolicy", spec["successPolicy"].is_null()),
                ] {
                    if !ok {
                        return Err(ApiError::invalid(
                            &rt.kind,
                            &rt.group,
                            name,
                            &[(
                                format!("spec.{f}"),
                                format!(
                                    "Unsupported value: runnel-kube-local's Job controller runs one pod at a time to one completion; {f} other than the default is not supported"
                                ),
                            )],
                        ));
                    }
                }
                self.admit_pod_spec(&obj["spec"]["template"]["spec"], &rt.qualified(), name)?;
                let uid = obj["metadata"]["uid"].clone();
                let spec = &mut obj["spec"];
                if spec["backoffLimit"].is_null() {
                    spec["backoffLimit"] = json!(6);
                }
                spec["completions"] = json!(1);
                spec["parallelism"] = json!(1);
                spec["selector"] =
                    json!({ "matchLabels": { "batch.kubernetes.io/controller-uid": uid } });
                let labels = &mut spec["template"]["metadata"]["labels"];
                if !labels.is_object() {
                    *labels = json!({});
                }
                labels["batch.kubernetes.io/controller-uid"] = uid.clone();
                labels["controller-uid"] = uid;
                labels["batch.kubernetes.io/job-name"] = json!(name);
                labels["job-name"] = json!(name);
                obj["status"] = json!({});
            }
            ("", "secrets") => {
                if let Some(sd) = obj.as_object_mut().and_then(|o| o.remove("stringData"))
                    && let Some(m) = sd.as_object()
                {
                    if !obj["data"].is_object() {
                        obj["data"] = json!({});
                    }
                    for (k, v) in m {
                        let s = v.as_str().unwrap_or("");
                        obj["data"][k] = json!(base64::engine::general_purpose::STANDARD.encode(s));
                    }
                }
                if obj["type"].is_null() {
                    obj["type"] = json!("Opaque");
                }
            }
            ("", "namespaces") => {
                obj["status"] = json!({ "phase": "Active" });
            }
            ("", "services") => {
                if obj["spec"]["type"].is_null() {
                    obj["spec"]["type"] = json!("ClusterIP");
                }
                let t = obj["spec"]["type"].as_str().unwrap_or("");
                if t != "ClusterIP" {
                    return Err(ApiError::invalid(
                        &rt.kind,
                        &rt.group,
                        name,
                        &[(
                            "spec.type".into(),
                            format!(
                                "Unsupported value: {t:?}: runnel-kube-local stores ClusterIP Services only (it has no service network)"
                            ),
                        )],
                    ));
                }
                obj["status"] = json!({ "loadBalancer": {} });
            }
            _ => {}
        }
        let _ = g;
        Ok(())
    }

    /// Pods must use images the pod runner can run: a real kubelet would
    /// pull any image; this one runs local binaries only.
    fn admit_pod_spec(&self, spec: &Value, resource: &str, name: &str) -> ApiResult<()> {
        let containers = spec["containers"].as_array().cloned().unwrap_or_default();
        if containers.is_empty() {
            return Err(ApiError::new(
                422,
                "Invalid",
                format!("{resource} \"{name}\" is invalid: spec.containers: Required value"),
            ));
        }
        for c in containers
            .iter()
            .chain(spec["initContainers"].as_array().into_iter().flatten())
        {
            let image = c["image"].as_str().unwrap_or("");
            if !self.image_pattern.is_match(image) {
                return Err(ApiError::new(
                    403,
                    "Forbidden",
                    format!(
                        "{resource} \"{name}\" is forbidden: runnel-kube-local runs only images matching /{}/ as local processes; container {:?} has image {image:?}",
                        self.image_pattern.as_str(),
                        c["name"].as_str().unwrap_or("")
                    ),
                ));
            }
        }
        if spec["initContainers"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
            || containers.len() > 1
        {
            return Err(ApiError::new(
                403,
                "Forbidden",
                format!(
                    "{resource} \"{name}\" is forbidden: runnel-kube-local runs one container per pod (no init containers or sidecars)"
                ),
            ));
        }
        Ok(())
    }

    /// PUT, or a PATCH of an existing object; `sub` is `Some("status")` for
    /// the status subresource. Returns the object and validation warnings.
    #[allow(clippy::too_many_arguments)]
    pub fn write(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        sub: Option<&str>,
        change: Change2<'_>,
        opts: &WriteOpts,
    ) -> ApiResult<(Value, Vec<String>, bool)> {
        let mut g = lock(&self.inner);
        let key = (rt.storage.clone(), ns.to_string(), name.to_string());
        if sub.is_some_and(|s| s != "status") || (sub == Some("status") && !rt.status_subresource) {
            return Err(ApiError::not_found(&rt.qualified(), name));
        }
        let api_version = rt.api_version();
        let now = meta::now_rfc3339();
        let writer = Writer {
            manager: &opts.manager,
            subresource: sub,
            api_version: &api_version,
            time: &now,
        };
        let Some(old) = g.objects.get(&key).cloned() else {
            // Server-side apply creates; so does a PUT of a custom object? No: only apply.
            if let Change2::Patch(PatchType::Apply, body) = change {
                if sub.is_some() {
                    return Err(ApiError::not_found(&rt.qualified(), name));
                }
                check_type(rt, body)?;
                let created = managed::apply(None, body, &writer, true, &|_| true)
                    .map_err(|_| ApiError::bad_request("apply conflict on create"))?;
                let (o, w) = self.create_locked(&mut g, rt, ns, created, opts, Some(name))?;
                if !opts.dry_run {
                    g.collect_garbage();
                }
                return Ok((o, w, true));
            }
            return Err(ApiError::not_found(&rt.qualified(), name));
        };
        let status_scope = |p: &[String]| p.first().is_some_and(|f| f == "status");
        let main_scope =
            |p: &[String]| !(rt.status_subresource && p.first().is_some_and(|f| f == "status"));
        let mut new = match change {
            Change2::Replace(body) => {
                if !body.is_object() {
                    return Err(ApiError::bad_request("the body must be a JSON object"));
                }
                check_type(rt, body)?;
                let mut b = body.clone();
                if let Some(m) = b["metadata"].as_object_mut() {
                    m.remove("managedFields");
                }
                b
            }
            Change2::Patch(pt, body) => {
                // A resourceVersion in any patch body is a precondition, as
                // in the apiserver; apply to the status subresource would
                // otherwise drop it with the other non-status fields.
                version_precondition(rt, name, &body["metadata"]["resourceVersion"], &old)?;
                let mut doc = old.clone();
                match pt {
                    PatchType::Merge => patch::merge_patch(&mut doc, body)?,
                    PatchType::Json => patch::json_patch(&mut doc, body)?,
                    PatchType::Strategic => {
                        if rt.custom.is_some() {
                            return Err(ApiError::new(
                                415,
                                "UnsupportedMediaType",
                                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
                            ));
                        }
                        patch::strategic_merge(&mut doc, body)?
                    }
                    PatchType::Apply => {
                        check_type(rt, body)?;
                        let scope: &dyn Fn(&[String]) -> bool = if sub == Some("status") {
                            &status_scope
                        } else {
                            &main_scope
                        };
                        doc = managed::apply(Some(&old), body, &writer, opts.force, scope).map_err(|cs| {
                            let list: Vec<String> = cs.iter().map(|c| format!("conflict with {:?}: {}", c.manager, c.path)).collect();
                            ApiError::new(409, "Conflict", format!("Apply failed with {} conflict{}: {}", cs.len(), if cs.len() == 1 { "" } else { "s" }, list.join("; ")))
                                .with_details(json!({ "name": name, "kind": rt.qualified(),
                                    "causes": cs.iter().map(|c| json!({ "reason": "FieldManagerConflict", "message": format!("conflict with {:?}", c.manager), "field": c.path })).collect::<Vec<_>>() }))
                        })?;
                    }
                }
                doc
            }
        };
        // The URL names the object; the server owns identity and lifecycle fields.
        if let Some(n) = new["metadata"]["name"].as_str()
            && n != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
        // What the patch left there (a JSON patch can set it too) or the PUT body.
        version_precondition(rt, name, &new["metadata"]["resourceVersion"], &old)?;
        new["apiVersion"] = json!(api_version);
        new["kind"] = json!(rt.kind);
        if !new["metadata"].is_object() {
            new["metadata"] = json!({});
        }
        let applied_fields = new["metadata"]["managedFields"].clone();
        for k in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "managedFields",
        ] {
            match old["metadata"].get(k) {
                Some(v) => new["metadata"][k] = v.clone(),
                None => {
                    if let Some(m) = new["metadata"].as_object_mut() {
                        m.remove(k);
                    }
                }
            }
        }
        if matches!(change, Change2::Patch(PatchType::Apply, _)) {
            // managed::apply wrote the new field sets.
            new["metadata"]["managedFields"] = applied_fields;
        }
        if rt.status_subresource {
            if sub == Some("status") {
                let mut s = old.clone();
                s["status"] = new["status"].clone();
                if new.get("status").is_none()
                    && let Some(o) = s.as_object_mut()
                {
                    o.remove("status");
                }
                s["metadata"]["managedFields"] = new["metadata"]["managedFields"].clone();
                new = s;
            } else {
                match old.get("status") {
                    Some(st) => new["status"] = st.clone(),
                    None => {
                        if let Some(o) = new.as_object_mut() {
                            o.remove("status");
                        }
                    }
                }
            }
        }
        if rt.plural == "pods" && rt.group.is_empty() && sub.is_none() {
            let strip = |o: &Value| {
                let mut s = o["spec"].clone();
                if let Some(cs) = s["containers"].as_array_mut() {
                    for c in cs {
                        c["image"] = Value::Null;
                    }
                }
                s
            };
            if strip(&old) != strip(&new) {
                return Err(ApiError::invalid(&rt.kind, &rt.group, name, &[("spec".into(), "Forbidden: pod updates may not change fields other than `spec.containers[*].image`".into())]));
            }
        }
        if rt.group == "batch"
            && sub.is_none()
            && old["spec"]["template"] != new["spec"]["template"]
        {
            return Err(ApiError::invalid(
                &rt.kind,
                &rt.group,
                name,
                &[(
                    "spec.template".into(),
                    "Invalid value: field is immutable".into(),
                )],
            ));
        }
        let mut warnings = vec![];
        if let Some(schema) = rt.custom.as_ref().and_then(|c| c.schema.as_ref()) {
            let (errors, w) = schema::validate(&mut new, schema, opts.field_validation, true);
            if !errors.is_empty() {
                return Err(ApiError::invalid(&rt.kind, &rt.group, name, &errors));
            }
            warnings = w;
        }
        if rt.storage == CRD_STORAGE {
            let types = resources::from_crd(&new).map_err(|e| {
                ApiError::invalid(
                    &rt.kind,
                    &rt.group,
                    name,
                    &[("spec".into(), format!("Invalid value: {e}"))],
                )
            })?;
            established(&mut new);
            if !opts.dry_run {
                g.registry.set_crd(name, types);
            }
        }
        if has_generation(rt) && spec_part(&old) != spec_part(&new) {
            let next_gen = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            new["metadata"]["generation"] = json!(next_gen);
        }
        if !matches!(change, Change2::Patch(PatchType::Apply, _)) {
            managed::record_update(Some(&old), &mut new, &writer);
        }
        if comparable(&new) == comparable(&old) || opts.dry_run {
            return Ok((if opts.dry_run { new } else { old }, warnings, false));
        }
        let out = g.commit(key, Some(new), ChangeKind::Modified);
        g.collect_garbage();
        Ok((out, warnings, false))
    }

    pub fn delete(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        opts: &DeleteOpts,
    ) -> ApiResult<Value> {
        let mut g = lock(&self.inner);
        let key = (rt.storage.clone(), ns.to_string(), name.to_string());
        let Some(old) = g.objects.get(&key).cloned() else {
            return Err(ApiError::not_found(&rt.qualified(), name));
        };
        if let Some(u) = &opts.precondition_uid
            && u != uid_of(&old)
        {
            return Err(ApiError::conflict(
                &rt.qualified(),
                name,
                &format!(
                    "Precondition failed: UID in precondition: {u}, UID in object meta: {}",
                    uid_of(&old)
                ),
            ));
        }
        if let Some(rv) = &opts.precondition_rv
            && Some(rv.as_str()) != old["metadata"]["resourceVersion"].as_str()
        {
            return Err(ApiError::conflict(
                &rt.qualified(),
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        let prop = opts.propagation.as_deref();
        if !matches!(prop, None | Some("Background" | "Foreground" | "Orphan")) {
            return Err(ApiError::bad_request(format!(
                "unsupported propagationPolicy {prop:?}"
            )));
        }
        if opts.dry_run {
            return Ok(old);
        }
        let out = g.delete_object(&key, prop, opts.grace_seconds);
        g.collect_garbage();
        Ok(out)
    }

    /// Internal write (pod runner, Job controller): `f` edits the object;
    /// nothing is written when the object is gone, was replaced (other uid)
    /// or did not change.
    pub fn update_internal(
        &self,
        rt_storage: &str,
        ns: &str,
        name: &str,
        uid: &str,
        manager: &str,
        f: impl FnOnce(&mut Value),
    ) -> Option<Value> {
        let mut g = lock(&self.inner);
        let key = (rt_storage.to_string(), ns.to_string(), name.to_string());
        let old = g.objects.get(&key)?.clone();
        if uid_of(&old) != uid {
            return None;
        }
        let mut new = old.clone();
        f(&mut new);
        if comparable(&new) == comparable(&old) {
            return Some(old);
        }
        let now = meta::now_rfc3339();
        let api_version = new["apiVersion"].as_str().unwrap_or("v1").to_string();
        let w = Writer {
            manager,
            subresource: Some("status"),
            api_version: &api_version,
            time: &now,
        };
        managed::record_update(Some(&old), &mut new, &w);
        let out = g.commit(key, Some(new), ChangeKind::Modified);
        g.collect_garbage();
        Some(out)
    }

    /// Creates an object on behalf of a controller.
    pub fn create_internal(
        &self,
        rt: &ResourceType,
        ns: &str,
        obj: Value,
        manager: &str,
    ) -> ApiResult<Value> {
        let opts = WriteOpts {
            manager: manager.into(),
            ..Default::default()
        };
        self.create(rt, ns, obj, &opts).map(|(o, _)| o)
    }

    /// Removes a pod whose process has ended after a graceful delete.
    pub fn finish_pod_deletion(&self, ns: &str, name: &str, uid: &str) {
        let mut g = lock(&self.inner);
        let key = ("pods".to_string(), ns.to_string(), name.to_string());
        let Some(o) = g.objects.get(&key) else { return };
        if uid_of(o) != uid || !o["metadata"]["deletionTimestamp"].is_string() {
            return;
        }
        if strings(&o["metadata"]["finalizers"]).is_empty() {
            g.commit(key, None, ChangeKind::Deleted);
            g.collect_garbage();
        }
    }
}

/// What a write does to the stored object.
#[derive(Clone, Copy)]
pub enum Change2<'a> {
    Replace(&'a Value),
    Patch(PatchType, &'a Value),
}

fn check_type(rt: &ResourceType, obj: &Value) -> ApiResult<()> {
    let av = obj["apiVersion"].as_str();
    let kind = obj["kind"].as_str();
    if av.is_some_and(|a| a != rt.api_version()) || kind.is_some_and(|k| k != rt.kind) {
        // The core/v1 view of Events accepts its own kind too.
        if !(rt.kind == "Event" && kind == Some("Event")) {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({}) does not match the expected API version ({})",
                av.unwrap_or(""),
                rt.api_version()
            )));
        }
    }
    Ok(())
}

fn established(crd: &mut Value) {
    let now = meta::now_rfc3339();
    crd["status"] = json!({
        "acceptedNames": crd["spec"]["names"].clone(),
        "storedVersions": crd["spec"]["versions"].as_array().map(|vs| vs.iter().filter(|v| v["storage"] == true).map(|v| v["name"].clone()).collect::<Vec<_>>()).unwrap_or_default(),
        "conditions": [
            { "type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now },
            { "type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now },
        ],
    });
}

impl Inner {
    fn commit(&mut self, key: Key, obj: Option<Value>, kind: ChangeKind) -> Value {
        self.rv += 1;
        let rv = self.rv;
        let prev = self.objects.get(&key).cloned();
        let mut object = match obj {
            Some(o) => o,
            None => self.objects.get(&key).cloned().unwrap_or(Value::Null),
        };
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        match kind {
            ChangeKind::Deleted => {
                self.objects.remove(&key);
            }
            _ => {
                self.objects.insert(key.clone(), object.clone());
            }
        }
        let change = Arc::new(Change {
            rv,
            storage: key.0.clone(),
            namespace: key.1.clone(),
            kind,
            object: object.clone(),
            prev,
        });
        self.log.push_back(change.clone());
        while self.log.len() > self.window {
            if let Some(c) = self.log.pop_front() {
                self.compacted = c.rv;
            }
        }
        // No receiver is fine.
        let _ = self.tx.send(change);
        if kind == ChangeKind::Deleted && key.0 == CRD_STORAGE {
            self.registry.remove_crd(&key.2);
        }
        object
    }

    /// Starts deleting an object: removed now, or marked with a
    /// deletionTimestamp while finalizers (or a running pod) hold it.
    fn delete_object(&mut self, key: &Key, propagation: Option<&str>, grace: Option<i64>) -> Value {
        let Some(mut o) = self.objects.get(key).cloned() else {
            return Value::Null;
        };
        let is_pod = key.0 == "pods";
        if o["metadata"]["deletionTimestamp"].is_string() {
            if is_pod && grace == Some(0) && strings(&o["metadata"]["finalizers"]).is_empty() {
                return self.commit(key.clone(), None, ChangeKind::Deleted);
            }
            return o;
        }
        let mut finalizers = strings(&o["metadata"]["finalizers"]);
        let has_dependents = self
            .objects
            .values()
            .any(|d| owner_uids(d).contains(&uid_of(&o).to_string()));
        match propagation {
            Some("Foreground") if has_dependents => finalizers.push(FOREGROUND.into()),
            Some("Orphan") if has_dependents => finalizers.push(ORPHAN.into()),
            _ => {}
        }
        if key.0 == CRD_STORAGE {
            finalizers.push(CRD_CLEANUP.into());
        }
        let grace = if is_pod {
            grace.unwrap_or_else(|| {
                o["spec"]["terminationGracePeriodSeconds"]
                    .as_i64()
                    .unwrap_or(30)
            })
        } else {
            0
        };
        let graceful_pod = is_pod && grace > 0 && pod_needs_kubelet(&o);
        let namespace = key.0 == "namespaces";
        if finalizers.is_empty() && !graceful_pod && !namespace {
            return self.commit(key.clone(), None, ChangeKind::Deleted);
        }
        finalizers.dedup();
        o["metadata"]["deletionTimestamp"] = json!(meta::now_rfc3339());
        o["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
        if !finalizers.is_empty() {
            o["metadata"]["finalizers"] = json!(finalizers);
        }
        if namespace {
            o["status"]["phase"] = json!("Terminating");
        }
        if let Some(g) = o["metadata"]["generation"].as_i64()
            && key.0.contains('.')
        {
            o["metadata"]["generation"] = json!(g + 1);
        }
        self.commit(key.clone(), Some(o), ChangeKind::Modified)
    }

    /// The garbage collector, namespace and CRD cleanup, to a fixed point.
    fn collect_garbage(&mut self) {
        for _ in 0..10_000 {
            if !self.gc_step() {
                return;
            }
        }
        tracing::error!("garbage collection did not settle");
    }

    /// One change, if any is due.
    fn gc_step(&mut self) -> bool {
        let uids: HashSet<String> = self
            .objects
            .values()
            .map(|o| uid_of(o).to_string())
            .collect();
        let snapshot: Vec<(Key, Value)> = self
            .objects
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (key, o) in &snapshot {
            let deleting = o["metadata"]["deletionTimestamp"].is_string();
            let finalizers = strings(&o["metadata"]["finalizers"]);
            let uid = uid_of(o).to_string();
            let dependents: Vec<&(Key, Value)> = snapshot
                .iter()
                .filter(|(_, d)| owner_uids(d).contains(&uid))
                .collect();
            // Dependents whose owners are all gone are deleted; dangling
            // references next to a live owner are dropped.
            let owners = owner_uids(o);
            if !owners.is_empty() && !deleting {
                let live: Vec<&String> = owners.iter().filter(|u| uids.contains(*u)).collect();
                if live.is_empty() {
                    self.delete_object(key, Some("Background"), None);
                    return true;
                }
                if live.len() < owners.len() {
                    let mut n = o.clone();
                    if let Some(refs) = n["metadata"]["ownerReferences"].as_array_mut() {
                        refs.retain(|r| r["uid"].as_str().is_some_and(|u| uids.contains(u)));
                    }
                    self.commit(key.clone(), Some(n), ChangeKind::Modified);
                    return true;
                }
            }
            if !deleting {
                continue;
            }
            if finalizers.iter().any(|f| f == ORPHAN) {
                for (dk, d) in &dependents {
                    let mut n = d.clone();
                    if let Some(refs) = n["metadata"]["ownerReferences"].as_array_mut() {
                        refs.retain(|r| r["uid"].as_str() != Some(uid.as_str()));
                    }
                    self.commit(dk.clone(), Some(n), ChangeKind::Modified);
                }
                self.remove_finalizer(key, o, ORPHAN);
                return true;
            }
            if finalizers.iter().any(|f| f == FOREGROUND) {
                let mut acted = false;
                for (dk, d) in &dependents {
                    if !d["metadata"]["deletionTimestamp"].is_string() {
                        self.delete_object(dk, Some("Foreground"), None);
                        acted = true;
                    }
                }
                let blocking = dependents.iter().any(|(_, d)| {
                    d["metadata"]["ownerReferences"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|r| {
                            r["uid"].as_str() == Some(uid.as_str())
                                && r["blockOwnerDeletion"] == true
                        })
                });
                if !blocking {
                    self.remove_finalizer(key, o, FOREGROUND);
                    return true;
                }
                if acted {
                    return true;
                }
            }
            if key.0 == CRD_STORAGE && finalizers.iter().any(|f| f == CRD_CLEANUP) {
                let crs: Vec<Key> = self
                    .objects
                    .keys()
                    .filter(|k| k.0 == key.2)
                    .cloned()
                    .collect();
                let mut acted = false;
                for k in &crs {
                    if !self.objects[k]["metadata"]["deletionTimestamp"].is_string() {
                        self.delete_object(k, Some("Background"), None);
                        acted = true;
                    }
                }
                if crs.is_empty() {
                    self.remove_finalizer(key, o, CRD_CLEANUP);
                    return true;
                }
                if acted {
                    return true;
                }
            }
            if key.0 == "namespaces" {
                let contents: Vec<Key> = self
                    .objects
                    .keys()
                    .filter(|k| k.1 == key.2 && !k.1.is_empty())
                    .cloned()
                    .collect();
                let mut acted = false;
                for k in &contents {
                    if !self.objects[k]["metadata"]["deletionTimestamp"].is_string() {
                        self.delete_object(k, Some("Background"), None);
                        acted = true;
                    }
                }
                if contents.is_empty() && finalizers.is_empty() {
                    self.commit(key.clone(), None, ChangeKind::Deleted);
                    return true;
                }
                if acted {
                    return true;
                }
                continue;
            }
            if finalizers.is_empty() && !pod_needs_kubelet(o) {
                self.commit(key.clone(), None, ChangeKind::Deleted);
                return true;
            }
        }
        false
    }

    fn remove_finalizer(&mut self, key: &Key, o: &Value, f: &str) {
        let mut n = o.clone();
        let rest: Vec<String> = strings(&o["metadata"]["finalizers"])
            .into_iter()
            .filter(|x| x != f)
            .collect();
        if rest.is_empty() {
            if let Some(m) = n["metadata"].as_object_mut() {
                m.remove("finalizers");
            }
        } else {
            n["metadata"]["finalizers"] = json!(rest);
        }
        self.commit(key.clone(), Some(n), ChangeKind::Modified);
    }
}

fn owner_uids(o: &Value) -> Vec<String> {
    o["metadata"]["ownerReferences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r["uid"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Name of an object, for logs.
pub fn describe(o: &Value) -> String {
    format!("{}/{}", o["kind"].as_str().unwrap_or("?"), name_of(o))
}

/// A non-empty resourceVersion in a write is a precondition: the object must
/// still be at that version, or the write is refused with the apiserver's 409.
fn version_precondition(
    rt: &ResourceType,
    name: &str,
    given: &Value,
    old: &Value,
) -> ApiResult<()> {
    match given.as_str() {
        Some(rv) if !rv.is_empty() && Some(rv) != old["metadata"]["resourceVersion"].as_str() => {
            Err(ApiError::conflict(
                &rt.qualified(),
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ))
        }
        _ => Ok(()),
    }
}
