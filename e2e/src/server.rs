//! The HTTP side of the local control plane: URL routing, discovery,
//! list/watch streaming, Tables, and the translation of requests into
//! [`Store`] calls. Every request that is not understood gets a `Status`.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::error::{ApiError, ApiResult};
use crate::patch::PatchType;
use crate::resources::ResourceType;
use crate::schema::FieldValidation;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::store::{Change, Change2, ChangeKind, DeleteOpts, Store, WatchFrom, WriteOpts};
use crate::table;

/// Shared by all requests.
pub struct AppState {
    pub store: Arc<Store>,
    /// `host:port` the server listens on (for `/api`).
    pub addr: String,
    /// Where the pod runner writes container logs (`pods/log`).
    pub logs_dir: PathBuf,
    /// How often a watch that asked for bookmarks gets one.
    pub bookmark_interval: Duration,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new().fallback(handle).with_state(state)
}

fn json_response(code: u16, v: &Value) -> Response {
    let body = serde_json::to_vec(v).unwrap_or_default();
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error_response(e: &ApiError) -> Response {
    json_response(e.code, &e.status())
}

fn with_warnings(mut r: Response, warnings: &[String]) -> Response {
    for w in warnings {
        let v = format!("299 - \"{}\"", w.replace('"', "\\\""));
        if let Ok(h) = HeaderValue::from_str(&v) {
            r.headers_mut().append(header::WARNING, h);
        }
    }
    r
}

async fn handle(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let headers = req.headers().clone();
    let body = match axum::body::to_bytes(req.into_body(), 64 << 20).await {
        Ok(b) => b,
        Err(e) => {
            return error_response(&ApiError::bad_request(format!("cannot read the body: {e}")));
        }
    };
    let query: HashMap<String, String> = axum::extract::Query::try_from_uri(&uri)
        .map(|q: axum::extract::Query<HashMap<String, String>>| q.0)
        .unwrap_or_default();
    let segs: Vec<&str> = uri
        .path()
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    tracing::debug!(%method, path = %uri, "request");
    match route(&st, &method, &segs, &query, &headers, &body).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(%method, path = %uri, error = %e, "request failed");
            error_response(&e)
        }
    }
}

async fn route(
    st: &Arc<AppState>,
    method: &Method,
    segs: &[&str],
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
) -> ApiResult<Response> {
    let reg = st.store.registry();
    let not_found = || {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    };
    let get_only = |v: Value| -> ApiResult<Response> {
        if method != Method::GET {
            return Err(ApiError::method_not_allowed(format!(
                "{method} is not allowed on a discovery document"
            )));
        }
        Ok(json_response(200, &v))
    };
    match segs {
        ["version"] => get_only(json!({
            "major": "1", "minor": "32", "gitVersion": "v1.32.0-runnel-kube-local",
            "gitCommit": "", "gitTreeState": "clean", "buildDate": "", "goVersion": "", "compiler": "rustc",
            "platform": "linux/amd64",
        })),
        ["healthz" | "readyz" | "livez"] => Ok((StatusCode::OK, "ok").into_response()),
        ["api"] => get_only(reg.core_versions(&st.addr)),
        ["apis"] => get_only(reg.group_list()),
        ["openapi", "v3"] => get_only(reg.openapi_v3_root()),
        ["openapi", "v3", "api", "v1"] => {
            get_only(reg.openapi_v3_gv("", "v1").ok_or_else(not_found)?)
        }
        ["openapi", "v3", "apis", g, v] => get_only(reg.openapi_v3_gv(g, v).ok_or_else(not_found)?),
        ["openapi", "v2"] => Err(ApiError::new(
            404,
            "NotFound",
            "runnel-kube-local serves no OpenAPI v2 document (clients use /openapi/v3; see docs/e2e.md)",
        )),
        ["api", "v1"] => get_only(reg.resource_list("", "v1").ok_or_else(not_found)?),
        ["api", "v1", rest @ ..] => resource(st, method, "", "v1", rest, q, headers, body).await,
        ["apis", g] => get_only(reg.group(g).ok_or_else(not_found)?),
        ["apis", g, v] => get_only(reg.resource_list(g, v).ok_or_else(not_found)?),
        ["apis", g, v, rest @ ..] => resource(st, method, g, v, rest, q, headers, body).await,
        _ => Err(not_found()),
    }
}

