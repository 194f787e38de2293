//! The agent's calls to the Kubernetes API: every command is planned by [`crate::plan`] against
//! the cluster as it is now (listed, not remembered) and the plan's changes are made through
//! the API; pod changes and re-lists become fleet events against the [`Ledger`] of what the
//! fleet has already said.
//!
//! Error policy: an answer of the API server that says no (4xx other than "already exists"
//! on a create and "not found" on a delete) refuses the command with Kubernetes' message, so
//! the shadow manager tries elsewhere; anything else (unreachable, 5xx, timeouts) is
//! [`AgentError::Api`] and the caller retries the same command.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use serde::Deserialize;
use umbra_ledger::{Ledger, ShadowHealth};
use umbra_schemas::{FleetCommand, FleetCommandKind, FleetEvent, FleetEventKind, HostMetrics};

use crate::{
    committed_on, label_value, node_capacity, parse_quantity, plan, plan_workload_release, refusal,
    shadow_event, AgentError, Op, PlaceholderSettings, SHADOW_ANNOTATION, SHADOW_LABEL,
    WORKLOAD_LABEL,
};

/// Label selector of every pod the agent manages.
pub const MANAGED: &str = "app.kubernetes.io/managed-by=umbra";
/// Key of a template ConfigMap that holds the workload's pod (YAML or JSON).
pub const TEMPLATE_KEY: &str = "pod";

/// Where an API call acts: the placeholder namespace, the workload namespace, or the whole
/// cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// `PlaceholderSettings::namespace`.
    Placeholders,
    /// `PlaceholderSettings::workload_namespace`.
    Workloads,
    /// Cluster-wide.
    Cluster,
}

