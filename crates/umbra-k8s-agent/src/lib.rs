//! The Kubernetes fleet agent's decisions, as pure functions over Kubernetes objects (the
//! k8s-openapi types), tested without an API server:
//!
//! - a `CREATE_SHADOW` command becomes a placeholder pod ([`placeholder_pod`]): a pause
//!   container requesting exactly the shadow's size, at the `umbra-shadow` priority (negative,
//!   so any real pod preempts it), required onto the chosen node, labelled with the shadow and
//!   workload ids and annotated with the command id (a second delivery of the same command
//!   finds its pod);
//! - a pod's state becomes the shadow's fleet event ([`shadow_event`]): ready → `HEALTHY`,
//!   not ready → `UNHEALTHY`, preempted, evicted, failed or deleted → `FAILED` with the reason
//!   Kubernetes gave;
//! - a node's allocatable resources minus the requests of the pods on it are what placement
//!   may use ([`node_capacity`], [`committed_on`]);
//! - every shadow command becomes what to do to the cluster given what is there ([`plan`]):
//!   create, release (delete), move (create on the new node, then delete), expand (the
//!   workload's own pod, from its template, required onto the shadow's node at its own
//!   priority: the scheduler preempts the placeholder to make room, so the capacity passes
//!   from shadow to workload without a window in which another pod could take it).
//!
//! [`cluster`] carries the plans out through the Kubernetes API; [`service`] is the agent's
//! Kafka side (`umbra-k8s-agent`).

pub mod cluster;
pub mod service;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, Container, ExecAction, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement,
    NodeSelectorTerm, Pod, PodSpec, Probe, ResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use umbra_schemas::{FleetCommand, FleetCommandKind, FleetEvent, FleetEventKind, Resources};

/// Label holding the shadow id (sanitized to a label value).
pub const SHADOW_LABEL: &str = "umbra.io/shadow-id";
/// Label holding the workload id (sanitized to a label value).
pub const WORKLOAD_LABEL: &str = "umbra.io/workload-id";
/// Annotations holding the ids exactly as umbra knows them (labels cannot hold every string).
pub const SHADOW_ANNOTATION: &str = "umbra.io/shadow-id";
/// Annotation holding the id of the command that created the pod.
pub const COMMAND_ANNOTATION: &str = "umbra.io/command-id";

/// Errors of the agent's library.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AgentError {
    /// The command cannot be carried out as given.
    #[error("command {command_id}: {reason}")]
    BadCommand {
        /// The command.
        command_id: String,
        /// Why.
        reason: String,
    },
    /// A Kubernetes quantity that is not one.
    #[error("'{0}' is not a Kubernetes quantity")]
    Quantity(String),
    /// The Kubernetes API could not be reached or failed (not a refusal): try again.
    #[error("Kubernetes API: {0}")]
    Api(String),
}

/// How placeholder pods are made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaceholderSettings {
    /// Namespace of the placeholder pods.
    pub namespace: String,
    /// The pause image.
    pub pause_image: String,
    /// PriorityClass of the placeholders (negative value, `preemptionPolicy: Never`).
    pub priority_class: String,
    /// Namespace of the workloads' pod templates and of the workload pods the agent starts.
    pub workload_namespace: String,
}

impl Default for PlaceholderSettings {
    fn default() -> Self {
        Self {
            namespace: "umbra-shadows".into(),
            pause_image: "registry.k8s.io/pause:3.10".into(),
            priority_class: "umbra-shadow".into(),
            workload_namespace: "default".into(),
        }
    }
}

/// `s` as a DNS-1123 label fragment: lower case alphanumerics and `-`, at most `max` long.
fn dns_fragment(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    out.truncate(max);
    out.trim_matches('-').to_string()
}

/// `s` as a label value: alphanumerics, `-`, `_`, `.`, at most 63, alphanumeric at both ends.
pub fn label_value(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    out.truncate(63);
    out.trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// The placeholder pod's name for a shadow: stable, so that a repeated command finds it, and
/// a valid DNS label whatever the id; the hash keeps ids that differ only in case or beyond
/// the kept length apart.
pub fn placeholder_name(shadow_id: &str) -> String {
    // FNV-1a: stable across versions and platforms, unlike the standard library's hasher.
    let hash = shadow_id.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    match dns_fragment(shadow_id, 40) {
        f if f.is_empty() => format!("umbra-shadow-{hash:08x}"),
        f => format!("umbra-shadow-{f}-{hash:08x}"),
    }
}

fn quantities(r: &Resources) -> BTreeMap<String, Quantity> {
    let mut m = BTreeMap::new();
    m.insert(
        "cpu".into(),
        Quantity(format!("{}m", r.cpu_millicores.max(0))),
    );
    m.insert("memory".into(), Quantity(r.memory_bytes.max(0).to_string()));
    m
}

/// `base` with its node affinity replaced by a requirement to run on `node`: through the
/// scheduler (not `nodeName`), so that priority and preemption apply.
fn required_on(node: &str, base: Affinity) -> Affinity {
    Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: Some(vec![NodeSelectorRequirement {
                        key: "kubernetes.io/hostname".into(),
                        operator: "In".into(),
                        values: Some(vec![node.to_string()]),
                    }]),
                    ..NodeSelectorTerm::default()
                }],
            }),
            ..NodeAffinity::default()
        }),
        ..base
    }
}