/// Converts a stored events.k8s.io/v1 Event to its core/v1 view.
fn core_event(e: &Value) -> Value {
    let mut c = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": e["metadata"],
        "involvedObject": e["regarding"],
        "reason": e["reason"],
        "message": e["note"],
        "type": e["type"],
        "action": e["action"],
        "eventTime": e["eventTime"],
        "reportingComponent": e["reportingController"],
        "reportingInstance": e["reportingInstance"],
        "source": if e["deprecatedSource"].is_object() { e["deprecatedSource"].clone() } else { json!({ "component": e["reportingController"] }) },
        "firstTimestamp": if e["deprecatedFirstTimestamp"].is_string() { e["deprecatedFirstTimestamp"].clone() } else { e["eventTime"].clone() },
        "lastTimestamp": if e["deprecatedLastTimestamp"].is_string() { e["deprecatedLastTimestamp"].clone() } else if e["series"]["lastObservedTime"].is_string() { e["series"]["lastObservedTime"].clone() } else { e["eventTime"].clone() },
        "count": e["series"]["count"].as_i64().or(e["deprecatedCount"].as_i64()).unwrap_or(1),
        "related": e["related"],
    });
    if let Some(m) = c.as_object_mut() {
        m.retain(|_, v| !v.is_null());
    }
    c
}

/// Converts a core/v1 Event body to the stored events.k8s.io/v1 form.
fn events_event(c: &Value) -> Value {
    let mut e = json!({
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": c["metadata"],
        "regarding": c["involvedObject"],
        "reason": c["reason"],
        "note": c["message"],
        "type": c["type"],
        "action": c["action"],
        "eventTime": c["eventTime"],
        "reportingController": if c["reportingComponent"].is_string() { c["reportingComponent"].clone() } else { c["source"]["component"].clone() },
        "reportingInstance": c["reportingInstance"],
        "deprecatedSource": c["source"],
        "deprecatedFirstTimestamp": c["firstTimestamp"],
        "deprecatedLastTimestamp": c["lastTimestamp"],
        "deprecatedCount": c["count"],
        "related": c["related"],
    });
    if let Some(m) = e.as_object_mut() {
        m.retain(|_, v| !v.is_null());
    }
    e
}

fn parse_body(headers: &HeaderMap, body: &Bytes) -> ApiResult<Value> {
    if body.is_empty() {
        return Ok(Value::Null);
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    if ct.contains("protobuf") || ct.contains("cbor") {
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!("runnel-kube-local speaks JSON only, not {ct}"),
        ));
    }
    match serde_json::from_slice(body) {
        Ok(v) => Ok(v),
        Err(e) if ct.contains("yaml") => serde_yaml::from_slice(body).map_err(|y| {
            ApiError::bad_request(format!("the body is neither JSON ({e}) nor YAML ({y})"))
        }),
        Err(e) => Err(ApiError::bad_request(format!(
            "the body is not valid JSON: {e}"
        ))),
    }
}

fn write_opts(q: &HashMap<String, String>, headers: &HeaderMap) -> ApiResult<WriteOpts> {
    let manager = match q.get("fieldManager") {
        Some(m) if !m.is_empty() => m.clone(),
        _ => headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .and_then(|ua| ua.split('/').next())
            .filter(|s| !s.is_empty())
            .unwrap_or("unknown")
            .to_string(),
    };
    let dry_run = match q.get("dryRun").map(String::as_str) {
        None | Some("") => false,
        Some("All") => true,
        Some(o) => {
            return Err(ApiError::bad_request(format!(
                "unsupported dryRun value {o:?} (only All)"
            )));
        }
    };
    let field_validation = match q.get("fieldValidation").map(String::as_str) {
        None | Some("") | Some("Warn") => FieldValidation::Warn,
        Some("Strict") => FieldValidation::Strict,
        Some("Ignore") => FieldValidation::Ignore,
        Some(o) => {
            return Err(ApiError::bad_request(format!(
                "invalid fieldValidation {o:?}"
            )));
        }
    };
    let force = q.get("force").is_some_and(|f| f == "true");
    Ok(WriteOpts {
        manager,
        dry_run,
        field_validation,
        force,
    })
}

/// The selector filters of a list or watch, over the API view of objects.
struct Filter {
    ns: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn matches(&self, view: &Value) -> bool {
        self.ns
            .as_deref()
            .is_none_or(|n| view["metadata"]["namespace"].as_str() == Some(n))
            && self.labels.matches(view)
            && self.fields.matches(view)
    }
}

