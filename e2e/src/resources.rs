//! The resource types served: the built-in kinds the clients use, plus those
//! of registered CustomResourceDefinitions, and the discovery documents.

use serde_json::{Value, json};

use crate::error::{ApiError, ApiResult};

/// One served group/version/resource.
#[derive(Clone, Debug, PartialEq)]
pub struct ResourceType {
    /// `""` for the core group.
    pub group: String,
    pub version: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub status_subresource: bool,
    /// Where objects live: two API views can share one storage (core/v1 and
    /// events.k8s.io/v1 Events).
    pub storage: String,
    pub custom: Option<CustomInfo>,
}

/// What a CRD adds: its schema (validation) and printer columns (tables).
#[derive(Clone, Debug, PartialEq)]
pub struct CustomInfo {
    pub crd_name: String,
    pub schema: Option<Value>,
    pub columns: Vec<PrinterColumn>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PrinterColumn {
    pub name: String,
    pub type_: String,
    pub json_path: String,
    pub priority: i64,
    pub description: String,
}

impl ResourceType {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `pods`, `streamjobs.runnel.dev`: how messages name the resource.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// The core/v1 view of events stored in events.k8s.io/v1 form.
    pub fn is_core_event_view(&self) -> bool {
        self.group.is_empty() && self.plural == "events"
    }

    fn verbs(&self) -> Vec<&'static str> {
        vec![
            "create", "delete", "get", "list", "patch", "update", "watch",
        ]
    }
}

#[allow(clippy::too_many_arguments)]
fn builtin(
    group: &str,
    version: &str,
    plural: &str,
    kind: &str,
    namespaced: bool,
    short: &[&str],
    status: bool,
    storage: &str,
) -> ResourceType {
    ResourceType {
        group: group.into(),
        version: version.into(),
        plural: plural.into(),
        singular: kind.to_lowercase(),
        kind: kind.into(),
        namespaced,
        short_names: short.iter().map(|s| s.to_string()).collect(),
        categories: vec![],
        status_subresource: status,
        storage: storage.into(),
        custom: None,
    }
}

/// The built-in kinds: what the operator, kubectl and the scenarios use.
pub fn builtins() -> Vec<ResourceType> {
    vec![
        builtin(
            "",
            "v1",
            "namespaces",
            "Namespace",
            false,
            &["ns"],
            true,
            "namespaces",
        ),
        builtin("", "v1", "pods", "Pod", true, &["po"], true, "pods"),
        builtin(
            "",
            "v1",
            "configmaps",
            "ConfigMap",
            true,
            &["cm"],
            false,
            "configmaps",
        ),
        builtin("", "v1", "secrets", "Secret", true, &[], false, "secrets"),
        builtin(
            "",
            "v1",
            "services",
            "Service",
            true,
            &["svc"],
            true,
            "services",
        ),
        builtin("", "v1", "events", "Event", true, &["ev"], false, "events"),
        builtin(
            "events.k8s.io",
            "v1",
            "events",
            "Event",
            true,
            &["ev"],
            false,
            "events",
        ),
        builtin(
            "coordination.k8s.io",
            "v1",
            "leases",
            "Lease",
            true,
            &[],
            false,
            "leases",
        ),
        builtin("batch", "v1", "jobs", "Job", true, &[], true, "jobs"),
        builtin(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
            &["crd", "crds"],
            true,
            "customresourcedefinitions",
        ),
    ]
}