/// One kind of call the agent makes: (scope, API group, resource, verb).
pub type ApiCall = (Scope, &'static str, &'static str, &'static str);

/// Every call the agent makes, and so all its RBAC may grant (`k8s/base/agent.yaml`; the
/// mock-API-server scenarios check each request against this list, the manifest test checks
/// the RBAC equals it).
pub const API_CALLS: &[ApiCall] = &[
    (Scope::Placeholders, "", "pods", "list"),
    (Scope::Placeholders, "", "pods", "watch"),
    (Scope::Placeholders, "", "pods", "create"),
    (Scope::Placeholders, "", "pods", "delete"),
    (Scope::Workloads, "", "configmaps", "list"),
    (Scope::Workloads, "", "pods", "list"),
    (Scope::Workloads, "", "pods", "create"),
    (Scope::Workloads, "", "pods", "delete"),
    (Scope::Cluster, "", "nodes", "list"),
    (Scope::Cluster, "", "pods", "list"),
    (Scope::Cluster, "metrics.k8s.io", "nodes", "list"),
];

/// The Kubernetes API as the agent uses it.
#[derive(Clone)]
pub struct Cluster {
    client: Client,
    settings: PlaceholderSettings,
}

fn api_error(context: &str, e: kube::Error) -> AgentError {
    AgentError::Api(format!("{context}: {e}"))
}

/// The API server's refusal, if `e` is one (a 4xx answer).
fn refusal_reason(e: &kube::Error) -> Option<String> {
    match e {
        kube::Error::Api(s) if (400..500).contains(&s.code) => Some(format!(
            "Kubernetes refused: {}{}",
            if s.reason.is_empty() {
                String::new()
            } else {
                format!("{}: ", s.reason)
            },
            s.message
        )),
        _ => None,
    }
}

fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

#[derive(Deserialize)]
struct NodeMetricsList {
    items: Vec<NodeMetrics>,
}

#[derive(Deserialize)]
struct NodeMetrics {
    metadata: ObjectMeta,
    usage: BTreeMap<String, Quantity>,
}

impl Cluster {
    /// The cluster behind `client`.
    pub fn new(client: Client, settings: PlaceholderSettings) -> Self {
        Self { client, settings }
    }

    /// The placeholder namespace's pods.
    fn placeholders(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.settings.namespace)
    }

    fn pods_in(&self, namespace: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// The shadow's live placeholder, found by its label and checked by its annotation (a
    /// label value cannot hold every id). A placeholder already being deleted does not count.
    pub async fn placeholder(&self, shadow: &str) -> Result<Option<Pod>, AgentError> {
        let lp = ListParams::default().labels(&format!("{SHADOW_LABEL}={}", label_value(shadow)));
        let pods = self
            .placeholders()
            .list(&lp)
            .await
            .map_err(|e| api_error("listing placeholders", e))?;
        Ok(pods.items.into_iter().find(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(SHADOW_ANNOTATION))
                    .map(String::as_str)
                    == Some(shadow)
        }))
    }

    /// The pod template the workload names: the `pod` key of the ConfigMap labelled with
    /// its id in the workload namespace. `Ok(None)` when there is none; an unreadable
    /// template is a refusal with the parse error.
    pub async fn template(
        &self,
        workload: &str,
    ) -> Result<Result<Option<Pod>, String>, AgentError> {
        let maps: Api<ConfigMap> =
            Api::namespaced(self.client.clone(), &self.settings.workload_namespace);
        let lp =
            ListParams::default().labels(&format!("{WORKLOAD_LABEL}={}", label_value(workload)));
        let list = maps
            .list(&lp)
            .await
            .map_err(|e| api_error("listing pod templates", e))?;
        let Some(cm) = list.items.into_iter().next() else {
            return Ok(Ok(None));
        };
        let name = cm.metadata.name.clone().unwrap_or_default();
        let Some(text) = cm.data.as_ref().and_then(|d| d.get(TEMPLATE_KEY)) else {
            return Ok(Err(format!("ConfigMap {name} has no '{TEMPLATE_KEY}' key")));
        };
        Ok(serde_yaml::from_str::<Pod>(text)
            .map(Some)
            .map_err(|e| format!("ConfigMap {name}: '{TEMPLATE_KEY}' is not a pod: {e}")))
    }

    async fn workload_pods(&self, workload: &str) -> Result<Vec<Pod>, AgentError> {
        let lp =
            ListParams::default().labels(&format!("{WORKLOAD_LABEL}={}", label_value(workload)));
        let pods = self
            .pods_in(&self.settings.workload_namespace)
            .list(&lp)
            .await
            .map_err(|e| api_error("listing workload pods", e))?;
        Ok(pods.items)
    }

    /// Carries out `cmd` and returns the fleet's answer: the plan's changes in order, each
    /// accepted by the API server (or already in effect) before the next.
    pub async fn execute(&self, cmd: &FleetCommand, now: i64) -> Result<FleetEvent, AgentError> {
        let plan = match cmd.kind {
            FleetCommandKind::ReleaseWorkload => {
                plan_workload_release(cmd, &self.workload_pods(&cmd.workload_id).await?, now)
            }
            kind => {
                let existing = match cmd.shadow_id.as_deref() {
                    Some(s) if kind != FleetCommandKind::PlaceWorkload => {
                        self.placeholder(s).await?
                    }
                    _ => None,
                };
                let needs_template = matches!(
                    kind,
                    FleetCommandKind::ExpandShadow | FleetCommandKind::PlaceWorkload
                ) && (existing.is_some()
                    || kind == FleetCommandKind::PlaceWorkload);
                let template = if needs_template {
                    match self.template(&cmd.workload_id).await? {
                        Ok(t) => t,
                        Err(why) => return Ok(refusal(cmd, why, now)),
                    }
                } else {
                    None
                };
                plan(
                    cmd,
                    existing.as_ref(),
                    template.as_ref(),
                    &self.settings,
                    now,
                )
            }
        };
        for op in &plan.ops {
            if let Some(why) = self.apply(op).await? {
                return Ok(refusal(cmd, why, now));
            }
        }
        Ok(plan.answer)
    }

    /// Makes one change; `Some(reason)` when the API server refuses it.
    async fn apply(&self, op: &Op) -> Result<Option<String>, AgentError> {
        match op {
            Op::Create(pod) => {
                let ns = pod
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| self.settings.namespace.clone());
                match self.pods_in(&ns).create(&PostParams::default(), pod).await {
                    Ok(_) => Ok(None),
                    // A retried command whose pod was made before the answer was published.
                    Err(e) if status_code(&e) == Some(409) => Ok(None),
                    Err(e) => refusal_reason(&e)
                        .map_or_else(|| Err(api_error("creating a pod", e)), |r| Ok(Some(r))),
                }
            }
            Op::Delete { namespace, name } => {
                match self
                    .pods_in(namespace)
                    .delete(name, &DeleteParams::default())
                    .await
                {
                    Ok(_) => Ok(None),
                    Err(e) if status_code(&e) == Some(404) => Ok(None),
                    Err(e) => refusal_reason(&e)
                        .map_or_else(|| Err(api_error("deleting a pod", e)), |r| Ok(Some(r))),
                }
            }
        }
    }

    /// Re-lists nodes and placeholders and reconciles them with what the fleet has said
    /// (`ledger`): node capacity that changed, shadow health the events have not told yet,
    /// shadows whose placeholder is gone (failed), and placeholders of shadows that have ended
    /// (deleted, they are the shadow's and nothing else owns them).
    pub async fn relist(&self, ledger: &Ledger, now: i64) -> Result<Vec<FleetEvent>, AgentError> {
        let mut out = Vec::new();
        let nodes: Api<Node> = Api::all(self.client.clone());
        let nodes = nodes
            .list(&ListParams::default())
            .await
            .map_err(|e| api_error("listing nodes", e))?;
        for n in &nodes.items {
            let id = n.metadata.name.clone().unwrap_or_default();
            let Ok(cap) = node_capacity(n) else { continue };
            if ledger.host(&id).map(|h| h.capacity) != Some(cap) {
                out.push(FleetEvent {
                    event_id: format!("{id}-capacity-{now}"),
                    command_id: None,
                    kind: FleetEventKind::HostCapacity,
                    host_id: id,
                    shadow_id: None,
                    workload_id: None,
                    resources: cap,
                    reason: "node allocatable".into(),
                    occurred_at: now,
                });
            }
        }
        let pods = self
            .placeholders()
            .list(&ListParams::default().labels(MANAGED))
            .await
            .map_err(|e| api_error("listing placeholders", e))?;
        let mut seen = std::collections::HashSet::new();
        for p in &pods.items {
            let Some(shadow) = p
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(SHADOW_ANNOTATION))
                .cloned()
            else {
                continue;
            };
            if ledger.shadow(&shadow).is_some() {
                seen.insert(shadow.clone());
                out.extend(news(ledger, p, false, now));
            } else if ledger.ended(&shadow).is_some() && p.metadata.deletion_timestamp.is_none() {
                let name = p.metadata.name.clone().unwrap_or_default();
                tracing::info!(shadow = %shadow, pod = %name, "deleting the placeholder of an ended shadow");
                self.apply(&Op::Delete {
                    namespace: self.settings.namespace.clone(),
                    name,
                })
                .await?;
            }
        }
        let mut missing: Vec<_> = ledger
            .shadows()
            .iter()
            .filter(|(id, _)| !seen.contains(*id))
            .collect();
        missing.sort_by(|a, b| a.0.cmp(b.0));
        for (id, r) in missing {
            out.push(FleetEvent {
                event_id: format!("{id}-missing-{now}"),
                command_id: None,
                kind: FleetEventKind::Failed,
                host_id: r.host_id.clone(),
                shadow_id: Some(id.clone()),
                workload_id: Some(r.workload_id.clone()),
                resources: r.resources,
                reason: "placeholder pod not found on re-list".into(),
                occurred_at: now,
            });
        }
        Ok(out)
    }

    /// One sample per node: allocatable, the requests of the pods bound to it, usage from
    /// `metrics.k8s.io` when the API serves it (else the requests), and the node's Ready
    /// condition.
    pub async fn host_metrics(&self, now: i64) -> Result<Vec<HostMetrics>, AgentError> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let nodes = nodes
            .list(&ListParams::default())
            .await
            .map_err(|e| api_error("listing nodes", e))?;
        let pods: Api<Pod> = Api::all(self.client.clone());
        let pods = pods
            .list(&ListParams::default().fields("status.phase!=Succeeded,status.phase!=Failed"))
            .await
            .map_err(|e| api_error("listing pods", e))?;
        let usage = self.node_usage().await;
        let mut out = Vec::new();
        for n in &nodes.items {
            let id = n.metadata.name.clone().unwrap_or_default();
            let capacity = node_capacity(n)?;
            let committed = committed_on(&id, &pods.items)?;
            let healthy = n
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                .is_some_and(|c| c.status == "True");
            out.push(HostMetrics {
                used: usage
                    .as_ref()
                    .and_then(|u| u.get(&id).copied())
                    .unwrap_or(committed),
                host_id: id,
                sample_time: now,
                capacity,
                healthy,
                committed: Some(committed),
            });
        }
        Ok(out)
    }

    /// Usage per node from `metrics.k8s.io`, or `None` where the API is not served.
    async fn node_usage(&self) -> Option<BTreeMap<String, umbra_schemas::Resources>> {
        let req = http::Request::get("/apis/metrics.k8s.io/v1beta1/nodes")
            .body(Vec::new())
            .ok()?;
        let list: NodeMetricsList = match self.client.request(req).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "metrics.k8s.io not available; usage is requests");
                return None;
            }
        };
        let mut out = BTreeMap::new();
        for m in list.items {
            let get = |k: &str, scale: f64| {
                m.usage
                    .get(k)
                    .and_then(|q| parse_quantity(&q.0, scale).ok())
                    .unwrap_or(0)
            };
            out.insert(
                m.metadata.name.clone().unwrap_or_default(),
                umbra_schemas::Resources {
                    cpu_millicores: get("cpu", 1000.0),
                    memory_bytes: get("memory", 1.0),
                    disk_io_bytes_per_s: 0,
                },
            );
        }
        Some(out)
    }

    /// The placeholder pods' watch, for [`news`].
    pub fn watch(
        &self,
    ) -> impl futures::Stream<
        Item = Result<kube::runtime::watcher::Event<Pod>, kube::runtime::watcher::Error>,
    > + Send
           + 'static {
        kube::runtime::watcher(
            self.placeholders(),
            kube::runtime::watcher::Config::default().labels(MANAGED),
        )
    }
}