#[allow(clippy::too_many_arguments)]
async fn resource(
    st: &Arc<AppState>,
    method: &Method,
    group: &str,
    version: &str,
    rest: &[&str],
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
) -> ApiResult<Response> {
    let reg = st.store.registry();
    let (ns, plural, name, sub) = match rest {
        ["namespaces", ns, plural, tail @ ..]
            if reg
                .find(group, version, plural)
                .is_some_and(|t| t.namespaced) =>
        {
            if tail.len() > 2 {
                return Err(ApiError::new(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                ));
            }
            (
                Some(ns.to_string()),
                plural.to_string(),
                tail.first().map(|s| s.to_string()),
                tail.get(1).map(|s| s.to_string()),
            )
        }
        [plural, tail @ ..] if tail.len() <= 2 => (
            None,
            plural.to_string(),
            tail.first().map(|s| s.to_string()),
            tail.get(1).map(|s| s.to_string()),
        ),
        _ => {
            return Err(ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ));
        }
    };
    let view = reg.lookup(group, version, &plural)?;
    if !view.namespaced && ns.is_some() {
        return Err(ApiError::new(
            404,
            "NotFound",
            format!("{} is not namespaced", view.qualified()),
        ));
    }
    if view.namespaced && ns.is_none() && (name.is_some() || *method != Method::GET) {
        return Err(ApiError::new(
            404,
            "NotFound",
            format!(
                "{} is namespaced: use /namespaces/NS/{}",
                view.qualified(),
                view.plural
            ),
        ));
    }
    // Two views, one storage: core/v1 Events are stored as events.k8s.io/v1.
    let core_event_view = view.is_core_event_view();
    let storage_rt: ResourceType = if core_event_view {
        reg.lookup("events.k8s.io", "v1", "events")?
    } else {
        view.clone()
    };
    let to_view = move |o: Value| if core_event_view { core_event(&o) } else { o };
    let nsv = ns.clone().unwrap_or_default();
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let wants_table = accept.contains("as=Table");
    let include = q
        .get("includeObject")
        .cloned()
        .unwrap_or_else(|| "Metadata".into());
    match (method.clone(), name, sub.as_deref()) {
        (Method::GET, None, None) => {
            let filter = Filter {
                ns: ns.clone(),
                labels: LabelSelector::parse(
                    q.get("labelSelector").map(String::as_str).unwrap_or(""),
                )?,
                fields: FieldSelector::parse(
                    q.get("fieldSelector").map(String::as_str).unwrap_or(""),
                    &view.kind,
                    core_event_view,
                )?,
            };
            let watch = q.get("watch").is_some_and(|w| w == "true" || w == "1");
            if watch {
                if q.get("sendInitialEvents").is_some_and(|s| s == "true") {
                    return Err(ApiError::new(
                        422,
                        "Invalid",
                        "sendInitialEvents (watch-list) is not supported by runnel-kube-local",
                    ));
                }
                return watch_response(st, storage_rt, view.clone(), core_event_view, filter, q);
            }
            if let Some(rv) = q
                .get("resourceVersion")
                .filter(|r| !r.is_empty() && *r != "0")
                && q.get("resourceVersionMatch").is_some_and(|m| m == "Exact")
            {
                let n = rv.parse().map_err(|_| {
                    ApiError::bad_request(format!("invalid resourceVersion {rv:?}"))
                })?;
                st.store.check_exact_rv(n)?;
            }
            if q.get("continue").is_some_and(|c| !c.is_empty()) {
                return Err(ApiError::gone(
                    "runnel-kube-local never returns continue tokens (lists are complete); this one is unknown",
                ));
            }
            let (items, rv) = st.store.list(&storage_rt, ns.as_deref(), &|o| {
                filter.matches(&to_view(o.clone()))
            });
            let items: Vec<Value> = items.into_iter().map(to_view).collect();
            if wants_table {
                return Ok(json_response(
                    200,
                    &table::table(&view, &items, rv, &include),
                ));
            }
            Ok(json_response(
                200,
                &json!({
                    "kind": format!("{}List", view.kind),
                    "apiVersion": view.api_version(),
                    "metadata": { "resourceVersion": rv.to_string() },
                    "items": items,
                }),
            ))
        }
        (Method::GET, Some(n), None | Some("status")) => {
            let o = to_view(st.store.get(&storage_rt, &nsv, &n)?);
            if wants_table {
                return Ok(json_response(
                    200,
                    &table::table(&view, &[o], st.store.current_rv(), &include),
                ));
            }
            Ok(json_response(200, &o))
        }
        (Method::GET, Some(n), Some("log")) if view.kind == "Pod" && view.group.is_empty() => {
            if q.get("follow").is_some_and(|f| f == "true") {
                return Err(ApiError::bad_request(
                    "runnel-kube-local does not stream logs (follow=true); read them without -f",
                ));
            }
            st.store.get(&storage_rt, &nsv, &n)?;
            let path = st.logs_dir.join(&nsv).join(format!("{n}.log"));
            let text = tokio::fs::read_to_string(&path).await.unwrap_or_default();
            let text = match q.get("tailLines").and_then(|t| t.parse::<usize>().ok()) {
                Some(t) => {
                    let lines: Vec<&str> = text.lines().collect();
                    lines[lines.len().saturating_sub(t)..].join("\n") + "\n"
                }
                None => text,
            };
            Ok((StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], text).into_response())
        }
        (Method::POST, None, None) => {
            let mut obj = parse_body(headers, body)?;
            if core_event_view {
                obj = events_event(&obj);
            }
            let opts = write_opts(q, headers)?;
            let (o, warnings) = st.store.create(&storage_rt, &nsv, obj, &opts)?;
            Ok(with_warnings(json_response(201, &to_view(o)), &warnings))
        }
        (Method::PUT, Some(n), sub @ (None | Some("status"))) => {
            let mut obj = parse_body(headers, body)?;
            if core_event_view {
                obj = events_event(&obj);
            }
            let opts = write_opts(q, headers)?;
            let (o, warnings, _) =
                st.store
                    .write(&storage_rt, &nsv, &n, sub, Change2::Replace(&obj), &opts)?;
            Ok(with_warnings(json_response(200, &to_view(o)), &warnings))
        }
        (Method::PATCH, Some(n), sub @ (None | Some("status"))) => {
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let pt = PatchType::from_content_type(ct).ok_or_else(|| {
                ApiError::new(415, "UnsupportedMediaType", format!("the body of the request was in an unknown format ({ct:?}) - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json"))
            })?;
            let opts = write_opts(q, headers)?;
            if pt == PatchType::Apply && q.get("fieldManager").is_none_or(|m| m.is_empty()) {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
                ));
            }
            if pt != PatchType::Apply && opts.force {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    "PatchOptions.meta.k8s.io \"\" is invalid: force: Forbidden: may not be specified for non-apply patch",
                ));
            }
            let mut patch = parse_body(headers, body)?;
            if core_event_view && pt != PatchType::Json {
                patch = events_event(&patch);
            } else if core_event_view {
                return Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    "JSON patches of core/v1 Events are not supported by runnel-kube-local (use events.k8s.io/v1)",
                ));
            }
            let (o, warnings, created) = st.store.write(
                &storage_rt,
                &nsv,
                &n,
                sub,
                Change2::Patch(pt, &patch),
                &opts,
            )?;
            Ok(with_warnings(
                json_response(if created { 201 } else { 200 }, &to_view(o)),
                &warnings,
            ))
        }
        (Method::DELETE, Some(n), None) => {
            let b = parse_body(headers, body)?;
            let mut d = DeleteOpts {
                propagation: b["propagationPolicy"]
                    .as_str()
                    .map(String::from)
                    .or_else(|| q.get("propagationPolicy").cloned()),
                grace_seconds: b["gracePeriodSeconds"]
                    .as_i64()
                    .or_else(|| q.get("gracePeriodSeconds").and_then(|g| g.parse().ok())),
                precondition_uid: b["preconditions"]["uid"].as_str().map(String::from),
                precondition_rv: b["preconditions"]["resourceVersion"]
                    .as_str()
                    .map(String::from),
                dry_run: q.get("dryRun").is_some_and(|d| d == "All")
                    || b["dryRun"].as_array().is_some_and(|a| !a.is_empty()),
            };
            if b["orphanDependents"].as_bool() == Some(true)
                || q.get("orphanDependents").is_some_and(|o| o == "true")
            {
                d.propagation = Some("Orphan".into());
            }
            let o = st.store.delete(&storage_rt, &nsv, &n, &d)?;
            Ok(json_response(200, &to_view(o)))
        }
        (Method::DELETE, None, None) => Err(ApiError::method_not_allowed(
            "deletecollection is not supported by runnel-kube-local; delete objects one by one",
        )),
        (m, _, Some(s)) if s != "status" => Err(ApiError::new(
            404,
            "NotFound",
            format!("the subresource {s:?} ({m}) is not served by runnel-kube-local"),
        )),
        (m, _, _) => Err(ApiError::method_not_allowed(format!(
            "{m} is not supported on this URL by runnel-kube-local"
        ))),
    }
}