/// The resource types a CRD object defines (one per served version), or a
/// reason it cannot be served.
pub fn from_crd(crd: &Value) -> Result<Vec<ResourceType>, String> {
    let spec = &crd["spec"];
    let group = spec["group"].as_str().ok_or("spec.group is required")?;
    let names = &spec["names"];
    let plural = names["plural"]
        .as_str()
        .ok_or("spec.names.plural is required")?;
    let kind = names["kind"]
        .as_str()
        .ok_or("spec.names.kind is required")?;
    let expected = format!("{plural}.{group}");
    if crd["metadata"]["name"].as_str() != Some(expected.as_str()) {
        return Err(format!(
            "metadata.name must be spec.names.plural+\".\"+spec.group: {expected}"
        ));
    }
    let namespaced = match spec["scope"].as_str() {
        Some("Namespaced") => true,
        Some("Cluster") => false,
        other => {
            return Err(format!(
                "spec.scope must be Namespaced or Cluster, not {other:?}"
            ));
        }
    };
    if spec
        .get("conversion")
        .and_then(|c| c["strategy"].as_str())
        .is_some_and(|s| s != "None")
    {
        return Err("spec.conversion.strategy: only None is supported by runnel-kube-local".into());
    }
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let versions = spec["versions"]
        .as_array()
        .ok_or("spec.versions is required")?;
    let mut out = vec![];
    for v in versions {
        if v["served"].as_bool() != Some(true) {
            continue;
        }
        let name = v["name"]
            .as_str()
            .ok_or("spec.versions[].name is required")?;
        if v["subresources"].get("scale").is_some() {
            return Err("the scale subresource is not supported by runnel-kube-local".into());
        }
        let columns = v["additionalPrinterColumns"]
            .as_array()
            .map(|cols| {
                cols.iter()
                    .map(|c| PrinterColumn {
                        name: c["name"].as_str().unwrap_or("").into(),
                        type_: c["type"].as_str().unwrap_or("string").into(),
                        json_path: c["jsonPath"].as_str().unwrap_or("").into(),
                        priority: c["priority"].as_i64().unwrap_or(0),
                        description: c["description"].as_str().unwrap_or("").into(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(ResourceType {
            group: group.into(),
            version: name.into(),
            plural: plural.into(),
            singular: names["singular"]
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| kind.to_lowercase()),
            kind: kind.into(),
            namespaced,
            short_names: strings(&names["shortNames"]),
            categories: strings(&names["categories"]),
            status_subresource: v["subresources"].get("status").is_some(),
            storage: expected.clone(),
            custom: Some(CustomInfo {
                crd_name: expected.clone(),
                schema: v["schema"].get("openAPIV3Schema").cloned(),
                columns,
            }),
        });
    }
    Ok(out)
}

/// The served types, built-in first.
#[derive(Clone, Debug)]
pub struct Registry {
    types: Vec<ResourceType>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry { types: builtins() }
    }
}

impl Registry {
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceType> {
        self.types
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
    }

    pub fn find_kind(&self, api_version: &str, kind: &str) -> Option<&ResourceType> {
        self.types
            .iter()
            .find(|t| t.api_version() == api_version && t.kind == kind)
    }

    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> ApiResult<ResourceType> {
        self.find(group, version, plural).cloned().ok_or_else(|| {
            ApiError::new(
                404,
                "NotFound",
                format!(
                    "the server could not find the requested resource ({plural}.{group}/{version})"
                ),
            )
        })
    }

    pub fn all(&self) -> &[ResourceType] {
        &self.types
    }

    /// Replaces the types of one CRD.
    pub fn set_crd(&mut self, crd_name: &str, types: Vec<ResourceType>) {
        self.remove_crd(crd_name);
        self.types.extend(types);
    }

    pub fn remove_crd(&mut self, crd_name: &str) {
        self.types
            .retain(|t| t.custom.as_ref().is_none_or(|c| c.crd_name != crd_name));
    }

    fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = vec![];
        for t in self.types.iter().filter(|t| !t.group.is_empty()) {
            match out.iter_mut().find(|(g, _)| *g == t.group) {
                Some((_, vs)) if !vs.contains(&t.version) => vs.push(t.version.clone()),
                Some(_) => {}
                None => out.push((t.group.clone(), vec![t.version.clone()])),
            }
        }
        out
    }

    /// `GET /api`.
    pub fn core_versions(&self, server_addr: &str) -> Value {
        json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{ "clientCIDR": "0.0.0.0/0", "serverAddress": server_addr }],
        })
    }

    fn group_json(g: &str, versions: &[String]) -> Value {
        let vs: Vec<Value> = versions
            .iter()
            .map(|v| json!({ "groupVersion": format!("{g}/{v}"), "version": v }))
            .collect();
        json!({
            "kind": "APIGroup",
            "apiVersion": "v1",
            "name": g,
            "versions": vs,
            "preferredVersion": vs[0],
        })
    }

    /// `GET /apis`.
    pub fn group_list(&self) -> Value {
        let groups: Vec<Value> = self
            .groups()
            .iter()
            .map(|(g, vs)| {
                let mut j = Self::group_json(g, vs);
                if let Some(o) = j.as_object_mut() {
                    o.remove("kind");
                    o.remove("apiVersion");
                }
                j
            })
            .collect();
        json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups })
    }

    /// `GET /apis/{group}`.
    pub fn group(&self, group: &str) -> Option<Value> {
        self.groups()
            .into_iter()
            .find(|(g, _)| g == group)
            .map(|(g, vs)| Self::group_json(&g, &vs))
    }

    /// `GET /api/v1` or `GET /apis/{group}/{version}`.
    pub fn resource_list(&self, group: &str, version: &str) -> Option<Value> {
        let mut resources = vec![];
        for t in self
            .types
            .iter()
            .filter(|t| t.group == group && t.version == version)
        {
            let mut r = json!({
                "name": t.plural,
                "singularName": t.singular,
                "namespaced": t.namespaced,
                "kind": t.kind,
                "verbs": t.verbs(),
            });
            if !t.short_names.is_empty() {
                r["shortNames"] = json!(t.short_names);
            }
            if !t.categories.is_empty() {
                r["categories"] = json!(t.categories);
            }
            resources.push(r);
            if t.status_subresource {
                resources.push(json!({
                    "name": format!("{}/status", t.plural),
                    "singularName": "",
                    "namespaced": t.namespaced,
                    "kind": t.kind,
                    "verbs": ["get", "patch", "update"],
                }));
            }
            if t.group.is_empty() && t.plural == "pods" {
                resources.push(json!({
                    "name": "pods/log", "singularName": "", "namespaced": true,
                    "kind": "Pod", "verbs": ["get"],
                }));
            }
        }
        if resources.is_empty() {
            return None;
        }
        let gv = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        Some(json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": gv,
            "resources": resources,
        }))
    }

    /// `GET /openapi/v3`: one entry per group/version. The documents behind
    /// them only declare, per kind, the PATCH operation with its
    /// `fieldValidation` parameter: that is what kubectl reads to decide that
    /// the server validates fields (so it sends `fieldValidation=Strict` and
    /// skips its client-side validation, which would need the full OpenAPI v2
    /// document in protobuf).
    pub fn openapi_v3_root(&self) -> Value {
        let mut paths = serde_json::Map::new();
        let mut gvs: Vec<(String, String)> = vec![("".into(), "v1".into())];
        for (g, vs) in self.groups() {
            for v in vs {
                gvs.push((g.clone(), v));
            }
        }
        for (g, v) in gvs {
            let p = if g.is_empty() {
                "api/v1".to_string()
            } else {
                format!("apis/{g}/{v}")
            };
            paths.insert(
                p.clone(),
                json!({ "serverRelativeURL": format!("/openapi/v3/{p}?hash={}", self.types.len()) }),
            );
        }
        json!({ "paths": paths })
    }

    pub fn openapi_v3_gv(&self, group: &str, version: &str) -> Option<Value> {
        let mut paths = serde_json::Map::new();
        for t in self
            .types
            .iter()
            .filter(|t| t.group == group && t.version == version)
        {
            let prefix = if group.is_empty() {
                format!("/api/{version}")
            } else {
                format!("/apis/{group}/{version}")
            };
            let path = if t.namespaced {
                format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", t.plural)
            } else {
                format!("{prefix}/{}/{{name}}", t.plural)
            };
            let gvk = json!([{ "group": t.group, "version": t.version, "kind": t.kind }]);
            let op = json!({
                "x-kubernetes-group-version-kind": gvk[0],
                "parameters": [
                    { "name": "fieldValidation", "in": "query", "schema": { "type": "string" } },
                    { "name": "fieldManager", "in": "query", "schema": { "type": "string" } },
                    { "name": "dryRun", "in": "query", "schema": { "type": "string" } },
                ],
                "responses": { "200": { "description": "OK" } },
            });
            paths.insert(path, json!({ "patch": op, "put": op }));
        }
        if paths.is_empty() {
            return None;
        }
        Some(json!({
            "openapi": "3.0.0",
            "info": { "title": "runnel-kube-local", "version": "v1.32.0" },
            "paths": paths,
            "components": { "schemas": {} },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd() -> Value {
        serde_yaml::from_str(include_str!("../../crds/streamjobs.runnel.dev.yaml")).unwrap()
    }

    #[test]
    fn the_streamjob_crd_registers_its_kind() {
        let types = from_crd(&crd()).unwrap();
        assert_eq!(types.len(), 1);
        let t = &types[0];
        assert_eq!(t.api_version(), "runnel.dev/v1alpha1");
        assert_eq!(t.kind, "StreamJob");
        assert!(t.namespaced && t.status_subresource);
        assert_eq!(t.short_names, vec!["sj"]);
        let c = t.custom.as_ref().unwrap();
        assert!(c.schema.is_some());
        assert_eq!(c.columns[0].json_path, ".status.lifecycleState");
        let mut r = Registry::default();
        r.set_crd("streamjobs.runnel.dev", types);
        assert!(r.group("runnel.dev").is_some());
        let list = r.resource_list("runnel.dev", "v1alpha1").unwrap();
        assert_eq!(list["resources"][1]["name"], "streamjobs/status");
        r.remove_crd("streamjobs.runnel.dev");
        assert!(r.group("runnel.dev").is_none());
    }

    #[test]
    fn a_misnamed_crd_is_refused() {
        let mut c = crd();
        c["metadata"]["name"] = json!("other.runnel.dev");
        assert!(from_crd(&c).unwrap_err().contains("streamjobs.runnel.dev"));
    }
}