/// The placeholder pod for a `CREATE_SHADOW` command.
pub fn placeholder_pod(cmd: &FleetCommand, s: &PlaceholderSettings) -> Result<Pod, AgentError> {
    let bad = |reason: &str| AgentError::BadCommand {
        command_id: cmd.command_id.clone(),
        reason: reason.into(),
    };
    if cmd.kind != FleetCommandKind::CreateShadow {
        return Err(bad("not a CREATE_SHADOW command"));
    }
    let shadow = cmd
        .shadow_id
        .as_deref()
        .ok_or_else(|| bad("no shadow_id"))?;
    if cmd.host_id.is_empty() {
        return Err(bad("no host_id"));
    }
    if cmd.resources.cpu_millicores <= 0 && cmd.resources.memory_bytes <= 0 {
        return Err(bad("a shadow reserves nothing"));
    }
    let size = quantities(&cmd.resources);
    Ok(Pod {
        metadata: ObjectMeta {
            name: Some(placeholder_name(shadow)),
            namespace: Some(s.namespace.clone()),
            labels: Some(BTreeMap::from([
                ("app.kubernetes.io/managed-by".into(), "umbra".into()),
                (SHADOW_LABEL.into(), label_value(shadow)),
                (WORKLOAD_LABEL.into(), label_value(&cmd.workload_id)),
            ])),
            annotations: Some(BTreeMap::from([
                (SHADOW_ANNOTATION.into(), shadow.to_string()),
                (COMMAND_ANNOTATION.into(), cmd.command_id.clone()),
                ("umbra.io/workload-id".into(), cmd.workload_id.clone()),
            ])),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            priority_class_name: Some(s.priority_class.clone()),
            affinity: Some(required_on(&cmd.host_id, Affinity::default())),
            automount_service_account_token: Some(false),
            termination_grace_period_seconds: Some(0),
            restart_policy: Some("Always".into()),
            containers: vec![Container {
                name: "shadow".into(),
                image: Some(s.pause_image.clone()),
                resources: Some(ResourceRequirements {
                    requests: Some(size.clone()),
                    limits: Some(size),
                    ..ResourceRequirements::default()
                }),
                // The shadow's health check: the placeholder runs and answers.
                readiness_probe: Some(Probe {
                    exec: Some(ExecAction {
                        command: Some(vec!["/pause".into(), "-v".into()]),
                    }),
                    period_seconds: Some(10),
                    ..Probe::default()
                }),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        status: None,
    })
}

/// The fleet event a placeholder pod's state means for its shadow, if any (a pod still being
/// scheduled or started means nothing yet). `occurred_at` is the event's time (ms).
pub fn shadow_event(pod: &Pod, occurred_at: i64) -> Option<FleetEvent> {
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let shadow = annotations.get(SHADOW_ANNOTATION)?.clone();
    let workload = annotations.get("umbra.io/workload-id").cloned();
    let host = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    let status = pod.status.clone().unwrap_or_default();
    let conditions = status.conditions.clone().unwrap_or_default();
    let condition = |t: &str| conditions.iter().find(|c| c.type_ == t);
    let event = |kind: FleetEventKind, reason: String| FleetEvent {
        event_id: format!("{shadow}-{}-{occurred_at}", kind_name(kind)),
        command_id: None,
        kind,
        host_id: host.clone(),
        shadow_id: Some(shadow.clone()),
        workload_id: workload.clone(),
        resources: Resources::ZERO,
        reason,
        occurred_at,
    };
    // Preemption and eviction mark the pod with a DisruptionTarget condition first.
    if let Some(c) = condition("DisruptionTarget").filter(|c| c.status == "True") {
        let why = kubernetes_reason(c.reason.as_deref(), c.message.as_deref(), "disrupted");
        return Some(event(FleetEventKind::Failed, why));
    }
    if pod.metadata.deletion_timestamp.is_some() {
        return Some(event(
            FleetEventKind::Failed,
            "placeholder pod deleted".into(),
        ));
    }
    match status.phase.as_deref() {
        Some("Failed") => {
            let why = kubernetes_reason(
                status.reason.as_deref(),
                status.message.as_deref(),
                "Failed",
            );
            return Some(event(FleetEventKind::Failed, why));
        }
        Some("Succeeded") => {
            return Some(event(FleetEventKind::Failed, "placeholder exited".into()));
        }
        _ => {}
    }
    let ready = condition("Ready")?;
    if host.is_empty() {
        return None;
    }
    Some(if ready.status == "True" {
        event(FleetEventKind::Healthy, "placeholder ready".into())
    } else {
        event(
            FleetEventKind::Unhealthy,
            ready
                .message
                .clone()
                .or(ready.reason.clone())
                .unwrap_or_else(|| "not ready".into()),
        )
    })
}

/// Kubernetes' reason and message as one line: `Evicted: The node was low on memory.`.
fn kubernetes_reason(reason: Option<&str>, message: Option<&str>, default: &str) -> String {
    let why = reason.unwrap_or(default);
    match message.filter(|m| !m.is_empty()) {
        Some(m) => format!("{why}: {m}"),
        None => why.to_string(),
    }
}

fn kind_name(k: FleetEventKind) -> &'static str {
    match k {
        FleetEventKind::Healthy => "healthy",
        FleetEventKind::Unhealthy => "unhealthy",
        FleetEventKind::Failed => "failed",
        _ => "event",
    }
}

/// A Kubernetes quantity in its base unit (cores for CPU, bytes for memory) × `scale`,
/// rounded up: `"1500m"` × 1000 = 1500, `"2Gi"` × 1 = 2147483648.
pub fn parse_quantity(q: &str, scale: f64) -> Result<i64, AgentError> {
    let err = || AgentError::Quantity(q.to_string());
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let (num, suffix) = if suffix.starts_with(['e', 'E']) && suffix.len() > 1 {
        (q, "")
    } else {
        (num, suffix)
    };
    let n: f64 = num.parse().map_err(|_| err())?;
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0f64.powi(2),
        "Gi" => 1024.0f64.powi(3),
        "Ti" => 1024.0f64.powi(4),
        "Pi" => 1024.0f64.powi(5),
        "Ei" => 1024.0f64.powi(6),
        _ => return Err(err()),
    };
    let v = n * factor * scale;
    if !v.is_finite() || v < 0.0 {
        return Err(err());
    }
    // Rounded up, but not past float noise (0.1 × 1000 is 100.00000000000001).
    Ok((v - 1e-6).ceil().max(0.0) as i64)
}

fn resources_of(m: Option<&BTreeMap<String, Quantity>>) -> Result<Resources, AgentError> {
    let get = |k: &str, scale: f64| {
        m.and_then(|m| m.get(k))
            .map_or(Ok(0), |q| parse_quantity(&q.0, scale))
    };
    Ok(Resources {
        cpu_millicores: get("cpu", 1000.0)?,
        memory_bytes: get("memory", 1.0)?,
        disk_io_bytes_per_s: 0,
    })
}

/// What a node offers pods: its allocatable CPU and memory.
pub fn node_capacity(node: &Node) -> Result<Resources, AgentError> {
    resources_of(node.status.as_ref().and_then(|s| s.allocatable.as_ref()))
}

/// What the pods bound to `node_name` request (pods that finished do not count): with
/// [`node_capacity`], what is left for shadows and workloads.
pub fn committed_on(node_name: &str, pods: &[Pod]) -> Result<Resources, AgentError> {
    let mut total = Resources::ZERO;
    for p in pods {
        let on_node = p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node_name);
        let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
        if !on_node || matches!(phase, Some("Succeeded" | "Failed")) {
            continue;
        }
        for c in p.spec.iter().flat_map(|s| s.containers.iter()) {
            let r = resources_of(c.resources.as_ref().and_then(|r| r.requests.as_ref()))?;
            total = total.plus(&r);
        }
    }
    Ok(total)
}