/// What one watch stream holds.
struct WatchState {
    replay: VecDeque<Arc<Change>>,
    rx: broadcast::Receiver<Arc<Change>>,
    storage: String,
    core_event_view: bool,
    filter: Filter,
    last_rv: u64,
    deadline: Instant,
    bookmarks: bool,
    bookmark_interval: Duration,
    next_bookmark: Instant,
    view: ResourceType,
    done: bool,
}

impl WatchState {
    fn view_of(&self, o: &Value) -> Value {
        if self.core_event_view {
            core_event(o)
        } else {
            o.clone()
        }
    }

    /// The watch event line for a change, if this watch sees it: an object
    /// that starts matching the selectors is ADDED, one that stops is DELETED.
    fn render(&self, c: &Change) -> Option<Bytes> {
        if c.storage != self.storage {
            return None;
        }
        let now = self.view_of(&c.object);
        let before = c.prev.as_ref().map(|p| self.view_of(p));
        let m_now = self.filter.matches(&now);
        let m_before = before.as_ref().is_some_and(|b| self.filter.matches(b));
        let kind = match (c.kind, m_before, m_now) {
            (ChangeKind::Deleted, true, _) | (ChangeKind::Deleted, _, true) => ChangeKind::Deleted,
            (ChangeKind::Deleted, false, false) => return None,
            (ChangeKind::Added, _, true) => ChangeKind::Added,
            (ChangeKind::Modified, true, true) => ChangeKind::Modified,
            (ChangeKind::Modified, false, true) => ChangeKind::Added,
            (ChangeKind::Modified, true, false) => ChangeKind::Deleted,
            _ => return None,
        };
        line(&json!({ "type": kind.as_str(), "object": now }))
    }