/// What a placeholder pod's state (or, with `deleted`, its deletion) tells the fleet that its
/// events have not said yet, judged against `ledger`: health changes of live shadows, and
/// failures with Kubernetes' reason. A pod of a shadow that has ended (released, expanded,
/// failed) or moved to another node tells nothing: its deletion was umbra's own.
pub fn news(ledger: &Ledger, pod: &Pod, deleted: bool, now: i64) -> Option<FleetEvent> {
    let shadow = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SHADOW_ANNOTATION))?;
    let record = ledger.shadow(shadow)?;
    let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
    if node.is_some_and(|n| n != record.host_id) {
        return None;
    }
    let state = shadow_event(pod, now);
    let mut e = match state {
        // Preempted or evicted: the disruption's reason, whether or not the pod is gone yet.
        Some(e) if e.kind == FleetEventKind::Failed => e,
        _ if deleted => FleetEvent {
            event_id: format!("{shadow}-deleted-{now}"),
            command_id: None,
            kind: FleetEventKind::Failed,
            host_id: String::new(),
            shadow_id: Some(shadow.clone()),
            workload_id: Some(record.workload_id.clone()),
            resources: record.resources,
            reason: "placeholder pod deleted".into(),
            occurred_at: now,
        },
        Some(e) => e,
        None => return None,
    };
    let news = match e.kind {
        FleetEventKind::Healthy => record.health != ShadowHealth::Healthy,
        // A placeholder still starting is not yet checked, not unhealthy.
        FleetEventKind::Unhealthy => record.health == ShadowHealth::Healthy,
        FleetEventKind::Failed => true,
        _ => false,
    };
    if !news {
        return None;
    }
    e.host_id = record.host_id.clone();
    e.resources = record.resources;
    Some(e)
}