/// One change to the cluster. Changes run in order; a creation after a deletion of the same
/// name waits until the deletion is complete.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Create this pod.
    Create(Box<Pod>),
    /// Delete this pod.
    Delete {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
}

/// What to do for a command, and the fleet's answer once it is done.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Changes, in order.
    pub ops: Vec<Op>,
    /// The answer to publish once the changes are accepted.
    pub answer: FleetEvent,
}

fn answer(
    cmd: &FleetCommand,
    kind: FleetEventKind,
    host: &str,
    reason: String,
    at: i64,
) -> FleetEvent {
    FleetEvent {
        event_id: format!("{}-answer", cmd.command_id),
        command_id: Some(cmd.command_id.clone()),
        kind,
        host_id: host.to_string(),
        shadow_id: cmd.shadow_id.clone(),
        workload_id: Some(cmd.workload_id.clone()),
        resources: cmd.resources,
        reason,
        occurred_at: at,
    }
}

/// The fleet's `REFUSED` answer to `cmd`, with the reason.
pub fn refusal(cmd: &FleetCommand, reason: String, at: i64) -> FleetEvent {
    answer(cmd, FleetEventKind::Refused, &cmd.host_id, reason, at)
}

fn refused(cmd: &FleetCommand, reason: String, at: i64) -> Plan {
    Plan {
        ops: Vec::new(),
        answer: refusal(cmd, reason, at),
    }
}