    fn bookmark(&self) -> Option<Bytes> {
        line(&json!({ "type": "BOOKMARK", "object": {
            "kind": self.view.kind, "apiVersion": self.view.api_version(),
            "metadata": { "resourceVersion": self.last_rv.to_string() },
        }}))
    }
}

fn line(v: &Value) -> Option<Bytes> {
    let mut b = serde_json::to_vec(v).ok()?;
    b.push(b'\n');
    Some(Bytes::from(b))
}

fn watch_response(
    st: &Arc<AppState>,
    storage_rt: ResourceType,
    view: ResourceType,
    core_event_view: bool,
    filter: Filter,
    q: &HashMap<String, String>,
) -> ApiResult<Response> {
    let from = match q.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => WatchFrom::Current,
        Some(rv) => WatchFrom::After(
            rv.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?,
        ),
    };
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1800);
    let stream_resp = |s: futures::stream::BoxStream<'static, Result<Bytes, std::io::Error>>| {
        let mut r = Response::new(Body::from_stream(s));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    };
    let (replay, rx, rv) = match st.store.watch(&storage_rt.storage, from) {
        Ok(x) => x,
        // Upstream answers an expired version with a 200 and an ERROR event.
        Err(e) => {
            let ev = line(&json!({ "type": "ERROR", "object": e.status() })).unwrap_or_default();
            let s = futures::stream::once(async move { Ok::<_, std::io::Error>(ev) });
            return Ok(stream_resp(Box::pin(s)));
        }
    };
    let now = Instant::now();
    let state = WatchState {
        replay: replay.into(),
        rx,
        storage: storage_rt.storage.clone(),
        core_event_view,
        filter,
        last_rv: rv,
        deadline: now + Duration::from_secs(timeout),
        bookmarks: q.get("allowWatchBookmarks").is_some_and(|b| b == "true"),
        bookmark_interval: st.bookmark_interval,
        next_bookmark: now + st.bookmark_interval,
        view,
        done: false,
    };
    let s = futures::stream::unfold(state, |mut w| async move {
        loop {
            if w.done {
                return None;
            }
            if let Some(c) = w.replay.pop_front() {
                if let Some(l) = w.render(&c) {
                    return Some((Ok(l), w));
                }
                continue;
            }
            let wake = if w.bookmarks {
                w.deadline.min(w.next_bookmark)
            } else {
                w.deadline
            };
            tokio::select! {
                r = w.rx.recv() => match r {
                    Ok(c) => {
                        w.last_rv = w.last_rv.max(c.rv);
                        if let Some(l) = w.render(&c) {
                            return Some((Ok(l), w));
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Too slow a reader: end with 410 so the client re-lists.
                        w.done = true;
                        let e = ApiError::gone("the watch fell behind; re-list");
                        let l = line(&json!({ "type": "ERROR", "object": e.status() })).unwrap_or_default();
                        return Some((Ok(l), w));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                _ = tokio::time::sleep_until(wake) => {
                    if Instant::now() >= w.deadline {
                        return None;
                    }
                    w.next_bookmark = Instant::now() + w.bookmark_interval;
                    if let Some(b) = w.bookmark() {
                        return Some((Ok(b), w));
                    }
                }
            }
        }
    });
    Ok(stream_resp(Box::pin(s)))
}