/// The workload's pod for an expansion or a placement: its template with umbra's labels,
/// required onto `node`, in the workload namespace. `template` is the pod the workload names
/// (a ConfigMap holds it).
pub fn workload_pod(cmd: &FleetCommand, template: &Pod, node: &str, namespace: &str) -> Pod {
    let mut pod = template.clone();
    pod.metadata.namespace = Some(namespace.to_string());
    let request = cmd
        .request_id
        .clone()
        .unwrap_or_else(|| cmd.command_id.clone());
    pod.metadata.name = Some(format!(
        "{}-{}",
        dns_fragment(&cmd.workload_id, 30),
        placeholder_name(&request).trim_start_matches("umbra-shadow-")
    ));
    pod.metadata.resource_version = None;
    pod.metadata.uid = None;
    pod.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(WORKLOAD_LABEL.into(), label_value(&cmd.workload_id));
    pod.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(COMMAND_ANNOTATION.into(), cmd.command_id.clone());
    let spec = pod.spec.get_or_insert_with(PodSpec::default);
    spec.node_name = None;
    spec.affinity = Some(required_on(node, spec.affinity.clone().unwrap_or_default()));
    pod.status = None;
    pod
}

/// What a shadow command asks of the cluster, given the shadow's placeholder pod as it is now
/// (`existing`) and, for an expansion, the workload's pod template. Idempotent: a command
/// whose effect is already there (the placeholder carries its command id, or is gone for a
/// release) plans nothing and answers the same.
pub fn plan(
    cmd: &FleetCommand,
    existing: Option<&Pod>,
    template: Option<&Pod>,
    s: &PlaceholderSettings,
    now: i64,
) -> Plan {
    if cmd.kind == FleetCommandKind::PlaceWorkload {
        return plan_placement(cmd, template, s, now);
    }
    let Some(shadow) = cmd.shadow_id.as_deref() else {
        return refused(cmd, "no shadow_id".into(), now);
    };
    let delete = |p: &Pod| Op::Delete {
        namespace: p
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| s.namespace.clone()),
        name: p
            .metadata
            .name
            .clone()
            .unwrap_or_else(|| placeholder_name(shadow)),
    };
    let node_of = |p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_else(|| cmd.host_id.clone())
    };
    match cmd.kind {
        FleetCommandKind::CreateShadow => {
            let created_by = existing
                .and_then(|p| p.metadata.annotations.as_ref())
                .and_then(|a| a.get(COMMAND_ANNOTATION));
            if created_by.is_some() {
                return Plan {
                    ops: Vec::new(),
                    answer: answer(
                        cmd,
                        FleetEventKind::Created,
                        &cmd.host_id,
                        "placeholder exists".into(),
                        now,
                    ),
                };
            }
            match placeholder_pod(cmd, s) {
                Ok(pod) => Plan {
                    ops: vec![Op::Create(Box::new(pod))],
                    answer: answer(
                        cmd,
                        FleetEventKind::Created,
                        &cmd.host_id,
                        "placeholder pod created".into(),
                        now,
                    ),
                },
                Err(e) => refused(cmd, e.to_string(), now),
            }
        }
        FleetCommandKind::ReleaseShadow => Plan {
            ops: existing.map(delete).into_iter().collect(),
            answer: answer(
                cmd,
                FleetEventKind::Released,
                &existing.map_or_else(|| cmd.host_id.clone(), node_of),
                if existing.is_some() {
                    "released"
                } else {
                    "already gone"
                }
                .into(),
                now,
            ),
        },
        FleetCommandKind::MoveShadow => {
            let Some(target) = cmd.target_host_id.as_deref() else {
                return refused(cmd, "MOVE_SHADOW without target_host_id".into(), now);
            };
            let Some(old) = existing else {
                return refused(cmd, format!("shadow {shadow} is not live"), now);
            };
            let size = old
                .spec
                .as_ref()
                .and_then(|s| s.containers.first())
                .and_then(|c| c.resources.as_ref())
                .map(|r| resources_of(r.requests.as_ref()).unwrap_or_default())
                .unwrap_or_default();
            let create = FleetCommand {
                kind: FleetCommandKind::CreateShadow,
                host_id: target.to_string(),
                resources: if cmd.resources.is_zero() {
                    size
                } else {
                    cmd.resources
                },
                ..cmd.clone()
            };
            match placeholder_pod(&create, s) {
                // The new placeholder has a name of its own, so that it can be created while
                // the old one is still terminating.
                Ok(mut pod) => Plan {
                    ops: vec![delete(old), {
                        pod.metadata.name = Some(placeholder_name(&format!("{shadow}@{target}")));
                        Op::Create(Box::new(pod))
                    }],
                    answer: answer(
                        cmd,
                        FleetEventKind::Moved,
                        target,
                        format!("moved from {}", node_of(old)),
                        now,
                    ),
                },
                Err(e) => refused(cmd, e.to_string(), now),
            }
        }
        FleetCommandKind::ExpandShadow => {
            let Some(old) = existing else {
                return refused(cmd, format!("shadow {shadow} is not live"), now);
            };
            let Some(template) = template else {
                return refused(
                    cmd,
                    format!("no pod template for workload {}", cmd.workload_id),
                    now,
                );
            };
            let node = node_of(old);
            // The workload's pod first, at its own priority: should the placeholder still
            // hold the room, the scheduler preempts it; then the placeholder goes.
            Plan {
                ops: vec![
                    Op::Create(Box::new(workload_pod(
                        cmd,
                        template,
                        &node,
                        &s.workload_namespace,
                    ))),
                    delete(old),
                ],
                answer: answer(
                    cmd,
                    FleetEventKind::Expanded,
                    &node,
                    format!(
                        "request {} started on its shadow",
                        cmd.request_id.as_deref().unwrap_or("-")
                    ),
                    now,
                ),
            }
        }
        _ => refused(cmd, "not a shadow command".into(), now),
    }
}

/// `PLACE_WORKLOAD`: the workload's pod from its template, required onto the command's node
/// (standard allocation, no shadow).
fn plan_placement(
    cmd: &FleetCommand,
    template: Option<&Pod>,
    s: &PlaceholderSettings,
    now: i64,
) -> Plan {
    let Some(template) = template else {
        return refused(
            cmd,
            format!("no pod template for workload {}", cmd.workload_id),
            now,
        );
    };
    if cmd.host_id.is_empty() {
        return refused(cmd, "no host_id".into(), now);
    }
    Plan {
        ops: vec![Op::Create(Box::new(workload_pod(
            cmd,
            template,
            &cmd.host_id,
            &s.workload_namespace,
        )))],
        answer: answer(
            cmd,
            FleetEventKind::Placed,
            &cmd.host_id,
            "workload pod created".into(),
            now,
        ),
    }
}

/// `RELEASE_WORKLOAD`: one of the workload's pods on the command's node goes (the newest, as
/// a scale-down would pick), or nothing when none is left; `pods` are the workload's pods.
pub fn plan_workload_release(cmd: &FleetCommand, pods: &[Pod], now: i64) -> Plan {
    let on_node = pods
        .iter()
        .filter(|p| {
            p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(cmd.host_id.as_str())
                && p.metadata.deletion_timestamp.is_none()
        })
        .max_by(|a, b| {
            let t = |p: &Pod| p.metadata.creation_timestamp.clone().map(|t| t.0);
            t(a).cmp(&t(b)).then(a.metadata.name.cmp(&b.metadata.name))
        });
    let ops: Vec<Op> = on_node
        .map(|p| Op::Delete {
            namespace: p.metadata.namespace.clone().unwrap_or_default(),
            name: p.metadata.name.clone().unwrap_or_default(),
        })
        .into_iter()
        .collect();
    let reason = if ops.is_empty() {
        "nothing placed"
    } else {
        "released"
    };
    let mut held = Resources::ZERO;
    for c in on_node
        .iter()
        .flat_map(|p| p.spec.iter())
        .flat_map(|s| s.containers.iter())
    {
        held = held.plus(
            &resources_of(c.resources.as_ref().and_then(|r| r.requests.as_ref()))
                .unwrap_or_default(),
        );
    }
    let mut e = answer(
        cmd,
        FleetEventKind::Released,
        &cmd.host_id,
        reason.into(),
        now,
    );
    e.resources = held;
    Plan { ops, answer: e }
}
